"""Hostile specs, round two (issue 9): a string alias bomb, sub-agent fan-out, an `extends:`
chain of 1,500 files, deep nesting refused without a slow re-parse, and output paths
(`trace.path`, `checkpoint.path`, `memory.path`) confined to the project root."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from yaml.events import MappingStartEvent, SequenceStartEvent

import runner.resolve
from runner.errors import SpecError, SpecErrors
from runner.resolve import resolve
from runner.spec import _yaml, load_spec, locate

from conftest import run_cli
from test_spec import Write, write  # noqa: F401 (test_spec's `write` fixture, on this `project`)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project root (pyproject.toml marks it) inside tmp_path, also the working directory;
    tmp_path/outside is a folder beyond the root."""
    monkeypatch.delenv("RUNNER_ROOT", raising=False)
    root = tmp_path / "proj"
    root.mkdir()
    (root / "pyproject.toml").write_text("")
    (tmp_path / "outside").mkdir()
    monkeypatch.chdir(root)
    return root


def errors_of(path: Path, overrides: list[str] | None = None) -> list[str]:
    """The rendered problems of loading and resolving `path` (fails the test if it loads)."""
    with pytest.raises(SpecError) as info:
        resolve(load_spec(path, overrides or [], env={}))
    exc = info.value
    return [e.render() for e in exc.errors] if isinstance(exc, SpecErrors) else [exc.render()]


def error_of(path: Path, overrides: list[str] | None = None) -> str:
    errors = errors_of(path, overrides)
    assert len(errors) == 1, errors
    return errors[0]


# ---------------------------------------------------------------------------- item 9: aliases

def test_a_string_alias_bomb_is_refused_at_its_expanded_size(write: Write) -> None:
    """One 100 KB scalar aliased 200 times: 200 values, but 20 MB of text once expanded."""
    path = write("bad.yaml", 'description: &b "' + "x" * 100_000 + '"\n'
                             "model:\n  fallbacks: [" + ", ".join(["*b"] * 200) + "]\n")
    assert error_of(path) == (f"bad.yaml:3:14: model.fallbacks: document expands to more than "
                              f"{_yaml.MAX_CHARS} characters (an alias bomb?)")


def test_a_string_alias_bomb_in_a_key_position_is_refused_too() -> None:
    text = "a: &k " + "y" * 50_000 + "\n" + "".join(f"m{i}: {{*k : 1}}\n" for i in range(40))
    with pytest.raises(SpecError, match="expands to more than"):
        _yaml.load(text, "bad.yaml", {})


def test_a_long_value_used_a_few_times_still_loads(write: Write) -> None:
    big = "z" * 60_000
    path = write("ok.yaml", f"description: &d {big}\nprompt:\n  variables:\n"
                            "    a: *d\n    b: *d\n    c: [*d]\nmodel: {id: fake/x}\n")
    spec = resolve(load_spec(path, env={})).spec
    assert spec.prompt.variables == {"a": big, "b": big, "c": [big]}


# ---------------------------------------------------------------------------- item 9: fan-out

def _fan_out(write: Write, levels: int, width: int, leaf: str = "") -> Path:
    """levels specs, a0 ... a{levels-1}, each naming the next `width` times."""
    for i in range(levels):
        tools = "".join(f"  - agent: {{spec: a{i + 1}.yaml, name: t{j}}}\n" for j in range(width))
        body = f"tools:\n{tools}" if i < levels - 1 else leaf
        write(f"a{i}.yaml", f"name: a{i}\nmodel: {{id: fake/x}}\n{body}")
    return Path("a0.yaml").resolve()


def test_sub_agent_fan_out_is_capped(write: Write) -> None:
    """a0 names a1 five times, a1 names a2 five times...: 5 + 25 + 125 agents below a0."""
    path = _fan_out(write, 4, 5)
    # a1 brings 1 + 5 + 25 = 31 agents; the fourth use of a1 passes the cap
    assert error_of(path) == (f"a0.yaml:7:5: tools[3].agent: more than {runner.resolve.MAX_SUB_AGENTS} "
                              f"sub-agents in all below a0.yaml (each use of a spec counts; "
                              f"a1.yaml brings 31)")


