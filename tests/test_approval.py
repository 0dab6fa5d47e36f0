"""Tools marked `confirm` (in the spec's tools entry, or by the plugin's Tool.confirm) ask
before each call: the Agent's `approver`, `loop.approve: always|never`, `runner run --yes`,
refusal with advice when nobody can be asked, and a real terminal (a pty) answering the
"Allow ...?" prompt."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import runner
from runner import events as ev
from runner.testing import ScriptedOpenAIServer

from conftest import run_cli, tools_plugin

CALLS: list[tuple[str, Any]] = []


@runner.tool(confirm=True)
def wipe(target: str) -> str:
    """Deletes the target (a side effect worth a person's yes)."""
    CALLS.append(("wipe", target))
    return f"wiped {target}"


@runner.tool
def note(text: str) -> str:
    """Writes a note (not marked confirm by its plugin)."""
    CALLS.append(("note", text))
    return f"noted {text}"


@pytest.fixture(autouse=True)
def approval_tools() -> Iterator[None]:
    CALLS.clear()
    with tools_plugin(wipe, note):
        yield


class Approver:
    """Answers from a list and records what it was asked."""

    def __init__(self, *answers: bool) -> None:
        self.answers = list(answers)
        self.asked: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, tool: str, args: dict[str, Any]) -> bool:
        self.asked.append((tool, args))
        return self.answers.pop(0)


def write_spec(path: Path, replies: list[Any], tools: list[Any], **loop: Any) -> Path:
    path.write_text(yaml.safe_dump({
        "version": 1, "name": "approver",
        "model": {"id": "fake/script", "options": {"replies": replies}},
        "loop": {"style": "react", **loop}, "tools": tools,
        "memory": {"backend": "none"}, "checkpoint": {"enabled": False}}, sort_keys=False))
    return path


def run(path: Path, approver: Any = None, overrides: list[str] | None = None
        ) -> tuple[runner.RunResult, runner.Agent, list[ev.Event]]:
    events: list[ev.Event] = []
    agent = runner.Agent(runner.load_spec(path, overrides or []), sinks=[events.append],
                         approver=approver)
    return asyncio.run(agent.run("q")), agent, events


def prompt_of_call(agent: runner.Agent, n: int) -> str:
    return "".join(str(m.get("content") or "") for m in agent.models[0].calls[n])


WIPE = ["Thought: clean up\nAction: wipe[/tmp/x]", "Final Answer: finished"]
NOTE_CONFIRMED = ["Thought: write\nAction: note[hello]", "Final Answer: finished"]


# ------------------------------------------------------------------------------ the approver


@pytest.mark.parametrize(("replies", "tools", "name", "args", "output"), [
    (WIPE, ["wipe"], "wipe", {"target": "/tmp/x"}, "wiped /tmp/x"),                # plugin
    (NOTE_CONFIRMED, [{"note": {"confirm": True}}], "note", {"text": "hello"}, "noted hello"),
])
def test_an_approved_tool_runs(tmp_path: Path, replies: list[str], tools: list[Any], name: str,
                               args: dict[str, Any], output: str) -> None:
    approver = Approver(True)
    result, _, _ = run(write_spec(tmp_path / "a.yaml", replies, tools), approver)
    assert approver.asked == [(name, args)]
    assert CALLS == [(name, next(iter(args.values())))]
    assert result.status == "finished"
    assert result.steps[0].observation == output and not result.steps[0].error


@pytest.mark.parametrize(("replies", "tools", "name"), [
    (WIPE, ["wipe"], "wipe"),
    (NOTE_CONFIRMED, [{"note": {"confirm": True}}], "note"),
])
def test_a_declined_tool_is_not_run_and_the_model_is_told(
        tmp_path: Path, replies: list[str], tools: list[Any], name: str) -> None:
    approver = Approver(False)
    result, agent, _ = run(write_spec(tmp_path / "a.yaml", replies, tools), approver)
    assert len(approver.asked) == 1
    assert CALLS == []
    step = result.steps[0]
    assert step.error and step.observation == f"running {name} was declined by the person"
    assert f"running {name} was declined by the person" in prompt_of_call(agent, 1)
    assert result.status == "finished" and result.answer == "finished"  # the run went on


def test_every_call_is_asked_about(tmp_path: Path) -> None:
    approver = Approver(True, False, True)
    path = write_spec(tmp_path / "a.yaml", ["Action: wipe[a]", "Action: wipe[b]",
                                            "Action: wipe[c]", "Final Answer: done"], ["wipe"])
    result, _, _ = run(path, approver)
    assert [a for _, a in approver.asked] == [{"target": "a"}, {"target": "b"}, {"target": "c"}]
    assert CALLS == [("wipe", "a"), ("wipe", "c")]
    assert [s.error for s in result.steps[:3]] == [False, True, False]


