"""Record and replay (`runner run --record FILE` / `--replay FILE`): runs against the scripted
server (text ReAct and native tool calls, with a sub-agent) are recorded, then replayed with
the server emptied and the spec's model, key and server gone."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import runner
from conftest import ROOT, run_cli, tools_plugin
from runner.errors import RecordingError, ReplayMismatch
from runner.testing.recording import Recorder, Replayer, describe_difference
from runner.redact import Redactor

NOWHERE = ["--set", "model.id=openai/scripted", "--set", "model.api_base=http://127.0.0.1:9/v1"]
"""The recorded model where it cannot answer: no key for it, nothing listening on port 9."""


def _wire(server: Any) -> list[str]:
    return ["--set", "model.id=openai/scripted", "--set", f"model.api_base={server.url}"]


def _write_agents(tmp_path: Path, server: Any, style: str) -> Path:
    """boss.yaml (calculator and the helper sub-agent) and helper.yaml (calculator)."""
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "helper.yaml").write_text(
        "name: helper\ndescription: Does sums.\nmemory: {backend: none}\n"
        f"loop: {{style: {style}}}\nmodel: {{id: openai/scripted, api_base: '{server.url}', "
        "backoff_s: 0}\ntools: [calculator]\n")
    boss = tmp_path / "boss.yaml"
    boss.write_text(
        "name: boss\nmemory: {backend: none}\n"
        f"loop: {{style: {style}}}\nprompt: {{instructions: Delegate sums to the helper.}}\n"
        "tools:\n  - calculator\n  - agent: helper.yaml\n")
    return boss


def _script(server: Any, style: str) -> None:
    """boss -> helper (helper -> calculator -> answer) -> calculator -> answer."""
    def usage(p: int, c: int) -> dict[str, int]:
        return {"prompt_tokens": p, "completion_tokens": c}

    if style == "react":
        server.script(
            {"content": "Thought: ask\nAction: helper[what is 6*7]", "usage": usage(100, 9)},
            {"content": "Thought: sum\nAction: calculator[6*7]", "usage": usage(50, 8)},
            {"content": "Final Answer: 42", "usage": usage(60, 4)},
            {"content": "Thought: one more\nAction: calculator[42+1]", "usage": usage(120, 10)},
            {"content": "Final Answer: 43", "usage": usage(140, 3)})
    else:
        server.script(
            {"tool_calls": [{"name": "helper", "arguments": {"input": "what is 6*7"}}],
             "usage": usage(100, 9)},
            {"tool_calls": [{"name": "calculator", "arguments": {"expression": "6*7"}}],
             "usage": usage(50, 8)},
            {"content": "42", "usage": usage(60, 4)},
            {"tool_calls": [{"name": "calculator", "arguments": {"expression": "42+1"}}],
             "usage": usage(120, 10)},
            {"content": "43", "usage": usage(140, 3)})


def _without_key(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m runner ARGS` with no API key in the environment."""
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _comparable(result: dict[str, Any]) -> dict[str, Any]:
    steps = [{k: v for k, v in s.items() if k not in ("model_s", "tool_s")}
             for s in result["steps"]]
    return {"answer": result["answer"], "status": result["status"], "steps": steps,
            "usage": result["usage"], "cost_usd": result["cost_usd"]}


