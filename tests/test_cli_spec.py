"""Bad specs through the command line, as a user meets them: exit code 2, one line
`path:line:col: key.path: reason`, no traceback, nothing run. Also `validate` on a folder,
`schema`, `explain` (secrets masked, --set) and the promise that these never import LiteLLM."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from runner.plugins import registry

from conftest import ROOT, run_cli

CANARY = "sk-canary-5e0c4d1a9b"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project root (pyproject.toml marks it) that the CLI runs in."""
    monkeypatch.delenv("RUNNER_ROOT", raising=False)
    monkeypatch.delenv("SOME_API_KEY", raising=False)
    (tmp_path / "pyproject.toml").write_text("")
    return tmp_path


def write_files(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def one_spec_error(proc: subprocess.CompletedProcess[str], stream: str) -> str:
    """The single problem line of a SPEC outcome (exit 2, no traceback)."""
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = getattr(proc, stream).splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def validate_error(root: Path, spec: str, env: dict[str, str] | None = None) -> str:
    proc = run_cli("validate", spec, cwd=root, env=env)
    assert proc.stderr == "1 spec checked, 1 problem\n"
    return one_spec_error(proc, "stdout")


def run_error(root: Path, spec: str, env: dict[str, str] | None = None) -> str:
    """`runner run` on a bad spec: nothing runs, the answer stream stays empty."""
    proc = run_cli("run", spec, "What is 2+2?", cwd=root, env=env)
    assert proc.stdout == ""
    return one_spec_error(proc, "stderr")


def _available(kind: str) -> str:
    """What plugins provide; for models, those not of LiteLLM's family (counted apart)."""
    return ", ".join(sorted(n for n, r in getattr(registry(), kind).items()
                            if n and not r.family))


# (files, expected line); {root} is the project root, {tools} / {memory} what is installed.
CASES: dict[str, tuple[dict[str, str], str]] = {
    "syntax-error": (
        {"bad.yaml": "name: agent\n  model: x\n"},
        "bad.yaml:2:8: YAML syntax error: mapping values are not allowed here"),
    "tab-indentation": (
        {"bad.yaml": "model:\n\tid: fake/x\n"},
        "bad.yaml:2:1: YAML syntax error: found character '\\t' that cannot start any token "
        "(while scanning for the next token); indent with spaces, not tabs"),
    "unclosed-quote": (
        {"bad.yaml": 'name: agent\ndescription: "adds numbers\nmodel: {id: fake/x}\n'},
        "bad.yaml:4:1: YAML syntax error: found unexpected end of stream (while scanning a "
        "quoted scalar started at line 2, column 14)"),
    "unknown-key": (
        {"bad.yaml": "name: agent\nmodel:\n  id: fake/x\n  temprature: 0.2\n"},
        "bad.yaml:4:3: model.temprature: unknown key 'temprature' (did you mean 'temperature'?)"),
    "max-iterations-string": (
        {"bad.yaml": 'model: {id: fake/x}\nloop:\n  max_iterations: "ten"\n'},
        "bad.yaml:3:3: loop.max_iterations: should be a valid integer"),
    "max-iterations-negative": (
        {"bad.yaml": "model: {id: fake/x}\nloop:\n  max_iterations: -1\n"},
        "bad.yaml:3:3: loop.max_iterations: should be greater than or equal to 1"),
    "max-iterations-bool": (
        {"bad.yaml": "model: {id: fake/x}\nloop:\n  max_iterations: true\n"},
        "bad.yaml:3:3: loop.max_iterations: should be a valid integer"),
    "duplicate-key": (
        {"bad.yaml": "name: agent\nmodel: {id: fake/x}\nname: other\n"},
        "bad.yaml:3:1: name: duplicate key 'name' (first at line 1)"),
    "yaml11-no-in-bool-field": (
        {"bad.yaml": "model:\n  id: fake/x\n  stream: no\n"},
        "bad.yaml:3:3: model.stream: should be a valid boolean"),
    "yaml11-on-in-bool-field": (
        {"bad.yaml": "model:\n  id: fake/x\n  stream: on\n"},
        "bad.yaml:3:3: model.stream: should be a valid boolean"),
    "yaml11-octal-in-int-field": (
        {"bad.yaml": "model: {id: fake/x}\nloop:\n  max_iterations: 0755\n"},
        "bad.yaml:3:3: loop.max_iterations: should be a valid integer"),
    "unknown-tool": (
        {"bad.yaml": "model: {id: fake/x}\ntools:\n  - calculator\n  - calculatr\n"},
        "bad.yaml:4:5: tools[1]: unknown tool 'calculatr' (did you mean 'calculator'?); "
        "available: {tools}"),
    "unknown-memory-backend": (
        {"bad.yaml": "model: {id: fake/x}\nmemory:\n  backend: sqlit\n"},
        "bad.yaml:3:3: memory.backend: unknown memory backend 'sqlit' (did you mean 'sqlite'?); "
        "available: none, {memory}"),
    "sub-agent-cycle": (
        {"bad.yaml": "name: a\nmodel: {id: fake/x}\ntools:\n  - agent: helper.yaml\n",
         "helper.yaml": "name: b\nmodel: {id: fake/x}\ntools:\n  - calculator\n  - agent: bad.yaml\n"},
        "helper.yaml:5:5: tools[1].agent: sub-agent cycle: bad.yaml -> helper.yaml -> bad.yaml"),
    "template-escape": (
        {"bad.yaml": "model: {id: fake/x}\nprompt:\n  template: ../../etc/passwd\n"},
        "bad.yaml:3:3: prompt.template: path '../../etc/passwd' escapes the project root {root}"),
    "extends-escape": (
        {"bad.yaml": "extends: ../../etc/passwd\nmodel: {id: fake/x}\n"},
        "bad.yaml:1:1: extends: path '../../etc/passwd' escapes the project root {root}"),
    "extends-cycle": (
        {"bad.yaml": "extends: base.yaml\nmodel: {id: fake/x}\n", "base.yaml": "extends: bad.yaml\n"},
        "base.yaml:1:1: extends: extends cycle: bad.yaml -> base.yaml -> bad.yaml"),
    "error-in-extends-base": (
        {"bad.yaml": "extends: base.yaml\nname: child\n",
         "base.yaml": "name: base\nmodel:\n  id: fake/x\n  temperature: 9\n"},
        "base.yaml:4:3: model.temperature: should be less than or equal to 2"),
    "nested-list-item": (
        {"bad.yaml": "model: {id: fake/x}\ntools:\n  - calculator\n  - calculator:\n"
                     "      name: calc2\n      timeout_s: fast\n"},
        "bad.yaml:6:7: tools[1].calculator.timeout_s: should be a valid number"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_spec_is_one_located_line_and_exit_2(project: Path, case: str) -> None:
    files, expected = CASES[case]
    write_files(project, files)
    expected = expected.format(root=project.resolve(), tools=_available("tools"),
                               memory=_available("memory"))
    assert validate_error(project, "bad.yaml") == expected
    assert run_error(project, "bad.yaml") == expected


def test_unknown_model_provider_lists_what_is_available(project: Path) -> None:
    write_files(project, {"bad.yaml": "model:\n  id: anthropc/claude-x\n"})
    line = validate_error(project, "bad.yaml")
    assert line.startswith(f"bad.yaml:2:3: model.id: unknown model provider 'anthropc' (did you "
                           f"mean 'anthropic'?); plugins provide: {_available('models')}; "
                           f"LiteLLM knows "), line


def test_yaml11_words_stay_strings_in_string_fields(project: Path) -> None:
    write_files(project, {"ok.yaml": "name: agent\ndescription: no\nmodel: {id: fake/x}\n"
                                     "prompt:\n  variables:\n    switch: on\n    mode: 0755\n"})
    proc = run_cli("explain", "ok.yaml", cwd=project)
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)
    assert resolved["description"] == "no"
    assert resolved["prompt"]["variables"] == {"switch": "on", "mode": "0755"}


def test_python_tag_is_refused_and_never_executed(project: Path) -> None:
    marker = project / "pwned"
    write_files(project, {"bad.yaml": (f"name: agent\nmodel: {{id: fake/x}}\ndescription: "
                                       f"!!python/object/apply:os.system ['touch {marker}']\n")})
    expected = "bad.yaml:3:14: description: unsupported tag '!!python/object/apply:os.system'"
    assert validate_error(project, "bad.yaml") == expected
    assert run_error(project, "bad.yaml") == expected
    proc = run_cli("explain", "bad.yaml", cwd=project)
    assert one_spec_error(proc, "stderr") == expected
    assert not marker.exists()


BILLION_LAUGHS = "".join(
    [f"l0: &l0 [{', '.join(['lol'] * 9)}]\n"]
    + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10)])


