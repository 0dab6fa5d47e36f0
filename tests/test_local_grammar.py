"""The embedded model's grammar (model.options.grammar): built from the agent's tools, parsed
by the real llama.cpp, and holding the real model's replies to the ReAct format and to each
tool's input pattern; a pattern llama.cpp cannot parse falls back to free input, never a
crash; `grammar: off`. A bad value is a located spec error (test_spec.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from runner import run_agent
from runner.default_plugins.calculator import EXPRESSION, evaluate
from runner.default_plugins.local_grammar import react_grammar
from runner.default_plugins.local_model import LocalModel, _load
from runner.spec import ModelSpec

from conftest import ROOT


def _tool(name: str, props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": name,
                                             "parameters": {"type": "object",
                                                            "properties": props}}}


CALC = _tool("calculator", {"expression": {"type": "string", "pattern": EXPRESSION}})
SEARCH = _tool("search", {"query": {"type": "string"}})


@pytest.fixture(scope="module")
def llm() -> Any:
    return _load("local/gemma-3-270m", {})


def _complete(llm: Any, prompt: str, grammar: str | None) -> str:
    from llama_cpp.llama_grammar import LlamaGrammar

    llm.reset()
    out = llm.create_completion(prompt, max_tokens=48, temperature=0.0, seed=0,
                                stop=["\nObservation:"],
                                grammar=LlamaGrammar.from_string(grammar) if grammar else None)
    return str(out["choices"][0]["text"])


def test_the_calculator_pattern_takes_expressions_and_refuses_words() -> None:
    pattern = re.compile(EXPRESSION)
    for good in ("17*23", "2 ** 10", "(12+8)*3", "sqrt(16) + -3", "15/100*200", "3^5", "pi*2"):
        assert pattern.match(good), good
        evaluate(good)  # what the grammar lets through, the tool can compute
    for bad in ("15% of 200", "3 to the power of 5", "12+", "x*2", "7 times 8", "1]"):
        assert not pattern.match(bad), bad


@pytest.mark.embedded
def test_llama_cpp_parses_the_grammar_of_odd_tools(llm: Any) -> None:
    tools = [CALC, SEARCH, _tool('say "hi"\\now', {"text": {"type": "string"}}),
             _tool("clock", {}),
             _tool("pair", {"a": {"type": "integer"}, "b": {"type": "string"}}),
             _tool("say-hi", {"text": {"type": "string"}})]  # one rule name for both say tools
    assert llm.parses(react_grammar(tools))
    assert not llm.parses('root ::= "unclosed')


def _led_astray(tool: str) -> str:
    """A prompt whose examples call `tool` with words for an input."""
    return "".join(f"Question: What is {p} percent of {n}?\nThought: I will work it out.\n"
                   f"Action: {tool}[{p} percent of {n}]\nObservation: {p * n // 100}\n"
                   f"Final Answer: {p * n // 100}\n\n" for p, n in ((10, 50), (20, 80))) + \
        "Question: What is 15 percent of 200?\nThought:"


_REPLY = re.compile(r"[^\n]*\n(Action: (\w+)\[([^\]\n]*)\]|Final Answer: [^\n]+)\n?")


@pytest.mark.embedded
def test_the_grammar_holds_the_model_to_known_tools(llm: Any) -> None:
    """Examples that call a tool the agent lacks: without the grammar the real model copies
    them; with it, the reply names one of the agent's tools."""
    prompt = _led_astray("lookup")
    assert "Action: lookup[" in _complete(llm, prompt, None)
    held = _REPLY.fullmatch(_complete(llm, prompt, react_grammar([CALC, SEARCH])))
    assert held and held.group(2) in ("calculator", "search"), held


@pytest.mark.embedded
def test_the_grammar_holds_the_calculator_input_to_an_expression(llm: Any) -> None:
    """Examples with words for the calculator's input: without the grammar the real model
    writes words; with it, an expression the calculator computes."""
    prompt = _led_astray("calculator")
    assert "Action: calculator[15 percent of 200]" in _complete(llm, prompt, None)
    held = _REPLY.fullmatch(_complete(llm, prompt, react_grammar([CALC, SEARCH])))
    assert held and held.group(2) == "calculator", held
    assert re.match(EXPRESSION, held.group(3)) and "percent" not in held.group(3)
    evaluate(held.group(3))


@pytest.mark.embedded
def test_a_pattern_llama_cpp_cannot_parse_falls_back_to_free_input(llm: Any) -> None:
    # the converter writes `\.` for this, an escape llama.cpp's parser refuses
    odd = _tool("decimal", {"value": {"type": "string", "pattern": r"^[0-9]+\.[0-9]+$"}})
    assert not llm.parses(react_grammar([odd]))
    model = LocalModel(ModelSpec(id="local/gemma-3-270m"), "local/gemma-3-270m")
    model.constrain([odd])
    grammar = model._grammar(llm)
    assert grammar is not None and grammar._grammar == react_grammar([odd], patterns=False)
    assert model._grammar(llm)._grammar == grammar._grammar  # decided once
    assert llm.parses(grammar._grammar)


@pytest.mark.embedded
def test_grammar_off_builds_none(llm: Any) -> None:
    model = LocalModel(ModelSpec(id="local/gemma-3-270m", options={"grammar": "off"}),
                       "local/gemma-3-270m")
    model.constrain([CALC])
    assert model._grammar(llm) is None
    model = LocalModel(ModelSpec(id="local/gemma-3-270m"), "local/gemma-3-270m")
    model.constrain([CALC])
    assert model._grammar(llm)._grammar == react_grammar([CALC])


@pytest.mark.embedded
def test_schemas_the_converter_cannot_read_still_get_a_grammar(llm: Any) -> None:
    """An MCP server's schema nested past Python's recursion limit: that tool's input is any
    JSON object, the others keep theirs."""
    deep: dict[str, Any] = {"type": "object", "properties": {}}
    inner = deep
    for _ in range(3000):
        inner["properties"]["a"] = {"type": "object", "properties": {}}
        inner = inner["properties"]["a"]
    odd = _tool("deep", {"a": deep, "b": {"type": "string"}})
    model = LocalModel(ModelSpec(id="local/gemma-3-270m"), "local/gemma-3-270m")
    model.constrain([odd, CALC])
    grammar = model._grammar(llm)
    assert grammar is not None and llm.parses(grammar._grammar)
    assert '"deep[" in-deep "]"' in grammar._grammar and "in-calculator ::= " in grammar._grammar


@pytest.mark.embedded
@pytest.mark.parametrize("grammar", ["auto", "off"])
def test_the_calculator_example_with_and_without_the_grammar(tmp_path: Path,
                                                             grammar: str) -> None:
    spec = yaml.safe_load((ROOT / "agents" / "calculator.yaml").read_text())
    spec["model"] = {**spec["model"], "id": "local/gemma-3-270m", "options": {"grammar": grammar}}
    path = tmp_path / "calculator.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = run_agent(path, "What is 17 times 23?")
    assert result.status == "finished", result.error
    assert result.steps[0].action == "calculator" and result.steps[0].observation == "391"
