"""Memory backends: buffer (with a window) and SQLite (per session, WAL, lock timeout); runs
share a conversation only when a session is named."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

import runner
from runner.errors import RunnerError
from runner.memory import BufferMemory, SQLiteMemory


def _msgs(n: int, start: int = 0) -> list[dict[str, str]]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"}
            for i in range(start, start + n)]


def test_buffer_window_and_sessions() -> None:
    mem = BufferMemory(store={})

    async def go() -> None:
        await mem.append("a", _msgs(5))
        await mem.append("b", _msgs(1))
        assert [m["content"] for m in await mem.load("a")] == ["m0", "m1", "m2", "m3", "m4"]
        assert [m["content"] for m in await mem.load("a", window=2)] == ["m3", "m4"]
        assert len(await mem.load("b")) == 1 and await mem.load("c") == []

    asyncio.run(go())


def test_sqlite_persists_across_instances_with_window(tmp_path: Path) -> None:
    db = tmp_path / "deep" / "mem.db"

    async def go() -> None:
        first = SQLiteMemory(db)
        await first.append("s", _msgs(4))
        await first.append("other", _msgs(1, 100))
        await first.close()
        second = SQLiteMemory(db)
        assert [m["content"] for m in await second.load("s")] == ["m0", "m1", "m2", "m3"]
        assert [m["content"] for m in await second.load("s", window=3)] == ["m1", "m2", "m3"]
        assert [m["content"] for m in await second.load("other")] == ["m100"]
        await second.close()

    asyncio.run(go())
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sqlite_locked_by_another_writer_gives_a_typed_error_and_no_torn_rows(tmp_path: Path) -> None:
    db = tmp_path / "mem.db"
    mem = SQLiteMemory(db, busy_timeout_s=0.2)
    asyncio.run(mem.append("s", _msgs(2)))
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    with pytest.raises(RunnerError, match="mem.db.*locked"):
        asyncio.run(mem.append("s", _msgs(2, 2)))
    other.execute("ROLLBACK")
    assert [m["content"] for m in asyncio.run(mem.load("s"))] == ["m0", "m1"]
    asyncio.run(mem.close())


def test_unwritable_memory_path_names_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    mem = SQLiteMemory(blocker / "mem.db")
    with pytest.raises(RunnerError, match="file/mem.db"):
        asyncio.run(mem.load("s"))


def test_agent_memory_window_reaches_the_prompt(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(textwrap.dedent(f"""\
        version: 1
        model:
          id: fake/script
          options: {{replies: ["Final Answer: one", "Final Answer: two", "Final Answer: three"]}}
        loop: {{style: react}}
        memory: {{backend: sqlite, path: "{tmp_path / 'm.db'}", window: 2}}
        """))
    agent = runner.Agent(runner.load_spec(spec), session="w")

    async def go() -> list[str]:
        out = []
        for q in ("q1", "q2", "q3"):
            out.append((await agent.run(q)).messages[0]["content"])
        await agent.memory.close()
        return out

    prompts = asyncio.run(go())
    assert "Earlier in this conversation" not in prompts[0]
    assert "User: q1\nAssistant: one" in prompts[1]
    assert "User: q1" not in prompts[2] and "User: q2\nAssistant: two" in prompts[2]


# ------------------------------------------------- runs are independent unless a session is named


def _native_spec(tmp_path: Path, server: Any, memory: str) -> Path:
    (tmp_path / "pyproject.toml").write_text("")
    spec = tmp_path / "chat.yaml"
    spec.write_text(textwrap.dedent(f"""\
        version: 1
        name: chat
        model: {{id: openai/scripted, api_base: '{server.url}'}}
        loop: {{style: tools}}
        tools: [calculator]
        memory: {memory}
        checkpoint: {{enabled: false}}
        trace: {{enabled: false}}
        """))
    return spec


@pytest.mark.parametrize("backend", ["buffer", "sqlite"])
def test_runs_of_one_agent_share_nothing_unless_a_session_is_named(
        tmp_path: Path, server: Any, backend: str) -> None:
    """One Agent, three runs, no session: each request holds only that run's question (the
    default buffer used to keep one process-wide conversation, `default`, for every run)."""
    server.default = "an answer"
    path = tmp_path / "m.db"
    spec = _native_spec(tmp_path, server, f"{{backend: {backend}, path: '{path}'}}"
                        if backend == "sqlite" else "{backend: buffer}")
    agent = runner.Agent(runner.load_spec(spec))

    async def go() -> None:
        for q in ("first caller's secret", "second", "third"):
            assert (await agent.run(q)).ok
        await agent.close()

    asyncio.run(go())
    sent = [r["messages"] for r in server.requests]
    assert len(sent) == 3 and len(sent[0]) == len(sent[1]) == len(sent[2])
    assert "first caller's secret" not in json.dumps(sent[1:])
    # and another Agent of the same spec in the same process does not see them either
    server.requests.clear()
    assert runner.run_agent(spec, "fourth").ok
    assert len(server.requests[0]["messages"]) == len(sent[0])
    assert not path.exists()  # nothing to keep: the database was never even created


def test_a_named_session_carries_over_runs_agents_and_processes(tmp_path: Path,
                                                                server: Any) -> None:
    server.default = "noted"
    db = tmp_path / "m.db"
    spec = _native_spec(tmp_path, server, f"{{backend: sqlite, path: '{db}', session: team}}")
    agent = runner.Agent(runner.load_spec(spec))

    async def go() -> None:
        for q in ("one", "two"):
            assert (await agent.run(q)).ok
        await agent.close()

    asyncio.run(go())
    from conftest import run_cli

    proc = run_cli("run", str(spec), "three", cwd=tmp_path)  # another process
    assert proc.returncode == 0, proc.stderr
    counts = [len(r["messages"]) for r in server.requests]
    assert counts[1] == counts[0] + 2 and counts[2] == counts[0] + 4
    assert "one" in json.dumps(server.requests[2]["messages"])

    # a buffer session named in the spec lives as long as the process, across agents
    server.requests.clear()
    name = f"buffer-{uuid.uuid4().hex}"
    spec = _native_spec(tmp_path, server, f"{{backend: buffer, session: {name}}}")
    for q in ("a", "b"):
        assert runner.run_agent(spec, q).ok
    assert [len(r["messages"]) for r in server.requests] == [counts[0], counts[0] + 2]
