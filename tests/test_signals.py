"""SIGINT and SIGTERM: a run stops at a step boundary (a model call in flight is abandoned),
its state is saved, the process exits 130 or 143 and says how to resume; a second SIGINT
exits at once. A command a tool started with runner.tools.run_process is killed with its
whole process tree when the tool times out and when the runner is signalled.

Real `python -m runner` processes, real signals, the scripted server on 127.0.0.1; the tools
come from the test plugin of test_resume.py (an entry point on PYTHONPATH).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import runner
from runner.testing import ScriptedOpenAIServer, tool_call_responder

from conftest import run_cli, wait_for
from test_resume import (crash_plugin, log_lines, only_state, plugin_env, plugin_site,  # noqa: F401
                         requests_for, write_spec, wire)

EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


def start(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], Path]:
    """`python -m runner ARGS` in the background; its stderr goes to a file."""
    err = cwd / f"stderr-{time.monotonic_ns()}.txt"
    with open(err, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=cwd, stdout=f,
                                stderr=f, text=True,
                                env={**os.environ, "OPENAI_API_KEY": "sk-test-not-a-real-key",
                                     **env})
    return proc, err


def group(pgid: int) -> set[int]:
    """The live processes (zombies excluded) of a process group, from /proc."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
                found.add(int(entry))
    return found


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def tree_of(pidfile: Path) -> set[int]:
    """Wait for the tree tool's shell and its two sleeps; their pids."""
    def members() -> set[int] | None:
        if not pidfile.exists() or not pidfile.read_text().strip():
            return None
        pids = group(int(pidfile.read_text()))
        return pids if len(pids) == 3 else None

    return wait_for(members, 60, "the tool's process tree")


# ------------------------------------------------------------------ stop at a step boundary


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_run_stops_at_the_step_boundary_and_resume_finishes(
        tmp_path: Path, server: ScriptedOpenAIServer, plugin_site: Path, sig: int) -> None:
    server.responder = tool_call_responder(3)
    log = tmp_path / "tools.log"
    spec = write_spec(tmp_path / "a.yaml", [{"nap": {"name": "calculator"}}])
    task = f"signalled {sig}"
    proc, err = start(["run", str(spec), task, *wire(server)], tmp_path,
                      plugin_env(plugin_site, log, CRASHTEST_NAP="1.5"))
    wait_for(lambda: log_lines(log), what="the first tool call")
    proc.send_signal(sig)
    assert proc.wait(120) == EXIT[sig]
    stderr = err.read_text()
    state = only_state(tmp_path / ".runner" / "runs.db")
    run_id = state["run_id"]
    name = signal.Signals(sig).name
    assert f"{name}: stopping after this step" in stderr
    assert f"interrupted: stopped by {name}" in stderr
    assert f"resume with: runner resume {run_id}" in stderr
    assert "Traceback" not in stderr
    # the tool in flight finished (a step boundary: its observation is kept), nothing after
    assert state["status"] == "interrupted"
    assert [s["observation"] for s in state["steps"]] == ["slept after 0+1"]
    assert requests_for(server, task) == 1

    done = run_cli("resume", run_id, cwd=tmp_path, env=plugin_env(plugin_site, log))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "done\n"
    assert [line.split(" ", 1)[1] for line in log_lines(log)] == \
        ["nap 0+1", "nap 1+1", "nap 2+1"]
    assert only_state(tmp_path / ".runner" / "runs.db")["status"] == "finished"
    assert requests_for(server, task) == 4


def test_sigterm_during_a_model_call_stops_at_once(tmp_path: Path, server: ScriptedOpenAIServer,
                                                   plugin_site: Path) -> None:
    """The model's reply would take 600 s: SIGTERM abandons the call instead of waiting."""
    replies = tool_call_responder(1)
    slow = [True]

    def respond(body: dict[str, Any]) -> Any:
        item = replies(body)
        if slow[0]:
            slow[0] = False
            return {**item, "delay": 600}  # longer than the wait below
        return item

    server.responder = respond
    log = tmp_path / "tools.log"
    spec = write_spec(tmp_path / "a.yaml", [{"steplog": {"name": "calculator"}}])
    proc, err = start(["run", str(spec), "slow model", *wire(server)], tmp_path,
                      plugin_env(plugin_site, log))
    wait_for(lambda: requests_for(server, "slow model"), what="the model call")
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 143, err.read_text()  # the 600 s call was abandoned
    state = only_state(tmp_path / ".runner" / "runs.db")
    assert (state["status"], state["steps"], state["calls"]) == ("interrupted", [], 0)
    assert f"resume with: runner resume {state['run_id']}" in err.read_text()

    done = run_cli("resume", state["run_id"], cwd=tmp_path, env=plugin_env(plugin_site, log))
    assert done.returncode == 0, done.stderr
    final = only_state(tmp_path / ".runner" / "runs.db")
    assert final["status"] == "finished" and final["calls"] == 2
    assert requests_for(server, "slow model") == 3  # the abandoned call, then two