def test_each_sub_agent_file_is_loaded_once(write: Write, monkeypatch: pytest.MonkeyPatch) -> None:
    """a0 -> 3 x a1 -> 3 x a2 -> 3 x a3: 39 uses below a0, three files to read."""
    loaded: list[str] = []
    real = runner.resolve.load_spec

    def counting(path: Any, *args: Any, **kw: Any) -> Any:
        loaded.append(Path(path).name)
        return real(path, *args, **kw)

    monkeypatch.setattr(runner.resolve, "load_spec", counting)
    resolved = resolve(load_spec(_fan_out(write, 4, 3), env={}))
    assert sorted(loaded) == ["a1.yaml", "a2.yaml", "a3.yaml"]
    level, names = [resolved], []
    while level:
        names.append(sorted({r.spec.name for r in level}))
        level = [ref.sub for r in level for ref in r.tools if ref.sub is not None]
    assert names == [["a0"], ["a1"], ["a2"], ["a3"]]
    assert [ref.alias for ref in resolved.tools] == ["t0", "t1", "t2"]


def test_a_bad_spec_named_many_times_is_reported_once(write: Write) -> None:
    """a0 -> 3 x a1 -> 3 x a2, whose one problem was listed nine times."""
    path = _fan_out(write, 3, 3, leaf="tools: [serch]\n")
    (problem,) = errors_of(path.parent / "a2.yaml")
    assert problem.startswith("a2.yaml:3:9: tools[0]: unknown tool 'serch'")
    assert errors_of(path) == [problem]


def test_a_spec_used_at_two_depths_keeps_the_depth_limit(write: Write) -> None:
    """x is fine one level down and too deep five levels down; the cache keeps both apart."""
    write("x.yaml", "name: x\nmodel: {id: fake/x}\ntools:\n  - agent: y.yaml\n")
    write("y.yaml", "name: y\nmodel: {id: fake/x}\n")
    for i in range(4):  # top -> c0 -> c1 -> c2 -> c3 -> x -> y: y is six levels down
        nxt = f"c{i + 1}.yaml" if i < 3 else "x.yaml"
        write(f"c{i}.yaml", f"name: c{i}\nmodel: {{id: fake/x}}\ntools:\n  - agent: {nxt}\n")
    path = write("top.yaml", "name: top\nmodel: {id: fake/x}\ntools:\n  - agent: x.yaml\n"
                             "  - agent: c0.yaml\n")
    assert error_of(path) == "x.yaml:4:5: tools[0].agent: sub-agents nested deeper than 5"


# ---------------------------------------------------------------------------- item 9: extends

def test_an_extends_chain_of_1500_files_is_a_spec_error(write: Write) -> None:
    for i in range(1500):
        write(f"e{i}.yaml", f"extends: e{i + 1}.yaml\n" if i < 1499 else "model: {id: fake/x}\n")
    problem = error_of(Path("e0.yaml").resolve())  # was a RecursionError
    from runner.spec.load import MAX_EXTENDS
    assert problem == (
        f"e{MAX_EXTENDS}.yaml:1:1: extends: extends chain of more than {MAX_EXTENDS} base specs "
        f"(e0.yaml -> e1.yaml -> ... -> e{MAX_EXTENDS}.yaml -> e{MAX_EXTENDS + 1}.yaml)")


