"""Limits (FAULTS.md "Limits"): max_iterations, the token, cost, wall-clock and tool-call
budgets, sub-agents drawing from their parent's budget, the sub-agent depth limit, loop
detection, and exit code 3 from the CLI.

Every limit ends the run with a status naming it, an error naming the count, `incomplete`
set and the best partial answer kept. Budgets are checked before each model call (a budget
already spent makes no request) and after it, with the usage the provider reported.

Replies come from the scripted `fake/` model, or from the scripted OpenAI-compatible server
where real usage and prices matter (LiteLLM prices `openai/gpt-4o-mini`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import runner
from runner import events as ev
from runner.budget import Budget, Clock
from runner.testing import ScriptedOpenAIServer

from conftest import run_cli, tools_plugin

CALLS: list[tuple[str, Any]] = []


class ManualClock(Clock):
    """Time moves only when a test (or the `lim_tick` tool) moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


@runner.tool
def lim_echo(text: str) -> str:
    """Returns the text it is given."""
    CALLS.append(("lim_echo", text))
    return text


@runner.tool
def lim_tick(seconds: float, context: runner.ToolContext) -> str:
    """Lets `seconds` pass on the run's clock."""
    CALLS.append(("lim_tick", seconds))
    context.budget.clock.now += seconds
    return f"waited {seconds:g}s"


@pytest.fixture(autouse=True)
def limit_tools() -> Iterator[None]:
    CALLS.clear()
    with tools_plugin(lim_echo, lim_tick):
        yield


def write_spec(path: Path, replies: list[Any] | None = None, *, model: dict[str, Any] | None = None,
               tools: list[Any] | None = None, **sections: Any) -> Path:
    data: dict[str, Any] = {
        "version": 1,
        "name": path.stem,
        "model": model or {"id": "fake/script", "options": {"replies": replies or []}},
        "loop": {"style": "react"},
        "tools": ["lim_echo", "calculator"] if tools is None else tools,
        "memory": {"backend": "none"},
        "checkpoint": {"enabled": False},
    }
    for key, value in sections.items():
        data[key] = {**data[key], **value} if isinstance(data.get(key), dict) else value
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def on_server(server: ScriptedOpenAIServer, model_id: str = "openai/scripted") -> dict[str, Any]:
    return {"id": model_id, "api_base": server.url, "retries": 0}


def run(path: Path, question: str = "question", *, clock: Clock | None = None,
        budget: dict[str, Any] | None = None
        ) -> tuple[runner.RunResult, runner.Agent, list[ev.Event]]:
    events: list[ev.Event] = []
    spec = runner.load_spec(path)
    agent = runner.Agent(spec, sinks=[events.append], clock=clock)

    async def go() -> runner.RunResult:
        spent = None if budget is None else Budget(spec.budget, agent.clock, spent=budget)
        return await agent.start(question, budget=spent).execute()

    return asyncio.run(go()), agent, events


