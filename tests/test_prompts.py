"""The sandboxed Jinja2 environment: escapes refused, runaway templates stopped, undefined
variables named, and values (input, observations, instructions) never rendered as templates."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import runner
from runner.errors import TemplateError
from runner.prompts import PromptTemplate
from runner.testing import ScriptedOpenAIServer

# Rendered, these would show 49, IF-RAN and LOOPLOOPLOOP; kept literal, none of them appear.
LITERAL = "{{ 7*7 }} {% if true %}IF{% endif %}-RAN {# c #}"


@runner.tool
def leak(text: str) -> str:
    """Returns template syntax as its output."""
    return "tool says {{ 7*7 }} and {% for i in range(3) %}LOOP{% endfor %}"


class PromptTools:
    @runner.hookimpl
    def register_tools(self, register: Any) -> None:
        register(leak)


@pytest.fixture(autouse=True)
def prompt_tools() -> Iterator[None]:
    plugin = PromptTools()
    runner.register_plugin(plugin)
    yield
    runner.unregister_plugin(plugin)


def template_file(tmp_path: Path, body: str, name: str = "evil.md.j2") -> PromptTemplate:
    (tmp_path / name).write_text(body)
    return PromptTemplate(tmp_path, name=name)


def render_error(tmp_path: Path, body: str) -> TemplateError:
    tmpl = template_file(tmp_path, "Line one\nLine two\n" + body + "\nLast line\n")
    with pytest.raises(TemplateError) as info:
        tmpl.render(input="q", tools=[], steps=[])
    return info.value


# ------------------------------------------------------------------------------ escapes


@pytest.mark.parametrize("escape", [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ().__class__.__base__.__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ ''|attr('__class__') }}",
    "{{ '{0.__class__}'.format('') }}",
    "{{ '{a.__class__.__mro__}'.format_map({'a': ''}) }}",
    "{{ dict.__base__.__subclasses__() }}",
])
def test_sandbox_escapes_are_refused_naming_file_and_line(tmp_path: Path, escape: str) -> None:
    err = render_error(tmp_path, escape)
    assert "refused by the sandbox" in err.reason
    assert err.path is not None and err.path.endswith("evil.md.j2")
    assert err.line == 3
    assert str(err).startswith(f"{err.path}:3:")


# ------------------------------------------------------------------------------ runaway templates


@pytest.mark.parametrize("body,reason", [
    ("{% for i in range(10**9) %}x{% endfor %}", "Range too big"),
    ("{{ 'x' * 10**9 }}", "repetition would make"),
    ("{{ [0] * 10**9 }}", "repetition would make"),
    ("{{ 2 ** 100000 }}", "exponent"),
    ("{{ 'x' | center(10**9) }}", "width"),
    ("{{ 'x' | indent(10**9, true) }}", "width"),
    ("{{ 'x'.ljust(10**9) }}", "width"),
    ("{{ '%1000000000d' % 1 }}", "width"),
    ("{{ '%*d' % (10**9, 1) }}", "width"),
    ("{{ '{:>1000000000}'.format('x') }}", "width"),
    ("{{ ('x' * 900000) | replace('x', 'xxxxxxxxxx') }}", "replace would make"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
     "took longer than"),
    ("{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(40) }}",
     "took longer than"),
    ("{% for i in range(100000) %}{{ 'y' * 999999 }}{% endfor %}", "larger than"),
    # doubling a string 40 times would need a terabyte; each step's result is capped
    ("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
     "{% endfor %}", "`~` would make"),
    ("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = [ns.s, ns.s]|join %}"
     "{% endfor %}", "a value of"),
    ("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = '%s%s' % (ns.s, ns.s) %}"
     "{% endfor %}", "a value of"),
    ("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ''.join([ns.s, ns.s]) %}"
     "{% endfor %}", "a value of"),
])
def test_runaway_templates_are_stopped(tmp_path: Path, body: str, reason: str) -> None:
    err = render_error(tmp_path, body)  # a template not stopped would hang: pytest-timeout
    assert reason in err.reason
    assert err.path is not None and err.path.endswith("evil.md.j2")


def test_the_guards_leave_ordinary_templates_alone(tmp_path: Path) -> None:
    tmpl = template_file(tmp_path, (
        "{% for t in tools %}{{ loop.index }}/{{ loop.length }} {{ t.name }}"
        "{% if not loop.last %}, {% endif %}{% endfor %}\n"
        "{% for k, v in vars | dictsort %}{{ k }}={{ v }};{% endfor %}\n"
        "{{ '%d items, %s' % (3, 'ok') }} {{ '{:>4}|'.format('x') }} {{ 'ab' | center(6) }}|\n"
        "{{ 'a-b' | replace('-', '+') }} {{ 2 ** 10 }} {{ 'ab' * 3 }} {{ 'a' ~ 1 ~ none }}\n"
        "{% for i in range(3) %}{% for j in range(2) %}{{ i * j }}{% endfor %}{% endfor %}"))
    out = tmpl.render(tools=[{"name": "calc"}, {"name": "search"}], vars={"b": 2, "a": 1})
    # trim_blocks drops the newline after a block tag
    assert out == ("1/2 calc, 2/2 searcha=1;b=2;3 items, ok    x|   ab  |\n"
                   "a+b 1024 ababab a1None\n000102")


# ------------------------------------------------------------------------- undefined and syntax


def test_an_undefined_variable_is_named_with_its_line(tmp_path: Path) -> None:
    err = render_error(tmp_path, "Hello {{ user_nmae }}")
    assert "undefined" in err.reason and "user_nmae" in err.reason
    assert err.line == 3 and err.path is not None and err.path.endswith("evil.md.j2")


def test_an_undefined_variable_in_an_included_template_names_that_file(tmp_path: Path) -> None:
    (tmp_path / "part.j2").write_text("ok\n{{ missing_in_part }}\n")
    err = render_error(tmp_path, "{% include 'part.j2' %}")
    assert "missing_in_part" in err.reason
    assert err.path is not None and err.path.endswith("part.j2") and err.line == 2


def test_a_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(TemplateError) as info:
        template_file(tmp_path, "ok\n{% for x in %}\n{% endfor %}")
    assert info.value.line == 2 and str(info.value.path).endswith("evil.md.j2")


def test_an_inline_template_error_names_its_origin() -> None:
    tmpl = PromptTemplate(Path("."), text="a\n{{ nope }}", origin="agent.yaml: prompt.text")
    with pytest.raises(TemplateError) as info:
        tmpl.render()
    assert info.value.path == "agent.yaml: prompt.text" and info.value.line == 2


# ------------------------------------------------------------------------------ in a run


def write_spec(tmp_path: Path, replies: list[Any] | None = None, **sections: Any) -> Path:
    model: dict[str, Any] = {"id": "fake/script"}
    if replies is not None:
        model["options"] = {"replies": replies}
    data = {"name": "prompttest", "model": model, "loop": {"style": "react"},
            "tools": ["leak"], "memory": {"backend": "none"}, **sections}
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_a_template_escape_ends_the_run_with_a_located_error(tmp_path: Path) -> None:
    (tmp_path / "evil.md.j2").write_text("Question: {{ input }}\n{{ ''.__class__.__mro__ }}\n")
    path = write_spec(tmp_path, ["Final Answer: never"], prompt={"template": "evil.md.j2"})
    result = asyncio.run(runner.Agent(runner.load_spec(path)).run("q"))
    assert result.status == "template_error"
    assert "evil.md.j2:2:" in result.error and "refused by the sandbox" in result.error


def test_template_syntax_in_values_is_never_evaluated(tmp_path: Path) -> None:
    path = write_spec(tmp_path, ["Action: leak[x]", "Final Answer: done"],
                      prompt={"instructions": f"Instructions {LITERAL}",
                              "variables": {"extra": f"Variable {LITERAL}"},
                              "text": "{{ instructions }}\n{{ extra }}\nQuestion: {{ input }}\n"
                                      "{% for s in steps %}{{ s.raw }}\nObservation: "
                                      "{{ s.observation }}\n{% endfor %}Thought:"})
    agent = runner.Agent(runner.load_spec(path))
    result = asyncio.run(agent.run(f"Input {LITERAL}"))
    assert result.status == "finished"
    first, second = (m[0]["content"] for m in agent.models[0].calls)
    for expected in (f"Instructions {LITERAL}", f"Variable {LITERAL}", f"Input {LITERAL}"):
        assert expected in first and expected in second
    assert "Observation: tool says {{ 7*7 }} and {% for i in range(3) %}LOOP{% endfor %}" in second
    for prompt in (first, second):
        assert "49" not in prompt and "IF-RAN" not in prompt and "LOOPLOOP" not in prompt


def test_template_syntax_in_the_input_reaches_the_server_literally(
        tmp_path: Path, server: ScriptedOpenAIServer, scripted: list[str]) -> None:
    server.script("Action: leak[{{ 7*7 }}]", "Final Answer: {{ 7*7 }}")
    path = write_spec(tmp_path)
    result = runner.run_agent(path, "What is {{ 7*7 }}?", overrides=scripted)
    assert result.status == "finished" and result.answer == "{{ 7*7 }}"
    first, second = (r["messages"][0]["content"] for r in server.requests)
    assert "Question: What is {{ 7*7 }}?" in first
    assert "Action: leak[{{ 7*7 }}]\nObservation: tool says {{ 7*7 }}" in second
    assert "49" not in first + second


# ------------------------------------------------------------------------ confinement


@pytest.mark.parametrize("tag", ["{% include 'link.j2' %}", "{% import 'link.j2' as m %}{{ m.x }}",
                                 "{% include 'sub/link.j2' %}", "{% extends 'link.j2' %}"])
def test_a_template_path_through_a_symlink_out_of_the_root_is_refused(tmp_path: Path,
                                                                      tag: str) -> None:
    root, outside = tmp_path / "project", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_text("{% macro x() %}{% endmacro %}TOP-SECRET-CONTENT")
    (root / "link.j2").symlink_to(outside / "secret.txt")
    (root / "sub" / "link.j2").symlink_to("../../outside/secret.txt")
    (root / "main.md.j2").write_text(f"before\n{tag}\nafter\n")
    with pytest.raises(TemplateError) as info:
        PromptTemplate(root, name="main.md.j2").render()
    assert "TOP-SECRET-CONTENT" not in str(info.value)
    assert "outside the project root" in info.value.reason


def test_a_symlinked_directory_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "project", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "part.j2").write_text("TOP-SECRET-CONTENT")
    (root / "parts").symlink_to(outside, target_is_directory=True)
    (root / "main.md.j2").write_text("{% include 'parts/part.j2' %}")
    with pytest.raises(TemplateError) as info:
        PromptTemplate(root, name="main.md.j2").render()
    assert "outside the project root" in info.value.reason


def test_a_symlink_that_stays_inside_the_root_still_works(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "part.j2").write_text("PART")
    (tmp_path / "alias.j2").symlink_to(tmp_path / "real" / "part.j2")
    (tmp_path / "main.md.j2").write_text("{% include 'alias.j2' %}")
    assert PromptTemplate(tmp_path, name="main.md.j2").render() == "PART"


def test_a_spec_template_that_is_a_symlink_out_of_the_root_is_a_spec_error(tmp_path: Path) -> None:
    root, outside = tmp_path / "project", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "t.md.j2").write_text("TOP-SECRET-CONTENT {{ input }}")
    (root / "t.md.j2").symlink_to(outside / "t.md.j2")
    (root / "runner.toml").write_text("")
    spec = root / "agent.yaml"
    spec.write_text(yaml.safe_dump({"name": "t", "model": {"id": "fake/x"},
                                    "prompt": {"template": "t.md.j2"}}))
    with pytest.raises(runner.SpecError) as info:
        runner.resolve_spec(runner.load_spec(spec))
    assert "TOP-SECRET-CONTENT" not in str(info.value)


def test_a_huge_or_special_template_is_refused_unread(tmp_path: Path) -> None:
    (tmp_path / "huge.j2").write_text("x" * 1_000_001)
    os.mkfifo(tmp_path / "pipe.j2")  # opened, it would wait for a writer for ever
    for name, reason in [("huge.j2", "larger than"), ("pipe.j2", "is not a file")]:
        (tmp_path / "main.md.j2").write_text(f"{{% include '{name}' %}}")
        with pytest.raises(TemplateError) as info:
            PromptTemplate(tmp_path, name="main.md.j2").render()
        assert reason in info.value.reason


POOL = [f"Question: {q}\nThought: t\nAction: calculator[{e}]\nObservation: {a}\n"
        f"Thought: I now know the final answer\nFinal Answer: {a}"
        for q, e, a in (("What is 12 plus 30?", "12+30", 42),
                        ("What is 40 percent of 90?", "40/100*90", 36),
                        ("What is 3 to the power of 4?", "3^4", 81),
                        ("Share 60 sweets equally among 5 children. How many each?", "60/5", 12),
                        ("Mia had 50 cards and gave away 12. How many are left?", "50-12", 38))]


def pool_agent(tmp_path: Path, pool: Any, **prompt: Any) -> runner.Agent:
    (tmp_path / "pyproject.toml").write_text("")
    path = tmp_path / "pooled.yaml"
    path.write_text(yaml.safe_dump({
        "version": 1, "name": "pooled", "memory": {"backend": "none"},
        "model": {"id": "fake/echo"}, "loop": {"style": "react"}, "tools": ["calculator"],
        "prompt": {"examples_pool": pool, **prompt}}, sort_keys=False))
    return runner.Agent(runner.load_spec(path))


def test_a_prompt_gets_the_pool_examples_most_like_its_question(tmp_path: Path) -> None:
    agent = pool_agent(tmp_path, {"k": 2, "examples": POOL},
                       examples=["Question: fixed one\nFinal Answer: 1"])

    def shown(question: str) -> list[str]:
        text = agent.prompt(question, [], steps=[], native_tools=False)
        lines = [line for line in text.splitlines() if line.startswith("Question: ")]
        return lines[1:-1]  # not the format's nor the question asked

    # the spec's own example shares no word with these questions: it goes first
    assert shown("What is 15 percent of 300?")[0] == "Question: fixed one"
    assert shown("What is 15 percent of 300?")[-1] == "Question: What is 40 percent of 90?"
    assert shown("What is 2 to the power of 8?")[-1] == "Question: What is 3 to the power of 4?"
    assert shown("Ann had 70 cards and gave away 25. How many are left?")[-1] == (
        "Question: Mia had 50 cards and gave away 12. How many are left?")
    assert all(len(shown(q)) == 3 for q in ("What is 15 percent of 300?", "xyzzy 12"))
    # numbers are not words: 12 in the question does not pull in the example with 12 in it
    assert "Question: What is 12 plus 30?" not in shown("What is 12 percent of 9?")[-1:]
    assert "Action: calculator[40/100*90]" in agent.prompt(
        "What is 15 percent of 300?", [], steps=[], native_tools=False)


def test_the_specs_own_examples_go_by_likeness_with_the_pools(tmp_path: Path) -> None:
    """A researcher's search example is the last a question about the docs sees, and an
    arithmetic example the last a sum sees; both are in every prompt."""
    search = ("Question: Where does a run write its trace?\nThought: look it up\n"
              "Action: search[trace]\nObservation: .runner/traces/\nFinal Answer: .runner/traces/")
    agent = pool_agent(tmp_path, {"k": 2, "examples": POOL}, examples=[search])

    def shown(question: str) -> list[str]:
        text = agent.prompt(question, [], steps=[], native_tools=False)
        return [line for line in text.splitlines() if line.startswith("Question: ")][1:-1]

    docs = shown("Where is the trace of an interrupted run written?")
    assert docs[-1] == "Question: Where does a run write its trace?" and len(docs) == 3
    sums = shown("What is 15 percent of 300?")
    assert sums[-1] == "Question: What is 40 percent of 90?" and len(sums) == 3
    assert "Question: Where does a run write its trace?" in sums


@pytest.mark.parametrize("pool,key", [({"k": 0, "examples": POOL}, "k"),
                                      ({"k": 2, "examples": []}, "examples"),
                                      ({"k": 2}, "examples"),
                                      ({"k": 2, "examples": POOL, "top": 1}, "top")])
def test_a_bad_examples_pool_is_named_in_the_error(tmp_path: Path, pool: Any, key: str) -> None:
    with pytest.raises(runner.SpecError) as err:
        pool_agent(tmp_path, pool)
    assert "pooled.yaml" in str(err.value) and f"prompt.examples_pool.{key}" in str(err.value)