def test_an_extends_chain_at_the_limit_loads(write: Write) -> None:
    from runner.spec.load import MAX_EXTENDS
    for i in range(MAX_EXTENDS):
        write(f"e{i}.yaml", f"extends: e{i + 1}.yaml\ndescription: e{i}\n")
    write(f"e{MAX_EXTENDS}.yaml", "model: {id: fake/x}\nname: base\n")
    spec = load_spec(Path("e0.yaml").resolve(), env={})
    assert (spec.name, spec.description, spec.model.id) == ("base", "e0", "fake/x")
    assert spec.source.marks[("description",)].file == "e0.yaml"
    assert spec.source.marks[("name",)].file == f"e{MAX_EXTENDS}.yaml"


# ---------------------------------------------------------------------------- item 10: depth

class _CountingPyLoader(_yaml._PyLoader):  # type: ignore[misc, valid-type]
    """The pure-Python parser, counting the collections it opens."""

    opened = 0

    def get_event(self) -> Any:
        event = super().get_event()
        if isinstance(event, (SequenceStartEvent, MappingStartEvent)):
            _CountingPyLoader.opened += 1
        return event


@pytest.mark.parametrize("text", [
    # libyaml refuses the 1.3 directive at once; the pure-Python parser accepts it and went on
    # through all 10,000 levels to find a clearer message (10 s with PyYAML 6.0.3)
    "%YAML 1.3\n---\na: " + "[" * 10_000 + "]" * 10_000 + "\n",
    "%YAML 1.3\n---\na: " + "{a: " * 5_000 + "1" + "}" * 5_000 + "\n",
], ids=["flow-sequences", "flow-mappings"])
def test_a_syntax_error_in_a_deep_file_is_not_re_parsed_in_python(
        monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr(_yaml, "_PyLoader", _CountingPyLoader)
    _CountingPyLoader.opened = 0
    with pytest.raises(SpecError) as info:
        _yaml.load(text, "bad.yaml", {})
    assert info.value.render() == "bad.yaml:1:1: YAML syntax error: found incompatible YAML document"
    assert _CountingPyLoader.opened <= _yaml.MAX_DEPTH + 1


class _NestingLimitedLoader(_yaml._Loader):  # type: ignore[misc, valid-type]
    """libyaml as PyYAML 6.0.4 ships it: it refuses flow nesting past 1,000 levels itself,
    before the first event, so the composer's bound never gets a say."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.refusal: yaml.MarkedYAMLError | None = None
        depth = 0
        for i, ch in enumerate(stream):
            depth += (ch in "[{") - (ch in "]}")
            if depth > 1000:
                line = stream.count("\n", 0, i)
                mark = yaml.Mark("<unicode string>", i, line, i - stream.rfind("\n", 0, i) - 1,
                                 None, None)
                self.refusal = yaml.scanner.ScannerError("while increasing flow level", mark,
                                                         "exceeded maximum nesting depth", mark)
                break

    def get_event(self) -> Any:
        if self.refusal is not None:
            raise self.refusal
        return super().get_event()

    def check_event(self, *choices: Any) -> Any:
        if self.refusal is not None:
            raise self.refusal
        return super().check_event(*choices)


@pytest.mark.parametrize("text,expected", [
    ("a: " + "[" * 10_000 + "]" * 10_000 + "\n",
     "bad.yaml:1:67: a[0][0][0][0][0][0][0]...: nesting deeper than 64 levels"),
    ("a: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n",
     "bad.yaml:1:256: a.a.a.a.a.a.a.a...: nesting deeper than 64 levels"),
    ("a:\n  # [ not counted\n  - '[[[[ nor this'\n  - [" + " [" * 10_000 + "\n",
     "bad.yaml:4:129: a[1][0][0][0][0][0][0]...: nesting deeper than 64 levels"),
], ids=["flow-sequences", "flow-mappings", "after-comments-and-quotes"])
def test_deep_nesting_is_refused_at_the_same_place_whatever_libyaml_does(
        monkeypatch: pytest.MonkeyPatch, text: str, expected: str) -> None:
    monkeypatch.setattr(_yaml, "_Loader", _NestingLimitedLoader)
    monkeypatch.setattr(_yaml, "_PyLoader", _CountingPyLoader)
    _CountingPyLoader.opened = 0
    with pytest.raises(SpecError) as info:
        _yaml.load(text, "bad.yaml", {})
    assert info.value.render() == expected
    assert _CountingPyLoader.opened <= _yaml.MAX_DEPTH + 1


@pytest.mark.parametrize("text", [
    "a: |\n  " + "[" * 200 + "\n  {{{{\nb: 1\n",                 # a literal block scalar
    "a: >-\n    " + "{" * 200 + "\n\n    more\nb: 1\n",           # a folded one, blank line
    "a: '" + "[" * 200 + "'\nb: \"" + "{" * 200 + "\\\"\"\n",    # quoted, with escapes
    "a: x[" + "[" * 200 + "\nb: 1\n",                             # inside a plain scalar
    "a: 1 # " + "[" * 200 + "\nb: 1\n",                           # a comment
    "- - - - [[ [ {a: [[1]]}]]]\n- k: v\n  l: [[2]]\n",            # shallow real nesting
], ids=["literal", "folded", "quoted", "plain", "comment", "shallow"])
def test_brackets_in_text_do_not_count_as_nesting(text: str) -> None:
    assert _yaml._too_deep_at(text) is None
    _yaml.load(text, "ok.yaml", {})


def test_block_nesting_is_found_by_the_pre_scan() -> None:
    text = "".join(" " * i + "k:\n" for i in range(100))
    cut = _yaml._too_deep_at(text)
    assert cut is not None and text[:cut].endswith(" " * 64 + "k:")
    with pytest.raises(SpecError) as info:
        _yaml.load(text, "bad.yaml", {})
    assert info.value.render().startswith("bad.yaml:65:65: k.k.k.k.k.k.k.k...: nesting deeper")


# ---------------------------------------------------------------------------- item 7: paths

@pytest.mark.parametrize("key,section", [
    ("trace.path", "trace: {path: %s}"),
    ("checkpoint.path", "checkpoint: {path: %s}"),
    ("memory.path", "memory: {backend: sqlite, path: %s}"),
])
@pytest.mark.parametrize("target", ["../../x", "ABSOLUTE", "link/x.db"])
def test_output_paths_stay_inside_the_project_root(write: Write, project: Path, key: str,
                                                    section: str, target: str) -> None:
    outside = project.parent / "outside"
    (project / "link").symlink_to(outside)
    value = str(outside / "x.db") if target == "ABSOLUTE" else target
    path = write("bad.yaml", "model: {id: fake/x}\n" + section % value + "\n")
    col = section.index("path: ") + 1
    resolved = (project / value).resolve()
    why = " (through a symlink)" if target.startswith("link") else ""
    assert error_of(path) == (f"bad.yaml:2:{col}: {key}: path {value!r} leads to {resolved}, "
                              f"outside the project root {project}{why}; output paths are "
                              "relative to the current directory and may not leave it or the project")
    assert not list(outside.iterdir())


def test_a_relative_output_path_run_from_outside_the_project_stays_below_the_cwd(
        write: Write, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from another folder, a relative `.runner/traces` lands below that folder: the
    person's own choice of where to stand, so it loads; climbing out of it does not."""
    path = write("ok.yaml", "model: {id: fake/x}\ntrace: {path: .runner/traces}\n"
                            "checkpoint: {path: state/runs.db}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_spec(path, env={}).trace.path == ".runner/traces"
    bad = write("bad.yaml", "model: {id: fake/x}\ntrace: {path: ../up}\n")
    assert "may not leave it or the project" in error_of(bad)


def test_output_paths_inside_the_root_and_in_memory_databases_load(write: Write,
                                                                   project: Path) -> None:
    path = write("ok.yaml", "model: {id: fake/x}\ntrace: {path: logs/traces}\n"
                            f"checkpoint: {{path: '{project / 'state' / 'runs.db'}'}}\n"
                            "memory: {backend: sqlite, path: ':memory:'}\n")
    spec = resolve(load_spec(path, env={})).spec
    assert (spec.trace.path, spec.memory.model_extra) == ("logs/traces", {"path": ":memory:"})
    spec = load_spec(write("mem.yaml", "checkpoint: {path: ':memory:'}\n"), env={})
    assert spec.checkpoint.path == ":memory:"


def test_an_output_path_from_a_base_spec_names_the_base(write: Write, project: Path) -> None:
    write("base/common.yaml", "model: {id: fake/x}\ntrace:\n  path: ../../t\n")
    path = write("child.yaml", "extends: base/common.yaml\n")
    assert error_of(path).startswith("base/common.yaml:3:3: trace.path: path '../../t' leads to ")


def test_the_callers_own_set_may_put_output_elsewhere(write: Write, project: Path) -> None:
    """--set is the person at the terminal choosing, not the spec: it is not confined."""
    elsewhere = project.parent / "outside" / "traces"
    spec = load_spec(write("ok.yaml", "model: {id: fake/x}\n"), [f"trace.path={elsewhere}"],
                     env={})
    assert spec.trace.path == str(elsewhere)


@pytest.mark.parametrize("override", ["trace.path={}", "trace={{path: {}}}"])
def test_set_values_are_confined_on_request(write: Write, project: Path, override: str) -> None:
    """A test file's `set:` is not the caller's choice: its loader asks for them checked."""
    from runner.spec.load import output_path_problems

    elsewhere = project.parent / "outside" / "traces"
    spec = load_spec(write("ok.yaml", "model: {id: fake/x}\n"), [override.format(elsewhere)],
                     env={})
    assert output_path_problems(spec) == []
    assert [p.render() for p in output_path_problems(spec, confine_set=True)] == [(
        f"--set: trace.path: path {str(elsewhere)!r} leads to {elsewhere}, outside the project "
        f"root {project}; output paths are relative to the current directory and may not leave it or the project")]


def test_a_default_output_path_through_a_symlink_out_is_refused(write: Write,
                                                                project: Path) -> None:
    (project / ".runner").symlink_to(project.parent / "outside")
    path = write("bad.yaml", "model: {id: fake/x}\n")
    trace, checkpoint = errors_of(path)
    assert trace.startswith("bad.yaml:1:1: trace.path: path '.runner/traces' leads to ")
    assert checkpoint.startswith("bad.yaml:1:1: checkpoint.path: path '.runner/runs.db' leads to ")
    assert trace.endswith(" (through a symlink); output paths are relative to the current "
                          "directory and may not leave it or the project")
    assert len(load_spec(write("off.yaml", "trace: {enabled: false}\n"
                                           "checkpoint: {enabled: false}\n"), env={}).tools) == 0


def test_validate_refuses_an_output_path_outside_the_root(write: Write, project: Path) -> None:
    write("bad.yaml", "model: {id: fake/x}\ncheckpoint:\n  path: /tmp/../etc/runs.db\n")
    proc = run_cli("validate", "bad.yaml", cwd=project)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == (f"bad.yaml:3:3: checkpoint.path: path '/tmp/../etc/runs.db' leads to "
                           f"/etc/runs.db, outside the project root {project}; output paths are "
                           "relative to the current directory and may not leave it or the project\n")


# ---------------------------------------------------------------------------- item 1: the helper

def test_confined_resolves_inside_the_root_and_refuses_the_rest(project: Path) -> None:
    outside = project.parent / "outside"
    (project / "sub").mkdir()
    (project / "sub" / "out").symlink_to(outside)
    assert locate.confined(project, project / "sub", "rec/a.jsonl") == project / "sub" / "rec" / "a.jsonl"
    assert locate.confined(project, project / "sub", str(project / "x")) == project / "x"
    for rel in ("../../x", str(outside / "x"), "out/x", os.fspath(Path("out"))):
        with pytest.raises(ValueError, match="outside the project root"):
            locate.confined(project, project / "sub", rel)
