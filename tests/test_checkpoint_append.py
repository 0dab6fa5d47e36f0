"""Checkpoints written in pieces (a head per run, a row per step and per message): every save
loads back as the whole state a full rewrite would have given, a long run writes only what
changed, a kill -9 in the middle of a long run leaves the last committed save, an older
database of whole-state rows loads and continues, parent and child runs keep to their own
rows, secrets are masked in every piece, and a run's own session round-trips."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import runner
from runner.checkpoints import CheckpointStore, Steps, Tally, release, restore_run
from runner.result import to_json
from runner.testing import tool_call_responder
from runner.testing.server import ScriptedOpenAIServer

SECRET = 'sk-live-12"34\\5678-abcdef'  # a quote and a backslash: escaped inside JSON


def spec(folder: Path, url: str, db: Path, *, iterations: int = 400) -> Path:
    (folder / "pyproject.toml").touch()
    path = folder / "long.yaml"
    path.write_text(
        "version: 1\nname: long\n"
        f"model: {{id: openai/scripted, api_base: '{url}', retries: 0, timeout_s: 60}}\n"
        f"loop: {{style: tools, max_iterations: {iterations}}}\ntools: [calculator]\n"
        f"memory: {{backend: none}}\ncheckpoint: {{path: '{db}'}}\ntrace: {{enabled: false}}\n")
    return path


def view_state(db: Path, run_id: str) -> dict[str, Any]:
    """The whole state as the `runs` view shows it (what `sqlite3 runs.db` and older tools
    read)."""
    with contextlib.closing(sqlite3.connect(db)) as con:
        (text,) = con.execute("SELECT state FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    return json.loads(text)  # type: ignore[no-any-return]


@pytest.fixture
def every_save_checked(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Every save of every SQLite store, checked: the state read back by another store (its
    own connection and cursors) equals what a whole rewrite would hold. Yields the number of
    pieces each save wrote."""
    save, written = CheckpointStore.save, [0]
    counts: list[int] = []

    def counted(method: Any) -> Any:
        def counting(self: CheckpointStore, *args: Any) -> Any:
            rows = method(self, *args)
            written[0] += len(rows)
            return rows

        return counting

    def checking(self: CheckpointStore, state: dict[str, Any]) -> None:
        written[0] = 0
        save(self, state)
        counts.append(written[0])
        want = json.loads(self._encode(state)[0])  # the whole state, masked as it is stored
        reader = CheckpointStore(self.path)
        try:
            assert reader.load(state["run_id"]) == want
        finally:
            reader.close()
        shown = view_state(self.path, state["run_id"])
        assert [s["index"] for s in shown["steps"]] == [s["index"] for s in want["steps"]]
        assert len(shown["messages"]) == len(want["messages"]) and "_apart" not in shown

    monkeypatch.setattr(CheckpointStore, "_pieces", counted(CheckpointStore._pieces))
    monkeypatch.setattr(CheckpointStore, "_entries", counted(CheckpointStore._entries))
    monkeypatch.setattr(CheckpointStore, "save", checking)
    yield counts


def rate_limited_once_at(calls: int, total: int) -> Any:
    """`total` calculator calls, a 429 once when `calls` are done (the run ends resumable)."""
    respond, failed = tool_call_responder(total), []

    def reply(body: dict[str, Any]) -> Any:
        done = sum(1 for m in body.get("messages") or [] if m.get("role") == "tool")
        if done == calls and not failed:
            failed.append(done)
            return {"status": 429, "body": "slow down"}
        return respond(body)

    return reply


