"""Loading specs in-process: YAML safety and typing, line:col of errors, `${VAR}`, `extends:`,
`--set`, plugin checks, validate_paths and the JSON Schema. The CLI side is in test_cli_spec.py."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Callable

import jsonschema
import pytest
import yaml

from runner.spec import _yaml
from runner.errors import SpecError, SpecErrors
from runner.plugins import registry
from runner.api import validate_paths
from runner.resolve import resolve
from runner.spec import COMMON_TOOL_KEYS, AgentSpec, explain, json_schema, load_spec

from conftest import ROOT

Write = Callable[[str, str], Path]
CANARY = "sk-canary-3b1f9e77d2"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project root (pyproject.toml marks it) that is also the working directory;
    it is a folder of tmp_path, so that files "outside the root" are still under tmp_path."""
    monkeypatch.delenv("RUNNER_ROOT", raising=False)
    root = tmp_path / "proj"
    root.mkdir()
    (root / "pyproject.toml").write_text("")
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def write(project: Path) -> Write:
    def write(name: str, text: str) -> Path:
        path = project / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path
    return write


def errors_of(path: Path, overrides: list[str] | None = None,
              env: dict[str, str] | None = None) -> list[str]:
    """The rendered problems of loading `path` (fails the test if it loads)."""
    with pytest.raises(SpecError) as info:
        resolve(load_spec(path, overrides or [], env={} if env is None else env))
    exc = info.value
    return [e.render() for e in exc.errors] if isinstance(exc, SpecErrors) else [exc.render()]


def error_of(path: Path, overrides: list[str] | None = None,
             env: dict[str, str] | None = None) -> str:
    errors = errors_of(path, overrides, env)
    assert len(errors) == 1, errors
    return errors[0]


def load(path: Path, overrides: list[str] | None = None,
         env: dict[str, str] | None = None) -> AgentSpec:
    return resolve(load_spec(path, overrides or [], env={} if env is None else env)).spec


# ---------------------------------------------------------------------------- YAML syntax

@pytest.mark.parametrize("text,expected", [
    ("name: agent\n  model: x\n",
     "bad.yaml:2:8: YAML syntax error: mapping values are not allowed here"),
    ("model:\n\tid: fake/x\n",
     "bad.yaml:2:1: YAML syntax error: found character '\\t' that cannot start any token "
     "(while scanning for the next token); indent with spaces, not tabs"),
    ('name: "agent\nmodel: {}\n',
     "bad.yaml:3:1: YAML syntax error: found unexpected end of stream (while scanning a quoted "
     "scalar started at line 1, column 7)"),
    ("tools: [calculator\n",
     "bad.yaml:2:1: YAML syntax error: expected ',' or ']', but got '<stream end>' (while "
     "parsing a flow sequence started at line 1, column 8)"),
], ids=["mapping-in-scalar", "tab", "unclosed-quote", "unclosed-flow"])
def test_yaml_syntax_errors_point_at_the_parsers_mark(write: Write, text: str, expected: str) -> None:
    assert error_of(write("bad.yaml", text)) == expected


def test_a_second_document_is_refused(write: Write) -> None:
    path = write("bad.yaml", "name: a\n---\nname: b\n")
    assert error_of(path) == "bad.yaml:2:1: a spec is one YAML document; found a second one (---)"


def test_a_spec_must_be_a_mapping(write: Write) -> None:
    assert error_of(write("bad.yaml", "- calculator\n")) == \
        "bad.yaml:1:1: a spec must be a mapping of keys to values"


def test_an_empty_file_is_a_spec_with_defaults(write: Write) -> None:
    spec = load(write("empty.yaml", "# nothing yet\n"), ["model.id=fake/x"])
    assert spec.name == "agent" and spec.tools == []


def test_non_utf8_file_is_a_spec_error(write: Write, project: Path) -> None:
    path = project / "latin1.yaml"
    path.write_bytes("description: caf\xe9\n".encode("latin-1"))
    assert error_of(path) == "latin1.yaml: not UTF-8 text (invalid continuation byte at byte 16)"


def test_missing_file_and_directory_are_spec_errors(project: Path) -> None:
    assert error_of(project / "nope.yaml") == "nope.yaml: no such file"
    (project / "dir.yaml").mkdir()
    assert error_of(project / "dir.yaml") == "dir.yaml: not a regular file"


# ---------------------------------------------------------------------------- keys and types

def test_unknown_key_suggests_the_close_one(write: Write) -> None:
    path = write("bad.yaml", "name: a\nmodel:\n  id: fake/x\n  temprature: 0.2\n")
    assert error_of(path) == \
        "bad.yaml:4:3: model.temprature: unknown key 'temprature' (did you mean 'temperature'?)"


def test_unknown_key_without_a_close_one_lists_the_allowed_keys(write: Write) -> None:
    path = write("bad.yaml", "loop:\n  zzz: 1\n")
    assert error_of(path) == ("bad.yaml:2:3: loop.zzz: unknown key 'zzz'; allowed: style, "
                              "max_iterations, max_parse_errors, max_observation_chars, "
                              "tool_timeout_s, max_repeats, approve, check_answer")