def reply(text: str, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {"content": text, "usage": {"prompt_tokens": prompt_tokens,
                                       "completion_tokens": completion_tokens}}


def assert_limit(result: runner.RunResult, status: str, error: str) -> None:
    assert result.status == status, (result.status, result.error)
    assert result.error == error
    assert result.incomplete and not result.ok
    assert isinstance(result.exception, runner.LimitExceeded)
    assert result.exception.limit == status


# ------------------------------------------------------------------------------ max_iterations


def test_max_iterations_ends_the_run_naming_the_count(tmp_path: Path) -> None:
    replies = [f"Thought: step {i}\nAction: lim_echo[{i}]" for i in range(1, 5)]
    path = write_spec(tmp_path / "a.yaml", replies + ["Final Answer: too late"],
                      loop={"max_iterations": 4})
    result, agent, events = run(path)
    assert_limit(result, "max_iterations", "max_iterations: reached 4 of 4")
    assert len(agent.models[0].calls) == 4  # no fifth call was made
    assert CALLS == [("lim_echo", str(i)) for i in range(1, 5)]
    assert [s.observation for s in result.steps] == ["1", "2", "3", "4"]
    assert result.answer == "step 4"  # the best partial answer: the latest thought
    assert isinstance(events[-1], ev.RunEnded) and events[-1].status == "max_iterations"


def test_max_iterations_partial_answer_falls_back_to_the_last_observation(
        tmp_path: Path) -> None:
    path = write_spec(tmp_path / "a.yaml", ["Action: lim_echo[first]", "Action: lim_echo[second]"],
                      loop={"max_iterations": 2})
    result, _, _ = run(path)
    assert_limit(result, "max_iterations", "max_iterations: reached 2 of 2")
    assert result.answer == "second"


# ------------------------------------------------------------------------------ tokens


def test_token_budget_checked_after_the_call_with_the_reported_usage(
        tmp_path: Path, server: ScriptedOpenAIServer) -> None:
    server.script(reply("Thought: look it up\nAction: lim_echo[one]", 60, 10),
                  reply("Thought: and again\nAction: lim_echo[two]", 60, 10),
                  reply("Final Answer: never asked", 1, 1))
    path = write_spec(tmp_path / "a.yaml", model=on_server(server), budget={"tokens": 100})
    result, _, _ = run(path)
    assert_limit(result, "budget_tokens", "budget_tokens: reached 140 of 100")
    assert len(server.requests) == 2
    # the reply that went over the budget is not acted on
    assert CALLS == [("lim_echo", "one")]
    assert result.steps[0].observation == "one"
    assert result.answer == "look it up"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (120, 20)


def test_token_budget_checked_before_the_next_call(
        tmp_path: Path, server: ScriptedOpenAIServer) -> None:
    # exactly the budget: the reply is used, but no further call is made
    server.script(reply("Thought: one look\nAction: lim_echo[one]", 90, 10),
                  reply("Final Answer: never asked", 1, 1))
    path = write_spec(tmp_path / "a.yaml", model=on_server(server), budget={"tokens": 100})
    result, _, _ = run(path)
    assert_limit(result, "budget_tokens", "budget_tokens: reached 100 of 100")
    assert len(server.requests) == 1
    assert CALLS == [("lim_echo", "one")]
    assert result.answer == "one look"


def test_the_reply_that_crossed_the_budget_stays_in_the_transcript(
        tmp_path: Path, server: ScriptedOpenAIServer) -> None:
    server.script(reply("Thought: look\nAction: lim_echo[one]", 40, 10),
                  reply("Thought: got it\nFinal Answer: 42 (paid for)", 90, 10))
    path = write_spec(tmp_path / "a.yaml", model=on_server(server), budget={"tokens": 100})
    result, _, _ = run(path)
    assert result.status == "budget_tokens" and result.incomplete
    assert "42 (paid for)" in json.dumps(result.messages)
    assert result.answer == "42 (paid for)"


@pytest.mark.parametrize(("spent", "budget", "status", "error"), [
    ({"prompt_tokens": 80, "completion_tokens": 20}, {"tokens": 100}, "budget_tokens",
     "budget_tokens: reached 100 of 100"),
    ({"cost_usd": 0.25}, {"cost_usd": 0.25}, "budget_cost_usd",
     "budget_cost_usd: reached 0.25 of 0.25"),
    ({"wall_s": 30.0}, {"wall_s": 30}, "budget_wall_s", "budget_wall_s: reached 30.0 of 30.0"),
])
def test_a_budget_already_spent_makes_no_model_request(
        tmp_path: Path, server: ScriptedOpenAIServer, spent: dict[str, Any],
        budget: dict[str, Any], status: str, error: str) -> None:
    server.default = "Final Answer: should not be asked"
    path = write_spec(tmp_path / "a.yaml", model=on_server(server), budget=budget)
    result, _, events = run(path, clock=ManualClock(), budget=spent)
    assert_limit(result, status, error)
    assert server.requests == []
    assert result.steps == [] and result.answer is None
    assert not any(isinstance(e, ev.ModelCalled) for e in events)


# ------------------------------------------------------------------------------ cost


def test_cost_budget_uses_the_real_price_of_the_reported_usage(
        tmp_path: Path, server: ScriptedOpenAIServer) -> None:
    # gpt-4o-mini: $0.15 per million prompt tokens, $0.60 per million completion tokens
    server.script(reply("Thought: first\nAction: lim_echo[one]", 400_000, 1000),   # $0.0606
                  reply("Thought: second\nAction: lim_echo[two]", 400_000, 1000),  # $0.1212
                  reply("Final Answer: never asked", 1, 1))
    path = write_spec(tmp_path / "a.yaml", model=on_server(server, "openai/gpt-4o-mini"),
                      budget={"cost_usd": 0.1})
    result, _, events = run(path)
    assert_limit(result, "budget_cost_usd", "budget_cost_usd: reached 0.1212 of 0.1")
    assert len(server.requests) == 2
    assert CALLS == [("lim_echo", "one")]
    assert result.cost_usd == pytest.approx(0.1212)
    assert [e.cost_usd for e in events if isinstance(e, ev.ModelCalled)] == [
        pytest.approx(0.0606)]
    assert result.answer == "first"


def test_cost_within_budget_finishes(tmp_path: Path, server: ScriptedOpenAIServer) -> None:
    server.script(reply("Thought: first\nAction: lim_echo[one]", 400_000, 1000),
                  reply("Final Answer: cheap enough", 100_000, 1000))
    path = write_spec(tmp_path / "a.yaml", model=on_server(server, "openai/gpt-4o-mini"),
                      budget={"cost_usd": 0.1})
    result, _, _ = run(path)
    assert result.status == "finished" and result.answer == "cheap enough"
    assert result.cost_usd == pytest.approx(0.0606 + 0.0156)


# ------------------------------------------------------------------------------ wall clock


def test_wall_clock_budget_checked_before_each_call(tmp_path: Path) -> None:
    replies = ["Thought: wait\nAction: lim_tick[10]", "Thought: wait more\nAction: lim_tick[10]",
               "Final Answer: never asked"]
    path = write_spec(tmp_path / "a.yaml", replies, tools=["lim_tick"], budget={"wall_s": 15})
    result, agent, _ = run(path, clock=ManualClock())
    assert_limit(result, "budget_wall_s", "budget_wall_s: reached 20.0 of 15.0")
    assert len(agent.models[0].calls) == 2
    assert CALLS == [("lim_tick", 10.0), ("lim_tick", 10.0)]
    assert result.answer == "wait more"


def test_wall_clock_budget_cuts_a_slow_model_call_short(
        tmp_path: Path, server: ScriptedOpenAIServer) -> None:
    server.script("Thought: quick\nAction: lim_echo[fast]",
                  {"delay": 120, "content": "Final Answer: too slow"})
    path = write_spec(tmp_path / "a.yaml", model=on_server(server), budget={"wall_s": 1.0})
    result, _, _ = run(path)  # had the 120 s reply been waited for, it would have finished
    assert result.status == "budget_wall_s" and result.incomplete
    assert result.error.startswith("budget_wall_s: reached ") and result.error.endswith(" of 1.0")
    assert len(server.requests) == 2
    assert result.answer == "quick"


# ------------------------------------------------------------------------------ tool calls


def test_tool_call_budget(tmp_path: Path) -> None:
    replies = [f"Thought: call {i}\nAction: lim_echo[{i}]" for i in range(1, 4)]
    path = write_spec(tmp_path / "a.yaml", replies + ["Final Answer: never asked"],
                      budget={"tool_calls": 2})
    result, agent, _ = run(path)
    assert_limit(result, "budget_tool_calls", "budget_tool_calls: reached 2 of 2")
    assert CALLS == [("lim_echo", "1"), ("lim_echo", "2")]  # the third never ran
    assert len(agent.models[0].calls) == 3
    assert [s.observation for s in result.steps[:2]] == ["1", "2"]
    assert result.answer == "call 3"


def test_failed_tool_calls_count_against_the_tool_call_budget(tmp_path: Path) -> None:
    # a call that fails (1/0) still used the budget
    path = write_spec(tmp_path / "a.yaml", ["Action: calculator[1/0]", "Action: calculator[2/0]",
                                            "Action: calculator[1+1]"],
                      budget={"tool_calls": 2})
    result, _, _ = run(path)
    assert_limit(result, "budget_tool_calls", "budget_tool_calls: reached 2 of 2")
    assert all(s.error for s in result.steps[:2])


# ------------------------------------------------------------------------------ sub-agents


def _subagent_project(tmp_path: Path, server: ScriptedOpenAIServer, parent_budget: dict[str, Any],
                      sub_tools: list[Any] | None = None) -> Path:
    (tmp_path / "pyproject.toml").write_text("")
    write_spec(tmp_path / "writer.yaml", model=on_server(server), tools=sub_tools or [],
               description="Writes things.")
    return write_spec(tmp_path / "boss.yaml", model=on_server(server),
                      tools=[{"agent": "writer.yaml"}, "calculator"], budget=parent_budget)


def test_a_sub_agents_tokens_count_against_the_parents_budget(
        tmp_path: Path, server: ScriptedOpenAIServer) -> None:
    boss = _subagent_project(tmp_path, server, {"tokens": 100})
    server.script(reply("Thought: delegate\nAction: writer[a poem]", 25, 5),   # boss: 30
                  reply("Final Answer: roses are red", 70, 10),               # writer: 110
                  reply("Final Answer: never asked", 1, 1))
    result, _, _ = run(boss)
    assert_limit(result, "budget_tokens", "budget_tokens: reached 110 of 100")
    assert len(server.requests) == 2  # the boss made no call after its writer's
    assert result.answer == "delegate"


def test_a_sub_agent_stops_when_the_shared_budget_runs_out(
        tmp_path: Path, server: ScriptedOpenAIServer) -> None:
    boss = _subagent_project(tmp_path, server, {"tokens": 100})
    server.script(reply("Thought: delegate\nAction: writer[a poem]", 25, 5),   # boss: 30
                  reply("Thought: draft\nAction: calculator[1+1]", 60, 10),   # writer: 100
                  reply("Final Answer: never asked", 1, 1))
    write_spec(tmp_path / "writer.yaml", model=on_server(server), tools=["calculator"])
    result, _, _ = run(boss)
    assert len(server.requests) == 2  # the writer stopped before its second call, too
    assert result.status == "budget_tokens" and result.incomplete
    assert "sub-agent writer ended with budget_tokens" in result.steps[0].observation


def test_a_sub_agents_tool_calls_count_against_the_parents_budget(
        tmp_path: Path, server: ScriptedOpenAIServer) -> None:
    boss = _subagent_project(tmp_path, server, {"tool_calls": 2}, sub_tools=["calculator"])
    server.script("Thought: delegate\nAction: writer[sums]",                    # tool call 1
                  "Thought: add\nAction: calculator[1+1]",                      # tool call 2
                  "Thought: add more\nAction: calculator[2+2]",                 # over
                  "Thought: then myself\nAction: calculator[3+3]",              # over
                  "Final Answer: never asked")
    result, _, _ = run(boss)
    assert_limit(result, "budget_tool_calls", "budget_tool_calls: reached 2 of 2")
    assert len(server.requests) == 4
    assert "sub-agent writer ended with budget_tool_calls" in result.steps[0].observation


def _nested(tmp_path: Path, levels: int) -> Path:
    """a0 -> a1 -> ... -> a{levels}: a{levels} is nested `levels` deep."""
    (tmp_path / "pyproject.toml").write_text("")
    for i in range(levels, -1, -1):
        tools = [{"agent": f"a{i + 1}.yaml"}] if i < levels else ["calculator"]
        write_spec(tmp_path / f"a{i}.yaml", ["Final Answer: ok"], tools=tools)
    return tmp_path / "a0.yaml"


def test_sub_agents_nested_to_the_depth_limit_load(tmp_path: Path) -> None:
    spec = runner.resolve_spec(runner.load_spec(_nested(tmp_path, 4)))
    assert [t.name for t in runner.Agent(spec).tools.values()] == ["a1"]


def test_sub_agents_nested_deeper_than_the_limit_are_a_spec_error(tmp_path: Path) -> None:
    top = _nested(tmp_path, 6)
    with pytest.raises(runner.SpecError) as info:
        runner.resolve_spec(runner.load_spec(top))
    assert "nested deeper than 5" in str(info.value)
    proc = run_cli("run", str(top), "q")
    assert proc.returncode == 2
    assert "nested deeper than 5" in proc.stderr and "Traceback" not in proc.stderr


def test_sub_agents_nested_exactly_five_deep_load(tmp_path: Path) -> None:
    runner.resolve_spec(runner.load_spec(_nested(tmp_path, 5)))


# ------------------------------------------------------------------------------ loop detection


def test_the_same_call_max_repeats_times_is_refused_with_a_warning_then_loop_detected(
        tmp_path: Path) -> None:
    path = write_spec(tmp_path / "a.yaml", [f"Thought: try {i}\nAction: lim_echo[same]"
                                            for i in range(1, 5)] + ["Final Answer: never"],
                      loop={"max_iterations": 10})
    result, agent, events = run(path)
    assert CALLS == [("lim_echo", "same")] * 2  # the third identical call was not run
    third = result.steps[2]
    assert third.error and third.action == "lim_echo"
    assert "called with this same input 3 times" in third.observation
    assert "not run again" in third.observation
    warned = [e for e in events if isinstance(e, ev.Warned)]
    assert len(warned) == 1 and warned[0].step == 3 and "3 times" in warned[0].message
    # the model was told, in the next prompt
    fourth_prompt = "".join(str(m["content"]) for m in agent.models[0].calls[3])
    assert "called with this same input 3 times" in fourth_prompt
    assert_limit(result, "loop_detected", "loop_detected: reached 4 of 3")
    assert len(agent.models[0].calls) == 4
    assert result.answer == "try 4"


def test_a_changed_input_after_the_warning_goes_on(tmp_path: Path) -> None:
    path = write_spec(tmp_path / "a.yaml", ["Action: lim_echo[x]"] * 3 + [
        "Action: lim_echo[y]", "Final Answer: done"])
    result, _, _ = run(path)
    assert result.status == "finished" and result.answer == "done"
    assert CALLS == [("lim_echo", "x"), ("lim_echo", "x"), ("lim_echo", "y")]


def test_different_inputs_do_not_count_as_repeats(tmp_path: Path) -> None:
    inputs = ["a", "b", "a", "b", "c", "A"]
    path = write_spec(tmp_path / "a.yaml", [f"Action: lim_echo[{x}]" for x in inputs] + [
        "Final Answer: done"], loop={"max_iterations": 10})
    result, _, events = run(path)
    assert result.status == "finished"
    assert CALLS == [("lim_echo", x) for x in inputs]
    assert not any(isinstance(e, ev.Warned) for e in events)


def test_one_input_in_different_spellings_counts_as_the_same_call(tmp_path: Path) -> None:
    path = write_spec(tmp_path / "a.yaml", [
        "Action: calculator[17*23]",
        'Action: calculator\nAction Input: {"expression": "17*23"}',
        'Action: calculator["17*23"]',
        'ACTION: calculator\nACTION_INPUT: {"expression":"17*23"}',
        "Final Answer: never"], loop={"max_iterations": 10})
    result, _, _ = run(path)
    assert [s.observation for s in result.steps[:2]] == ["391", "391"]
    assert "same input 3 times" in result.steps[2].observation
    assert_limit(result, "loop_detected", "loop_detected: reached 4 of 3")


def test_max_repeats_is_configurable(tmp_path: Path) -> None:
    path = write_spec(tmp_path / "a.yaml", ["Action: lim_echo[z]"] * 3,
                      loop={"max_repeats": 2})
    result, _, _ = run(path)
    assert CALLS == [("lim_echo", "z")]
    assert "same input 2 times" in result.steps[1].observation
    assert_limit(result, "loop_detected", "loop_detected: reached 3 of 2")


def test_loop_detection_with_native_tool_calls(tmp_path: Path, server: ScriptedOpenAIServer) -> None:
    call = {"tool_calls": [{"name": "calculator", "arguments": {"expression": "17*23"}}]}
    spaced = {"tool_calls": [{"name": "calculator", "arguments": '{ "expression" : "17*23" }'}]}
    server.script(call, spaced, call, call, "never")
    path = write_spec(tmp_path / "a.yaml", model=on_server(server), loop={"style": "tools"})
    result, _, _ = run(path)
    assert [s.observation for s in result.steps[:2]] == ["391", "391"]
    assert "same input 3 times" in result.steps[2].observation
    assert_limit(result, "loop_detected", "loop_detected: reached 4 of 3")
    assert len(server.requests) == 4


# ------------------------------------------------------------------------------ the CLI


def test_cli_exit_code_3_for_a_budget(tmp_path: Path, server: ScriptedOpenAIServer) -> None:
    server.script(reply("Thought: counting\nAction: calculator[1+1]", 60, 10),
                  reply("Thought: more\nAction: calculator[2+2]", 60, 10))
    path = write_spec(tmp_path / "a.yaml", model=on_server(server), tools=["calculator"],
                      budget={"tokens": 100})
    proc = run_cli("run", str(path), "q", "--json", cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "budget_tokens" and result["incomplete"] is True
    assert result["error"] == "budget_tokens: reached 140 of 100"
    assert result["answer"] == "counting"
    assert result["steps"][0]["observation"] == "2"
    server.script(reply("Thought: counting\nAction: calculator[1+1]", 60, 10),
                  reply("Thought: more\nAction: calculator[2+2]", 60, 10))
    proc = run_cli("run", str(path), "q", cwd=tmp_path)
    assert proc.returncode == 3
    assert proc.stdout == ""
    assert "budget_tokens: reached 140 of 100" in proc.stderr


@pytest.mark.parametrize(("sets", "replies", "status"), [
    (["loop.max_iterations=2"], ["Action: calculator[1+1]", "Action: calculator[2+2]"],
     "max_iterations"),
    (["budget.tool_calls=1"], ["Action: calculator[1+1]", "Action: calculator[2+2]"],
     "budget_tool_calls"),
    ([], ["Action: calculator[1+1]"] * 4, "loop_detected"),
])
def test_cli_exit_code_3_for_every_limit(tmp_path: Path, sets: list[str], replies: list[str],
                                         status: str) -> None:
    path = write_spec(tmp_path / "a.yaml", replies + ["Final Answer: never"],
                      tools=["calculator"], loop={"max_iterations": 8})
    args = [a for s in sets for a in ("--set", s)]
    proc = run_cli("run", str(path), "q", "--json", *args, cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == status and result["incomplete"] is True
    assert result["error"].startswith(f"{status}: reached ")
