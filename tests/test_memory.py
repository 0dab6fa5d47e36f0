"""Memory backends: buffer (with a window) and SQLite (per session, WAL, lock timeout)."""

from __future__ import annotations

import asyncio
import sqlite3
import textwrap
from pathlib import Path

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