def test_unknown_key_uses_the_yaml_name_of_aliased_fields(write: Write) -> None:
    path = write("bad.yaml", "output:\n  json_schema: {type: object}\n")
    assert errors_of(path) == [
        "bad.yaml:1:1: output.schema: missing required key",
        "bad.yaml:2:3: output.json_schema: unknown key 'json_schema' (did you mean 'schema'?)"]


@pytest.mark.parametrize("value,reason", [
    ('"ten"', "should be a valid integer"),
    ("ten", "should be a valid integer"),
    ("-1", "should be greater than or equal to 1"),
    ("0", "should be greater than or equal to 1"),
    ("true", "should be a valid integer"),
    ("8.5", "should be a valid integer"),
    ("1001", "should be less than or equal to 1000"),
])
def test_max_iterations_type_and_range(write: Write, value: str, reason: str) -> None:
    path = write("bad.yaml", f"name: a\nloop:\n  max_iterations: {value}\n")
    assert error_of(path) == f"bad.yaml:3:3: loop.max_iterations: {reason}"


def test_literal_fields_name_the_choices(write: Write) -> None:
    path = write("bad.yaml", "loop:\n  style: reakt\n")
    assert error_of(path) == "bad.yaml:2:3: loop.style: must be 'react', 'tools' or 'auto'"


def test_a_null_section_must_be_a_mapping(write: Write) -> None:
    assert error_of(write("bad.yaml", "model:\n")) == "bad.yaml:1:1: model: should be a mapping"


def test_duplicate_key_is_refused_with_both_lines(write: Write) -> None:
    path = write("bad.yaml", "name: a\nmodel:\n  id: fake/x\n  id: fake/y\n")
    assert error_of(path) == "bad.yaml:4:3: model.id: duplicate key 'id' (first at line 3)"


def test_errors_in_nested_keys_and_list_items_have_exact_line_and_column(write: Write) -> None:
    path = write("bad.yaml", """\
name: a
model:
  id: fake/x
tools:
  - calculator
  - calculator:
      name: calc2
      timeout_s: -5
  - agent: sub.yaml
  - serch
""")
    write("sub.yaml", "name: sub\nmodel: {id: fake/x}\n")
    assert errors_of(path) == [
        "bad.yaml:8:7: tools[1].calculator.timeout_s: should be greater than 0",
        f"bad.yaml:10:5: tools[3]: unknown tool 'serch' (did you mean 'search'?); available: "
        f"{', '.join(sorted(registry().tools))}",
    ]


def test_several_problems_are_reported_together(write: Write) -> None:
    path = write("bad.yaml", "name: bad name\nloop: {max_iterations: 0, style: x}\nbudget: {tokens: -1}\n")
    assert errors_of(path) == [
        "bad.yaml:1:1: name: should match pattern '^[A-Za-z0-9_.-]+$'",
        "bad.yaml:2:27: loop.style: must be 'react', 'tools' or 'auto'",
        "bad.yaml:2:8: loop.max_iterations: should be greater than or equal to 1",
        "bad.yaml:3:10: budget.tokens: should be greater than or equal to 1",
    ]


def test_a_tool_entry_that_is_neither_name_nor_mapping(write: Write) -> None:
    path = write("bad.yaml", "tools:\n  - calculator\n  - 42\n")
    assert error_of(path) == ("bad.yaml:3:5: tools[1]: a tool is a name (- calculator) or a "
                              "mapping with one key (- search: {path: kb/})")


def test_tool_options_list_what_is_allowed(write: Write) -> None:
    path = write("bad.yaml", "model: {id: fake/x}\ntools:\n  - calculator: {bogus: 1}\n"
                             "  - calculator: {timout_s: 2, name: c2}\n")
    assert errors_of(path) == [
        "bad.yaml:3:18: tools[0].calculator.bogus: unknown key 'bogus'; allowed: "
        + ", ".join(sorted(COMMON_TOOL_KEYS)),
        "bad.yaml:4:18: tools[1].calculator.timout_s: unknown key 'timout_s' "
        "(did you mean 'timeout_s'?)",
    ]


def test_memory_backend_options_are_checked(write: Write) -> None:
    path = write("bad.yaml", "model: {id: fake/x}\nmemory:\n  backend: sqlite\n  pth: m.db\n")
    assert error_of(path) == "bad.yaml:4:3: memory.pth: unknown key 'pth' (did you mean 'path'?)"


# ---------------------------------------------------------------------------- YAML 1.1 traps

def test_yaml11_words_and_octals_stay_strings_in_string_fields(write: Write) -> None:
    path = write("ok.yaml", """\
name: "0755"
description: no
model:
  id: fake/x
prompt:
  variables: {a: yes, b: no, c: on, d: off, e: 0755, f: 2024-01-02, g: 0o17, h: 1_000, y: n}
""")
    spec = load(path)
    assert spec.description == "no"
    assert spec.prompt.variables == {"a": "yes", "b": "no", "c": "on", "d": "off", "e": "0755",
                                     "f": "2024-01-02", "g": "0o17", "h": "1_000", "y": "n"}