def test_tools_not_marked_confirm_never_ask(tmp_path: Path) -> None:
    async def never(tool: str, args: dict[str, Any]) -> bool:
        raise AssertionError(f"asked about {tool}")

    result, _, _ = run(write_spec(tmp_path / "a.yaml", NOTE_CONFIRMED, ["note", "calculator"]),
                       never)
    assert result.status == "finished" and CALLS == [("note", "hello")]


def test_the_spec_can_turn_a_plugins_confirm_off(tmp_path: Path) -> None:
    result, _, _ = run(write_spec(tmp_path / "a.yaml", WIPE, [{"wipe": {"confirm": False}}]))
    assert result.status == "finished" and CALLS == [("wipe", "/tmp/x")]


def test_a_confirm_in_one_spec_does_not_leak_into_another(tmp_path: Path) -> None:
    run(write_spec(tmp_path / "a.yaml", NOTE_CONFIRMED, [{"note": {"confirm": True}}]),
        Approver(False))
    result, _, _ = run(write_spec(tmp_path / "b.yaml", NOTE_CONFIRMED, ["note"]))
    assert result.status == "finished" and CALLS == [("note", "hello")]


def test_a_refused_call_is_not_charged_to_the_tool_call_budget(tmp_path: Path) -> None:
    path = write_spec(tmp_path / "a.yaml", ["Action: wipe[a]", "Action: note[b]",
                                            "Final Answer: done"], ["wipe", "note"])
    result, _, _ = run(path, Approver(False), ["budget.tool_calls=1"])
    assert result.status == "finished" and CALLS == [("note", "b")]


# ------------------------------------------------------------------------------ no approver


@pytest.mark.parametrize(("replies", "tools", "name"), [
    (WIPE, ["wipe"], "wipe"),
    (NOTE_CONFIRMED, [{"note": {"confirm": True}}], "note"),
])
def test_without_an_approver_the_tool_is_refused_with_advice(
        tmp_path: Path, replies: list[str], tools: list[Any], name: str) -> None:
    result, agent, _ = run(write_spec(tmp_path / "a.yaml", replies, tools))
    assert CALLS == []
    obs = result.steps[0].observation
    assert result.steps[0].error
    assert obs.startswith(f"{name} needs a person's approval")
    assert "--yes" in obs and "loop.approve: always" in obs
    assert obs in prompt_of_call(agent, 1)
    assert result.status == "finished"


# ------------------------------------------------------------------------------ loop.approve


def test_approve_always_runs_without_asking(tmp_path: Path) -> None:
    async def never(tool: str, args: dict[str, Any]) -> bool:
        raise AssertionError("asked although loop.approve is always")

    for approver in (None, never):
        CALLS.clear()
        path = write_spec(tmp_path / "a.yaml", WIPE, ["wipe"], approve="always")
        result, _, _ = run(path, approver)
        assert result.status == "finished" and CALLS == [("wipe", "/tmp/x")]
        assert result.steps[0].observation == "wiped /tmp/x"


def test_approve_never_refuses_without_asking(tmp_path: Path) -> None:
    approver = Approver(True)
    path = write_spec(tmp_path / "a.yaml", WIPE, ["wipe"], approve="never")
    result, agent, _ = run(path, approver)
    assert approver.asked == [] and CALLS == []
    obs = result.steps[0].observation
    assert obs == "running wipe was declined by the spec (loop.approve: never)"
    assert obs in prompt_of_call(agent, 1)


def test_approve_never_still_runs_tools_not_marked_confirm(tmp_path: Path) -> None:
    path = write_spec(tmp_path / "a.yaml", NOTE_CONFIRMED, ["note"], approve="never")
    result, _, _ = run(path)
    assert CALLS == [("note", "hello")]


# ------------------------------------------------------------------------------ the CLI


def cli_spec(tmp_path: Path, server: ScriptedOpenAIServer) -> Path:
    path = tmp_path / "calc.yaml"
    path.write_text(yaml.safe_dump({
        "version": 1, "name": "calc",
        "model": {"id": "openai/scripted", "api_base": server.url, "retries": 0},
        "loop": {"style": "react"}, "tools": [{"calculator": {"confirm": True}}],
        "memory": {"backend": "none"}, "checkpoint": {"enabled": False}}, sort_keys=False))
    return path


def test_cli_yes_approves(tmp_path: Path, server: ScriptedOpenAIServer) -> None:
    server.script("Thought: multiply\nAction: calculator[17*23]", "Final Answer: 391")
    proc = run_cli("run", str(cli_spec(tmp_path, server)), "17*23?", "--yes", "--json",
                   cwd=tmp_path, input="")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["steps"][0]["observation"] == "391" and result["answer"] == "391"
    assert "Allow" not in proc.stderr