# How long these refusals take is measured by bench/hostile_yaml.py, not asserted here.

def test_alias_bomb_is_refused(project: Path) -> None:
    write_files(project, {"bad.yaml": BILLION_LAUGHS})
    expected = "bad.yaml:6:5: l5: document expands to more than 100000 values (an alias bomb?)"
    assert validate_error(project, "bad.yaml") == expected
    assert run_error(project, "bad.yaml") == expected


def test_ten_thousand_deep_nesting_is_refused(project: Path) -> None:
    write_files(project, {"bad.yaml": "model: {id: fake/x}\nprompt:\n  variables: "
                                      + "[" * 10_000 + "]" * 10_000 + "\n"})
    expected = ("bad.yaml:3:76: prompt.variables[0][0][0][0][0][0]...: nesting deeper than 64 "
                "levels")
    assert validate_error(project, "bad.yaml") == expected
    assert run_error(project, "bad.yaml") == expected


def test_a_100_mb_file_is_refused(project: Path) -> None:
    path = project / "bad.yaml"
    chunk = ("description: " + "x" * 1000 + "\n").encode()
    with path.open("wb") as f:
        for _ in range(100 * 1024 * 1024 // len(chunk) + 1):
            f.write(chunk)
    size = path.stat().st_size
    assert size > 100 * 1024 * 1024
    expected = f"bad.yaml: file is {size} bytes; specs are limited to 262144"
    assert validate_error(project, "bad.yaml") == expected
    assert run_error(project, "bad.yaml") == expected


def test_missing_variable_is_named_and_no_value_is_printed(project: Path) -> None:
    write_files(project, {"bad.yaml": "name: agent\nmodel:\n  id: fake/x\n"
                                      "  options:\n    api_key: ${SOME_API_KEY}\n"
                                      "  api_base: ${RUNNER_TEST_UNSET_BASE}\n"})
    env = {"SOME_API_KEY": CANARY, "RUNNER_TEST_OTHER_TOKEN": CANARY + "-2"}
    expected = ("bad.yaml:6:13: model.api_base: environment variable RUNNER_TEST_UNSET_BASE is "
                "not set and has no default (write ${RUNNER_TEST_UNSET_BASE:-default} to give one)")
    for command in ("validate", "run", "explain"):
        args = ["run", "bad.yaml", "q"] if command == "run" else [command, "bad.yaml"]
        proc = run_cli(*args, cwd=project, env=env)
        assert one_spec_error(proc, "stdout" if command == "validate" else "stderr") == expected
        assert CANARY not in proc.stdout + proc.stderr


def test_a_secret_in_an_error_is_masked_by_validate(project: Path) -> None:
    write_files(project, {"bad.yaml": "model: {id: fake/x}\ntools:\n  - ${SOME_API_KEY}\n"})
    line = validate_error(project, "bad.yaml", env={"SOME_API_KEY": CANARY})
    assert CANARY not in line
    assert line.startswith("bad.yaml:3:5: tools[0]: unknown tool '***'")


# ---------------------------------------------------------------------------- validate

def test_validate_a_folder_reports_every_problem_and_a_count(project: Path) -> None:
    write_files(project, {
        "agents/good.yaml": "name: good\nmodel: {id: fake/x}\ntools: [calculator]\n",
        "agents/sub/helper.yml": "name: helper\nmodel: {id: fake/x}\n",
        "agents/typo.yaml": "name: typo\nmodel:\n  id: fake/x\n  temprature: 1\n",
        "agents/sub/tool.yaml": "name: tool\nmodel: {id: fake/x}\ntools:\n  - calculatr\n",
        "agents/syntax.yaml": "name: [unclosed\n",
    })
    proc = run_cli("validate", "agents", cwd=project)
    assert proc.returncode == 2
    assert proc.stdout.splitlines() == [
        "agents/sub/tool.yaml:4:5: tools[0]: unknown tool 'calculatr' (did you mean "
        f"'calculator'?); available: {_available('tools')}",
        "agents/syntax.yaml:2:1: YAML syntax error: expected ',' or ']', but got '<stream end>' "
        "(while parsing a flow sequence started at line 1, column 7)",
        "agents/typo.yaml:4:3: model.temprature: unknown key 'temprature' (did you mean "
        "'temperature'?)",
    ]
    assert proc.stderr == "5 specs checked, 3 problems\n"


def test_validate_good_specs_exits_0(project: Path) -> None:
    write_files(project, {"a.yaml": "model: {id: fake/x}\n", "b.yaml": "extends: a.yaml\nname: b\n"})
    proc = run_cli("validate", "a.yaml", "b.yaml", cwd=project)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "2 specs checked, 0 problems\n")


