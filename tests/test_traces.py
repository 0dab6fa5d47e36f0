"""Traces: every run's events in .runner/traces/RUN_ID.jsonl, flushed as they happen,
redacted, readable back (with each model call's exact messages), and `runner trace list`."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, run_cli, sub_agent_project
from runner.trace.writer import common_prefix
from runner.trace.reader import (expand_delta, build_tree, list_traces, read_trace,
                           summarize)

CALC = str(ROOT / "agents" / "calculator.yaml")
KEY = "sk-test-not-a-real-key"  # run_cli puts it in OPENAI_API_KEY


def _wire(server, folder: Path, *more: str) -> list[str]:
    return ["--set", "model.id=openai/scripted", "--set", f"model.api_base={server.url}",
            "--set", f"trace.path={folder}", *(a for m in more for a in ("--set", m))]


def _only_trace(folder: Path) -> Path:
    (path,) = folder.glob("*.jsonl")
    return path


def test_a_run_writes_its_events_and_the_exact_messages_the_model_got(server, tmp_path: Path
                                                                     ) -> None:
    server.script({"content": "Thought: multiply\nAction: calculator[17*23]",
                   "usage": {"prompt_tokens": 100, "completion_tokens": 9}},
                  {"content": "Thought: done\nFinal Answer: 391",
                   "usage": {"prompt_tokens": 130, "completion_tokens": 5}})
    proc = run_cli("run", CALC, "What is 17 times 23?", "--json", *_wire(server, tmp_path))
    assert proc.returncode == 0, proc.stderr
    run_id = json.loads(proc.stdout)["run_id"]
    path = _only_trace(tmp_path)
    assert path.name == f"{run_id}.jsonl"
    assert oct(path.stat().st_mode & 0o777) == "0o600"  # prompts are private
    events = read_trace(path)
    assert [e["kind"] for e in events] == [
        "run_started", "model_started", "model_called", "thought", "action",  # no session
        "observation", "model_started", "model_called", "thought", "final_answer", "run_ended"]
    calls = [e for e in events if e["kind"] == "model_called"]
    sent = [e["messages"] for e in events if e["kind"] == "model_started"]
    # what the trace says was sent is what the server received, message for message
    assert sent == [r["messages"] for r in server.requests]
    assert calls[0]["text"] == "Thought: multiply\nAction: calculator[17*23]"
    assert (calls[1]["prompt_tokens"], calls[1]["completion_tokens"]) == (130, 5)
    assert "messages" not in calls[0]  # stored once, with the call's start
    assert calls[0]["stop"] == ["\nObservation:", "\nQuestion:"]
    action, obs = events[4], events[5]
    assert (action["tool"], action["input"], obs["text"], obs["error"]) == \
        ("calculator", "17*23", "391", False)
    end = events[-1]
    assert (end["status"], end["answer"], end["steps"]) == ("finished", "391", 2)
    assert (end["prompt_tokens"], end["completion_tokens"]) == (230, 14)
    assert end["budget"]["tool_calls"] == 1
    start = events[0]
    assert start["settings"]["style"] == "react" and start["tools"][0]["function"]["name"] == \
        "calculator"
    # the second prompt is stored as the characters it adds to the first
    raw = [json.loads(line) for line in path.read_text().splitlines()]
    delta = [e for e in raw if e["kind"] == "model_started"][1]["messages_delta"]
    assert delta["prefix"] > 500 and len(json.dumps(delta)) < len(json.dumps(sent[1])) / 2


def test_native_tool_calls_store_only_the_new_messages(server, tmp_path: Path) -> None:
    server.script({"tool_calls": [{"name": "calculator", "arguments": {"expression": "2+3"}}]},
                  {"tool_calls": [{"name": "calculator", "arguments": {"expression": "5*4"}}]},
                  "It is 20.")
    proc = run_cli("run", CALC, "q", *_wire(server, tmp_path, "loop.style=tools"))
    assert proc.returncode == 0, proc.stderr
    path = _only_trace(tmp_path)
    events = read_trace(path)
    calls = [e for e in events if e["kind"] == "model_called"]
    # as the runner sent them (LiteLLM leaves out an assistant turn's `content: null`)
    assert [[{k: v for k, v in m.items() if v is not None} for m in e["messages"]]
            for e in events if e["kind"] == "model_started"] == \
        [r["messages"] for r in server.requests]
    assert calls[0]["tool_calls"][0]["name"] == "calculator"
    assert json.loads(calls[0]["tool_calls"][0]["arguments"]) == {"expression": "2+3"}
    raw = [json.loads(line) for line in path.read_text().splitlines()]
    deltas = [e["messages_delta"] for e in raw if e["kind"] == "model_started"]
    # the third call repeats the first four messages: only the assistant turn and the tool
    # answer are new
    assert deltas[2]["same"] == 4 and len(deltas[2]["new"]) == 2


def test_secrets_and_configured_fields_are_masked_before_anything_is_written(
        server, tmp_path: Path) -> None:
    server.script(f"Thought: the key is {KEY}\nAction: calculator[1+1]",
                  "Final Answer: card 4111111111111111, patient ssn ok")
    proc = run_cli("run", CALC, f"use {KEY} and my card 4111111111111111",
                   *_wire(server, tmp_path, r"trace.redact_patterns=['\b\d{16}\b']"))
    assert proc.returncode == 0, proc.stderr
    text = _only_trace(tmp_path).read_text()
    assert KEY not in text and "4111111111111111" not in text
    assert text.count("***") >= 4
    assert "use *** and my card ***" in text


def test_redact_keys_mask_tool_inputs_and_json_outputs(server, tmp_path: Path) -> None:
    import runner
    from conftest import tools_plugin
    from runner.tools import tool

    def lookup(ssn: str) -> str:
        """Finds a patient."""
        return json.dumps({"name": "Ann", "ssn": ssn})

    server.script({"tool_calls": [{"name": "lookup", "arguments": {"ssn": "123-45-6789"}}]},
                  "found Ann")
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: s\nmodel: {{id: openai/scripted, api_base: '{server.url}'}}\n"
                    f"loop: {{style: tools}}\ntools: [lookup]\nmemory: {{backend: none}}\n"
                    f"trace: {{path: {tmp_path / 't'}, redact_keys: [SSN]}}\n"
                    f"checkpoint: {{enabled: false}}\n")
    with tools_plugin(tool(lookup)):
        result = runner.run_agent(spec, "find 123")
    assert result.ok and "123-45-6789" in result.steps[0].observation  # the run itself sees it
    events = read_trace(_only_trace(tmp_path / "t"))
    action = next(e for e in events if e["kind"] == "action")
    obs = next(e for e in events if e["kind"] == "observation")
    assert action["input"] == {"ssn": "***"}
    assert json.loads(obs["text"]) == {"name": "Ann", "ssn": "***"}
    assert "123-45-6789" not in json.dumps(events)  # nor in the raw tool-call arguments


def test_traces_can_be_turned_off_or_moved(server, tmp_path: Path) -> None:
    server.script("Final Answer: a", "Final Answer: b")
    proc = run_cli("run", CALC, "q", *_wire(server, tmp_path / "off", "trace.enabled=false"))
    assert proc.returncode == 0 and not (tmp_path / "off").exists()
    proc = run_cli("run", CALC, "q", *_wire(server, tmp_path / "deep" / "er"))
    assert proc.returncode == 0 and len(list((tmp_path / "deep" / "er").glob("*.jsonl"))) == 1


def test_a_trace_that_cannot_be_written_does_not_end_the_run(server, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    server.script("Final Answer: still here")
    proc = run_cli("run", CALC, "q", *_wire(server, blocker / "traces"))
    assert proc.returncode == 0 and proc.stdout == "still here\n"
    assert proc.stderr.count("tracing stopped") == 1 and str(blocker) in proc.stderr


def test_a_killed_run_keeps_every_event_before_the_kill(server, tmp_path: Path) -> None:
    server.script("Thought: first\nAction: calculator[6*7]", {"delay": 60, "content": "late"})
    env = {**os.environ, "OPENAI_API_KEY": KEY}
    proc = subprocess.Popen([sys.executable, "-m", "runner", "run", CALC, "q",
                             *_wire(server, tmp_path)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while len(server.requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(server.requests) == 2
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    events = read_trace(_only_trace(tmp_path))
    kinds = [e["kind"] for e in events]
    assert kinds[-1] == "model_started" and "run_ended" not in kinds
    # the call that never answered is on record with its prompt
    assert "Observation: 42" in events[-1]["messages"][-1]["content"]
    assert next(e for e in events if e["kind"] == "observation")["text"] == "42"
    (row,) = list_traces(tmp_path)
    assert row["status"] == "unfinished" and row["steps"] is None


def test_a_cut_last_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "abc.jsonl"
    path.write_text(json.dumps({"kind": "run_started", "run_id": "abc", "t": 1.0,
                                "agent": "a", "model": "m", "input": "q"}) + "\n"
                    + '{"kind": "model_sta')
    assert [e["kind"] for e in read_trace(path)] == ["run_started"]
    assert summarize(path)["status"] == "unfinished"
    assert build_tree(read_trace(path))["status"] == "unfinished"


def test_a_sub_agent_writes_into_its_parents_trace_and_nests_in_the_tree(server, tmp_path: Path
                                                                        ) -> None:
    boss = sub_agent_project(tmp_path, server)
    proc = run_cli("run", str(boss), "cats", "--json", *_wire(server, tmp_path / "t"))
    assert proc.returncode == 0, proc.stderr
    path = _only_trace(tmp_path / "t")  # one file for the whole run
    events = read_trace(path)
    runs = {e["run_id"] for e in events}
    assert len(runs) == 2
    tree = build_tree(events)
    assert tree["agent"] == "boss" and tree["run_id"] == json.loads(proc.stdout)["run_id"]
    step = next(i for i in tree["items"] if i["type"] == "step")
    (call,) = step["tools"]
    sub = call["run"]
    assert sub["agent"] == "writer" and sub["status"] == "finished"
    assert sub["parent_run_id"] == tree["run_id"]
    assert sub["answer"] == call["output"] == "Cats nap in the sun."
    assert call["start"] <= sub["start"] <= sub["end"] <= call["end"]
    sub_step = next(i for i in sub["items"] if i["type"] == "step")
    assert "Question: a line about cats" in sub_step["model"]["messages"][-1]["content"]


def test_retries_are_in_the_trace(server, tmp_path: Path) -> None:
    server.script({"status": 503, "body": "busy"}, "Final Answer: ok")
    proc = run_cli("run", CALC, "q", *_wire(server, tmp_path, "model.retries=1",
                                            "model.backoff_s=0.01"))
    assert proc.returncode == 0, proc.stderr
    tree = build_tree(read_trace(_only_trace(tmp_path)))
    (step,) = [i for i in tree["items"] if i["type"] == "step"]
    (retry,) = step["retries"]
    assert retry["attempt"] == 1 and "503" in retry["error"] and retry["wait_s"] < 0.1
    assert step["model"]["attempts"] == 2 and step["answer"] == "ok"


def test_a_failed_run_keeps_its_error_and_partial_steps(server, tmp_path: Path) -> None:
    server.script("Thought: try\nAction: calculator[1/0]", {"status": 401, "body": "no"})
    proc = run_cli("run", CALC, "q", *_wire(server, tmp_path))
    assert proc.returncode == 1
    tree = build_tree(read_trace(_only_trace(tmp_path)))
    assert tree["status"] == "model_auth_error" and "401" in tree["error"]
    steps = [i for i in tree["items"] if i["type"] == "step"]
    assert steps[0]["tools"][0]["error"] is True
    assert steps[1]["model"]["end"] is None  # the call that failed: started, never answered
    assert "Observation:" in steps[1]["model"]["messages"][-1]["content"]


def test_trace_list_shows_recent_runs(server, tmp_path: Path) -> None:
    server.script("Thought: t\nAction: calculator[1+1]", "Final Answer: 2",
                  {"status": 400, "body": "bad"})
    assert run_cli("run", CALC, "first", *_wire(server, tmp_path)).returncode == 0
    time.sleep(0.02)  # distinct modification times: newest first
    assert run_cli("run", CALC, "second", *_wire(server, tmp_path)).returncode == 1
    proc = run_cli("trace", "list", "--dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    header, newest, oldest = proc.stdout.splitlines()
    assert header.split()[:7] == ["RUN", "AGENT", "STATUS", "STEPS", "TOKENS", "COST", "$"]
    assert newest.split()[1:3] == ["calculator", "model_provider_error"]
    assert oldest.split()[1:4] == ["calculator", "finished", "2"]
    rows = json.loads(run_cli("trace", "list", "--dir", str(tmp_path), "--json").stdout)
    assert [r["input"] for r in rows] == ["second", "first"] and rows[1]["tokens"] > 0
    assert run_cli("trace", "list", "--dir", str(tmp_path / "none")).stderr.startswith(
        "no traces")


@pytest.mark.parametrize("seed", range(5))
def test_message_deltas_round_trip(seed: int) -> None:
    rng = random.Random(seed)
    from runner.spec import TraceSpec
    from runner.trace.writer import TraceWriter

    writer = TraceWriter(TraceSpec(), set())
    history: list[dict] = []
    restored: list[dict] = []
    for _ in range(30):
        op = rng.choice(["append", "grow", "rewrite"])
        if op == "append" or not history:
            history.append({"role": rng.choice(["user", "assistant", "tool"]),
                            "content": "".join(rng.choice("ab\n") for _ in range(rng.randint(0, 40)))})
        elif op == "grow":
            history[-1] = {**history[-1], "content": history[-1]["content"] + "x" * rng.randint(1, 9)}
        else:
            i = rng.randrange(len(history))
            history[i] = {**history[i], "content": history[i]["content"][:rng.randint(0, 10)] + "z"}
        sent = [dict(m) for m in history]
        restored = expand_delta(restored, writer._delta("r", sent))
        assert restored == sent


def test_common_prefix() -> None:
    assert common_prefix("abcdef", "abcxyz") == 3
    assert common_prefix("abc", "abc") == 3
    assert common_prefix("", "abc") == 0
    assert common_prefix("x" * 10000 + "a", "x" * 10000 + "b") == 10000


def test_a_resumed_run_continues_its_trace(server, tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    server.script("Thought: multiply\nAction: calculator[6*7]", {"status": 503, "body": "down"})
    proc = run_cli("run", CALC, "q", *_wire(server, tmp_path / "t", "model.retries=0",
                                            f"checkpoint.path={db}"))
    assert proc.returncode == 1, proc.stderr
    path = _only_trace(tmp_path / "t")
    server.script("Thought: done\nFinal Answer: 42")
    proc = run_cli("resume", path.stem, "--db", str(db))
    assert proc.returncode == 0 and proc.stdout == "42\n", proc.stderr
    assert _only_trace(tmp_path / "t") == path  # the same file, appended to
    events = read_trace(path)
    starts = [e for e in events if e["kind"] == "run_started"]
    assert [s["resumed"] for s in starts] == [False, True]
    tree = build_tree(events)
    assert tree["status"] == "finished" and tree["answer"] == "42" and tree["resumes"] == 1
    kinds = [i["type"] for i in tree["items"]]
    assert kinds.index("resumed") > kinds.index("step")
    steps = [i for i in tree["items"] if i["type"] == "step"]
    # the first run's failed call, then the resumed run's call, which carries the observation
    assert steps[1]["model"]["end"] is None and steps[2]["answer"] == "42"
    assert "Observation: 42" in steps[2]["model"]["messages"][-1]["content"]


def test_many_runs_at_once_hold_a_bounded_number_of_trace_files_open(
        server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """More runs at once than the writer may hold files open (MAX_OPEN, made 3 here): the
    least recently written file is closed and reopened for appending, never more than 3
    open at any event, and every run's trace is whole and in order."""
    import asyncio

    import runner
    from runner.testing import tool_call_responder
    from runner.trace import writer

    monkeypatch.setattr(writer, "MAX_OPEN", 3)
    server.responder = tool_call_responder(3)
    folder = tmp_path / "traces"
    spec = runner.load_spec(CALC, overrides=[
        "model.id=openai/scripted", f"model.api_base={server.url}", "loop.style=tools",
        f"trace.path={folder}", "checkpoint.enabled=false"])
    most = [0]

    def count_open(event: Any) -> None:
        fds = os.listdir("/proc/self/fd")
        here = 0
        for fd in fds:
            try:
                here += os.readlink(f"/proc/self/fd/{fd}").startswith(str(folder))
            except OSError:  # closed since it was listed
                pass
        most[0] = max(most[0], here)

    async def main() -> list[Any]:
        async with runner.Agent(spec) as agent:
            agent.sinks.append(count_open)
            return await asyncio.gather(*(agent.run(f"q{i}") for i in range(12)))

    results = asyncio.run(main())
    assert [r.status for r in results] == ["finished"] * 12
    assert most[0] == 3  # the bound was reached, and never passed
    for r in results:
        kinds = [e["kind"] for e in read_trace(folder / f"{r.run_id}.jsonl")]
        assert kinds[0] == "run_started" and kinds[-1] == "run_ended"
        assert kinds.count("model_started") == 4 and kinds.count("observation") == 3
        assert kinds.count("run_ended") == 1