def test_yaml12_core_types_are_typed(write: Write) -> None:
    path = write("ok.yaml", "model: {id: fake/x}\nprompt:\n  variables: {a: true, b: False, "
                            "c: 10, d: -3, e: 0x1F, f: 1.5, g: 1e3, h: .inf, i: null, j: ~, k: 0}\n")
    v = load(path).prompt.variables
    assert v == {"a": True, "b": False, "c": 10, "d": -3, "e": 31, "f": 1.5, "g": 1000.0,
                 "h": float("inf"), "i": None, "j": None, "k": 0}


@pytest.mark.parametrize("field,value", [
    ("model.stream", "no"), ("model.stream", "on"), ("model.stream", "yes"), ("model.stream", "off"),
    ("model.stream", "0"),
])
def test_yaml11_booleans_in_a_bool_field_are_errors_not_false(write: Write, field: str, value: str) -> None:
    section, key = field.split(".")
    path = write("bad.yaml", f"{section}:\n  {key}: {value}\n")
    assert error_of(path) == f"bad.yaml:2:3: {field}: should be a valid boolean"


def test_octal_looking_number_in_an_int_field_is_an_error_not_493(write: Write) -> None:
    path = write("bad.yaml", "loop:\n  max_iterations: 0755\n")
    assert error_of(path) == "bad.yaml:2:3: loop.max_iterations: should be a valid integer"


@pytest.mark.parametrize("text,expected", [
    ("loop:\n  max_iterations: !!int ten\n",
     "bad.yaml:2:19: loop.max_iterations: 'ten' is not a valid !!int"),
    ("model:\n  stream: !!bool yes\n", "bad.yaml:2:11: model.stream: 'yes' is not a valid !!bool"),
    ("model:\n  temperature: !!float warm\n",
     "bad.yaml:2:16: model.temperature: 'warm' is not a valid !!float"),
    ("description: !!null nothing\n", "bad.yaml:1:14: description: 'nothing' is not a valid !!null"),
])
def test_explicit_core_tags_must_fit_their_value(write: Write, text: str, expected: str) -> None:
    assert error_of(write("bad.yaml", text)) == expected


def test_explicit_core_tags_that_fit(write: Write) -> None:
    path = write("ok.yaml", "name: !!str 0755\ndescription: !!str 12\nmodel:\n  id: fake/x\n"
                            "  temperature: !!float 1\n  max_tokens: !!int '64'\n")
    spec = load(path)
    assert (spec.name, spec.description, spec.model.temperature, spec.model.max_tokens) == \
        ("0755", "12", 1.0, 64)


# ---------------------------------------------------------------------------- hostile YAML

@pytest.mark.parametrize("tagged", [
    "!!python/object/apply:os.system ['touch {marker}']",
    "!!python/object/apply:os.system\n  - touch {marker}",
    "!!python/object/new:os.system ['touch {marker}']",
    "!!python/name:os.system",
    "!<tag:yaml.org,2002:python/object/apply:os.system> ['touch {marker}']",
])
def test_python_tags_are_refused_and_never_executed(write: Write, project: Path, tagged: str) -> None:
    marker = project / "pwned"
    path = write("bad.yaml", "description: " + tagged.format(marker=marker) + "\n")
    problem = error_of(path)
    assert problem.startswith("bad.yaml:1:14: description: unsupported tag '!!python/"), problem
    assert not marker.exists()


def test_python_tag_on_a_key_is_refused(write: Write, project: Path) -> None:
    marker = project / "pwned"
    path = write("bad.yaml", f"? !!python/object/apply:os.system ['touch {marker}']\n: 1\n")
    assert error_of(path) == "bad.yaml:1:3: unsupported tag '!!python/object/apply:os.system'"
    assert not marker.exists()


def test_local_and_set_tags_are_refused(write: Write) -> None:
    assert error_of(write("bad.yaml", "description: !Ref other\n")) == \
        "bad.yaml:1:14: description: unsupported tag '!Ref'"
    assert error_of(write("bad.yaml", "prompt:\n  variables: !!set {a, b}\n")) == \
        "bad.yaml:2:14: prompt.variables: unsupported tag '!!set'"


def test_merge_keys_are_refused(write: Write) -> None:
    path = write("bad.yaml", "model: &m {id: fake/x}\nprompt:\n  <<: *m\n")
    assert error_of(path) == \
        "bad.yaml:3:3: prompt: merge keys (<<) are not supported; use extends: instead"


BILLION_LAUGHS = "".join(
    [f"l0: &l0 [{', '.join(['lol'] * 9)}]\n"]
    + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10)])


# How long the refusals below take is measured by bench/hostile_yaml.py, not asserted here.

def test_alias_bomb_is_refused_without_expanding(write: Write) -> None:
    problem = error_of(write("bad.yaml", BILLION_LAUGHS))
    # l5 is the first level past 100,000 values (9**6 > 100,000 > 9**5).
    assert problem == "bad.yaml:6:5: l5: document expands to more than 100000 values (an alias bomb?)"