def test_validate_the_shipped_examples() -> None:
    proc = run_cli("validate", "agents/", cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == ""


# ---------------------------------------------------------------------------- schema, explain

def test_schema_is_json_schema_with_field_descriptions() -> None:
    proc = run_cli("schema")
    assert proc.returncode == 0, proc.stderr
    schema = json.loads(proc.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    temperature = schema["$defs"]["ModelSpec"]["properties"]["temperature"]
    assert temperature["description"] == "Sampling temperature; null leaves the provider's default."
    validator = jsonschema.Draft202012Validator(schema)
    assert not list(validator.iter_errors({"loop": {"max_iterations": 3}}))
    assert list(validator.iter_errors({"loop": {"max_iterations": "ten"}}))


def test_explain_masks_a_secret_from_the_environment(project: Path) -> None:
    write_files(project, {"ok.yaml": "name: agent\ndescription: calls with ${SOME_API_KEY}\n"
                                     "model:\n  id: fake/x\n  options:\n    api_key: ${SOME_API_KEY}\n"
                                     "    extra_header: 'Bearer ${SOME_API_KEY}'\n"})
    proc = run_cli("explain", "ok.yaml", cwd=project, env={"SOME_API_KEY": CANARY})
    assert proc.returncode == 0, proc.stderr
    assert CANARY not in proc.stdout + proc.stderr
    resolved = yaml.safe_load(proc.stdout)
    assert resolved["description"] == "calls with ***"
    assert resolved["model"]["options"] == {"api_key": "***", "extra_header": "Bearer ***"}


def test_explain_applies_typed_set_overrides(project: Path) -> None:
    write_files(project, {"ok.yaml": "name: agent\nmodel: {id: fake/x}\nloop:\n  max_iterations: 8\n"})
    proc = run_cli("explain", "ok.yaml", "--set", "loop.max_iterations=3", "--set",
                   "model.temperature=0.5", "--set", "model.stream=true", "--set",
                   "description=no", cwd=project)
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)
    assert resolved["loop"]["max_iterations"] == 3
    assert resolved["model"]["temperature"] == 0.5 and resolved["model"]["stream"] is True
    assert resolved["description"] == "no"


@pytest.mark.parametrize("override,expected", [
    ("loop.max_iterations=ten", "--set: loop.max_iterations: should be a valid integer"),
    ("loop.max_iteratons=3",
     "--set: loop.max_iteratons: unknown key 'max_iteratons' (did you mean 'max_iterations'?)"),
    ("loop", "--set 'loop': expected KEY.PATH=VALUE, e.g. --set loop.max_iterations=3"),
])
def test_a_bad_set_override_is_a_spec_error(project: Path, override: str, expected: str) -> None:
    write_files(project, {"ok.yaml": "name: agent\nmodel: {id: fake/x}\n"})
    for args in (["explain", "ok.yaml"], ["run", "ok.yaml", "q"]):
        proc = run_cli(*args, "--set", override, cwd=project)
        assert proc.stdout == ""
        assert one_spec_error(proc, "stderr") == expected


# ---------------------------------------------------------------------------- import budget

_PROBE = """
import sys
from runner.cli import cli
try:
    cli.main(args=sys.argv[1:], standalone_mode=False)
except SystemExit:
    pass
print("LITELLM_IMPORTED=" + str("litellm" in sys.modules), file=sys.stderr)
"""


@pytest.mark.parametrize("args", [["--help"], ["validate", "agents/"], ["schema"], ["plugins"],
                                  ["tools", "agents/units.yaml"]],
                         ids=["help", "validate", "schema", "plugins", "tools"])
def test_light_commands_never_import_litellm(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert (proc.stdout + proc.stderr).count("\n") > 1, "the command printed nothing"
    assert proc.stderr.splitlines()[-1] == "LITELLM_IMPORTED=False"


_MAIN_PROBE = """
import os, sys
real_exit = os._exit
def probe(code):
    heavy = [m for m in ("litellm", "pydantic", "jinja2", "runner.tools", "runner.spec")
             if m in sys.modules]
    print("HEAVY=" + ",".join(heavy), file=sys.stderr)
    real_exit(code)
os._exit = probe
sys.argv = ["runner", "--help"]
from runner.cli import main
main()
"""


def test_help_through_the_entry_point_imports_nothing_heavy() -> None:
    """`runner --help` (the console script's main(), exit path included) stays fast."""
    proc = subprocess.run([sys.executable, "-c", _MAIN_PROBE], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "Usage:" in proc.stdout, proc.stderr
    assert proc.stderr.splitlines()[-1] == "HEAVY="


def test_runner_tools_lists_what_the_model_gets_and_where_it_comes_from(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "work").mkdir()
    spec = tmp_path / "a.yaml"
    spec.write_text("name: a\nmodel: {id: local/gemma-3-270m}\ntools:\n  - calculator\n"
                    "  - units: {name: convert}\n  - files: {root: work/}\n")
    proc = run_cli("tools", str(spec), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert list(rows) == ["calculator", "convert", "read_file", "list_files"]
    assert rows["calculator"]["from"] == "built-in"
    assert rows["convert"]["from"].startswith("plugin units (runner-units ")
    assert rows["convert"]["entry"] == "tools[1]: units"
    assert rows["read_file"]["entry"] == rows["list_files"]["entry"] == "tools[2]: files"
    assert rows["read_file"]["parameters"]["required"] == ["path"]
    assert "expression" in rows["calculator"]["parameters"]["properties"]
    shown = run_cli("tools", str(spec), cwd=tmp_path)
    assert shown.stdout.startswith("calculator  (built-in; tools[0]: calculator)\n  Evaluates ")
    bad = run_cli("tools", str(spec), "--set", "tools=[nope]", cwd=tmp_path)
    assert bad.returncode == 2 and "unknown tool 'nope'" in bad.stderr