def test_a_long_run_appends_and_resumes_to_the_state_a_full_rewrite_gives(
        tmp_path: Path, server: ScriptedOpenAIServer, every_save_checked: list[int]) -> None:
    db = tmp_path / "runs.db"
    server.responder = rate_limited_once_at(60, 120)
    first = runner.run_agent(spec(tmp_path, server.url, db), "count")
    assert first.status == "model_rate_limited" and len(first.steps) == 60, first.error
    # after the first save, each save writes the step just made, the open one, the step's
    # two messages (the model's call and the tool's answer) and its repeat count: not the run
    assert max(every_save_checked[2:]) <= 5, every_save_checked
    saved = len(every_save_checked)
    result = runner.resume_run(first.run_id, db=str(db))
    assert result.status == "finished" and len(result.steps) == 121, result.error
    assert every_save_checked[saved] >= 120  # a resumed run is written whole once, then
    assert max(every_save_checked[saved + 2:]) <= 5  # appended to
    state = CheckpointStore(db).load(first.run_id)
    assert [s["index"] for s in state["steps"]] == list(range(1, 122))
    assert [s["input"] for s in state["steps"][:120]] == [
        {"expression": f"{i}+1"} for i in range(120)]
    assert sum(m["role"] == "tool" for m in state["messages"]) == 120
    assert len(state["repeats"]) == 120 and set(state["repeats"].values()) == {1}
    with contextlib.closing(sqlite3.connect(db)) as con:
        assert con.execute("SELECT count(*) FROM run_steps").fetchone() == (121,)
        assert con.execute("SELECT count(*) FROM run_entries").fetchone() == (120,)
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)


# ----------------------------------------------------------------------- kill -9, mid-run


