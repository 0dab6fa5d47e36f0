"""State the runner writes and reads back, under hostile conditions: the files a run leaves
are private whatever the umask; NaN and Infinity from a model are stored as standard JSON;
`runner runs` and `runner trace list` list every good row or file when one is bad; a
checkpoint row or a trace file that is malformed, huge, endless or no file at all is a
typed error naming it, never a traceback or a hang; and no "resume with" hint is printed for
a run whose checkpoint was never written."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import stat
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli

import runner
from runner.checkpoints import CheckpointStore
from runner.errors import CheckpointError, RunnerError
from runner.memory import SQLiteMemory
from runner.testing import ScriptedOpenAIServer
from runner.trace import reader

HANG_GUARD_S = 60  # a subprocess deadline that makes a hang fail the test


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def strict_json(text: str) -> Any:
    """RFC 8259 JSON only: a bare NaN or Infinity is an error (JavaScript's JSON.parse, jq and
    SQLite refuse them; Python's json.loads does not)."""
    def refuse(name: str) -> Any:
        raise ValueError(f"not standard JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def project(tmp_path: Path, server: ScriptedOpenAIServer, *, style: str = "react",
            **sections: str) -> Path:
    """A spec on the scripted server in its own project folder (tmp_path)."""
    (tmp_path / "pyproject.toml").write_text("")
    extra = "".join(f"{key}: {value}\n" for key, value in sections.items())
    spec = tmp_path / "calc.yaml"
    spec.write_text(textwrap.dedent(f"""\
        version: 1
        name: calc
        model: {{id: openai/scripted, api_base: '{server.url}', retries: 0}}
        loop: {{style: {style}, max_iterations: 4}}
        tools: [calculator]
        memory: {{backend: none}}
        """) + extra)
    return spec


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The most common umask: files 0644 and folders 0755 unless the runner says otherwise."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


# --------------------------------------------------------------------- private state files


def test_the_files_of_a_run_are_private_whatever_the_umask(
        tmp_path: Path, server: ScriptedOpenAIServer, umask_022: None) -> None:
    spec = project(tmp_path, server)
    server.script("Final Answer: 4")
    proc = run_cli("run", str(spec), "2+2?", "--session", "s1", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run_id = json.loads(proc.stdout)["run_id"]
    state = tmp_path / ".runner"
    assert mode(state) == 0o700
    assert mode(state / "traces") == 0o700
    assert mode(state / "traces" / f"{run_id}.jsonl") == 0o600
    assert mode(state / "runs.db") == 0o600
    assert mode(state / "memory.db") == 0o600
    # the page holds the same prompts and answers as the trace
    proc = run_cli("trace", "view", run_id, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    page = Path(proc.stdout.strip())
    assert page == Path(".runner/traces") / f"{run_id}.html"
    assert mode(tmp_path / page) == 0o600
    # a page written over an older, world-readable one is private too
    older = tmp_path / "p.html"
    older.write_text("old page")
    older.chmod(0o644)
    proc = run_cli("trace", "view", run_id, "-o", str(older), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert mode(older) == 0o600 and "old page" not in older.read_text()


def test_trace_view_never_follows_a_symlink_left_where_its_page_goes(
        tmp_path: Path, server: ScriptedOpenAIServer) -> None:
    """A repository can ship `.runner/traces/X.jsonl` with `X.html` a symlink to a file of
    the user's: `runner trace view X` must not truncate and rewrite that file."""
    spec = project(tmp_path, server)
    server.script("Final Answer: 4")
    proc = run_cli("run", str(spec), "2+2?", "--json", cwd=tmp_path)
    run_id = json.loads(proc.stdout)["run_id"]
    profile = tmp_path / "profile"
    profile.write_text("export PATH=/usr/bin\n")
    (tmp_path / ".runner" / "traces" / f"{run_id}.html").symlink_to(profile)
    proc = run_cli("trace", "view", run_id, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().endswith(f"{run_id}.html: a symlink, not followed")
    assert profile.read_text() == "export PATH=/usr/bin\n"


def test_a_database_an_older_runner_left_readable_is_made_private(tmp_path: Path,
                                                                   umask_022: None) -> None:
    db = tmp_path / "runs.db"
    CheckpointStore(db).save({"run_id": "r1", "agent": "a", "status": "running", "steps": []})
    for p in tmp_path.iterdir():
        p.chmod(0o644)  # as the runner before this one left them
    assert [r["run_id"] for r in CheckpointStore(db).list()] == ["r1"]  # opened again
    assert {p.name: mode(p) for p in tmp_path.iterdir()} == {
        p.name: 0o600 for p in tmp_path.iterdir()}


def test_sqlite_files_and_their_journals_are_private(tmp_path: Path, umask_022: None) -> None:
    db = tmp_path / "deep" / "er" / "runs.db"
    store = CheckpointStore(db)
    store.save({"run_id": "r1", "agent": "a", "status": "running", "steps": []})
    try:
        # while the database is open its WAL and shared-memory files exist, with its mode
        assert {p.name: mode(p) for p in db.parent.iterdir()} == {
            "runs.db": 0o600, "runs.db-wal": 0o600, "runs.db-shm": 0o600}
        assert mode(tmp_path / "deep") == mode(tmp_path / "deep" / "er") == 0o700
    finally:
        store.close()

    memory = SQLiteMemory(tmp_path / "m" / "memory.db")

    async def go() -> dict[str, int]:
        await memory.append("s", [{"role": "user", "content": "my secret plan"}])
        try:
            return {p.name: mode(p) for p in (tmp_path / "m").iterdir()}
        finally:
            await memory.close()

    assert asyncio.run(go()) == {"memory.db": 0o600, "memory.db-wal": 0o600,
                                 "memory.db-shm": 0o600}
    assert mode(tmp_path / "m") == 0o700


# ------------------------------------------------------------------------ NaN and Infinity


def test_nan_and_infinity_from_a_model_are_stored_as_standard_json(
        tmp_path: Path, server: ScriptedOpenAIServer) -> None:
    db, traces = tmp_path / "runs.db", tmp_path / "traces"
    spec = project(tmp_path, server, style="tools",
                   checkpoint=f"{{path: '{db}'}}", trace=f"{{path: '{traces}'}}")
    server.script({"tool_calls": [{"name": "calculator", "arguments":
                                   '{"expression": NaN, "scale": -Infinity, "n": [Infinity]}'}]},
                  "done")
    result = runner.run_agent(spec, "nan please")
    assert result.status == "finished", result.error
    with contextlib.closing(sqlite3.connect(db)) as con:
        (text, valid), = con.execute("SELECT state, json_valid(state) FROM runs").fetchall()
    assert valid == 1  # SQLite's own JSON functions read it
    step = strict_json(text)["steps"][0]
    assert step["input"] == {"expression": "NaN", "scale": "-Infinity", "n": ["Infinity"]}
    (trace,) = traces.glob("*.jsonl")
    for line in trace.read_text().splitlines():
        strict_json(line)
    proc = run_cli("runs", "--db", str(db), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert result.run_id in proc.stdout and "finished" in proc.stdout


def _good_state(run_id: str, status: str = "interrupted") -> dict[str, Any]:
    return {"run_id": run_id, "agent": "calc", "status": status, "steps": [],
            "budget": {"prompt_tokens": 3, "completion_tokens": 4}}


def test_one_bad_row_never_hides_the_others_in_runner_runs(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    store = CheckpointStore(db)
    store.save(_good_state("good00000001"))
    store.save(_good_state("good00000002", "finished"))
    store.close()
    with contextlib.closing(sqlite3.connect(db)) as con:
        insert = ("INSERT INTO runs(run_id, parent, agent, status, steps, created, updated, "
                  "state) VALUES (?, NULL, ?, ?, ?, 1.0, ?, ?)")
        # as an older runner wrote a NaN from a model: Python reads it, SQLite does not
        nan = ('{"budget": {"prompt_tokens": 5, "completion_tokens": 1}, '
               '"steps": [{"input": {"x": NaN}}]}')
        con.execute(insert, ("nan000000001", "calc", "interrupted", 1, 2.0, nan))
        con.execute(insert, ("garbage00001", "calc", "running", 0, 3.0, "not json at all"))
        con.execute(insert, ("wrongtype001", 42, b"\x00", "many", "late", '{"budget": 7}'))
        con.commit()
    proc = run_cli("runs", "--db", str(db), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines()[1:]}
    assert set(lines) == {"good00000001", "good00000002", "nan000000001", "garbage00001",
                          "wrongtype001"}
    assert lines["good00000001"][:4] == ["calc", "interrupted", "0", "7"]
    assert lines["nan000000001"][:4] == ["calc", "interrupted", "1", "6"]
    assert "unreadable" in lines["garbage00001"] and "unreadable" in lines["wrongtype001"]
    listed = {r["run_id"]: r for r in strict_json(
        run_cli("runs", "--db", str(db), "--json", cwd=tmp_path).stdout)}
    assert listed["garbage00001"]["status"] == "unreadable"
    assert "not JSON" in listed["garbage00001"]["error"]
    assert listed["wrongtype001"]["status"] == "unreadable"
    assert listed["good00000002"]["status"] == "finished"


# ------------------------------------------------------------------ malformed checkpoint rows


@pytest.fixture
def resumable_row(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A database holding one real run's state, marked interrupted so it can be resumed."""
    (tmp_path / "pyproject.toml").write_text("")
    spec = tmp_path / "s.yaml"
    db = tmp_path / "runs.db"
    spec.write_text(textwrap.dedent(f"""\
        version: 1
        name: s
        model: {{id: fake/script, options: {{replies: ["Action: calculator[1+1]",
                                                      "Final Answer: 2"]}}}}
        loop: {{style: react}}
        tools: [calculator]
        memory: {{backend: none}}
        checkpoint: {{path: '{db}'}}
        trace: {{enabled: false}}
        """))
    result = runner.run_agent(spec, "q")
    assert result.status == "finished", result.error
    with contextlib.closing(sqlite3.connect(db)) as con:
        (text,) = con.execute("SELECT state FROM runs").fetchone()
    state = json.loads(text)
    state["status"], state["steps"] = "interrupted", state["steps"][:1]
    return db, state


def _put(db: Path, run_id: str, state: str) -> None:
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.execute("DELETE FROM runs")
        con.execute("INSERT INTO runs(run_id, parent, agent, status, steps, created, updated, "
                    "state) VALUES (?, NULL, 's', 'interrupted', 1, 1.0, 1.0, ?)", (run_id, state))
        con.commit()


BAD_STATES: dict[str, Any] = {
    "not JSON": "{'run_id': 1",
    "a list": "[]",
    "nested too deep": "[" * 100_000 + "]" * 100_000,
    "no steps": {"drop": "steps"},
    "steps not a list": {"steps": "many"},
    "a step of unknown fields": {"steps": [{"index": 1, "rm": "-rf"}]},
    "a step without an index": {"steps": [{"thought": "hm"}]},
    "budget not an object": {"budget": [1]},
    "usage without tokens": {"run_usage": {}},
    "messages not objects": {"messages": [1, 2]},
    "approvals not an object": {"approvals": "yes"},
    "in_flight not numbers": {"in_flight": ["x"]},
    "spec_path not text": {"spec_path": 7},
}


@pytest.mark.parametrize("bad", BAD_STATES)
def test_resuming_a_malformed_row_is_a_checkpoint_error_naming_the_database_and_run(
        resumable_row: tuple[Path, dict[str, Any]], bad: str) -> None:
    db, state = resumable_row
    how = BAD_STATES[bad]
    if isinstance(how, str):
        text = how
    else:
        broken = dict(state)
        for key, value in how.items():
            if key == "drop":
                del broken[value]
            else:
                broken[key] = value
        text = json.dumps(broken)
    _put(db, "badrow000001", text)
    with pytest.raises(CheckpointError) as caught:
        runner.resume_run("badrow", db=str(db))
    assert str(caught.value).startswith(f"checkpoint database {db}: run badrow000001: ")


def test_a_malformed_row_through_the_cli(resumable_row: tuple[Path, dict[str, Any]],
                                         tmp_path: Path) -> None:
    db, state = resumable_row
    _put(db, "badrow000002", json.dumps({**state, "steps": [{"index": "one"}]}))
    proc = run_cli("resume", "badrow000002", "--db", str(db), cwd=tmp_path,
                   timeout=HANG_GUARD_S)
    assert proc.returncode == 1
    assert f"checkpoint database {db}: run badrow000002: " in proc.stderr
    assert "Traceback" not in proc.stderr
    # the well-formed state of the same run resumes (the checks refuse only what is wrong)
    _put(db, "goodrow00001", json.dumps({**state, "run_id": "goodrow00001"}))
    result = runner.resume_run("goodrow00001", db=str(db))
    assert result.status == "finished" and result.answer == "2", result.error


# ------------------------------------------------------------------------ malformed traces


@pytest.fixture
def traces(tmp_path: Path) -> tuple[Path, str]:
    """A folder with one real trace (of a run on the fake model); returns it and the run id."""
    folder = tmp_path / "traces"
    spec = tmp_path / "s.yaml"
    (tmp_path / "pyproject.toml").write_text("")
    spec.write_text(textwrap.dedent(f"""\
        version: 1
        name: s
        model: {{id: fake/script, options: {{replies: ["Action: calculator[1+1]",
                                                      "Final Answer: 2"]}}}}
        loop: {{style: react}}
        tools: [calculator]
        memory: {{backend: none}}
        checkpoint: {{enabled: false}}
        trace: {{path: '{folder}'}}
        """))
    result = runner.run_agent(spec, "q")
    assert result.status == "finished", result.error
    return folder, result.run_id


def _edit(folder: Path, run_id: str, name: str, change: Any) -> Path:
    """A copy of the trace as `name`.jsonl, each event passed through `change`, which returns
    an event, a line of text, or a list of them."""
    events = [json.loads(line) for line in (folder / f"{run_id}.jsonl").read_text().splitlines()]
    lines = []
    for e in events:
        out = change(e)
        for item in out if isinstance(out, list) else [out]:
            lines.append(item if isinstance(item, str) else json.dumps(item))
    path = folder / f"{name}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _set(kind: str, **fields: Any) -> Any:
    return lambda e: {**e, **fields} if e["kind"] == kind else e


HAND_EDITS: dict[str, Any] = {
    "a time that is text": _set("model_called", t="soon"),
    "a latency that is text": _set("model_called", latency_s="fast"),
    "tokens that are text": _set("run_ended", prompt_tokens="many"),
    "a run id that is a list": _set("action", run_id=["a"]),
    "a delta of the wrong shape": _set("model_started", messages_delta={"same": "x"}),
    "a delta with a prefix into nothing": _set("model_started", messages_delta={
        "same": 0, "prefix": 5, "new": [{"role": "user", "content": 3}]}),
    "messages that are not objects": _set("model_started", messages_delta={
        "same": 0, "prefix": 0, "new": [1]}),
    "tool calls that are not objects": _set("model_called", tool_calls=["x"]),
    "settings that are a list": _set("run_started", settings=[1]),
    "a step that is text": _set("observation", step="two"),
}


@pytest.mark.parametrize("edit", HAND_EDITS)
def test_a_hand_edited_trace_is_an_error_naming_the_file(traces: tuple[Path, str],
                                                         edit: str) -> None:
    folder, run_id = traces
    path = _edit(folder, run_id, "edited00000", HAND_EDITS[edit])
    proc = run_cli("trace", "show", "edited00000", "--dir", str(folder), timeout=HANG_GUARD_S)
    assert proc.returncode == 1, proc.stdout
    assert f"error: {path}: " in proc.stderr and "Traceback" not in proc.stderr
    # the list shows the other trace as it is, and this one as unreadable or as it is
    rows = {r["run_id"]: r for r in reader.list_traces(folder)}
    assert rows[run_id]["status"] == "finished"
    with pytest.raises(RunnerError, match=f"^{path}: "):
        reader.read_tree(path)


def test_lines_that_are_not_events_are_skipped(traces: tuple[Path, str]) -> None:
    """A cut line, a line that is not JSON, one that is not an object, or one nested
    100,000 deep is passed over (as a crash's cut last line always was)."""
    folder, run_id = traces
    junk = ["[" * 100_000 + "]" * 100_000, "not json", "[1, 2]", '{"kind": "thou']

    def add_junk(e: dict[str, Any]) -> Any:
        return [e, *junk] if e["kind"] == "run_started" else e

    path = _edit(folder, run_id, "junk0000000", add_junk)
    tree = reader.build_tree(reader.read_trace(path))
    assert tree["status"] == "finished" and tree["answer"] == "2"


def test_a_huge_line_or_file_is_refused_without_reading_it(
        traces: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    folder, run_id = traces
    monkeypatch.setattr(reader, "MAX_LINE_BYTES", 4096)
    path = _edit(folder, run_id, "hugeline000", _set("observation", text="x" * 10_000))
    line = 1 + [json.loads(t)["kind"] for t in path.read_text().splitlines()].index("observation")
    with pytest.raises(RunnerError, match=f"^{path}: line {line} is longer than 4096 bytes"):
        reader.read_tree(path)
    monkeypatch.setattr(reader, "MAX_TRACE_BYTES", 2000)
    with pytest.raises(RunnerError, match=f"^{folder / run_id}.jsonl: larger than 2000 bytes"):
        reader.read_tree(folder / f"{run_id}.jsonl")


def test_trace_list_and_show_survive_endless_huge_and_special_files(
        traces: tuple[Path, str]) -> None:
    folder, run_id = traces
    (folder / "zero0000000.jsonl").symlink_to("/dev/zero")
    os.mkfifo(folder / "fifo0000000.jsonl")
    (folder / "gone0000000.jsonl").symlink_to(folder / "nowhere")
    (folder / "dir00000000.jsonl").mkdir()
    with open(folder / "oneline0000.jsonl", "wb") as f:  # 40 MB without a newline
        f.write(b'{"kind": "run_started", "run_id": "oneline0000", "input": "')
        f.write(b"x" * (40 << 20))
    (folder / "alist000000.jsonl").write_text("[1, 2, 3]\n")
    (folder / "zz000000000.jsonl").write_text("")
    proc = run_cli("trace", "list", "--dir", str(folder), "--json", timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr
    rows = {r["run_id"]: r for r in strict_json(proc.stdout)}
    assert rows[run_id]["status"] == "finished"
    for bad in ("zero0000000", "fifo0000000", "gone0000000", "dir00000000", "oneline0000",
                "alist000000", "zz000000000"):
        assert rows[bad]["status"] == "unreadable", rows[bad]
        assert rows[bad]["error"]
    proc = run_cli("trace", "list", "--dir", str(folder), timeout=HANG_GUARD_S)
    assert proc.returncode == 0 and "unreadable" in proc.stdout and run_id in proc.stdout
    for bad, why in (("zero0000000", "not a regular file"), ("fifo0000000", "not a regular file"),
                     ("oneline0000", "longer than")):
        proc = run_cli("trace", "show", bad, "--dir", str(folder), timeout=HANG_GUARD_S)
        assert proc.returncode == 1, (bad, proc.stdout)
        assert f"{folder / bad}.jsonl: " in proc.stderr and why in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    with pytest.raises(RunnerError, match="^/dev/zero: not a regular file"):
        reader.read_trace("/dev/zero")


# ----------------------------------------------------------- a checkpoint never written


@pytest.mark.parametrize("where", ["a directory", "under a file"])
def test_no_resume_hint_for_a_checkpoint_that_was_never_written(
        tmp_path: Path, server: ScriptedOpenAIServer, where: str) -> None:
    if where == "a directory":
        db = tmp_path / "ck"
        db.mkdir()
    else:
        (tmp_path / "file").write_text("")
        db = tmp_path / "file" / "runs.db"
    spec = project(tmp_path, server, checkpoint=f"{{path: '{db}'}}")
    server.script("Final Answer: 4")
    proc = run_cli("run", str(spec), "2+2?", cwd=tmp_path)
    assert proc.returncode == 1
    assert f"checkpoint database {db}" in proc.stderr
    assert "resume with" not in proc.stderr and "runner resume" not in proc.stderr
    assert len(server.requests) == 0  # it failed before the model was called


def test_the_resume_hint_is_printed_when_the_checkpoint_exists(
        tmp_path: Path, server: ScriptedOpenAIServer) -> None:
    db = tmp_path / "state" / "runs.db"
    spec = project(tmp_path, server, checkpoint=f"{{path: '{db}'}}")
    server.script({"status": 429, "body": "slow down"})
    proc = run_cli("run", str(spec), "2+2?", "--json", cwd=tmp_path)
    assert proc.returncode == 1
    run_id = json.loads(proc.stdout)["run_id"]
    assert f"resume with: runner resume {run_id} --db {db}" in proc.stderr