def test_an_alias_inside_its_own_anchor_is_refused(write: Write) -> None:
    assert error_of(write("bad.yaml", "a: &a [1, *a]\n")) == \
        "bad.yaml:1:11: a[1]: alias *a refers to a collection that contains it"


def test_undefined_alias_is_refused(write: Write) -> None:
    assert error_of(write("bad.yaml", "description: *nope\n")) == \
        "bad.yaml:1:14: description: alias *nope has no anchor &nope before it"


def test_moderate_aliases_still_work(write: Write) -> None:
    path = write("ok.yaml", "model: {id: fake/x}\nprompt:\n  variables:\n    a: &x [1, 2]\n    b: *x\n")
    assert load(path).prompt.variables == {"a": [1, 2], "b": [1, 2]}


@pytest.mark.parametrize("text,expected", [
    ("a: " + "[" * 10_000 + "]" * 10_000 + "\n",
     "bad.yaml:1:67: a[0][0][0][0][0][0][0]...: nesting deeper than 64 levels"),
    ("a: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n",
     "bad.yaml:1:256: a.a.a.a.a.a.a.a...: nesting deeper than 64 levels"),
], ids=["flow-sequences", "flow-mappings"])
def test_ten_thousand_deep_nesting_is_refused(write: Write, text: str, expected: str) -> None:
    assert error_of(write("bad.yaml", text)) == expected


def test_nesting_through_aliases_is_bounded_too(write: Write) -> None:
    """40 levels behind an alias, used 30 levels deep: each part is fine, the value is not."""
    path = write("bad.yaml", "a: &a " + "[" * 40 + "]" * 40 + "\n"
                             "b: " + "[" * 30 + "*a" + "]" * 30 + "\n")
    assert error_of(path) == "bad.yaml:2:9: b[0][0][0][0][0]: nesting deeper than 64 levels"


