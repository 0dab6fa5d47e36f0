"""Tools: the @tool decorator, argument validation, execution (errors, timeouts, output that is
huge, binary or unprintable), and the calculator against hostile expressions."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
import yaml
from pydantic import BaseModel, Field

import runner

from conftest import tools_plugin
from runner.default_plugins.calculator import evaluate
from runner.errors import ToolError, ToolTimeout
from runner.tools import ToolContext, as_factory, format_output, parse_arguments, run_tool, tool

# ------------------------------------------------------------------------------ test tools

RELEASE = threading.Event()  # lets the hung sync tool's thread end when a test is over
SEEN: dict[str, Any] = {}


@tool
def boom(reason: str) -> str:
    """Always fails."""
    raise ValueError(f"kaput: {reason}")


@tool
async def slow(seconds: float) -> str:
    """Sleeps (async)."""
    await asyncio.sleep(seconds)
    return "woke up"


@tool
def stuck(seconds: float) -> str:
    """Blocks its thread (sync) until released."""
    RELEASE.wait(seconds)
    return "released"


@tool
def flood(megabytes: int) -> str:
    """Returns a lot of text."""
    return "0123456789" * (megabytes * 100_000) + "THE-END"


@tool
def binary() -> bytes:
    """Returns bytes that are not UTF-8."""
    return b"caf\xe9 \xff\xfe ok"


@tool
def surrogate() -> str:
    """Returns a str that cannot be encoded as UTF-8 (a lone surrogate)."""
    return "bad \udcff end"


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


@tool
def weird(kind: str) -> Any:
    """Returns values that do not serialise as JSON."""
    if kind == "object":
        return {"when": object(), "set": {1}, "raw": b"\xff"}
    if kind == "tuple-keys":
        return {(1, 2): "tuple key"}
    if kind == "circular":
        loop: list[Any] = []
        loop.append(loop)
        return loop
    if kind == "model":
        class Point(BaseModel):
            x: int
            y: int
        return Point(x=1, y=2)
    return Unprintable()


@tool
def quits(code: int) -> str:
    """Calls sys.exit, as argparse-based code does."""
    sys.exit(code)


@tool
async def aquits(code: int) -> str:
    """Raises SystemExit inside the event loop."""
    raise SystemExit(code)


@tool
def where(ctx: ToolContext) -> str:
    """Reports its context."""
    SEEN["ctx"] = ctx
    SEEN["thread"] = threading.get_ident()
    return ctx.run_id


@pytest.fixture(autouse=True)
def faulty_tools() -> Iterator[None]:
    RELEASE.clear()
    SEEN.clear()
    with tools_plugin(boom, slow, stuck, flood, binary, surrogate, weird, quits, aquits, where):
        yield
        RELEASE.set()


def write_spec(tmp_path: Path, replies: list[Any], tools: list[Any], **sections: Any) -> Path:
    data = {"name": "tooltest", "model": {"id": "fake/script", "options": {"replies": replies}},
            "loop": {"style": "react"}, "tools": tools, "memory": {"backend": "none"},
            **sections}
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run(path: Path) -> runner.RunResult:
    return asyncio.run(runner.Agent(runner.load_spec(path)).run("question"))


# ------------------------------------------------------------------------------ @tool


def test_the_signature_becomes_the_schema() -> None:
    @tool
    def search(query: Annotated[str, Field(description="what to look for")],
               limit: Annotated[int, "how many results"] = 5, exact: bool = False) -> list[str]:
        """Searches the knowledge base.

        More detail that the model does not need.
        """
        return []

    schema = search.schema()
    assert schema["type"] == "function"
    fn = schema["function"]
    assert fn["name"] == "search"
    assert fn["description"] == "Searches the knowledge base."
    params = fn["parameters"]
    assert params["type"] == "object"
    assert params["required"] == ["query"]
    assert params["additionalProperties"] is False
    props = params["properties"]
    assert props["query"]["type"] == "string"
    assert props["query"]["description"] == "what to look for"
    assert props["limit"]["type"] == "integer" and props["limit"]["default"] == 5
    assert props["limit"]["description"] == "how many results"
    assert props["exact"]["type"] == "boolean"
    assert search.input_hint().startswith("JSON object with query (what to look for)")


def test_a_tool_context_parameter_is_hidden_from_the_schema() -> None:
    assert where.context_param == "ctx"
    assert "ctx" not in where.schema()["function"]["parameters"].get("properties", {})

    @tool
    def note(text: str, context: ToolContext) -> str:
        """Notes."""
        return text

    assert list(note.schema()["function"]["parameters"]["properties"]) == ["text"]
    assert note.input_hint() == "text"


def test_decorator_options_override_name_description_and_timeout() -> None:
    @tool(name="lookup", description="Looks things up.", timeout_s=3)
    def f(key: str) -> str:
        return key

    assert (f.name, f.description, f.timeout_s) == ("lookup", "Looks things up.", 3)


def test_sync_and_async_tools_run() -> None:
    @tool
    def sync_double(n: int) -> int:
        """Doubles."""
        SEEN["sync_thread"] = threading.get_ident()
        return 2 * n

    @tool
    async def async_double(n: int) -> int:
        """Doubles."""
        SEEN["async_thread"] = threading.get_ident()
        return 2 * n

    async def main() -> tuple[Any, Any]:
        ctx = ToolContext("r1")
        return (await run_tool(sync_double, parse_arguments(sync_double, "21"), ctx, 5),
                await run_tool(async_double, parse_arguments(async_double, {"n": 4}), ctx, 5))

    assert asyncio.run(main()) == (42, 8)
    # a sync tool must not block the event loop: it runs in a worker thread
    assert SEEN["sync_thread"] != threading.get_ident()
    assert SEEN["async_thread"] == threading.get_ident()


def test_the_context_reaches_the_tool_in_a_run(tmp_path: Path) -> None:
    result = run(write_spec(tmp_path, ["Action: where[]", "Final Answer: ok"], ["where"]))
    assert result.status == "finished"
    ctx = SEEN["ctx"]
    assert isinstance(ctx, ToolContext)
    assert ctx.run_id == result.run_id == result.steps[0].observation
    assert Path(ctx.root) == tmp_path.resolve()


def test_a_spec_entry_timeout_does_not_leak_into_other_agents(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = runner.Agent(runner.load_spec(write_spec(tmp_path / "a", [],
                                                 [{"slow": {"timeout_s": 0.1}}])))
    b = runner.Agent(runner.load_spec(write_spec(tmp_path / "b", [], ["slow"])))
    assert a.tools["slow"].timeout_s == 0.1
    assert b.tools["slow"].timeout_s is None
    assert slow.timeout_s is None


# ------------------------------------------------------------------------------ arguments


def test_parse_arguments_accepts_text_json_and_quoted_text() -> None:
    assert parse_arguments(boom, "plain words").reason == "plain words"
    assert parse_arguments(boom, '"quoted"').reason == "quoted"
    assert parse_arguments(boom, '{"reason": "json"}').reason == "json"
    assert parse_arguments(boom, {"reason": "native"}).reason == "native"
    assert parse_arguments(flood, "3").megabytes == 3
    # unambiguous near-JSON is read by a literal parser
    assert parse_arguments(boom, "{'reason': 'quoted',}").reason == "quoted"
    # a one-field tool takes text that merely starts with a brace
    assert parse_arguments(boom, "{not json} but text").reason == "{not json} but text"


@pytest.mark.parametrize("raw,expected", [
    ('{"reason": "x"', "not valid JSON"),            # unterminated
    ("{'reason': x}", "not valid JSON"),             # a bare name: near-JSON, not code
    ('{"reason": "x" "y"}', "not valid JSON"),       # joined strings (a missed comma?)
    ({"reason": "x", "extra": 1}, "extra: Extra inputs are not permitted"),
    ({}, "reason: Field required"),
])
def test_bad_arguments_raise_tool_error_with_advice(raw: Any, expected: str) -> None:
    with pytest.raises(ToolError) as info:
        parse_arguments(boom, raw)
    assert expected in str(info.value)
    assert "reason" in str(info.value)


def test_wrong_types_are_reported_per_field() -> None:
    with pytest.raises(ToolError, match="megabytes: Input should be a valid integer"):
        parse_arguments(flood, "lots")


# ------------------------------------------------------------------------------ faults in a run


def test_a_tool_that_raises_becomes_an_observation(tmp_path: Path) -> None:
    result = run(write_spec(tmp_path, ["Action: boom[now]", "Final Answer: survived"], ["boom"]))
    assert result.status == "finished" and result.answer == "survived"
    assert result.steps[0].error
    assert result.steps[0].observation == "tool boom failed: ValueError: kaput: now"


@pytest.mark.parametrize("tool_name", ["slow", "stuck"])
def test_a_tool_that_hangs_times_out_and_the_run_goes_on(tmp_path: Path, tool_name: str) -> None:
    path = write_spec(tmp_path, [f"Action: {tool_name}[600]", "Final Answer: moved on"],
                      [{tool_name: {"timeout_s": 0.5}}])
    result = runner.run_agent(path, "question")  # asyncio.run must not wait for a hung thread
    assert result.status == "finished" and result.answer == "moved on"
    assert result.steps[0].error
    assert result.steps[0].observation == (
        f"tool {tool_name} failed: tool {tool_name} timed out after 0.5s")


def test_run_tool_raises_tool_timeout() -> None:
    async def main() -> None:
        await run_tool(slow, parse_arguments(slow, "10"), ToolContext(), 0.2)

    with pytest.raises(ToolTimeout, match="timed out after 0.2s"):
        asyncio.run(main())


def test_ten_megabytes_of_output_are_truncated_with_a_marker(tmp_path: Path) -> None:
    path = write_spec(tmp_path, ["Action: flood[10]", "Action: flood[1]", "Final Answer: ok"],
                      ["flood"], loop={"style": "react", "max_observation_chars": 2000})
    result = run(path)
    assert result.status == "finished"
    first = result.steps[0].observation
    assert len(first) <= 2000
    assert first.startswith("0123456789")
    assert "output truncated" in first and "of 10000007 characters dropped" in first
    assert "THE-END" not in first


def test_a_tool_entry_can_set_its_own_output_size(tmp_path: Path) -> None:
    path = write_spec(tmp_path, ["Action: flood[1]", "Final Answer: ok"],
                      [{"flood": {"max_output_chars": 500}}])
    obs = run(path).steps[0].observation
    assert len(obs) <= 500 and "output truncated" in obs


@pytest.mark.parametrize("action,expected", [
    ("binary[]", "caf\ufffd \ufffd\ufffd ok"),
    ("surrogate[]", "bad ? end"),
    ("weird[tuple-keys]", "{(1, 2): 'tuple key'}"),
    ("weird[circular]", "[[...]]"),
    ("weird[model]", '{"x":1,"y":2}'),
    ("weird[unprintable]", "<unprintable Unprintable: RuntimeError>"),
])
def test_undecodable_or_unserialisable_output_never_crashes(tmp_path: Path, action: str,
                                                            expected: str) -> None:
    path = write_spec(tmp_path, [f"Action: {action}", "Final Answer: ok"],
                      ["binary", "surrogate", "weird"])
    result = run(path)
    assert result.status == "finished"
    obs = result.steps[0].observation
    assert obs == expected
    obs.encode("utf-8")  # always valid text
    json.dumps(result.to_dict(), default=str)  # and the transcript stays serialisable


def test_objects_in_output_are_encoded_with_repr(tmp_path: Path) -> None:
    result = run(write_spec(tmp_path, ["Action: weird[object]", "Final Answer: ok"], ["weird"]))
    data = json.loads(result.steps[0].observation)
    assert data["when"].startswith("<object object at")
    assert data["set"] == "{1}" and data["raw"] == "b'\\xff'"


@pytest.mark.parametrize("name", ["quits", "aquits"])
def test_a_tool_calling_sys_exit_is_a_tool_failure_not_the_end(tmp_path: Path, name: str) -> None:
    result = run(write_spec(tmp_path, [f"Action: {name}[2]", "Final Answer: still here"], [name]))
    assert result.status == "finished" and result.answer == "still here"
    assert result.steps[0].observation == f"tool {name} failed: SystemExit: 2"


def test_format_output_marker_counts_what_was_dropped() -> None:
    text = format_output("x" * 10_000, 1000)
    assert len(text) <= 1000
    kept = text.index("\n[...")
    assert text.endswith(f"{10_000 - kept} of 10000 characters dropped ...]")
    assert format_output("short", 1000) == "short"
    assert format_output({"a": [1, "é"]}, 1000) == '{"a": [1, "é"]}'
    assert format_output(None, 100) == "null"


def test_isolation_is_declared_on_the_tool_and_kept_by_its_factory() -> None:
    def crunch(n: int) -> int:
        """Crunches."""
        return n

    isolated = tool(crunch, isolation="process")
    assert isolated.isolation == "process" and tool(crunch).isolation == "thread"
    built = as_factory(isolated).build(None, None)
    assert built is not isolated and built.isolation == "process"
    with pytest.raises(ValueError, match="isolation must be one of thread, process"):
        tool(crunch, isolation="fork")  # type: ignore[arg-type]


def test_arguments_nested_past_the_bound_are_refused_before_validation() -> None:
    from runner.tools import MAX_ARGUMENT_DEPTH, too_deep

    @tool
    def keep(data: Any) -> str:
        """Keeps anything."""
        return "kept"

    def nested(levels: int) -> Any:
        value: Any = []
        for _ in range(levels - 1):
            value = [value]
        return value

    assert parse_arguments(keep, {"data": nested(MAX_ARGUMENT_DEPTH - 1)})
    for raw in ({"data": nested(MAX_ARGUMENT_DEPTH)},
                json.dumps({"data": nested(MAX_ARGUMENT_DEPTH)}),
                '{"data": ' + "[" * 100_000 + "]" * 100_000 + "}"):
        with pytest.raises(ToolError, match=f"nested more than {MAX_ARGUMENT_DEPTH} levels"):
            parse_arguments(keep, raw)
    assert not too_deep("[" * 1000) and not too_deep({"a": 1, "b": [1, {"c": 2}]})
    assert too_deep(nested(MAX_ARGUMENT_DEPTH + 1))


# ------------------------------------------------------------------------------ calculator


@pytest.mark.parametrize("expression,expected", [
    ("17*23", 391), ("2*(3+4)", 14), ("sqrt(16)", 4), ("2^10", 1024), ("7/2", 3.5),
    ("7//2", 3), ("-3**2", -9), ("10 % 3", 1), ("abs(-3) + max(1, 2, 3)", 6),
    ("round(2.567, 2)", 2.57), ("17 × 23", 391), ("8 ÷ 2", 4), ("2**0.5", 2 ** 0.5),
    ("pi * 2", 6.283185307179586), ("1e3 + 1", 1001.0), ("round(1234, -2)", 1200),
    ("round(2.5)", 2), ("round(1.23456, 1000)", 1.23456), ("17 << 2", 68), ("1024 >> 3", 128),
    ("(2**10) ** 3", 2 ** 30),
])
def test_calculator_computes_normal_expressions(expression: str, expected: float) -> None:
    assert evaluate(expression) == pytest.approx(expected)


HOSTILE = {
    "9**9**9": "too large",
    "'a'*10**9": "only numbers",
    "().__class__": "only numbers",
    "(" * 100_000 + "1" + ")" * 100_000: "longer than",
    "1/0": "division by zero",
    "1//0": "division by zero",
    "1 % 0": "division by zero",
    "__import__('os').system('true')": "only numbers",
    "(1).__class__.__bases__": "only numbers",
    "[x for x in range(10**9)]": "only numbers",
    "10.0**400": "cannot compute",
    "1e308 * 10": "too large",
    "2**99999 * 2**99999": "too large",
    "exp(1000)": "cannot compute",
    "sqrt(-1)": "math domain error",
    "foo(1)": "not defined",
    "": "empty",
    "2 +": "not an arithmetic expression",
}


@pytest.mark.parametrize("expression,reason", HOSTILE.items(),
                         ids=[e if len(e) < 40 else e[:20] + "..." for e in HOSTILE])
def test_calculator_refuses_hostile_expressions(expression: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):  # one that computed would hang: pytest-timeout
        evaluate(expression)


def test_calculator_faults_are_observations_in_a_run(tmp_path: Path) -> None:
    hostile = ["9**9**9", "'a'*10**9", "().__class__", "(" * 100_000 + "1" + ")" * 100_000, "1/0"]
    replies = [f"Action: calculator[{e}]" for e in hostile] + [
        "Action: calculator[17*23]", "Final Answer: 391"]
    path = write_spec(tmp_path, replies, ["calculator"], loop={"style": "react",
                                                                "max_iterations": 10})
    result = run(path)
    assert result.status == "finished" and result.answer == "391"
    for step in result.steps[:len(hostile)]:
        assert step.error and step.observation.startswith("tool calculator failed: ValueError: ")
    assert result.steps[len(hostile)].observation == "391"
