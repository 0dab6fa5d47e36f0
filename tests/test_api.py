"""The Python API: streaming events live, results, RunFailed, cancellation."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

import runner
from runner import events as ev


class _Gate:
    """A tool that waits until the test has seen its ActionTaken event."""

    def __init__(self) -> None:
        self.seen_action = asyncio.Event()

    @runner.hookimpl
    def register_tools(self, register: Any) -> None:
        gate = self

        @runner.tool
        async def gated(x: str) -> str:
            """Waits for the test."""
            await asyncio.wait_for(gate.seen_action.wait(), 5)
            return f"opened {x}"

        register(gated)


@pytest.fixture
def gate() -> Any:
    g = _Gate()
    name = runner.register_plugin(g, name="gate-test")
    yield g
    runner.unregister_plugin(name)


def _spec(tmp_path: Path, replies: list[str], tools: str = "[]", extra: str = "") -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(textwrap.dedent(f"""\
        version: 1
        name: t
        model: {{id: fake/script, options: {{replies: {json.dumps(replies)}}}}}
        loop: {{style: react}}
        tools: {tools}
        memory: {{backend: none}}
        """) + extra)
    return p


def test_events_stream_while_the_run_is_in_progress(gate: _Gate, tmp_path: Path) -> None:
    spec = runner.load_spec(_spec(tmp_path, ["Thought: open it\nAction: gated[door]",
                                             "Final Answer: open"], "[gated]"))

    async def go() -> tuple[list[str], Any]:
        run = runner.Agent(spec).start("q")
        kinds = []
        async for event in run.events():
            kinds.append(event.kind)
            if isinstance(event, ev.ActionTaken):
                assert run.result.status == "running"  # the tool has not finished yet
                gate.seen_action.set()
        return kinds, run.result

    kinds, result = asyncio.run(go())
    assert kinds == ["run_started", "model_started", "model_called", "thought",  # no session
                     "action", "observation", "model_started", "model_called", "final_answer",
                     "run_ended"]
    assert result.status == "finished" and result.steps[0].observation == "opened door"


def test_run_agent_raise_on_error_carries_the_result(tmp_path: Path) -> None:
    path = _spec(tmp_path, ["no format here", "still nothing", "nope"])
    with pytest.raises(runner.RunFailed) as err:
        runner.run_agent(path, "q", raise_on_error=True)
    result = err.value.result
    assert result.status == "max_parse_errors" and len(result.steps) == 3
    assert all(s.error for s in result.steps)


def test_leaving_the_stream_early_cancels_the_run(gate: _Gate, tmp_path: Path) -> None:
    spec = runner.load_spec(_spec(tmp_path, ["Action: gated[x]", "Final Answer: no"], "[gated]"))

    async def go() -> Any:
        run = runner.Agent(spec).start("q")
        async for event in run.events():
            if isinstance(event, ev.ActionTaken):
                break
        return run.result

    result = asyncio.run(go())
    assert result.status == "interrupted" and result.incomplete


def test_many_concurrent_runs_on_one_event_loop(tmp_path: Path) -> None:
    spec = runner.load_spec(_spec(tmp_path, [], extra="").with_name("s.yaml"),
                            ["model.id=fake/echo"])
    agent = runner.Agent(spec)

    async def go() -> list[Any]:
        return await asyncio.gather(*(agent.run(f"question {i}") for i in range(300)))

    results = asyncio.run(go())
    assert [r.answer for r in results] == [f"question {i}" for i in range(300)]
    assert len({r.run_id for r in results}) == 300


# --------------------------------------------------------------------------- what an Agent owns

def _nested_memory_specs(tmp_path: Path) -> Path:
    """A parent with SQLite memory whose sub-agent has SQLite memory too, checkpoints on."""
    (tmp_path / "pyproject.toml").write_text("")
    for name, tools, replies in (
            ("child", "[]", ["Final Answer: from the child"]),
            ("parent", "[{agent: child.yaml}]", ["Action: child[go]", "Final Answer: done"])):
        (tmp_path / f"{name}.yaml").write_text(textwrap.dedent(f"""\
            version: 1
            name: {name}
            model: {{id: fake/script, options: {{replies: {json.dumps(replies)}}}}}
            loop: {{style: react}}
            tools: {tools}
            memory: {{backend: sqlite, session: s, path: {tmp_path / (name + '.db')}}}
            checkpoint: {{path: {tmp_path / 'runs.db'}}}
            trace: {{enabled: false}}
            """))
    return tmp_path / "parent.yaml"


def test_async_with_agent_closes_memory_store_and_sub_agents(tmp_path: Path) -> None:
    async def go() -> tuple[Any, Any, Any]:
        async with runner.Agent(runner.load_spec(_nested_memory_specs(tmp_path))) as agent:
            result = await agent.run("q")
            (child,) = agent.children
            assert agent.memory._db is not None and child.memory._db is not None  # opened
        return agent, child, result

    agent, child, result = asyncio.run(go())
    assert result.status == "finished" and result.steps[0].observation == "from the child"
    assert agent.memory._db is None and child.memory._db is None
    assert agent.checkpoints is not None and agent.checkpoints._db is None
    asyncio.run(agent.close())  # a second close is harmless


def test_run_agent_closes_what_it_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[str] = []
    real = runner.Agent.close

    async def close(self: Any) -> None:
        closed.append(self.spec.name)
        await real(self)

    monkeypatch.setattr(runner.Agent, "close", close)
    result = runner.run_agent(_nested_memory_specs(tmp_path), "q")
    assert result.status == "finished"
    assert closed == ["parent", "child"]  # the parent closes its sub-agent
