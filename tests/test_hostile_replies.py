"""Hostile replies from a model server, end to end over the wire (LiteLLM calling the scripted
server on 127.0.0.1): native arguments nested too deep, tool calls that share an id, negative
usage, and the peers' text dialects. Each must leave the run going, or end it on a limit,
with its status and result intact."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import run_cli, tools_plugin

import runner
from runner.budget import Budget
from runner.models import Completion, Usage
from runner.spec import BudgetSpec
from runner.testing import ScriptedOpenAIServer, tool_call_responder

CALLS: list[tuple[str, Any]] = []


@runner.tool
def hostile_add(a: int, b: int) -> int:
    """Adds two integers."""
    CALLS.append(("hostile_add", (a, b)))
    return a + b


@runner.tool
def hostile_echo(text: str) -> str:
    """Returns the text it is given."""
    CALLS.append(("hostile_echo", text))
    return text


@pytest.fixture(autouse=True)
def hostile_tools() -> Iterator[None]:
    CALLS.clear()
    with tools_plugin(hostile_add, hostile_echo):
        yield


def write_spec(tmp_path: Path, server: ScriptedOpenAIServer, style: str = "tools",
               **sections: Any) -> Path:
    data: dict[str, Any] = {
        "version": 1, "name": "hostile",
        "model": {"id": "openai/scripted", "api_base": server.url, "retries": 0},
        "loop": {"style": style}, "tools": ["hostile_add", "hostile_echo", "calculator"],
        "memory": {"backend": "none"}, "checkpoint": {"enabled": False},
    }
    for key, value in sections.items():
        data[key] = {**data[key], **value} if isinstance(data.get(key), dict) else value
    (tmp_path / "pyproject.toml").write_text("")
    path = tmp_path / "hostile.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run(path: Path, question: str = "question") -> runner.RunResult:
    agent = runner.Agent(runner.load_spec(path))
    return asyncio.run(agent.run(question))


def tool_messages(request: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in request["messages"] if m["role"] == "tool"]


# ------------------------------------------------------------ arguments nested too deep (8)

DEEP = {"objects": '{"a":' * 500 + "1" + "}" * 500, "arrays": "[" * 500 + "]" * 500}


@pytest.mark.parametrize("arguments", DEEP.values(), ids=list(DEEP))
def test_native_arguments_nested_too_deep_become_an_observation_and_the_run_goes_on(
        tmp_path: Path, server: ScriptedOpenAIServer, arguments: str) -> None:
    server.script({"tool_calls": [{"id": "c1", "name": "hostile_echo", "arguments": arguments}]},
                  {"tool_calls": [{"id": "c2", "name": "hostile_echo",
                                   "arguments": {"text": "flat"}}]},
                  "flat it is")
    result = run(write_spec(tmp_path, server))
    assert result.status == "finished" and result.answer == "flat it is"
    assert CALLS == [("hostile_echo", "flat")]
    first = result.steps[0]
    assert first.error and "nested" in first.observation and first.action is None
    # the deep call is answered (providers reject an open call), with the advice
    assert tool_messages(server.requests[1]) == [
        {"role": "tool", "tool_call_id": "c1", "content": first.observation}]
    json.dumps(result.to_dict())  # the result serialises: nothing deep was kept


def test_runner_run_json_survives_deep_native_arguments(
        tmp_path: Path, server: ScriptedOpenAIServer) -> None:
    server.script({"tool_calls": [{"id": "c1", "name": "calculator",
                                   "arguments": DEEP["objects"]}]}, "done")
    path = write_spec(tmp_path, server, tools=["calculator"], checkpoint={"enabled": True})
    proc = run_cli("run", str(path), "q", "--json", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "finished" and result["answer"] == "done"
    assert "nested" in result["steps"][0]["observation"]
    runs = run_cli("runs", "--json", cwd=tmp_path, timeout=120)
    assert runs.returncode == 0, runs.stderr
    assert '"running"' not in runs.stdout and '"finished"' in runs.stdout


# ------------------------------------------------------------ calls that share an id (14)

def test_native_calls_sharing_an_id_each_get_their_own_result_in_order(
        tmp_path: Path, server: ScriptedOpenAIServer) -> None:
    server.script({"tool_calls": [
        {"id": "call_1", "name": "hostile_add", "arguments": {"a": 1, "b": 1}},
        {"id": "call_1", "name": "hostile_add", "arguments": {"a": 100, "b": 200}}]}, "done")
    result = run(write_spec(tmp_path, server))
    assert result.status == "finished"
    assert sorted(CALLS) == [("hostile_add", (1, 1)), ("hostile_add", (100, 200))]
    assert [s.observation for s in result.steps[:2]] == ["2", "300"]
    sent = server.requests[1]["messages"]
    (assistant,) = [m for m in sent if m["role"] == "assistant"]
    assert [c["id"] for c in assistant["tool_calls"]] == ["call_1", "call_1"]
    assert [json.loads(c["function"]["arguments"]) for c in assistant["tool_calls"]] == [
        {"a": 1, "b": 1}, {"a": 100, "b": 200}]
    assert [(m["tool_call_id"], m["content"]) for m in tool_messages(server.requests[1])] == [
        ("call_1", "2"), ("call_1", "300")]


def test_calls_sharing_an_id_after_a_failure_all_get_the_advice(
        tmp_path: Path, server: ScriptedOpenAIServer) -> None:
    server.script({"tool_calls": [
        {"id": "call_1", "name": "hostile_add", "arguments": {"a": 1, "b": 1}},
        {"id": "call_1", "name": "hostile_add", "arguments": DEEP["arrays"]}]}, "done")
    result = run(write_spec(tmp_path, server))
    assert result.status == "finished" and CALLS == []
    sent = tool_messages(server.requests[1])
    assert [m["content"] for m in sent] == [result.steps[0].observation] * 2


# ------------------------------------------------------------ negative usage (15)

def with_usage(respond: Callable[[dict[str, Any]], Any], usage: dict[str, Any]
               ) -> Callable[[dict[str, Any]], Any]:
    """A responder whose every reply reports `usage`."""
    def answer(body: dict[str, Any]) -> Any:
        item = respond(body)
        return {**({"content": item} if isinstance(item, str) else item), "usage": usage}
    return answer


@pytest.fixture(params=["direct", "litellm"])
def transport(request: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("RUNNER_TRANSPORT", "auto" if request.param == "direct" else "litellm")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    return request.param


@pytest.mark.parametrize("style", ["tools", "react"])
def test_negative_usage_from_the_server_never_turns_the_token_budget_off(
        tmp_path: Path, server: ScriptedOpenAIServer, transport: str, style: str) -> None:
    server.responder = with_usage(tool_call_responder(100),
                                  {"prompt_tokens": -1_000_000, "completion_tokens": 10})
    path = write_spec(tmp_path, server, style, tools=["calculator"], budget={"tokens": 45},
                      loop={"max_iterations": 50})
    result = run(path)
    assert result.status == "budget_tokens", (result.status, result.error)
    assert result.error == "budget_tokens: reached 50 of 45"
    assert len(server.requests) == 5
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (0, 50)


@pytest.mark.parametrize("reported,counted", [
    ((-1_000_000, 5), (0, 5)), ((5, -3), (5, 0)), (("many", None), (0, 0)),
    ((math.nan, math.inf), (0, 0)), ((-math.inf, 7.0), (0, 7)), ((True, 2), (0, 2)),
])
def test_usage_counts_are_never_negative(reported: tuple[Any, Any], counted: tuple[int, int]
                                         ) -> None:
    usage = Usage(*reported)
    assert (usage.prompt_tokens, usage.completion_tokens) == counted
    assert usage.total == sum(counted)


@pytest.mark.parametrize("bad_cost", [-1000.0, math.nan, -math.inf])
def test_a_negative_or_unknowable_cost_never_turns_the_cost_budget_off(bad_cost: float) -> None:
    budget = Budget(BudgetSpec(cost_usd=0.25))
    budget.charge(None, Completion("x", cost_usd=bad_cost))
    assert budget.cost == 0.0
    budget.charge(None, Completion("x", cost_usd=0.2))
    with pytest.raises(runner.LimitExceeded) as exc:
        budget.charge(None, Completion("x", cost_usd=0.1))
    assert exc.value.limit == "budget_cost_usd"
    assert budget.cost_since(None) == pytest.approx(0.3)


def test_a_resumed_budget_with_negative_spending_starts_from_zero() -> None:
    budget = Budget(BudgetSpec(tokens=10, cost_usd=1.0, tool_calls=1),
                    spent={"prompt_tokens": -500, "completion_tokens": -500, "cost_usd": -5.0,
                           "tool_calls": -9, "wall_s": -100.0})
    assert budget.spent() == {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0,
                              "tool_calls": 0, "wall_s": pytest.approx(0.0, abs=1.0)}
    budget.charge_tool_call()
    with pytest.raises(runner.LimitExceeded):
        budget.charge_tool_call()


# ------------------------------------------------------------ the peers' dialects, on the wire

def test_a_json_blob_dialect_runs_over_the_wire(tmp_path: Path,
                                                server: ScriptedOpenAIServer) -> None:
    server.script('Thought: add them\n```json\n{"action": "hostile_add", '
                  '"action_input": {"a": 2, "b": 3}}\n```',
                  "{'action': 'hostile_echo', 'action_input': 'it is 5*'}\nObs",
                  '```json\n{"action": "Final Answer", "action_input": "5"}\n```')
    result = run(write_spec(tmp_path, server, "react"))
    assert result.status == "finished" and result.answer == "5"
    assert CALLS == [("hostile_add", (2, 3)), ("hostile_echo", "it is 5*")]