def test_a_second_sigint_exits_at_once(tmp_path: Path, server: ScriptedOpenAIServer,
                                       plugin_site: Path) -> None:
    server.responder = tool_call_responder(2)
    log = tmp_path / "tools.log"
    spec = write_spec(tmp_path / "a.yaml", [{"nap": {"name": "calculator"}}])
    proc, err = start(["run", str(spec), "twice", *wire(server)], tmp_path,
                      plugin_env(plugin_site, log, CRASHTEST_NAP="600"))
    wait_for(lambda: log_lines(log), what="the first tool call")
    proc.send_signal(signal.SIGINT)
    wait_for(lambda: "stopping after this step" in err.read_text(), what="the first SIGINT")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(120) == 130  # the 600 s nap was not waited for
    # the last committed state is the one before the step that was cut short
    state = only_state(tmp_path / ".runner" / "runs.db")
    assert (state["status"], state["steps"]) == ("running", [])
    done = run_cli("resume", state["run_id"], cwd=tmp_path, env=plugin_env(plugin_site, log))
    assert done.returncode == 0, done.stderr
    assert [line.split(" ", 1)[1] for line in log_lines(log)] == \
        ["nap 0+1", "nap 0+1", "nap 1+1"]


# ------------------------------------------------------------------------- process trees


def test_a_process_tree_is_killed_when_its_tool_times_out(
        tmp_path: Path, server: ScriptedOpenAIServer, crash_plugin: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    server.responder = tool_call_responder(1)
    pidfile = tmp_path / "tree.pid"
    monkeypatch.setenv("CRASHTEST_PIDFILE", str(pidfile))
    spec = write_spec(tmp_path / "a.yaml", [{"tree": {"name": "calculator", "timeout_s": 1.5}}],
                      checkpoint={"enabled": False})
    seen: list[set[int]] = []
    watcher = threading.Thread(target=lambda: seen.append(tree_of(pidfile)), daemon=True)
    watcher.start()
    result = runner.run_agent(spec, "tree timeout", overrides=[f"model.api_base={server.url}"])
    watcher.join(10)
    assert result.status == "finished", result.error
    assert result.steps[0].observation.endswith("tool calculator timed out after 1.5s")
    assert len(seen) == 1 and len(seen[0]) == 3
    wait_for(lambda: not any(alive(p) for p in seen[0]), 5, "the tree to die")
    assert group(int(pidfile.read_text())) == set()


@pytest.mark.parametrize("how", ["SIGINT twice", "SIGTERM"])
def test_a_process_tree_is_killed_when_the_runner_is_signalled(
        tmp_path: Path, server: ScriptedOpenAIServer, plugin_site: Path, how: str) -> None:
    """Twice SIGINT: the runner exits at once and kills the tree. SIGTERM: the run stops after
    the step, which ends when the tool times out (2 s), killing the tree."""
    server.responder = tool_call_responder(2)
    pidfile = tmp_path / "tree.pid"
    timeout = 2 if how == "SIGTERM" else 600
    spec = write_spec(tmp_path / "a.yaml", [{"tree": {"name": "calculator",
                                                      "timeout_s": timeout}}])
    proc, err = start(["run", str(spec), how, *wire(server)], tmp_path,
                      plugin_env(plugin_site, CRASHTEST_PIDFILE=str(pidfile)))
    pids = tree_of(pidfile)
    assert len(pids) == 3
    if how == "SIGTERM":
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 143, err.read_text()
        state = only_state(tmp_path / ".runner" / "runs.db")
        assert state["status"] == "interrupted"
        assert state["steps"][0]["observation"].endswith("tool calculator timed out after 2s")
    else:
        proc.send_signal(signal.SIGINT)
        wait_for(lambda: "stopping after this step" in err.read_text(), what="the first SIGINT")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(120) == 130  # the tool's 600 s timeout was not waited for
    wait_for(lambda: not any(alive(p) for p in pids), 5, "the tree to die")
    assert group(int(pidfile.read_text())) == set()