def test_cli_without_yes_and_without_a_terminal_refuses(
        tmp_path: Path, server: ScriptedOpenAIServer) -> None:
    server.script("Thought: multiply\nAction: calculator[17*23]", "Final Answer: unknown")
    proc = run_cli("run", str(cli_spec(tmp_path, server)), "17*23?", cwd=tmp_path, input="")
    assert proc.returncode == 0, proc.stderr
    assert "Allow" not in proc.stderr  # nobody was asked
    assert "calculator needs a person's approval and this run is not interactive" in proc.stderr
    assert "--yes" in proc.stderr
    # the model was told, and the calculator never produced 391
    second = server.requests[1]["messages"][-1]["content"]
    assert "needs a person's approval" in second and "391" not in second


def _read_until(fd: int, needle: bytes, timeout: float) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while needle not in out:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{needle!r} did not appear on the terminal; got {out!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the other side closed
                break
            if not chunk:
                break
            out += chunk
    return out


def _drain(fd: int, timeout: float = 2.0) -> bytes:
    out = b""
    while True:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return out
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            return out
        if not chunk:
            return out
        out += chunk


@pytest.mark.parametrize(("answer", "approved"), [("y", True), ("n", False), ("", False),
                                                  ("YES", True)])
def test_cli_asks_on_a_real_terminal(tmp_path: Path, server: ScriptedOpenAIServer, answer: str,
                                     approved: bool) -> None:
    server.script("Thought: multiply\nAction: calculator[17*23]", "Final Answer: done")
    master, slave = pty.openpty()
    env = {**os.environ, "OPENAI_API_KEY": "sk-test-not-a-real-key"}
    proc = subprocess.Popen([sys.executable, "-m", "runner", "run",
                             str(cli_spec(tmp_path, server)), "17*23?", "--json"],
                            cwd=tmp_path, env=env, stdin=slave, stderr=slave,
                            stdout=subprocess.PIPE, start_new_session=True)
    os.close(slave)
    try:
        seen = _read_until(master, b"[y/N] ", timeout=60)
        assert b'Allow calculator {"expression": "17*23"}? [y/N] ' in seen
        os.write(master, answer.encode() + b"\n")
        stdout, _ = proc.communicate(timeout=60)
        _drain(master)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert proc.returncode == 0
    result = json.loads(stdout)
    obs = result["steps"][0]["observation"]
    if approved:
        assert obs == "391"
    else:
        assert obs == "running calculator was declined by the person"
    assert obs in server.requests[1]["messages"][-1]["content"]
    assert len(server.requests) == 2


def test_the_prompt_shows_exactly_what_will_run_with_control_codes_visible(
        tmp_path: Path, server: ScriptedOpenAIServer) -> None:
    # an input that, obeyed, would erase the real prompt's line and draw a harmless one
    forged = '\x1b[2K\rAllow calculator "1+1"? [y/N] \x9b2K\u202e'
    server.script({"tool_calls": [{"name": "calculator", "arguments": {"expression": forged}}]},
                  "done")
    master, slave = pty.openpty()
    env = {**os.environ, "OPENAI_API_KEY": "sk-test-not-a-real-key"}
    proc = subprocess.Popen([sys.executable, "-m", "runner", "run",
                             str(cli_spec(tmp_path, server)), "q", "--json",
                             "--set", "loop.style=tools"],
                            cwd=tmp_path, env=env, stdin=slave, stderr=slave,
                            stdout=subprocess.PIPE, start_new_session=True)
    os.close(slave)
    try:
        seen = _read_until(master, b"}? [y/N] ", timeout=60)
        os.write(master, b"n\n")
        stdout, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    shown = seen.decode()
    for c in ("\x1b", "\x9b", "\u202e"):
        assert c not in shown, shown
    assert "\r" not in shown.replace("\r\n", "")  # the pty's own line ends aside
    # one prompt, on one line, naming the exact tool and input (as JSON escapes)
    (line,) = [l for l in shown.split("\r\n") if "[y/N] " in l]
    assert line == ('Allow calculator {"expression": "\\u001b[2K\\rAllow calculator '
                    '\\"1+1\\"? [y/N] \\u009b2K\\u202e"}? [y/N] ')
    assert json.loads(stdout)["steps"][0]["observation"] == \
        "running calculator was declined by the person"


def test_cli_yes_skips_the_terminal_prompt(tmp_path: Path, server: ScriptedOpenAIServer) -> None:
    server.script("Thought: multiply\nAction: calculator[17*23]", "Final Answer: done")
    master, slave = pty.openpty()
    env = {**os.environ, "OPENAI_API_KEY": "sk-test-not-a-real-key"}
    proc = subprocess.Popen([sys.executable, "-m", "runner", "run",
                             str(cli_spec(tmp_path, server)), "17*23?", "--json", "--yes"],
                            cwd=tmp_path, env=env, stdin=slave, stderr=slave,
                            stdout=subprocess.PIPE, start_new_session=True)
    os.close(slave)
    try:
        stdout, _ = proc.communicate(timeout=60)
        seen = _drain(master, 0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert proc.returncode == 0
    assert b"Allow" not in seen
    assert json.loads(stdout)["steps"][0]["observation"] == "391"