@pytest.mark.parametrize("style", ["react", "tools"])
def test_record_then_replay_without_model_key_or_server(server, tmp_path: Path,
                                                        style: str) -> None:
    boss = _write_agents(tmp_path, server, style)
    _script(server, style)
    rec = tmp_path / "rec.jsonl"
    proc = run_cli("run", str(boss), "What is 6*7+1?", "--record", str(rec), "--json",
                   *_wire(server), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    recorded = json.loads(proc.stdout)
    assert recorded["answer"] == "43" and len(server.requests) == 5

    lines = _lines(rec)
    assert lines[0]["kind"] == "recording" and lines[0]["version"] == 1
    assert [(l["agent"], l["model"]) for l in lines if l["kind"] == "agent"] == \
        [("boss", "openai/scripted"), ("helper", "openai/scripted")]
    exchanges = [l for l in lines if l["kind"] == "exchange"]
    assert [e["agent"] for e in exchanges] == ["boss", "helper", "helper", "boss", "boss"]
    assert exchanges[0]["reply"]["usage"] == {"prompt_tokens": 100, "completion_tokens": 9}
    assert (exchanges[0]["request"]["tools"] is None) == (style == "react")

    server.reset()  # nothing scripted: a call that reached it would fail
    proc = _without_key("run", str(boss), "What is 6*7+1?", "--replay", str(rec), "--json",
                        *NOWHERE, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    replayed = json.loads(proc.stdout)
    assert server.requests == []
    assert _comparable(replayed) == _comparable(recorded)
    assert replayed["usage"]["prompt_tokens"] == 100 + 120 + 140  # the boss's own calls


def test_replay_does_not_load_the_embedded_model_or_litellm(tmp_path: Path) -> None:
    code = (
        "import asyncio, sys\n"
        "from runner.api import make_agent\n"
        "from runner.testing.recording import Replayer\n"
        "from runner.redact import Redactor\n"
        "agent = make_agent(sys.argv[1], checkpoints=False,\n"
        "                   tap=Replayer(sys.argv[2], Redactor()))\n"
        "result = asyncio.run(agent.run('What is 17 times 23?'))\n"
        "print(result.answer, result.status, 'litellm' in sys.modules,\n"
        "      'llama_cpp' in sys.modules)\n")
    proc = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "agents" / "calculator.yaml"),
         str(ROOT / "agents" / "tests" / "recordings" / "calculator.jsonl")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["391", "finished", "False", "False"]


def test_changed_prompt_is_reported_where_it_differs(server, tmp_path: Path) -> None:
    boss = _write_agents(tmp_path, server, "react")
    _script(server, "react")
    rec = tmp_path / "rec.jsonl"
    assert run_cli("run", str(boss), "q", "--record", str(rec), *_wire(server),
                   cwd=tmp_path).returncode == 0
    before = "Delegate sums to the helper."
    after = "Delegate sums to a helper."
    proc = _without_key("run", str(boss), "q", "--replay", str(rec), *NOWHERE,
                        "--set", f"prompt.instructions={after}", cwd=tmp_path)
    assert proc.returncode == 1
    at = len(os.path.commonprefix([before, after])) + 1
    assert (f"replay_mismatch: call 1 of agent 'boss' is not in the recording rec.jsonl; against "
            f"the closest recorded request (line 4), message 1 (user) differs at character "
            f"{at}: recorded 'Delegate sums to the helper.") in proc.stderr
    assert "now 'Delegate sums to a helper." in proc.stderr
    assert "record again (--record)" in proc.stderr


def test_a_sub_agent_mismatch_is_what_the_run_reports(server, tmp_path: Path) -> None:
    boss = _write_agents(tmp_path, server, "react")
    _script(server, "react")
    rec = tmp_path / "rec.jsonl"
    assert run_cli("run", str(boss), "q", "--record", str(rec), *_wire(server),
                   cwd=tmp_path).returncode == 0
    helper = tmp_path / "helper.yaml"
    helper.write_text(helper.read_text() + "prompt: {instructions: Be exact.}\n")
    proc = _without_key("run", str(boss), "q", "--replay", str(rec), *NOWHERE, cwd=tmp_path)
    assert proc.returncode == 1
    # not the boss's next request, which differs only because the helper failed
    assert "call 1 of agent 'helper' is not in the recording" in proc.stderr
    assert "message 1 (user) differs at character 1: recorded 'You can use these tools" \
        in proc.stderr
    assert "now 'Be exact." in proc.stderr


def test_secrets_never_reach_the_recording(server, tmp_path: Path) -> None:
    boss = _write_agents(tmp_path, server, "react")
    boss.write_text(boss.read_text().replace("Delegate sums to the helper.",
                                             "'Delegate sums (account ${ACCOUNT_TOKEN}).'"))
    key, token = "sk-live-0123456789abcdef", "tok-private-98765"
    env = {"OPENAI_API_KEY": key, "ACCOUNT_TOKEN": token}
    server.script(f"Thought: the key is {key}\nFinal Answer: done with {token}")
    rec = tmp_path / "rec.jsonl"
    question = f"My key is {key}; what is 2+2?"
    proc = run_cli("run", str(boss), question, "--record", str(rec), *_wire(server),
                   cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert key in server.requests[0]["messages"][0]["content"]  # the model did see them
    assert token in server.requests[0]["messages"][0]["content"]
    text = rec.read_text()
    assert key not in text and token not in text
    assert "My key is ***" in text and "account ***" in text and "done with ***" in text
    # the same run replays: the live request is masked the same way before matching
    server.reset()
    proc = run_cli("run", str(boss), question, "--replay", str(rec), *NOWHERE, cwd=tmp_path,
                   env=env)
    assert proc.returncode == 0, proc.stderr
    # (the masked reply is what replays: `***` then reads as markdown bold, which the parser drops)
    assert proc.stdout.startswith("done with") and server.requests == []


def test_failed_attempts_are_not_recorded(server, tmp_path: Path) -> None:
    boss = _write_agents(tmp_path, server, "react")
    server.script({"status": 500, "body": "overloaded"}, "Final Answer: fine")
    rec = tmp_path / "rec.jsonl"
    proc = run_cli("run", str(boss), "q", "--record", str(rec), *_wire(server),
                   "--set", "model.backoff_s=0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(server.requests) == 2
    exchanges = [l for l in _lines(rec) if l["kind"] == "exchange"]
    assert [e["reply"]["text"] for e in exchanges] == ["Final Answer: fine"]


@pytest.mark.parametrize("content, where", [
    ('{"kind": "recording", "version": 1}\nnot json\n', ":2:1: not JSON: Expecting value"),
    ('{"kind": "agent", "agent": "a"}\n', ":1:1: not a recording: the first line must be"),
    ('{"kind": "recording", "version": 7}\n', ":1:1: recording version 7 is not supported"),
    ('{"kind": "recording", "version": 1}\n{"kind": "exchange", "agent": "boss", '
     '"request": {"messages": []}, "reply": {"txt": "x"}}\n', ":2:1: malformed reply"),
    ('{"kind": "recording", "version": 1}\n{"kind": "tape"}\n', ":2:1: unknown kind 'tape'"),
    ("", ":1:1: the recording is empty"),
    # hand-edited: each a typed error at its line, never a traceback
    ('{"kind": "recording", "version": 1}\n' + "[" * 100_000 + "]" * 100_000 + "\n",
     ":2:1: not JSON this runner reads: nested too deep"),
    ('{"kind": "recording", "version": 1}\n{"kind": "exchange", "agent": "boss", "request": '
     '{"messages": []}, "reply": {"text": "x", "usage": {"prompt_tokens": 1e400}}}\n',
     ":2:1: malformed reply (ValueError: usage.prompt_tokens must be a whole number"),
    ('{"kind": "recording", "version": 1}\n{"kind": "exchange", "agent": "boss", "request": '
     '{"messages": []}, "reply": {"text": "x", "usage": {"completion_tokens": -5}}}\n',
     ":2:1: malformed reply (ValueError: usage.completion_tokens must be a whole number"),
    ('{"kind": "recording", "version": 1}\n{"kind": "exchange", "agent": "boss", "request": '
     '{"messages": []}, "reply": {"text": "x", "cost_usd": "lots"}}\n',
     ":2:1: malformed reply (ValueError: cost_usd must be a number of dollars or null"),
], ids=lambda value: value[-60:].replace("\n", " "))
def test_a_malformed_recording_names_file_and_line(server, tmp_path: Path, content: str,
                                                   where: str) -> None:
    boss = _write_agents(tmp_path, server, "react")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    proc = _without_key("run", str(boss), "q", "--replay", str(bad), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"bad.jsonl{where}"), proc.stderr


def test_a_replay_of_a_device_or_a_pipe_is_refused_without_reading_it(server,
                                                                     tmp_path: Path) -> None:
    boss = _write_agents(tmp_path, server, "react")
    os.mkfifo(tmp_path / "pipe")  # opening a FIFO with no writer would wait for ever
    for source, shown in [("/dev/zero", "/dev/zero"), (str(tmp_path / "pipe"), "pipe")]:
        proc = _without_key("run", str(boss), "q", "--replay", source, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == f"{shown}: not a regular file"


def test_a_missing_recording_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match=r"nope\.jsonl: no such recording file"):
        Replayer(tmp_path / "nope.jsonl", Redactor())


# --------------------------------------------------------------------------- in process

def _fake_spec(tmp_path: Path, replies: list[Any], **extra: Any) -> runner.AgentSpec:
    path = tmp_path / "agent.yaml"
    body = {"name": "solo", "memory": {"backend": "none"},
            "model": {"id": "fake/script", "options": {"replies": replies}}, **extra}
    path.write_text(json.dumps(body))
    return runner.load_spec(path)


def _run(agent: runner.Agent, question: str) -> Any:
    return asyncio.run(agent.run(question))


def test_identical_requests_get_their_replies_in_order(tmp_path: Path) -> None:
    spec = _fake_spec(tmp_path, ["Final Answer: one", "Final Answer: two"])
    rec = tmp_path / "rec.jsonl"
    recorder = Recorder(rec, Redactor())
    agent = runner.Agent(spec, tap=recorder, checkpoints=False)
    assert [_run(agent, "same?").answer for _ in range(2)] == ["one", "two"]
    # each exchange is on disk as soon as it happened, before the recorder is closed
    assert [l["kind"] for l in _lines(rec)] == ["recording", "agent", "exchange", "exchange"]
    recorder.close()

    replay = runner.Agent(spec, tap=Replayer(rec, Redactor()), checkpoints=False)
    assert [_run(replay, "same?").answer for _ in range(3)] == ["one", "two", "two"]


def test_replay_answers_supports_tools_as_recorded(tmp_path: Path) -> None:
    spec = _fake_spec(tmp_path, [{"tool_calls": [{"name": "calculator",
                                                  "arguments": {"expression": "2+2"}}]},
                                 "It is 4."], tools=["calculator"])
    spec.model.options["native_tools"] = True  # the fake model says it calls tools natively
    rec = tmp_path / "rec.jsonl"
    recorder = Recorder(rec, Redactor())
    assert _run(runner.Agent(spec, tap=recorder, checkpoints=False), "2+2?").answer == "It is 4."
    recorder.close()
    agent = _lines(rec)[1]
    assert {k: agent[k] for k in ("kind", "agent", "model", "supports_tools")} == \
        {"kind": "agent", "agent": "solo", "model": "fake/script", "supports_tools": True}
    assert agent["settings"] == {"id": "fake/script", "temperature": spec.model.temperature,
                                 "max_tokens": spec.model.max_tokens}

    spec.model.options["native_tools"] = False  # never asked: replay builds no model
    result = _run(runner.Agent(spec, tap=Replayer(rec, Redactor()), checkpoints=False), "2+2?")
    assert result.answer == "It is 4." and result.steps[0].call_id  # the native path again


@runner.tool
def lookup(term: str) -> str:
    """Looks a term up."""
    return term


def test_changed_tools_are_named(tmp_path: Path) -> None:
    with tools_plugin(lookup):
        spec = _fake_spec(tmp_path, ["It is 4."], tools=["calculator", "lookup"],
                          loop={"style": "tools"})
        rec = tmp_path / "rec.jsonl"
        recorder = Recorder(rec, Redactor())
        _run(runner.Agent(spec, tap=recorder, checkpoints=False), "2+2?")
        recorder.close()
        fewer = _fake_spec(tmp_path, [], tools=["calculator"], loop={"style": "tools"})
        result = _run(runner.Agent(fewer, tap=Replayer(rec, Redactor()), checkpoints=False),
                      "2+2?")
    assert result.status == "replay_mismatch"
    assert isinstance(result.exception, ReplayMismatch)
    assert "the tools differ: recorded calculator, lookup; now calculator" in result.error
    assert "message" not in result.error.split("(line 3), ")[1]  # the messages are the same


def test_an_agent_missing_from_the_recording(tmp_path: Path) -> None:
    rec = tmp_path / "rec.jsonl"
    Recorder(rec, Redactor()).close()
    spec = _fake_spec(tmp_path, [])
    result = _run(runner.Agent(spec, tap=Replayer(rec, Redactor()), checkpoints=False), "q")
    assert result.status == "replay_mismatch"
    assert result.error.endswith("which has no exchanges of that agent (it has: none)")


@pytest.mark.parametrize("recorded, now, expected", [
    ({"messages": [{"role": "system", "content": "a"}]},
     {"messages": [{"role": "user", "content": "a"}]},
     "message 1 is now a user message; the recording has a system one"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
     {"messages": [{"role": "user", "content": "a"}]},
     "message 2 (assistant) is missing: the recorded request had 2 messages, now 1"),
    ({"messages": [{"role": "user", "content": "a"}]},
     {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
     "message 2 (user) is new: the recorded request had 1 message, now 2"),
    ({"messages": [], "stop": ["\nObservation:"]}, {"messages": [], "stop": None},
     "the stop sequences differ: recorded ['\\nObservation:'], now None"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]}]},
     {"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "c2"}]}]},
     "message 1 (assistant) differs: recorded '...istant\",\"tool_calls\":[{\"id\":\"c1\"}]}', "
     "now '...istant\",\"tool_calls\":[{\"id\":\"c2\"}]}'"),
    ({"messages": [], "tools": [{"type": "function", "function": {"name": "calc",
                                                                  "description": "Adds."}}]},
     {"messages": [], "tools": [{"type": "function", "function": {"name": "calc",
                                                                  "description": "Sums."}}]},
     "the schema of tool calc differs: recorded '{\"function\":{\"description\":\"Adds.\","
     "\"name\":\"calc\"},\"type\":\"fun...', now '{\"function\":{\"description\":\"Sums."
     "\",\"name\":\"calc\"},\"type\":\"fun...'"),
])
def test_describe_difference(recorded: dict[str, Any], now: dict[str, Any],
                             expected: str) -> None:
    assert describe_difference(recorded, now) == expected


def test_a_long_prompt_shows_only_the_neighbourhood_of_the_change() -> None:
    old = "intro " * 200 + "Use the calculator for sums. " + "outro " * 200
    new = old.replace("the calculator", "a calculator")
    text = describe_difference({"messages": [{"role": "user", "content": old}]},
                               {"messages": [{"role": "user", "content": new}]})
    assert text == ("message 1 (user) differs at character 1205: recorded '...o intro intro "
                    "intro intro Use the calculator for sums. outro ou...', now '...o intro "
                    "intro intro intro Use a calculator for sums. outro ou...'")


def test_a_replay_with_other_model_settings_is_a_mismatch(server, tmp_path: Path) -> None:
    boss = _write_agents(tmp_path, server, "react")
    _script(server, "react")
    rec = tmp_path / "rec.jsonl"
    assert run_cli("run", str(boss), "q", "--record", str(rec), *_wire(server),
                   cwd=tmp_path).returncode == 0
    (line,) = [l for l in _lines(rec) if l["kind"] == "agent" and l["agent"] == "boss"]
    assert line["settings"]["id"] == "openai/scripted" and line["settings"]["temperature"] == 0
    server.reset()
    for change, said in ((["-m", "openai/gpt-4o"], 'model "openai/scripted"; this run has '
                                                   'model "openai/gpt-4o"'),
                         (["--set", "model.temperature=0.7"], "temperature 0.0; this run has "
                                                              "temperature 0.7")):
        proc = _without_key("run", str(boss), "q", "--replay", str(rec), *NOWHERE, *change,
                            cwd=tmp_path)
        assert proc.returncode == 1 and not server.requests
        assert f"replay_mismatch: agent 'boss' was recorded in rec.jsonl with {said}" in \
            proc.stderr, proc.stderr
        assert "record again (--record)" in proc.stderr