def test_kill_9_in_the_middle_of_a_long_run_leaves_the_last_committed_save(
        tmp_path: Path) -> None:
    n = 600
    server = subprocess.Popen([sys.executable, "-m", "runner.testing", "--port", "0",
                               "--tool-calls", str(n)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        db = tmp_path / ".runner" / "runs.db"
        path = spec(tmp_path, url, db, iterations=n + 5)
        env = {**os.environ, "OPENAI_API_KEY": "none", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        command = [sys.executable, "-m", "runner", "run", str(path), "count"]
        run_id = None
        for at_least in (40, 250):  # killed twice, at different lengths, then left to finish
            child = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
            try:
                while committed(db) < at_least:
                    assert child.poll() is None, "the run ended before it was killed"
                    time.sleep(0.002)
            finally:
                child.send_signal(signal.SIGKILL)
                child.wait(30)
            state = CheckpointStore(db).load(run_id) if run_id else only(db)
            run_id = state["run_id"]
            steps = state["steps"]
            assert len(steps) >= at_least and state["status"] == "running"
            # a save after every step: each committed state is whole, never torn
            assert [s["index"] for s in steps] == list(range(1, len(steps) + 1))
            assert all(s["observation"] is not None for s in steps)
            assert [s["input"] for s in steps] == [{"expression": f"{i}+1"}
                                                   for i in range(len(steps))]
            assert sum(m["role"] == "tool" for m in state["messages"]) == len(steps)
            assert view_state(db, run_id)["steps"] == json.loads(to_json(steps))
            command = [sys.executable, "-m", "runner", "resume", run_id]
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr
        final = CheckpointStore(db).load(run_id or "")
        assert final["status"] == "finished"
        assert [s["index"] for s in final["steps"]] == list(range(1, n + 2))
        with contextlib.closing(sqlite3.connect(db)) as con:
            assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        server.terminate()
        server.wait(10)


def committed(db: Path) -> int:
    """Steps of the one run committed so far (0 before its first save)."""
    if not db.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=10)) as con:
            row = con.execute("SELECT max(steps) FROM run_heads").fetchone()
    except sqlite3.OperationalError:  # the schema is being created
        return 0
    return row[0] or 0


def only(db: Path) -> dict[str, Any]:
    store = CheckpointStore(db)
    (listed,) = store.list()
    return store.load(listed["run_id"])


# ---------------------------------------------------------------- older whole-row databases

_OLD_SCHEMA = ("CREATE TABLE runs (run_id TEXT PRIMARY KEY, parent TEXT, agent TEXT NOT NULL, "
               "status TEXT NOT NULL, steps INTEGER NOT NULL, created REAL NOT NULL, "
               "updated REAL NOT NULL, state TEXT NOT NULL)")


def test_an_older_database_of_whole_rows_loads_and_continues_in_pieces(
        tmp_path: Path, server: ScriptedOpenAIServer, every_save_checked: list[int]) -> None:
    new = tmp_path / "new.db"
    server.responder = rate_limited_once_at(7, 15)
    first = runner.run_agent(spec(tmp_path, server.url, new), "count")
    assert first.status == "model_rate_limited", first.error
    state = CheckpointStore(new).load(first.run_id)
    old = tmp_path / "old.db"  # the same run, as a runner before pieces stored it
    with contextlib.closing(sqlite3.connect(old)) as con:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute(_OLD_SCHEMA)
        con.execute("INSERT INTO runs VALUES (?, NULL, 'long', ?, ?, 1.0, 2.0, ?)",
                    (first.run_id, state["status"], len(state["steps"]), to_json(state)))
        con.commit()
    store = CheckpointStore(old)
    assert store.load(first.run_id) == state
    assert [(r["run_id"], r["steps"], r["status"]) for r in store.list()] == [
        (first.run_id, 7, "model_rate_limited")]
    store.close()
    result = runner.resume_run(first.run_id, db=str(old))
    assert result.status == "finished" and len(result.steps) == 16, result.error
    with contextlib.closing(sqlite3.connect(old)) as con:
        kinds = dict(con.execute("SELECT name, type FROM sqlite_master WHERE name IN "
                                 "('runs', 'run_heads', 'run_steps')").fetchall())
        assert kinds == {"runs": "view", "run_heads": "table", "run_steps": "table"}
        assert con.execute("SELECT count(*) FROM run_steps").fetchone() == (16,)
    final = CheckpointStore(old).load(first.run_id)
    assert [s["index"] for s in final["steps"]] == list(range(1, 17))
    assert final["steps"][:7] == state["steps"]


# ---------------------------------------------------------------- one store, several runs


def test_a_parent_and_its_sub_agents_keep_their_own_rows_in_one_store(
        tmp_path: Path, server: ScriptedOpenAIServer, every_save_checked: list[int]) -> None:
    """A pipeline's run and its steps' runs share the pipeline's store, their saves
    interleaved: each run's cursor is its own."""
    server.responder = tool_call_responder(5)
    db = tmp_path / "runs.db"
    for name in ("first", "second"):
        text = spec(tmp_path, server.url, db).read_text().replace("name: long", f"name: {name}")
        (tmp_path / f"{name}.yaml").write_text(text.split("checkpoint:")[0])
    pipe = tmp_path / "pipe.yaml"
    pipe.write_text(
        "version: 1\nname: pipe\nkind: sequence\nmemory: {backend: none}\n"
        "steps:\n  - agent: first.yaml\n  - {agent: second.yaml, input: 'more {{ first }}'}\n"
        f"checkpoint: {{path: '{db}'}}\ntrace: {{enabled: false}}\n")
    result = runner.run_agent(pipe, "go")
    assert result.status == "finished", result.error
    store = CheckpointStore(db)
    listed = {r["agent"]: r for r in store.list()}
    assert set(listed) == {"pipe", "first", "second"}
    assert {listed[a]["parent"] for a in ("first", "second")} == {listed["pipe"]["run_id"]}
    for name in ("first", "second"):
        child = store.load(listed[name]["run_id"])
        assert child["status"] == "finished" and child["answer"] == "done"
        assert [s["index"] for s in child["steps"]] == list(range(1, 7))
        assert sum(m["role"] == "tool" for m in child["messages"]) == 5
    parent = store.load(listed["pipe"]["run_id"])
    assert [s["observation"] for s in parent["steps"]] == ["done", "done"]
    assert max(every_save_checked) <= 7, every_save_checked  # a run's first save is small too


def test_a_store_that_another_claimed_from_writes_the_run_whole_again(tmp_path: Path) -> None:
    """Cursors are per store: after another store claimed and saved the run, this one's next
    save never appends to the other's rows."""
    db, token = tmp_path / "runs.db", object()

    def state(n: int, who: str, messages: list[Any]) -> dict[str, Any]:
        steps = Steps({"index": i + 1, "thought": who} for i in range(n))
        steps.token, steps.closed = token, n
        return {"run_id": "r1", "agent": "a", "status": "running", "steps": steps,
                "messages": messages, "input": "x", "spec_path": "a.yaml", "spec_digest": "d",
                "overrides": [], "session": None, "calls": n, "parse_errors": 0,
                "repeats": repeats, "approvals": Tally(), "budget": {}, "in_flight": [],
                "run_usage": {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": None},
                "owner": {"host": socket.gethostname(), "pid": 1 << 30, "resumed": False}}

    repeats = Tally({"t:1": 1})
    mine, theirs = CheckpointStore(db), CheckpointStore(db)
    messages = [{"role": "user", "content": "a"}]
    mine.save(state(5, "a", messages))
    try:
        theirs.claim("r1")
        theirs.save(state(5, "b", [{"role": "user", "content": "b"}] * 5))
    finally:
        release("r1")
    messages.append({"role": "assistant", "content": "a"})
    repeats["t:2"] = 1
    mine.save(state(7, "a", messages))  # the same token, a longer list: an append, were it not
    loaded = theirs.load("r1")  # for the claim
    assert [s["thought"] for s in loaded["steps"]] == ["a"] * 7
    assert loaded["messages"] == messages and loaded["repeats"] == {"t:1": 1, "t:2": 1}


# --------------------------------------------------------------------------- secrets


def test_secrets_are_masked_in_every_piece(tmp_path: Path, server: ScriptedOpenAIServer,
                                           monkeypatch: pytest.MonkeyPatch,
                                           every_save_checked: list[int]) -> None:
    monkeypatch.setenv("SERVICE_API_KEY", SECRET)
    respond = tool_call_responder(6)

    def reply(body: dict[str, Any]) -> Any:
        item = respond(body)
        if "tool_calls" in item:  # the model repeats the secret in its thought
            item = {**item, "content": f"the key is {SECRET}"}
        return item

    server.responder = reply
    db = tmp_path / "runs.db"
    result = runner.run_agent(spec(tmp_path, server.url, db), f"use {SECRET} please")
    assert result.status == "finished", result.error
    escaped = json.dumps(SECRET)[1:-1]
    with contextlib.closing(sqlite3.connect(db)) as con:
        pieces = [r[0] for r in con.execute(
            "SELECT piece FROM run_steps UNION ALL SELECT piece FROM run_messages")]
        heads = [r[0] for r in con.execute("SELECT state FROM run_heads")]
    assert len(pieces) > 12
    for text in (*pieces, *heads):
        assert SECRET not in text and escaped not in text
    assert sum("the key is ***" in p for p in pieces) >= 12  # thoughts and assistant messages
    assert any("use *** please" in p for p in pieces) and "use *** please" in heads[0]


def test_a_secret_added_mid_run_is_masked_in_what_was_written_before(tmp_path: Path) -> None:
    db, token = tmp_path / "runs.db", object()
    steps = Steps([{"index": 1, "thought": "my token is tok-123456789"}])
    steps.token, steps.closed = token, 1
    repeats = Tally({'search:{"q": "tok-123456789"}': 1})
    state = {"run_id": "r1", "agent": "a", "status": "running", "steps": steps,
             "messages": [{"role": "user", "content": "tok-123456789"}],
             "repeats": repeats, "approvals": Tally()}
    store = CheckpointStore(db)
    store.save(state)
    store.secrets.add("tok-123456789")  # a sub-agent's secret, joined when it is built
    store.save(state)
    with contextlib.closing(sqlite3.connect(db)) as con:
        texts = [r[0] for r in con.execute(
            "SELECT piece FROM run_steps UNION ALL SELECT piece FROM run_messages "
            "UNION ALL SELECT key FROM run_entries")]
    assert len(texts) == 3 and all("tok-123456789" not in t and "***" in t for t in texts)


# --------------------------------------------------------------------------- a run's session


def test_a_runs_own_session_round_trips_through_save_and_restore(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").touch()
    path = tmp_path / "a.yaml"
    path.write_text(json.dumps({
        "version": 1, "name": "a", "model": {"id": "fake/echo"},
        "memory": {"backend": "sqlite", "path": str(tmp_path / "memory.db")},
        "checkpoint": {"path": str(tmp_path / "runs.db")}, "trace": {"enabled": False}}))

    async def go() -> None:
        async with runner.Agent(runner.load_spec(path), run_sessions=True) as agent:
            for session in ("caller-7", None):
                run = agent.start("hello", session=session)
                assert (await run.execute()).ok
                assert agent.checkpoints is not None
                state = agent.checkpoints.load(run.run_id)
                assert state["session"] == session
                assert restore_run(agent, state).session == session

    asyncio.run(go())
