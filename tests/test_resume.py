"""Checkpoints and `runner resume`, with real processes, real SQLite and real crashes.

A test plugin (a dist-info entry point on PYTHONPATH, as a third-party package would be)
provides tools that append "run_id expression" to a log file, so the log shows every time a
tool really ran. A run is crashed with SIGKILL, either by the tool itself at a chosen call
(deterministic) or from outside at random moments (the crash loop at the end). The scripted
server (runner.testing.tool_call_responder) plays N calls of `calculator` and then the answer
"done"; the specs give the test tools that name.

Covered: the commit after every step (and before a tool marked idempotent: false starts);
`runner runs`; resume through the CLI and the API without repeating finished steps; a
non-idempotent call in flight is not re-run (the model is told its outcome is unknown), one
that had not started is; a changed spec, a finished run, an unknown id and a run still alive
in another process are refused; approvals and budgets carry over; a read-only or full
checkpoint file system (a real tmpfs, root only) and a database locked by another process
fail the run with a CheckpointError naming the path and leave the last checkpoint whole;
and the crash loop: 38 runs killed with SIGKILL at random moments and resumed until done.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

import runner
from runner import events as ev
from runner.api import make_agent
from runner.checkpoints import CheckpointError, CheckpointStore
from runner.errors import SpecError
from runner.acting import UNKNOWN_OUTCOME
from runner.testing import ScriptedOpenAIServer, tool_call_responder
from runner.tools import ToolContext

from conftest import run_cli

UNKNOWN = "its outcome is unknown"
assert UNKNOWN in UNKNOWN_OUTCOME

PLUGIN = '''
"""Tools for the resume, crash and signal tests (loaded through an entry point)."""
import asyncio
import os
import random
import signal
import time

import runner
from runner.tools import ToolContext, run_process


def _env(name, default=""):
    return os.environ.get(name, default)


def log(run_id, text):
    path = _env("CRASHTEST_LOG")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, f"{run_id} {text}\\n".encode())
        finally:
            os.close(fd)


async def _step(name, expression, ctx):
    crash = _env("CRASHTEST_CRASH")
    if crash == f"before:{expression}":
        os.kill(os.getpid(), signal.SIGKILL)
    low, _, high = _env("CRASHTEST_SLEEP", "0").partition(":")
    pause = random.uniform(float(low), float(high or low))
    if pause:
        await asyncio.sleep(pause)
    log(ctx.run_id, expression)
    pause = random.uniform(float(low), float(high or low))
    if pause:
        await asyncio.sleep(pause)
    if crash == f"after:{expression}":
        os.kill(os.getpid(), signal.SIGKILL)
    return f"{name} did {expression}"


@runner.tool
async def steplog(expression: str, ctx: ToolContext) -> str:
    """Appends the run id and the expression to $CRASHTEST_LOG (safe to repeat)."""
    return await _step("steplog", expression, ctx)


@runner.tool(idempotent=False)
async def steplog_once(expression: str, ctx: ToolContext) -> str:
    """Appends the run id and the expression to $CRASHTEST_LOG (must not run twice)."""
    return await _step("steplog_once", expression, ctx)


@runner.tool
async def nap(expression: str, ctx: ToolContext) -> str:
    """Logs 'nap', then sleeps $CRASHTEST_NAP seconds."""
    log(ctx.run_id, "nap " + expression)
    await asyncio.sleep(float(_env("CRASHTEST_NAP", "0")))
    return f"slept after {expression}"


@runner.tool
async def tree(expression: str) -> str:
    """Runs sh with two sleeping children (its pid goes to $CRASHTEST_PIDFILE)."""
    seconds = _env("CRASHTEST_TREE_S", "100")
    code, out = await run_process(["sh", "-c", f'echo $$ > "$CRASHTEST_PIDFILE"; '
                                   f'sleep {seconds} & sleep {seconds}; echo finished'])
    return f"exit {code}: {out.strip()}"


def barrier():
    """With $CRASHTEST_BARRIER set, say so (PATH.PID) and wait until PATH exists: processes
    started together pass this point together."""
    path = _env("CRASHTEST_BARRIER")
    if not path:
        return
    open(f"{path}.{os.getpid()}", "w").close()
    for _ in range(6000):
        if os.path.exists(path):
            return
        time.sleep(0.01)
    raise RuntimeError("the barrier never opened")


@runner.hookimpl
def register_tools(register):
    barrier()  # plugins load once a resume has read the run's state and checked its spec
    for t in (steplog, steplog_once, nap, tree):
        register(t)
'''


# ------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the test plugin as an installed distribution with an entry point."""
    site = tmp_path_factory.mktemp("crashtest-site")
    (site / "runner_crashtest.py").write_text(PLUGIN)
    info = site / "runner_crashtest-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: runner-crashtest\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[yaml_agent_runner]\ncrashtest = runner_crashtest\n")
    return site