def test_a_100_mb_file_is_refused_before_reading(write: Write, project: Path) -> None:
    path = project / "big.yaml"
    chunk = ("k: " + "x" * 1000 + "\n").encode()
    with path.open("wb") as f:
        for _ in range(100 * 1024 * 1024 // len(chunk) + 1):
            f.write(chunk)
    assert path.stat().st_size > 100 * 1024 * 1024
    problem = error_of(path)
    assert problem == f"big.yaml: file is {path.stat().st_size} bytes; specs are limited to 262144"


def test_many_small_values_are_bounded(write: Write) -> None:
    path = write("bad.yaml", "a: [" + "1," * 120_000 + "]\n")
    problem = error_of(path)
    assert problem == "bad.yaml:1:199999: a[99997]: document has more than 100000 values"


def test_yaml_module_limits_are_what_the_docs_say() -> None:
    assert (_yaml.MAX_BYTES, _yaml.MAX_DEPTH, _yaml.MAX_NODES, _yaml.MAX_CHARS) == \
        (256 * 1024, 64, 100_000, 1_000_000)
    with pytest.raises(SpecError, match="larger than 262144 bytes"):
        _yaml.load("a: 1\n" * 60_000, "x.yaml", {})


# ---------------------------------------------------------------------------- ${VAR}

def test_missing_variable_names_it_and_never_prints_a_value(write: Write) -> None:
    path = write("bad.yaml", "model:\n  id: fake/x\n  api_base: ${RUNNER_TEST_MISSING}\n"
                             "  options: {api_key: '${CANARY_API_KEY}'}\n")
    problem = error_of(path, env={"CANARY_API_KEY": CANARY, "OTHER": CANARY})
    assert problem == ("bad.yaml:3:13: model.api_base: environment variable RUNNER_TEST_MISSING "
                       "is not set and has no default (write ${RUNNER_TEST_MISSING:-default} to "
                       "give one)")
    assert CANARY not in problem


def test_a_secret_that_lands_in_an_error_message_is_masked(write: Write) -> None:
    path = write("bad.yaml", "model: {id: fake/x}\ntools:\n  - ${CANARY_API_KEY}\n")
    problem = error_of(path, env={"CANARY_API_KEY": CANARY})
    assert CANARY not in problem
    assert problem.startswith("bad.yaml:3:5: tools[0]: unknown tool '***'; available: ")


@pytest.mark.parametrize("value,env,expected", [
    ("${N:-5}", {}, 5),
    ("${N:-0.25}", {}, 0.25),
    ("${N:-true}", {}, True),
    ("${N:-no}", {}, "no"),
    ("${N:-0755}", {}, "0755"),
    ("${N:-}", {}, None),
    ("'${N:-5}'", {}, "5"),
    ('"${N:-true}"', {}, "true"),
    ("${N}", {"N": "12"}, 12),
    ("'${N}'", {"N": "12"}, "12"),
    ("${N:-5}", {"N": ""}, 5),
    ("x${N:-5}", {}, "x5"),
    ("${N:-5}${N:-0}", {}, 50),
    ("$${N}", {"N": "12"}, "${N}"),
    ("'$${N} is ${N}'", {"N": "12"}, "${N} is 12"),
    ("$HOME", {}, "$HOME"),
    ("${N:-[1, 2]}", {}, "[1, 2]"),
])
def test_interpolation_types_plain_values_and_keeps_quoted_ones_strings(
        write: Write, value: str, env: dict[str, str], expected: Any) -> None:
    path = write("ok.yaml", f"model: {{id: fake/x}}\nprompt:\n  variables:\n    v: {value}\n")
    got = load(path, env=env).prompt.variables["v"]
    assert got == expected and type(got) is type(expected)


def test_interpolated_value_is_typed_for_its_field(write: Write) -> None:
    path = write("ok.yaml", "model:\n  id: ${RUNNER_TEST_MODEL:-fake/x}\n  temperature: ${T:-0.5}\n"
                            "loop:\n  max_iterations: ${ITER:-3}\n")
    spec = load(path, env={"ITER": "7"})
    assert (spec.model.id, spec.model.temperature, spec.loop.max_iterations) == ("fake/x", 0.5, 7)
    problem = error_of(path, env={"ITER": "seven"})
    assert problem == "ok.yaml:5:3: loop.max_iterations: should be a valid integer"


def test_interpolation_is_not_recursive_and_not_yaml(write: Write) -> None:
    path = write("ok.yaml", "model: {id: fake/x}\ndescription: ${A}\nprompt:\n  variables:\n    v: ${B}\n")
    spec = load(path, env={"A": "${B}", "B": "{x: 1}"})
    assert spec.description == "${B}"
    assert spec.prompt.variables == {"v": "{x: 1}"}


def test_secret_values_stay_strings_and_are_remembered(write: Write) -> None:
    path = write("ok.yaml", "model: {id: fake/x}\ndescription: ${MY_TOKEN}\n"
                            "prompt:\n  variables:\n    n: ${PLAIN}\n")
    spec = load(path, env={"MY_TOKEN": "12345678", "PLAIN": "12345678"})
    assert spec.description == "12345678"
    assert spec.prompt.variables == {"n": 12345678}
    assert spec.source.secrets == {"12345678"}
    assert "12345678" not in explain(spec).split("description:")[1].splitlines()[0]


def test_explain_masks_a_secret_from_the_environment(write: Write) -> None:
    path = write("ok.yaml", "model:\n  id: fake/x\n  options: {api_key: '${SOME_API_KEY}'}\n"
                            "description: uses ${SOME_API_KEY} inside\n")
    spec = load(path, env={"SOME_API_KEY": CANARY})
    assert spec.model.options["api_key"] == CANARY
    text = explain(spec)
    assert CANARY not in text
    assert "description: uses *** inside" in text


def test_a_key_named_by_api_key_env_is_masked_whatever_the_variable_is_called(
        write: Write) -> None:
    """MY_LLM and WEB_CREDS_X do not look secret by name; the spec says they hold keys."""
    path = write("ok.yaml", "model:\n  id: fake/x\n  api_key_env: MY_LLM\n"
                            "  fallbacks: [{id: fake/y, api_key_env: OTHER}]\n"
                            "tools:\n  - search: {backend: serper, api_key_env: WEB_C}\n"
                            "description: ${NOTE}\n")
    env = {"MY_LLM": "model-key-1", "OTHER": "model-key-2", "WEB_C": "serper-key-3",
           "NOTE": "model-key-1 serper-key-3", "UNNAMED": "plain-value"}
    spec = load(path, env=env)
    assert spec.source.secrets == {"model-key-1", "model-key-2", "serper-key-3"}
    assert "description: '*** ***'" in explain(spec)


# ---------------------------------------------------------------------------- extends

def test_extends_merges_maps_and_replaces_lists(write: Write) -> None:
    write("base.yaml", "name: base\nmodel:\n  id: fake/x\n  temperature: 0.7\n  max_tokens: 64\n"
                       "tools: [calculator, agent: sub.yaml]\nprompt:\n  variables: {a: 1, b: 2}\n")
    write("sub.yaml", "name: sub\nmodel: {id: fake/x}\n")
    path = write("child.yaml", "extends: base.yaml\nname: child\nmodel:\n  temperature: 0.1\n"
                               "tools: [calculator]\nprompt:\n  variables: {b: 3}\n")
    spec = load(path)
    assert spec.name == "child"
    assert (spec.model.id, spec.model.temperature, spec.model.max_tokens) == ("fake/x", 0.1, 64)
    assert spec.tools == ["calculator"]
    assert spec.prompt.variables == {"a": 1, "b": 3}
    assert spec.extends is None


def test_extends_chain_of_three(write: Write) -> None:
    write("a.yaml", "model: {id: fake/a}\ndescription: from a\n")
    write("b.yaml", "extends: a.yaml\nmodel: {temperature: 1.5}\n")
    spec = load(write("c.yaml", "extends: b.yaml\nname: c\n"))
    assert (spec.name, spec.description, spec.model.id, spec.model.temperature) == \
        ("c", "from a", "fake/a", 1.5)


def test_errors_from_a_base_file_name_the_base_file(write: Write) -> None:
    write("base.yaml", "model:\n  id: fake/x\n  temperature: 7\n  max_tokns: 3\n")
    path = write("child.yaml", "extends: base.yaml\nname: child\n")
    assert errors_of(path) == [
        "base.yaml:3:3: model.temperature: should be less than or equal to 2",
        "base.yaml:4:3: model.max_tokns: unknown key 'max_tokns' (did you mean 'max_tokens'?)"]


def test_a_child_value_is_blamed_on_the_child(write: Write) -> None:
    write("base.yaml", "model:\n  id: fake/x\n  temperature: 0.5\n")
    path = write("child.yaml", "extends: base.yaml\nmodel:\n  temperature: 9\n")
    assert error_of(path) == "child.yaml:3:3: model.temperature: should be less than or equal to 2"


def test_a_syntax_error_in_a_base_file_names_the_base_file(write: Write) -> None:
    write("sub/base.yaml", "model: {id: fake/x\n")
    path = write("child.yaml", "extends: sub/base.yaml\n")
    assert error_of(path).startswith("sub/base.yaml:2:1: YAML syntax error: ")


@pytest.mark.parametrize("target", ["../../etc/passwd", "../outside.yaml", "/etc/passwd"])
def test_extends_cannot_escape_the_project_root(write: Write, project: Path, target: str) -> None:
    (project.parent / "outside.yaml").write_text("name: outside\n")
    path = write("bad.yaml", f"extends: {target}\n")
    assert error_of(path) == \
        f"bad.yaml:1:1: extends: path {target!r} escapes the project root {project.resolve()}"


def test_extends_cycle_is_refused(write: Write) -> None:
    write("b.yaml", "extends: a.yaml\n")
    path = write("a.yaml", "extends: b.yaml\nmodel: {id: fake/x}\n")
    assert error_of(path) == "b.yaml:1:1: extends: extends cycle: a.yaml -> b.yaml -> a.yaml"
    assert error_of(write("self.yaml", "extends: self.yaml\n")) == \
        "self.yaml:1:1: extends: extends cycle: self.yaml -> self.yaml"


def test_extends_missing_base(write: Write) -> None:
    assert error_of(write("child.yaml", "extends: nope.yaml\n")) == "nope.yaml: no such file"


# ---------------------------------------------------------------------------- --set

def test_set_overrides_are_typed_like_yaml(write: Write) -> None:
    path = write("ok.yaml", "model:\n  id: fake/x\nloop:\n  max_iterations: 8\n")
    spec = load(path, ["loop.max_iterations=3", "model.temperature=0.25", "model.stream=true",
                       "description=no", "name=0755", "prompt.variables.x=[1, two]",
                       "tools=[calculator]", "model.id=fake/y"])
    assert spec.loop.max_iterations == 3
    assert spec.model.temperature == 0.25 and spec.model.stream is True
    assert (spec.description, spec.name, spec.model.id) == ("no", "0755", "fake/y")
    assert spec.prompt.variables == {"x": [1, "two"]}
    assert spec.tools == ["calculator"]


def test_set_a_list_item(write: Write) -> None:
    path = write("ok.yaml", "model: {id: fake/x}\ntools: [calculator, calculator: {name: c2}]\n")
    spec = load(path, ["tools.1.calculator.name=c3"])
    assert [r.alias for r in resolve(spec).tools] == ["calculator", "c3"]


@pytest.mark.parametrize("override,expected", [
    ("loop.max_iterations=ten", "--set: loop.max_iterations: should be a valid integer"),
    ("loop.max_iterations=-1", "--set: loop.max_iterations: should be greater than or equal to 1"),
    ("model.stream=no", "--set: model.stream: should be a valid boolean"),
    ("loop.max_iteratons=3",
     "--set: loop.max_iteratons: unknown key 'max_iteratons' (did you mean 'max_iterations'?)"),
    ("loop", "--set 'loop': expected KEY.PATH=VALUE, e.g. --set loop.max_iterations=3"),
    ("=3", "--set '=3': expected KEY.PATH=VALUE, e.g. --set loop.max_iterations=3"),
    ("loop..x=3", "--set 'loop..x=3': expected KEY.PATH=VALUE, e.g. --set loop.max_iterations=3"),
    ("tools.5=calculator", "--set: cannot set 'tools.5': no such list item"),
    ("name.first=x", "--set: cannot set 'name.first': name is not a mapping"),
    ("description=!!python/object/apply:os.system [ls]",
     "--set description:1:1: unsupported tag '!!python/object/apply:os.system'"),
])
def test_bad_set_overrides_are_spec_errors(write: Write, override: str, expected: str) -> None:
    path = write("ok.yaml", "name: a\nmodel:\n  id: fake/x\nloop:\n  max_iterations: 8\n"
                            "tools: [calculator]\n")
    assert error_of(path, [override]) == expected


def test_a_set_value_replacing_a_map_is_not_blamed_on_the_file(write: Write) -> None:
    path = write("ok.yaml", "model:\n  id: fake/x\n  temperature: 0\n")
    assert error_of(path, ["model={id: fake/x, temperature: 9}"]) == \
        "--set: model.temperature: should be less than or equal to 2"


# ---------------------------------------------------------------------------- plugin checks

def test_unknown_tool_lists_the_available_ones(write: Write) -> None:
    path = write("bad.yaml", "model: {id: fake/x}\ntools:\n  - calculator\n  - calculatr\n")
    assert error_of(path) == (f"bad.yaml:4:5: tools[1]: unknown tool 'calculatr' (did you mean "
                              f"'calculator'?); available: {', '.join(sorted(registry().tools))}")


def test_unknown_model_provider_lists_the_plugin_ones(write: Write) -> None:
    path = write("bad.yaml", "model:\n  id: opnai/gpt-4o-mini\n")
    problem = error_of(path)
    providers = ", ".join(sorted(n for n, r in registry().models.items() if n and not r.family))
    assert problem.startswith(f"bad.yaml:2:3: model.id: unknown model provider 'opnai' (did you "
                              f"mean 'openai'?); plugins provide: {providers}; LiteLLM knows ")


def test_a_bad_embedded_model_option_is_located(write: Write) -> None:
    """The provider checks its own options (local/: `grammar` is auto or off), primary and
    fallbacks alike."""
    path = write("bad.yaml", "model:\n  id: local/gemma-3-270m\n  options:\n"
                             "    grammar: sometimes\n")
    assert error_of(path) == ("bad.yaml:4:5: model.options.grammar: must be one of auto, off "
                              "(got 'sometimes')")
    path = write("bad.yaml", "model:\n  id: fake/x\n  fallbacks:\n"
                             "    - {id: local/gemma-3-270m, options: {grammar: true}}\n")
    assert error_of(path).startswith("bad.yaml:4:") and \
        "model.fallbacks[0].options.grammar: must be one of auto, off (got True)" in error_of(path)


def test_unknown_fallback_provider_is_located_in_the_list(write: Write) -> None:
    path = write("bad.yaml", "model:\n  id: fake/x\n  fallbacks:\n    - openai/gpt-4o-mini\n"
                             "    - fak/y\n")
    assert error_of(path).startswith("bad.yaml:5:7: model.fallbacks[1]: unknown model provider "
                                     "'fak' (did you mean 'fake'?)")


def test_unknown_memory_backend_lists_the_available_ones(write: Write) -> None:
    path = write("bad.yaml", "model: {id: fake/x}\nmemory:\n  backend: sqlit\n")
    assert error_of(path) == (f"bad.yaml:3:3: memory.backend: unknown memory backend 'sqlit' "
                              f"(did you mean 'sqlite'?); available: none, "
                              f"{', '.join(sorted(registry().memory))}")


def test_sub_agent_cycle_is_refused(write: Write) -> None:
    write("y.yaml", "name: y\nmodel: {id: fake/x}\ntools:\n  - calculator\n  - agent: x.yaml\n")
    path = write("x.yaml", "name: x\nmodel: {id: fake/x}\ntools:\n  - agent: y.yaml\n")
    assert error_of(path) == "y.yaml:5:5: tools[1].agent: sub-agent cycle: x.yaml -> y.yaml -> x.yaml"
    self_ref = write("self.yaml", "model: {id: fake/x}\ntools:\n  - agent: self.yaml\n")
    assert error_of(self_ref) == \
        "self.yaml:3:5: tools[0].agent: sub-agent cycle: self.yaml -> self.yaml"


def test_sub_agent_problems_name_the_sub_agent_file(write: Write) -> None:
    write("sub.yaml", "name: sub\nmodel: {id: fake/x}\nloop: {max_iterations: 0}\n")
    path = write("main.yaml", "model: {id: fake/x}\ntools:\n  - agent: sub.yaml\n")
    assert error_of(path) == "sub.yaml:3:8: loop.max_iterations: should be greater than or equal to 1"


def test_sub_agents_read_variables_from_the_same_env(write: Write) -> None:
    write("sub.yaml", "name: ${SUB_NAME}\nmodel: {id: fake/x}\n")
    path = write("main.yaml", "model: {id: fake/x}\ntools:\n  - agent: sub.yaml\n")
    spec = load(path, env={"SUB_NAME": "helper"})
    assert [r.alias for r in resolve(spec).tools] == ["helper"]
    assert error_of(path, env={}).startswith("sub.yaml:1:7: name: environment variable SUB_NAME ")


def test_sub_agent_path_cannot_escape(write: Write, project: Path) -> None:
    path = write("main.yaml", "model: {id: fake/x}\ntools:\n  - agent: ../../x.yaml\n")
    assert error_of(path) == (f"main.yaml:3:5: tools[0].agent: path '../../x.yaml' escapes the "
                              f"project root {project.resolve()}")


def test_two_tools_with_one_name(write: Write) -> None:
    path = write("bad.yaml", "model: {id: fake/x}\ntools: [calculator, calculator]\n")
    assert error_of(path) == ("bad.yaml:2:21: tools[1]: tool name 'calculator' is already used "
                              "by tools[0]; rename one with name:")


@pytest.mark.parametrize("template", ["../../etc/passwd", "/etc/passwd", "../outside.j2"])
def test_template_path_cannot_escape_the_project_root(write: Write, project: Path, template: str) -> None:
    (project.parent / "outside.j2").write_text("{{ input }}")
    path = write("bad.yaml", f"model:\n  id: fake/x\nprompt:\n  template: {template}\n")
    assert error_of(path) == (f"bad.yaml:4:3: prompt.template: path {template!r} escapes the "
                              f"project root {project.resolve()}")


def test_missing_template_is_a_spec_error(write: Write) -> None:
    path = write("bad.yaml", "model:\n  id: fake/x\nprompt:\n  template: prompts/nope.j2\n")
    assert error_of(path) == "bad.yaml:4:3: prompt.template: template file 'prompts/nope.j2' not found"


def test_invalid_output_schema_is_located(write: Write) -> None:
    path = write("bad.yaml", "model: {id: fake/x}\noutput:\n  schema:\n    type: object\n"
                             "    properties:\n      n: {type: integr}\n")
    problem = error_of(path)
    assert problem.startswith("bad.yaml:6:11: output.schema.properties.n.type: invalid JSON Schema: "
                              "'integr' is not valid"), problem


def test_loading_touches_no_network(write: Write, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"network used while loading a spec: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    path = write("ok.yaml", "model:\n  id: openai/gpt-4o-mini\n  api_base: https://example.com/v1\n"
                            "  fallbacks: [anthropic/claude-3-haiku, ollama/llama3]\n"
                            "tools: [calculator, agent: sub.yaml]\nmemory: {backend: sqlite}\n")
    write("sub.yaml", "name: sub\nmodel: {id: hosted_vllm/x, api_base: http://10.0.0.1:8000}\n")
    spec = load(path)
    assert [r.alias for r in resolve(spec).tools] == ["calculator", "sub"]


def test_the_example_spec_loads_and_its_tools_resolve() -> None:
    spec = load_spec(ROOT / "agents" / "calculator.yaml", env={})
    assert spec.name == "calculator"
    assert spec.model.id == "local/gemma-3-270m"
    assert [r.name for r in resolve(spec).tools] == ["calculator"]


# ---------------------------------------------------------------------------- validate_paths

def test_validate_paths_reports_every_problem_and_a_count(write: Write, project: Path) -> None:
    write("specs/good.yaml", "model: {id: fake/x}\ntools: [calculator]\n")
    write("specs/nested/good2.yml", "model: {id: fake/x}\n")
    write("specs/bad.yaml", "model: {id: fake/x}\nloop: {max_iterations: -1, style: x}\n")
    write("specs/nested/bad2.yaml", "model: {id: fake/x}\ntools: [calculatr]\n")
    write("specs/.hidden/ignored.yaml", "nonsense: [\n")
    write("specs/notes.txt", "nonsense: [\n")
    count, problems = validate_paths([project / "specs"])
    assert count == 4
    assert [p.render() for p in problems] == [
        "specs/bad.yaml:2:28: loop.style: must be 'react', 'tools' or 'auto'",
        "specs/bad.yaml:2:8: loop.max_iterations: should be greater than or equal to 1",
        f"specs/nested/bad2.yaml:2:9: tools[0]: unknown tool 'calculatr' (did you mean "
        f"'calculator'?); available: {', '.join(sorted(registry().tools))}",
    ]


def test_validate_paths_through_a_parent_directory(write: Write, project: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    write("specs/good.yaml", "model: {id: fake/x}\n")
    write("specs/bad.yaml", "model: {id: fake/x}\nnaem: x\n")
    (project / "work").mkdir()
    monkeypatch.chdir(project / "work")
    count, problems = validate_paths(["../specs"])
    assert count == 2
    assert [p.render() for p in problems] == [
        f"{project.resolve() / 'specs' / 'bad.yaml'}:2:1: naem: unknown key 'naem' (did you mean 'name'?)"]


# ---------------------------------------------------------------------------- JSON Schema

def test_json_schema_is_valid_and_documents_fields() -> None:
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    model = schema["$defs"]["ModelSpec"]["properties"]
    assert model["temperature"]["description"] == "Sampling temperature; null leaves the provider's default."
    assert schema["properties"]["loop"]["description"]
    assert schema["additionalProperties"] is False
    assert "schema" in schema["$defs"]["OutputSpec"]["properties"]
    undocumented = [f"{name}.{key}" for name, d in schema["$defs"].items()
                    for key, prop in d.get("properties", {}).items() if not prop.get("description")]
    assert undocumented == []


def test_json_schema_accepts_the_example_and_rejects_a_typo() -> None:
    validator = jsonschema.Draft202012Validator(json_schema())
    data = yaml.safe_load((ROOT / "agents" / "calculator.yaml").read_text())
    assert list(validator.iter_errors(data)) == []
    bad = {"model": {"temprature": 0.2}}
    assert [e.message for e in validator.iter_errors(bad)] == \
        ["Additional properties are not allowed ('temprature' was unexpected)"]