@pytest.fixture
def crash_plugin(plugin_site: Path) -> Iterator[Any]:
    """The same plugin registered in this process (for in-process runs and resumes)."""
    import importlib.util

    module = sys.modules.get("runner_crashtest")
    if module is None:  # imported by path: sys.path stays as it is for the other tests
        spec = importlib.util.spec_from_file_location("runner_crashtest",
                                                      plugin_site / "runner_crashtest.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["runner_crashtest"] = module
    name = runner.register_plugin(module, name="crashtest-in-process")
    yield module
    runner.unregister_plugin(name)


def plugin_env(site: Path, log: Path | None = None, **extra: str) -> dict[str, str]:
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    if log is not None:
        env["CRASHTEST_LOG"] = str(log)
    env.update(extra)
    return env


def write_spec(path: Path, tools: list[Any], *, style: str = "tools",
               **sections: dict[str, Any]) -> Path:
    data: dict[str, Any] = {
        "version": 1, "name": "crashtest", "description": "resume tests",
        "model": {"id": "openai/scripted", "retries": 0, "timeout_s": 60},
        "loop": {"style": style, "max_iterations": 40}, "tools": tools,
        "memory": {"backend": "none"}}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def wire(server: ScriptedOpenAIServer) -> list[str]:
    """CLI arguments pointing the spec at the scripted server (kept as the run's --set)."""
    return ["--set", f"model.api_base={server.url}"]


def rows(db: Path) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as con:
        return [{"run_id": r[0], "status": r[1], "steps": r[2], "state": json.loads(r[3])}
                for r in con.execute("SELECT run_id, status, steps, state FROM runs")]


def only_state(db: Path) -> dict[str, Any]:
    found = rows(db)
    assert len(found) == 1, found
    return found[0]["state"]


def state_for(db: Path, input: str) -> dict[str, Any] | None:
    if not db.exists():
        return None
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as con:
        row = con.execute("SELECT state FROM runs WHERE json_extract(state, '$.input') = ?",
                          (input,)).fetchone()
    return None if row is None else json.loads(row[0])


def integrity(db: Path) -> str:
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as con:
        return con.execute("PRAGMA integrity_check").fetchone()[0]


def log_lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def executions(log: Path, run_id: str) -> list[str]:
    """The expressions the test tools ran for one run, in order."""
    return [line.split(" ", 1)[1] for line in log_lines(log) if line.startswith(run_id + " ")]


def requests_for(server: ScriptedOpenAIServer, input: str) -> int:
    return sum(1 for body in server.requests if input in json.dumps(body.get("messages")))


def expr(step: dict[str, Any]) -> str:
    value = step["input"]
    if isinstance(value, str) and value.startswith("{"):
        value = json.loads(value)
    return value["expression"] if isinstance(value, dict) else value


def assert_complete(state: dict[str, Any], n: int) -> None:
    """A finished run of n tool calls: each step once, in order, then the answer."""
    assert state["status"] == "finished", (state["status"], state["error"])
    assert state["answer"] == "done"
    steps = state["steps"]
    assert [s["index"] for s in steps] == list(range(1, n + 2))
    assert [expr(s) for s in steps[:n]] == [f"{i}+1" for i in range(n)]
    assert all(s["observation"] is not None for s in steps[:n])
    assert steps[n]["action"] is None


# ------------------------------------------------------------------ checkpoint after each step


@runner.tool(idempotent=False)
def peek_once(expression: str, ctx: ToolContext) -> str:
    """Reads its own run's committed checkpoint while it runs (must not run twice)."""
    state = state_for(PEEK["db"], PEEK["input"])
    assert state is not None
    PEEK["seen"].append((len(state["steps"]), state["in_flight"], state["steps"][-1]["observation"],
                         state["status"]))
    return "peeked"


PEEK: dict[str, Any] = {}


class PeekPlugin:
    @runner.hookimpl
    def register_tools(self, register: Any) -> None:
        register(peek_once)


def test_a_checkpoint_is_committed_after_every_step(tmp_path: Path, server: ScriptedOpenAIServer,
                                                    crash_plugin: Any) -> None:
    n = 4
    server.responder = tool_call_responder(n)
    db = tmp_path / "state" / "runs.db"
    spec = write_spec(tmp_path / "a.yaml", [{"steplog": {"name": "calculator"}}],
                      checkpoint={"path": str(db)}, budget={"tokens": 10_000})
    overrides = [f"model.api_base={server.url}"]
    seen: list[tuple[int, str, int, int, list[Any]]] = []

    def sink(event: ev.Event) -> None:
        # a model reply for step k has arrived: steps 1..k-1 are committed, complete
        if isinstance(event, ev.ModelCalled):
            state = state_for(db, "every step")
            assert state is not None
            seen.append((event.step, state["status"], len(state["steps"]),
                         sum(s["observation"] is not None for s in state["steps"]),
                         state["budget"]["tool_calls"]))

    result = runner.run_agent(spec, "every step", overrides=overrides, sinks=[sink])
    assert result.status == "finished", result.error
    assert seen == [(k, "running", k - 1, k - 1, k - 1) for k in range(1, n + 2)]
    state = only_state(db)
    assert_complete(state, n)
    loaded = runner.load_spec(spec, overrides)
    assert state["spec_path"] == str(spec.resolve())
    assert state["spec_digest"] == loaded.source.digest
    assert state["overrides"] == overrides
    assert state["budget"]["tool_calls"] == n
    assert (state["budget"]["prompt_tokens"], state["budget"]["completion_tokens"]) == \
        (10 * (n + 1), 5 * (n + 1))
    assert state["calls"] == n + 1 and state["approvals"] == {} and state["in_flight"] == []
    # the native conversation as the model saw it: system, user, then a call and its answer
    roles = [m["role"] for m in state["messages"]]
    assert roles == ["system", "user"] + ["assistant", "tool"] * n + ["assistant"]


def test_a_tool_that_must_not_run_twice_is_committed_before_it_starts(
        tmp_path: Path, server: ScriptedOpenAIServer) -> None:
    n = 3
    server.responder = tool_call_responder(n)
    db = tmp_path / "runs.db"
    spec = write_spec(tmp_path / "a.yaml", [{"peek_once": {"name": "calculator"}}],
                      checkpoint={"path": str(db)})
    PEEK.update(db=db, input="peek", seen=[])
    name = runner.register_plugin(PeekPlugin(), name="peek")
    try:
        result = runner.run_agent(spec, "peek", overrides=[f"model.api_base={server.url}"])
    finally:
        runner.unregister_plugin(name)
    assert result.status == "finished", result.error
    # inside step k's tool: step k is committed as started, its outcome not yet known
    assert PEEK["seen"] == [(k, [k], None, "running") for k in range(1, n + 1)]
    assert only_state(db)["in_flight"] == []


# ----------------------------------------------------------------------------- runner runs


def test_runner_runs_lists_runs_with_status_steps_and_tokens(
        tmp_path: Path, server: ScriptedOpenAIServer, crash_plugin: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    proc = run_cli("runs", cwd=tmp_path)
    assert proc.returncode == 0 and "no runs yet" in proc.stderr
    assert not (tmp_path / ".runner").exists()  # listing creates nothing

    monkeypatch.chdir(tmp_path)
    server.responder = tool_call_responder(2)
    spec = write_spec(tmp_path / "a.yaml", [{"steplog": {"name": "calculator"}}])
    overrides = [f"model.api_base={server.url}"]
    finished = runner.run_agent(spec, "first", overrides=overrides)
    assert finished.status == "finished"

    # a run stopped at a step boundary, as the CLI does on SIGINT
    agent = make_agent(spec, overrides=overrides)
    run = agent.start("second")
    agent.sinks.append(lambda e: run.request_stop(signal.SIGINT)
                       if isinstance(e, ev.Observed) else None)
    stopped = asyncio.run(run.execute())
    agent.checkpoints.close()
    assert stopped.status == "interrupted" and len(stopped.steps) == 1

    proc = run_cli("runs", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["RUN", "AGENT", "STATUS", "STEPS", "TOKENS", "UPDATED"]
    table = {line.split()[0]: line.split()[1:5] for line in lines[1:]}
    assert table == {finished.run_id: ["crashtest", "finished", "3", "45"],
                     stopped.run_id: ["crashtest", "interrupted", "1", "15"]}
    assert lines[1].startswith(stopped.run_id)  # most recent first

    listed = json.loads(run_cli("runs", "--json", cwd=tmp_path).stdout)
    assert [(r["run_id"], r["status"], r["steps"], r["budget"]["tool_calls"]) for r in listed] == \
        [(stopped.run_id, "interrupted", 1, 1), (finished.run_id, "finished", 3, 2)]
    assert [r["run_id"] for r in json.loads(run_cli("runs", "--json", "-n", "1",
                                                    cwd=tmp_path).stdout)] == [stopped.run_id]


# ------------------------------------------------------------------------- crash and resume


@pytest.mark.parametrize("style", ["tools", "react"])
def test_a_crash_in_an_idempotent_tool_resumes_without_repeating_finished_steps(
        tmp_path: Path, server: ScriptedOpenAIServer, plugin_site: Path, style: str) -> None:
    n = 5
    server.responder = tool_call_responder(n)
    log = tmp_path / "tools.log"
    spec = write_spec(tmp_path / "a.yaml", [{"steplog": {"name": "calculator"}}], style=style)
    env = plugin_env(plugin_site, log)
    task = f"crash in steplog ({style})"

    proc = run_cli("run", str(spec), task, *wire(server), cwd=tmp_path,
                   env={**env, "CRASHTEST_CRASH": "after:2+1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    db = tmp_path / ".runner" / "runs.db"
    state = only_state(db)
    run_id = state["run_id"]
    # the third call ran, then the process died before its step was committed
    assert (state["status"], len(state["steps"])) == ("running", 2)
    assert executions(log, run_id) == ["0+1", "1+1", "2+1"]
    assert requests_for(server, task) == 3

    listed = run_cli("runs", cwd=tmp_path).stdout
    assert f"{run_id}  crashtest       running" in listed

    proc = run_cli("resume", run_id[:6], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "done\n"
    assert_complete(only_state(db), n)
    # only the call in flight ran again; its model call was made again, nothing else
    assert executions(log, run_id) == ["0+1", "1+1", "2+1", "2+1", "3+1", "4+1"]
    assert requests_for(server, task) == n + 1 + 1
    assert integrity(db) == "ok"


@pytest.mark.parametrize(("when", "declared_by"), [
    ("before", "plugin"), ("after", "plugin"), ("after", "spec")])
def test_a_non_idempotent_tool_in_flight_is_not_run_again(
        tmp_path: Path, server: ScriptedOpenAIServer, plugin_site: Path, crash_plugin: Any,
        monkeypatch: pytest.MonkeyPatch, when: str, declared_by: str) -> None:
    n = 5
    server.responder = tool_call_responder(n)
    log = tmp_path / "tools.log"
    tool = {"steplog_once": {"name": "calculator"}} if declared_by == "plugin" else \
        {"steplog": {"name": "calculator", "idempotent": False}}
    spec = write_spec(tmp_path / "a.yaml", [tool])
    task = f"once {when} {declared_by}"
    proc = run_cli("run", str(spec), task, *wire(server), cwd=tmp_path,
                   env=plugin_env(plugin_site, log, CRASHTEST_CRASH=f"{when}:2+1"))
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    db = tmp_path / ".runner" / "runs.db"
    state = only_state(db)
    # committed just before the tool started: the step is there, its outcome is not
    assert len(state["steps"]) == 3 and state["in_flight"] == [3]
    assert state["steps"][2]["observation"] is None and expr(state["steps"][2]) == "2+1"
    ran_before_crash = ["0+1", "1+1"] + (["2+1"] if when == "after" else [])
    assert executions(log, state["run_id"]) == ran_before_crash

    # resumed in this process, through the Python API
    monkeypatch.setenv("CRASHTEST_LOG", str(log))
    result = runner.resume_run(state["run_id"][:8], db=str(db))
    assert result.status == "finished" and result.answer == "done", result.error
    third = result.steps[2]
    assert UNKNOWN in third.observation and "calculator" in third.observation and third.error
    assert_complete(only_state(db), n)
    # never twice; no model call repeated; the model was told the outcome is unknown
    assert executions(log, state["run_id"]) == ran_before_crash + ["3+1", "4+1"]
    assert requests_for(server, task) == n + 1
    told = [m for m in server.requests[-3]["messages"] if m["role"] == "tool"]
    assert UNKNOWN in told[2]["content"]


def test_a_changed_spec_is_refused_unless_forced(tmp_path: Path, server: ScriptedOpenAIServer,
                                                 plugin_site: Path) -> None:
    server.responder = tool_call_responder(3)
    log = tmp_path / "tools.log"
    spec = write_spec(tmp_path / "a.yaml", [{"steplog": {"name": "calculator"}}])
    env = plugin_env(plugin_site, log)
    proc = run_cli("run", str(spec), "changed", *wire(server), cwd=tmp_path,
                   env={**env, "CRASHTEST_CRASH": "after:1+1"})
    assert proc.returncode == -signal.SIGKILL
    run_id = only_state(tmp_path / ".runner" / "runs.db")["run_id"]
    spec.write_text(spec.read_text().replace("resume tests", "resume tests, edited"))
    before = (len(server.requests), log_lines(log))

    proc = run_cli("resume", run_id, cwd=tmp_path, env=env)
    assert proc.returncode == 2
    assert f"{spec.resolve()} changed since run {run_id} started" in proc.stderr
    assert "--force" in proc.stderr and "Traceback" not in proc.stderr
    assert (len(server.requests), log_lines(log)) == before  # nothing ran

    proc = run_cli("resume", run_id, "--force", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert_complete(only_state(tmp_path / ".runner" / "runs.db"), 3)


APPROVING_RUN = '''
import asyncio, json, sys
import runner.api

async def approve(tool, args):
    with open(sys.argv[2], "a") as f:
        f.write(json.dumps([tool, args]) + "\\n")
    return args["expression"] != "0+1"   # the first call is declined

agent = runner.api.make_agent(sys.argv[1], overrides=sys.argv[3:], approver=approve)
asyncio.run(agent.run("approvals"))
'''


def test_approval_decisions_are_kept_so_a_resume_does_not_ask_twice(
        tmp_path: Path, server: ScriptedOpenAIServer, plugin_site: Path, crash_plugin: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    n = 4
    server.responder = tool_call_responder(n)
    log, asked = tmp_path / "tools.log", tmp_path / "asked.jsonl"
    spec = write_spec(tmp_path / "a.yaml", [{"steplog": {"name": "calculator", "confirm": True}}],
                      checkpoint={"path": str(tmp_path / "runs.db")})
    # a person declines the first call and approves the second, then the process dies
    # while the approved call runs
    proc = subprocess.run([sys.executable, "-c", APPROVING_RUN, str(spec), str(asked),
                           f"model.api_base={server.url}"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, "OPENAI_API_KEY": "sk-test-not-a-real-key",
                               **plugin_env(plugin_site, log, CRASHTEST_CRASH="after:1+1")})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    state = only_state(tmp_path / "runs.db")
    assert state["approvals"] == {"1:calculator": False, "2:calculator": True}
    assert [json.loads(line)[1]["expression"] for line in asked.read_text().splitlines()] == \
        ["0+1", "1+1"]
    assert executions(log, state["run_id"]) == ["1+1"]

    # resumed by someone else: the approved call runs again without asking, the next ones ask
    questions: list[str] = []

    async def approver(tool: str, args: dict[str, Any]) -> bool:
        questions.append(args["expression"])
        return True

    monkeypatch.setenv("CRASHTEST_LOG", str(log))
    result = runner.resume_run(state["run_id"], db=str(tmp_path / "runs.db"), approver=approver)
    assert result.status == "finished", result.error
    assert questions == ["2+1", "3+1"]
    assert "declined by the person" in result.steps[0].observation
    assert executions(log, state["run_id"]) == ["1+1", "1+1", "2+1", "3+1"]
    assert requests_for(server, "approvals") == n + 1  # the approved call's reply was kept
    final = only_state(tmp_path / "runs.db")
    assert final["approvals"] == {"1:calculator": False, "2:calculator": True,
                                  "3:calculator": True, "4:calculator": True}


SLOW_APPROVER_RUN = '''
import asyncio, sys
import runner.api

async def approve(tool, args):
    await asyncio.sleep(float(sys.argv[2]))
    return True

agent = runner.api.make_agent(sys.argv[1], overrides=sys.argv[3:], approver=approve)
asyncio.run(agent.run("parallel"))
'''


def crash_parallel_turn(tmp_path: Path, server: ScriptedOpenAIServer, plugin_site: Path,
                        tools: list[Any], crash: str, approver_s: float) -> dict[str, Any]:
    """One reply with two native calls (a then b); the process dies at `crash` while the
    person takes `approver_s` to answer for the tool marked confirm."""
    server.script({"tool_calls": [{"name": tools[0], "arguments": {"expression": "a"}},
                                  {"name": tools[1], "arguments": {"expression": "b"}}]}, "done")
    spec = write_spec(tmp_path / "a.yaml", [
        {"steplog_once" if tools[0] == "once" else "steplog": {"name": tools[0]}},
        {"steplog": {"name": tools[1], "confirm": True, "idempotent": tools[1] != "asked"}}],
        checkpoint={"path": str(tmp_path / "runs.db")})
    proc = subprocess.run([sys.executable, "-c", SLOW_APPROVER_RUN, str(spec), str(approver_s),
                           f"model.api_base={server.url}"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, "OPENAI_API_KEY": "sk-test-not-a-real-key",
                               **plugin_env(plugin_site, tmp_path / "tools.log",
                                            CRASHTEST_CRASH=crash)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    return only_state(tmp_path / "runs.db")


def test_a_non_idempotent_call_that_had_not_started_runs_on_resume(
        tmp_path: Path, server: ScriptedOpenAIServer, plugin_site: Path, crash_plugin: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`once` ran (and the process died in it) while `asked` still waited for a person's
    answer: a resume reports `once`'s outcome as unknown but asks and runs `asked`, which
    never started."""
    state = crash_parallel_turn(tmp_path, server, plugin_site, ["once", "asked"], "after:a", 30)
    assert [(s["action"], s["observation"]) for s in state["steps"]] == \
        [("once", None), ("asked", None)]
    assert state["in_flight"] == [1] and state["approvals"] == {}
    log = tmp_path / "tools.log"
    assert executions(log, state["run_id"]) == ["a"]

    asked: list[str] = []

    async def approver(tool: str, args: dict[str, Any]) -> bool:
        asked.append(f"{tool} {args['expression']}")
        return True

    monkeypatch.setenv("CRASHTEST_LOG", str(log))
    result = runner.resume_run(state["run_id"], db=str(tmp_path / "runs.db"), approver=approver)
    assert result.status == "finished", result.error
    assert UNKNOWN in result.steps[0].observation
    assert result.steps[1].observation == "steplog did b"
    assert asked == ["asked b"]
    assert executions(log, state["run_id"]) == ["a", "b"]


def test_every_call_of_a_resumed_turn_is_answered(
        tmp_path: Path, server: ScriptedOpenAIServer, plugin_site: Path, crash_plugin: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The approval of `asked` was committed after `quick` had finished; the process died
    in `asked`. After the resume the model gets an answer for both calls, in order."""
    state = crash_parallel_turn(tmp_path, server, plugin_site, ["quick", "asked2"], "after:b",
                                0.5)
    assert [(s["action"], s["observation"]) for s in state["steps"]] == \
        [("quick", "steplog did a"), ("asked2", None)]
    assert state["approvals"] == {"2:asked2": True}
    call_ids = [c["id"] for c in state["messages"][-1]["tool_calls"]]
    assert [m["role"] for m in state["messages"]][-1] == "assistant"

    async def approver(tool: str, args: dict[str, Any]) -> bool:
        raise AssertionError("asked twice")

    monkeypatch.setenv("CRASHTEST_LOG", str(tmp_path / "tools.log"))
    requests = len(server.requests)
    result = runner.resume_run(state["run_id"], db=str(tmp_path / "runs.db"), approver=approver)
    assert result.status == "finished", result.error
    assert executions(tmp_path / "tools.log", state["run_id"]) == ["a", "b", "b"]
    sent = server.requests[requests]["messages"]
    assert [(m["tool_call_id"], m["content"]) for m in sent if m["role"] == "tool"] == \
        [(call_ids[0], "steplog did a"), (call_ids[1], "steplog did b")]


def test_a_resumed_turn_is_answered_when_the_server_reuses_call_ids(
        tmp_path: Path, server: ScriptedOpenAIServer, plugin_site: Path, crash_plugin: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that numbers calls per reply (call_1 in every turn): the call in flight at a
    crash is answered on resume even though an earlier turn's answer carries its id."""
    server.script({"tool_calls": [{"id": "call_1", "name": "first",
                                   "arguments": {"expression": "a"}}]},
                  {"tool_calls": [{"id": "call_1", "name": "second",
                                   "arguments": {"expression": "b"}}]}, "done")
    spec = write_spec(tmp_path / "a.yaml", [{"steplog": {"name": "first"}},
                                            {"steplog_once": {"name": "second"}}],
                      checkpoint={"path": str(tmp_path / "runs.db")})
    log = tmp_path / "tools.log"
    proc = subprocess.run([sys.executable, "-m", "runner", "run", str(spec), "q", *wire(server)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OPENAI_API_KEY": "sk-test-not-a-real-key",
                               **plugin_env(plugin_site, log, CRASHTEST_CRASH="after:b")})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    state = only_state(tmp_path / "runs.db")
    assert [(s["action"], s["observation"]) for s in state["steps"]] == \
        [("first", "steplog did a"), ("second", None)]

    monkeypatch.setenv("CRASHTEST_LOG", str(log))
    requests = len(server.requests)
    result = runner.resume_run(state["run_id"], db=str(tmp_path / "runs.db"))
    assert result.status == "finished" and result.answer == "done", result.error
    sent = server.requests[requests]["messages"]
    assert [(m["tool_call_id"], m["content"]) for m in sent if m["role"] == "tool"] == \
        [("call_1", "steplog did a"), ("call_1", result.steps[1].observation)]
    assert UNKNOWN in result.steps[1].observation  # committed before it ran; not run again


def test_resuming_a_finished_or_unknown_run_is_refused(tmp_path: Path,
                                                       server: ScriptedOpenAIServer,
                                                       plugin_site: Path) -> None:
    server.responder = tool_call_responder(1)
    spec = write_spec(tmp_path / "a.yaml", [{"steplog": {"name": "calculator"}}])
    env = plugin_env(plugin_site, tmp_path / "tools.log")
    proc = run_cli("resume", "abc123", cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert not (tmp_path / ".runner").exists()  # a failed resume creates no database

    assert run_cli("run", str(spec), "finished", *wire(server), cwd=tmp_path,
                   env=env).returncode == 0
    run_id = only_state(tmp_path / ".runner" / "runs.db")["run_id"]
    requests = len(server.requests)
    proc = run_cli("resume", run_id, cwd=tmp_path, env=env)
    assert proc.returncode == 2
    assert f"run {run_id} already finished; nothing to resume" in proc.stderr
    proc = run_cli("resume", "zz_%", cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "no run 'zz_%'" in proc.stderr
    assert len(server.requests) == requests
    with pytest.raises(SpecError, match="already finished"):
        runner.resume_run(run_id, db=str(tmp_path / ".runner" / "runs.db"))
    # a second row whose id starts like the first: a short prefix is ambiguous
    with contextlib.closing(sqlite3.connect(tmp_path / ".runner" / "runs.db")) as con:
        con.execute("INSERT INTO runs SELECT ?, parent, agent, status, steps, created, updated, "
                    "state FROM runs", (run_id[:3] + "_" * 9,))
        con.commit()
    store = CheckpointStore(tmp_path / ".runner" / "runs.db")
    with pytest.raises(SpecError, match="matches several runs"):
        store.load(run_id[:3])
    assert store.load(run_id)["run_id"] == run_id
    with pytest.raises(SpecError, match="no run"):
        store.load(run_id[:3] + "%")  # taken literally: no wildcard
    store.load(run_id[:3] + "_")  # only the second row starts so
    store.close()


def test_budget_spent_carries_over_a_resume(tmp_path: Path, server: ScriptedOpenAIServer,
                                            plugin_site: Path) -> None:
    """Tokens and tool calls spent before a crash count after it: with 4 tool calls allowed,
    a run that made 1 before crashing can make only 3 more."""
    server.responder = tool_call_responder(6)
    log = tmp_path / "tools.log"
    env = plugin_env(plugin_site, log)
    for name, budget in (("tool_calls", {"tool_calls": 4}), ("tokens", {"tokens": 50})):
        spec = write_spec(tmp_path / f"{name}.yaml", [{"steplog": {"name": "calculator"}}],
                          budget=budget)
        proc = run_cli("run", str(spec), f"budget {name}", *wire(server), cwd=tmp_path,
                       env={**env, "CRASHTEST_CRASH": "after:1+1"})
        assert proc.returncode == -signal.SIGKILL
        state = state_for(tmp_path / ".runner" / "runs.db", f"budget {name}")
        assert state is not None
        assert state["budget"]["tool_calls"] == 1
        assert state["budget"]["prompt_tokens"] + state["budget"]["completion_tokens"] == 15
        proc = run_cli("resume", state["run_id"], "--json", cwd=tmp_path, env=env)
        assert proc.returncode == 3, proc.stderr
        result = json.loads(proc.stdout)
        final = state_for(tmp_path / ".runner" / "runs.db", f"budget {name}")
        assert final is not None
        if name == "tool_calls":
            # calls 2, 3, 4 after the resume; the fifth is refused
            assert result["status"] == "budget_tool_calls"
            assert result["error"] == "budget_tool_calls: reached 4 of 4"
            assert final["budget"]["tool_calls"] == 4
            assert executions(log, state["run_id"]) == ["0+1", "1+1", "1+1", "2+1", "3+1"]
        else:
            # 15 tokens per reply: 15 before the crash, then 30, 45 and 60 > 50 (the reply
            # lost in the crash is not counted: its step was never committed)
            assert result["status"] == "budget_tokens"
            assert result["error"] == "budget_tokens: reached 60 of 50"
            assert final["budget"]["prompt_tokens"] + final["budget"]["completion_tokens"] == 60
            assert len(final["steps"]) == 3
        assert result["usage"]["total_tokens"] == final["budget"]["prompt_tokens"] + \
            final["budget"]["completion_tokens"]


def test_a_run_still_running_is_not_resumed_by_a_second_process(
        tmp_path: Path, server: ScriptedOpenAIServer, plugin_site: Path) -> None:
    server.responder = tool_call_responder(2)
    log = tmp_path / "tools.log"
    spec = write_spec(tmp_path / "a.yaml", [{"nap": {"name": "calculator"}}])
    env = {**os.environ, "OPENAI_API_KEY": "sk-test", **plugin_env(plugin_site, log)}
    first = subprocess.Popen([sys.executable, "-m", "runner", "run", str(spec), "twice",
                              *wire(server)], cwd=tmp_path, env={**env, "CRASHTEST_NAP": "60"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not log_lines(log) and time.monotonic() < deadline:
            time.sleep(0.05)
        run_id = log_lines(log)[0].split()[0]
        proc = run_cli("resume", run_id, cwd=tmp_path, env=env)
        assert proc.returncode == 2
        assert f"run {run_id} is still running in process {first.pid}" in proc.stderr
    finally:
        first.kill()
        first.wait()
    proc = run_cli("resume", run_id, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert [line.split(" ", 1)[1] for line in log_lines(log)] == ["nap 0+1", "nap 0+1", "nap 1+1"]


@pytest.mark.parametrize("round_", range(3))
def test_two_resumes_started_together_exactly_one_continues_the_run(
        tmp_path: Path, server: ScriptedOpenAIServer, plugin_site: Path, round_: int) -> None:
    """Two `runner resume` of one crashed run, released at the same moment once each has
    read the run and checked its spec: one continues it, the other is refused naming the
    process that has it, and no step of a tool marked idempotent: false runs twice."""
    n = 4
    server.responder = tool_call_responder(n)
    log = tmp_path / "tools.log"
    spec = write_spec(tmp_path / "a.yaml", [{"steplog_once": {"name": "calculator"}}])
    env = {**os.environ, "OPENAI_API_KEY": "sk-test-not-a-real-key",
           **plugin_env(plugin_site, log, CRASHTEST_SLEEP="0.01")}
    proc = run_cli("run", str(spec), f"together {round_}", *wire(server), cwd=tmp_path,
                   env={**env, "CRASHTEST_CRASH": "after:1+1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    db = tmp_path / ".runner" / "runs.db"
    run_id = only_state(db)["run_id"]
    gate = tmp_path / "gate"
    resumes = [subprocess.Popen([sys.executable, "-m", "runner", "resume", run_id], cwd=tmp_path,
                                env={**env, "CRASHTEST_BARRIER": str(gate)}, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for _ in range(2)]
    try:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("gate.*"))) < 2 and time.monotonic() < deadline:
            assert all(p.poll() is None for p in resumes), [p.communicate() for p in resumes]
            time.sleep(0.01)
        gate.touch()
        outcomes = sorted((p.wait(120), *p.communicate()) for p in resumes)
    finally:
        for p in resumes:
            p.kill()
            p.wait()
    (won, out, _), (lost, _, err) = outcomes
    assert won == 0 and out == "done\n", outcomes
    winner = next(p.pid for p in resumes if p.returncode == 0)
    assert lost == 2 and (f"run {run_id} is being resumed by process {winner}" in err
                          or f"run {run_id} already finished" in err), err
    assert "Traceback" not in err
    ran = executions(log, run_id)
    assert ran == ["0+1", "1+1", "2+1", "3+1"], ran  # 1+1 was in flight: reported, not re-run
    state = only_state(db)
    assert_complete(state, n)
    assert UNKNOWN in state["steps"][1]["observation"]


def test_two_resumes_in_one_process_exactly_one_continues_the_run(
        tmp_path: Path, server: ScriptedOpenAIServer, plugin_site: Path, crash_plugin: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A server resuming runs on request: two requests for one run, one after the other in
    the same process while the first still drives it; the second is refused."""
    n = 3
    server.responder = tool_call_responder(n)
    log = tmp_path / "tools.log"
    spec = write_spec(tmp_path / "a.yaml", [{"steplog_once": {"name": "calculator"}}])
    env = {**os.environ, "OPENAI_API_KEY": "sk-test-not-a-real-key",
           **plugin_env(plugin_site, log)}
    proc = run_cli("run", str(spec), "in process", *wire(server), cwd=tmp_path,
                   env={**env, "CRASHTEST_CRASH": "after:1+1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    db = str(tmp_path / ".runner" / "runs.db")
    run_id = only_state(tmp_path / ".runner" / "runs.db")["run_id"]
    monkeypatch.setenv("CRASHTEST_LOG", str(log))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")

    async def both() -> list[Any]:
        return await asyncio.gather(runner.aresume_run(run_id, db=db),
                                    runner.aresume_run(run_id, db=db), return_exceptions=True)

    first, second = asyncio.run(both())
    assert isinstance(first, runner.RunResult) and first.status == "finished", first
    assert isinstance(second, runner.SpecError), second
    assert f"run {run_id} is being resumed by process {os.getpid()}" in str(second)
    assert executions(log, run_id) == ["0+1", "1+1", "2+1"]  # 1+1 in flight: not re-run


# ------------------------------------------------------- unwritable, full or locked databases


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real small filesystem (root only): `remount(path, 'ro')` makes it read-only."""
    path.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


def test_a_read_only_checkpoint_location_fails_the_run_naming_the_path(
        tmp_path: Path, server: ScriptedOpenAIServer, plugin_site: Path) -> None:
    server.responder = tool_call_responder(3)
    log = tmp_path / "tools.log"
    env = plugin_env(plugin_site, log)
    with tmpfs(tmp_path / "ck", "4m") as ck:
        db = ck / "runs.db"
        spec = write_spec(tmp_path / "a.yaml", [{"steplog": {"name": "calculator"}}],
                          checkpoint={"path": str(db)})
        proc = run_cli("run", str(spec), "read-only", *wire(server), cwd=tmp_path,
                       env={**env, "CRASHTEST_CRASH": "after:1+1"})
        assert proc.returncode == -signal.SIGKILL
        before = only_state(db)
        assert len(before["steps"]) == 1

        remount(ck, "ro")
        requests = len(server.requests)
        proc = run_cli("resume", before["run_id"], "--db", str(db), cwd=tmp_path, env=env)
        assert proc.returncode == 1, proc.stderr
        assert f"checkpoint database {db}" in proc.stderr and "Traceback" not in proc.stderr
        assert len(server.requests) == requests  # nothing ran
        # a new run with its checkpoints there fails before its first model call
        proc = run_cli("run", str(spec), "read-only new", *wire(server), cwd=tmp_path, env=env)
        assert proc.returncode == 1
        assert f"checkpoint database {db}" in proc.stderr
        assert len(server.requests) == requests

        remount(ck, "rw")
        assert only_state(db) == before  # the last checkpoint is intact
        proc = run_cli("resume", before["run_id"], "--db", str(db), cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stderr
        assert_complete(only_state(db), 3)


@runner.tool
def bulky(expression: str) -> str:
    """Returns 20,000 characters."""
    return expression * 4000


class BulkyPlugin:
    @runner.hookimpl
    def register_tools(self, register: Any) -> None:
        register(bulky)


@pytest.fixture
def bulky_plugin() -> Iterator[None]:
    name = runner.register_plugin(BulkyPlugin(), name="bulky")
    yield
    runner.unregister_plugin(name)


def test_a_full_disk_fails_the_run_naming_the_path_and_keeps_the_last_checkpoint(
        tmp_path: Path, server: ScriptedOpenAIServer, bulky_plugin: None) -> None:
    n = 12
    server.responder = tool_call_responder(n)
    with tmpfs(tmp_path / "ck", "600k") as ck:
        db = ck / "runs.db"
        spec = write_spec(tmp_path / "a.yaml", [{"bulky": {"name": "calculator"}}],
                          checkpoint={"path": str(db)},
                          loop={"max_observation_chars": 30_000})
        overrides = [f"model.api_base={server.url}"]
        committed: list[int] = []
        result = runner.run_agent(spec, "full", overrides=overrides,
                                  sinks=[lambda e: committed.append(e.step)
                                         if isinstance(e, ev.ModelCalled) else None])
        assert result.status == "checkpoint_error"
        assert isinstance(result.exception, CheckpointError)
        assert f"checkpoint database {db}" in result.error and "full" in result.error
        assert result.incomplete

        state = only_state(db)
        assert integrity(db) == "ok"
        # the last committed step is there whole: every step before the failed one
        steps = len(state["steps"])
        assert 1 <= steps < n and steps == committed[-1] - 1
        assert state["status"] == "running"
        assert all(s["observation"] == expr(s) * 4000 for s in state["steps"])

        # with room again, the run continues from there
        remount(ck, "size=64m")
        done = runner.resume_run(state["run_id"], db=str(db))
        assert done.status == "finished", done.error
        assert_complete(only_state(db), n)


LOCKER = '''
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.execute("COMMIT")
'''


class LockingPlugin:
    """A tool whose second call makes another process lock the checkpoint database."""

    def __init__(self, db: Path, hold_s: float) -> None:
        self.db, self.hold_s = db, hold_s
        self.locker: subprocess.Popen[str] | None = None

    @runner.hookimpl
    def register_tools(self, register: Any) -> None:
        @runner.tool
        def lock_db(expression: str) -> str:
            """Locks the checkpoint database from another process on its second call."""
            if expression == "1+1":
                self.locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(self.db),
                                                str(self.hold_s)], stdout=subprocess.PIPE,
                                               text=True)
                assert self.locker.stdout is not None
                assert self.locker.stdout.readline() == "locked\n"
            return expression

        register(lock_db)


@pytest.mark.parametrize("hold_s", [0.4, 30.0])
def test_a_database_locked_by_another_process(tmp_path: Path, server: ScriptedOpenAIServer,
                                              hold_s: float) -> None:
    """A lock shorter than the busy timeout is waited out; a longer one fails the run with a
    typed error after the timeout, and the committed state is whole."""
    server.responder = tool_call_responder(3)
    db = tmp_path / "runs.db"
    spec = write_spec(tmp_path / "a.yaml", [{"lock_db": {"name": "calculator"}}])
    plugin = LockingPlugin(db, hold_s)
    name = runner.register_plugin(plugin, name="locking")
    try:
        loaded = runner.load_spec(spec, [f"model.api_base={server.url}"])
        store = CheckpointStore(db, busy_timeout_s=2.0)
        agent = runner.Agent(loaded, checkpoints=store)
        started = time.monotonic()
        result = asyncio.run(agent.run("locked"))
        took = time.monotonic() - started
        store.close()
    finally:
        runner.unregister_plugin(name)
        if plugin.locker is not None:
            plugin.locker.kill()
            plugin.locker.wait()
    if hold_s < 2.0:
        assert result.status == "finished", result.error
        assert_complete(only_state(db), 3)
    else:
        assert result.status == "checkpoint_error"
        assert isinstance(result.exception, CheckpointError)
        assert result.error == f"checkpoint database {db}: database is locked"
        assert took >= 2.0  # the busy timeout, once for the step and once for the final save
        state = only_state(db)
        assert integrity(db) == "ok"
        assert (state["status"], len(state["steps"])) == ("running", 1)
        assert state["steps"][0]["observation"] == "0+1"


# ------------------------------------------------------------------------------ crash loop

ZYGOTE = r'''
"""Forks `python -m runner ARGS` children from an interpreter that has already imported the
runner and LiteLLM (2.5 s of start-up per process otherwise). Each child is a real process
running the real CLI; the parent only saves the interpreter's start-up."""
import json, os, runpy, sys, threading
import runner.agent, runner.api, runner.cli, runner.loop, runner.models.litellm
runner.models.litellm.import_litellm()
if len(sys.argv) > 1:  # a warm-up run, without checkpoints: no database is open in a fork
    spec, *overrides = sys.argv[1:]
    result = runner.run_agent(spec, "warm-up", overrides=[*overrides, "checkpoint.enabled=false"])
    assert result.status == "finished", result.error
assert threading.active_count() == 1  # safe to fork
print("ready", flush=True)
for line in sys.stdin:
    req = json.loads(line)
    if "reap" in req:
        _, status = os.waitpid(req["reap"], 0)
        print(os.waitstatus_to_exitcode(status), flush=True)
        continue
    pid = os.fork()
    if pid == 0:
        try:
            os.chdir(req["cwd"])
            out = os.open(req["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(out, 1)
            os.dup2(out, 2)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            sys.argv = ["runner", *req["args"]]
            runpy.run_module("runner", run_name="__main__", alter_sys=True)
        finally:
            os._exit(70)
    print(pid, flush=True)
'''


class Zygote:
    """The fork server above, driven from several threads."""

    def __init__(self, cwd: Path, env: dict[str, str], *warm_up: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE, *warm_up], cwd=cwd, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline() == "ready\n"
        self.lock = threading.Lock()

    def ask(self, request: dict[str, Any]) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self.lock:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            return int(self.proc.stdout.readline())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


class Child:
    """One runner process: a fork of the zygote, or `python -m runner` itself."""

    def __init__(self, args: list[str], cwd: Path, out: Path, env: dict[str, str],
                 zygote: Zygote | None) -> None:
        self.out, self.zygote = out, zygote
        if zygote is not None:
            out.touch()  # made here: a child killed before it opens the file leaves it empty
            self.pid = zygote.ask({"cwd": str(cwd), "out": str(out), "args": args})
            self.pidfd = os.pidfd_open(self.pid)
        else:
            with open(out, "w") as f:
                self.popen = subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=cwd,
                                              env=env, stdout=f, stderr=subprocess.STDOUT)
            self.pid = self.popen.pid
        self.code: int | None = None

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if still running after `timeout` seconds."""
        if self.code is not None:
            return self.code
        if self.zygote is None:
            try:
                self.code = self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
            return self.code
        if not select.select([self.pidfd], [], [], max(0.0, timeout))[0]:
            return None
        os.close(self.pidfd)
        self.code = self.zygote.ask({"reap": self.pid})
        return self.code

    def reached(self, steps: int, timeout: float = 120) -> bool:
        """Wait until the run has started and shown `steps` observations, or has ended."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.out.read_text(errors="replace") if self.out.exists() else ""
            if "▶" in text and text.count("\nObservation") >= steps:
                return True
            if self.wait(0.002) is not None:
                return False
        raise AssertionError(f"no progress in {timeout}s: {self.out.read_text()}")

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_kill_9_at_random_moments_then_resume_until_finished(
        tmp_path: Path, plugin_site: Path) -> None:
    """Many runs, each SIGKILLed at a random moment and resumed (and sometimes killed again)
    until it finishes. Every run ends with the right steps, once each, in order; a tool marked
    idempotent: false never runs twice for one step; an idempotent tool runs again only for
    the one call that was in flight at a kill, never for a committed step."""
    rng = random.Random(20261122)
    n = 8
    server = subprocess.Popen([sys.executable, "-m", "runner.testing", "--port", "0",
                               "--tool-calls", str(n)], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    url = server.stdout.readline().strip()
    log = tmp_path / "tools.log"
    env = {**os.environ, "OPENAI_API_KEY": "sk-test-not-a-real-key",
           **plugin_env(plugin_site, log, CRASHTEST_SLEEP="0.002:0.03")}
    specs = {
        "once (plugin)": write_spec(tmp_path / "once.yaml",
                                    [{"steplog_once": {"name": "calculator"}}]),
        "once (spec)": write_spec(tmp_path / "once-spec.yaml",
                                  [{"steplog": {"name": "calculator", "idempotent": False}}]),
        "idempotent": write_spec(tmp_path / "idem.yaml", [{"steplog": {"name": "calculator"}}]),
    }
    # (group, forked?) per run: 2 started as `python -m runner`, 36 forked
    plan = [("once (plugin)", False), ("idempotent", False)] + \
        [(g, True) for g in specs for _ in range(12)]
    db = tmp_path / ".runner" / "runs.db"
    zygote = Zygote(tmp_path, env, str(specs["idempotent"]), f"model.api_base={url}")
    figures: Counter[str] = Counter()
    killed_at: Counter[int] = Counter()
    records: list[dict[str, Any]] = []

    def drive(number: int, group: str, forked: bool, seed: int) -> dict[str, Any]:
        r = random.Random(seed)
        task = f"crash loop {number}"
        record: dict[str, Any] = {"task": task, "group": group, "kills": [], "resumes": 0,
                                  "restarts": 0}
        command = ["run", str(specs[group]), task, "--set", f"model.api_base={url}"]
        always = True
        for attempt in range(40):
            child = Child(command, tmp_path, tmp_path / f"{number}-{attempt}.out", env,
                          zygote if forked else None)
            state = state_for(db, task)
            left = n + 1 - (len(state["steps"]) if state else 0)  # steps still to make
            if not (always or r.random() < 0.4):
                code = child.wait(120)
            elif r.random() < 0.1:
                # now and then while it starts up, before anything is committed
                code = child.wait(r.uniform(0, 0.05 if forked else 1.5))
            else:
                # after a random number of this process's steps, somewhere in the next one
                # (the first time, before the final answer, so that every run is killed)
                k = r.randrange(left - 1 if always and left > 1 else left)
                code = None if child.reached(k) else child.wait(0)
                code = code if code is not None else child.wait(r.uniform(0, 0.03))
            if code is None:
                child.kill()
                code = child.wait(30)
            output = child.out.read_text(errors="replace")
            state = state_for(db, task)
            if code == -signal.SIGKILL:
                committed = -1 if state is None else len(state["steps"])
                pending = bool(state and state["steps"] and
                               state["steps"][-1]["observation"] is None)
                record["kills"].append((committed, pending))
            else:
                assert code == 0, f"{task}: exit {code}\n{output}"
            if state is None:
                assert code == -signal.SIGKILL, output
                record["restarts"] += 1
                continue  # killed before its first checkpoint: start it again
            if state["status"] == "finished":
                record["run_id"] = state["run_id"]
                record["state"] = state
                return record
            assert state["status"] == "running", (task, state["status"], state["error"])
            command = ["resume", state["run_id"]]
            record["resumes"] += 1
            always = False
        raise AssertionError(f"{task} did not finish in 40 attempts")

    try:
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=3) as pool:
            jobs = [pool.submit(drive, i, g, forked, rng.randrange(1 << 30))
                    for i, (g, forked) in enumerate(plan)]
            records = [j.result() for j in jobs]
        took = time.monotonic() - started
    finally:
        zygote.close()
        server.terminate()
        server.wait(10)

    assert integrity(db) == "ok"
    counts = Counter(log_lines(log))
    for rec in records:
        state, run_id = rec["state"], rec["run_id"]
        assert_complete(state, n)
        figures["runs"] += 1
        figures["kills"] += len(rec["kills"])
        figures["runs killed at least once"] += bool(rec["kills"])
        figures["resumes"] += rec["resumes"]
        figures["restarts before the first checkpoint"] += rec["restarts"]
        for committed, pending in rec["kills"]:
            killed_at[committed] += 1
        ran = {f"{i}+1": counts[f"{run_id} {i}+1"] for i in range(n)}
        if rec["group"].startswith("once"):
            for s in state["steps"][:n]:
                times = ran[expr(s)]
                if UNKNOWN in s["observation"]:
                    figures["outcomes reported unknown"] += 1
                    assert times <= 1, (rec["task"], expr(s), times)
                else:
                    assert s["observation"].endswith(f"did {expr(s)}")
                    assert times == 1, (rec["task"], expr(s), times)
            figures["non-idempotent steps run twice"] += sum(t > 1 for t in ran.values())
        else:
            # a re-run is allowed only for the call in flight at a kill: the step after the
            # last committed one, once per such kill
            in_flight = Counter(f"{c}+1" for c, pending in rec["kills"] if 0 <= c < n and
                                not pending)
            for e, times in ran.items():
                assert 1 <= times <= 1 + in_flight[e], (rec["task"], e, times, rec["kills"])
            figures["idempotent calls re-run (in flight at a kill)"] += sum(
                t - 1 for t in ran.values())
            assert all(s["observation"].endswith(f"did {expr(s)}") for s in state["steps"][:n])
        figures["committed steps repeated"] += len(state["steps"]) - len(
            {s["index"] for s in state["steps"]})
    print(f"\ncrash loop in {took:.1f}s: " + ", ".join(f"{k} {v}" for k, v in figures.items()))
    print("kills by steps committed at the time (-1: before the first checkpoint): " +
          ", ".join(f"{k}: {v}" for k, v in sorted(killed_at.items())))
    assert figures["runs"] == len(plan) == 38
    assert figures["runs killed at least once"] >= len(plan) - 2
    assert figures["non-idempotent steps run twice"] == 0
    assert figures["committed steps repeated"] == 0
    # the kills landed all over the run, not only at its start or end
    assert len([k for k in killed_at if 0 <= k <= n]) >= n - 2


# ------------------------------------------------------------------ checkpoints in Redis


def redis_state(url: str, run_id: str | None = None) -> dict[str, Any]:
    store = runner.checkpoints.store_at(url)
    try:
        ids = [r["run_id"] for r in store.list(100)]
        assert run_id is not None or len(ids) == 1, ids
        return store.load(run_id or ids[0])
    finally:
        store.close()


def test_a_run_checkpointed_in_redis_is_resumed_by_another_worker_at_most_once(
        tmp_path: Path, server: ScriptedOpenAIServer, plugin_site: Path, crash_plugin: Any,
        redis_server: Any) -> None:
    """Worker one is killed while a tool marked idempotent: false runs; worker two, another
    process with another working directory, resumes from Redis: the call is not repeated."""
    n = 4
    server.responder = tool_call_responder(n)
    url = redis_server.url(5)
    log = tmp_path / "tools.log"
    one, two = tmp_path / "worker1", tmp_path / "worker2"
    for folder in (one, two):
        folder.mkdir()
        (folder / "pyproject.toml").touch()
        write_spec(folder / "a.yaml", [{"steplog_once": {"name": "calculator"}}],
                   checkpoint={"backend": "redis", "url": url, "path": ".runner/runs.db"})
    proc = run_cli("run", str(one / "a.yaml"), "redis once", *wire(server), cwd=one,
                   env=plugin_env(plugin_site, log, CRASHTEST_CRASH="after:1+1"))
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (one / ".runner" / "runs.db").exists()  # nothing went to SQLite
    state = redis_state(url)
    assert state["in_flight"] == [2] and state["status"] == "running"

    listed = run_cli("runs", "--db", url, "--json", cwd=two)
    assert listed.returncode == 0 and state["run_id"] in listed.stdout, listed.stderr
    # another worker resumes it (the spec it names is worker one's file)
    done = run_cli("resume", state["run_id"][:8], "--db", url, cwd=two,
                   env=plugin_env(plugin_site, log))
    assert done.returncode == 0, done.stderr
    final = redis_state(url, state["run_id"])
    assert final["status"] == "finished" and UNKNOWN in final["steps"][1]["observation"]
    assert executions(log, state["run_id"]) == ["0+1", "1+1", "2+1", "3+1"]


def test_a_redis_lease_keeps_a_run_from_a_second_worker_until_it_lapses(
        tmp_path: Path, redis_server: Any) -> None:
    from runner.checkpoints_redis import RedisCheckpointStore

    url = redis_server.url(6)
    state = {"version": 1, "run_id": "lease-run-1", "parent_run_id": None, "agent": "a",
             "spec_path": str(tmp_path / "a.yaml"), "spec_digest": "x", "overrides": [],
             "session": None, "input": "q", "status": "running", "answer": None,
             "error": None, "steps": [], "messages": [], "calls": 0, "parse_errors": 0,
             "repeats": {}, "approvals": {}, "in_flight": [], "budget": {},
             "run_usage": {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": None},
             "owner": {"host": "another-worker", "pid": 4242, "resumed": False}}
    store = RedisCheckpointStore(url, lease_s=60)
    store.save(state)
    with pytest.raises(SpecError) as caught:  # the lease of the worker elsewhere holds
        store.claim("lease-run-1")
    assert "another-worker" in str(caught.value) and "lease" in str(caught.value)
    lapsed = RedisCheckpointStore(url, lease_s=0.001)
    lapsed.save(state)  # a lease in the past (the race of two claimers: checkpoint tests)
    time.sleep(0.01)  # past it for sure
    taker = RedisCheckpointStore(url)
    claimed = taker.claim("lease-run-1")
    assert claimed["status"] == "running" and claimed["owner"]["host"] != "another-worker"
    assert taker.load("lease-run-1")["owner"]["pid"] == os.getpid()
    for s in (store, lapsed, taker):
        s.close()
    runner.checkpoints.release("lease-run-1")


def test_redis_checkpoints_down_fail_the_run_naming_the_url(tmp_path: Path,
                                                            server: ScriptedOpenAIServer) -> None:
    import socket as sockets

    with sockets.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "pyproject.toml").touch()
    spec = write_spec(tmp_path / "a.yaml", [], checkpoint={
        "backend": "redis", "url": f"redis://:pw-not-shown-9@127.0.0.1:{port}/0",
        "timeout_s": 2})
    server.script("Final Answer: done")
    done = run_cli("run", str(spec), "q", *wire(server), cwd=tmp_path)
    assert done.returncode == 1
    assert f"redis://:***@127.0.0.1:{port}/0" in done.stderr and "cannot reach" in done.stderr
    assert "pw-not-shown-9" not in done.stdout + done.stderr
