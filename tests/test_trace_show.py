"""`runner trace show`: real runs against the scripted server write traces, and the timeline
printed from them shows retries, tool errors and sub-agents nested where they happened,
survives crashed (cut) traces, and prints trace text literally."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from conftest import run_cli

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
LONG = " ".join(f"word{i}" for i in range(150))  # ~1,200 characters, no markup


@pytest.fixture
def project(tmp_path: Path, server: Any) -> Path:
    """A boss agent with the calculator and a writer sub-agent, both on the scripted server."""
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "writer.yaml").write_text(
        "version: 1\nname: writer\ndescription: Writes one sentence.\nmemory: {backend: none}\n"
        f"loop: {{style: react}}\ntools: [calculator]\n"
        f"model: {{id: openai/scripted, api_base: '{server.url}'}}\n")
    (tmp_path / "boss.yaml").write_text(
        "version: 1\nname: boss\nmemory: {backend: none, session: default}\n"
        "loop: {style: react}\ncheckpoint: {enabled: false}\n"
        "tools:\n  - calculator\n  - agent: writer.yaml\n")
    return tmp_path


def run(project: Path, server: Any, *sets: str, ok: bool = True) -> str:
    """Run boss.yaml with its trace in project/traces; the run's id."""
    args = ["run", "boss.yaml", "cats", "-q", "--set", "model.id=openai/scripted",
            "--set", f"model.api_base={server.url}", "--set", "trace.path=traces"]
    for s in sets:
        args += ["--set", s]
    proc = run_cli(*args, cwd=project)
    assert (proc.returncode == 0) == ok, proc.stderr
    traces = sorted((project / "traces").glob("*.jsonl"), key=lambda p: p.stat().st_mtime)
    return traces[-1].stem


def show(project: Path, run_id: str, *args: str, env: dict[str, str] | None = None) -> str:
    proc = run_cli("trace", "show", run_id, "--dir", "traces", *args, cwd=project, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def line_of(lines: list[str], needle: str, start: int = 0) -> int:
    return next(i for i in range(start, len(lines)) if needle in lines[i])


def indent(line: str) -> int:
    """Where the text of a tree line starts (after the tree's guides)."""
    return len(line) - len(line.lstrip(" │├└─"))


def test_retry_failing_tool_and_sub_agent_are_nested_in_order(project: Path, server: Any) -> None:
    server.script({"status": 500, "body": "upstream boom"},
                  "Thought: compute first\nAction: calculator[1/0]",
                  "Thought: delegate\nAction: writer[a line about cats]",
                  "Thought: sub computes\nAction: calculator[2+2]",
                  "Final Answer: Cats nap in the sun.",
                  "Final Answer: The writer says: Cats nap in the sun.")
    run_id = run(project, server, "model.retries=1", "model.backoff_s=0.01")
    out = show(project, run_id)
    assert not ANSI.search(out)  # piped: no colour, no cursor codes
    lines = out.splitlines()
    assert lines[0].split() == ["agent", "boss", "run", run_id, "finished"]
    assert "3 steps · 30+15 tokens (50+25 tokens with sub-agents)" in out
    assert "input    cats" in lines
    assert "answer   The writer says: Cats nap in the sun." in lines

    # the retry sits under the model call of step 1, with its error and wait
    step1 = line_of(lines, "step 1")
    model = line_of(lines, "model openai/scripted", step1)
    assert "2 attempts" in lines[model]
    retry = line_of(lines, "attempt 1 failed: openai/scripted: HTTP 500: upstream boom", model)
    assert retry == model + 1 and indent(lines[retry]) > indent(lines[model])
    assert "retried after" in lines[retry]
    # the failing tool, its error under it
    calc = line_of(lines, "calculator[1/0]", retry)
    assert lines[calc + 1].endswith("error: tool calculator failed: ValueError: division by zero")
    # step 2's tool call holds the writer's whole run, indented under it
    step2 = line_of(lines, "step 2", calc)
    writer = line_of(lines, "writer[a line about cats]", step2)
    sub = line_of(lines, "▶ writer  run ", writer)
    assert sub == writer + 1 and "finished" in lines[sub] and "2 steps" in lines[sub]
    sub_calc = line_of(lines, "calculator[2+2]", sub)
    assert indent(lines[sub_calc]) > indent(lines[calc]) > indent(lines[step1])
    assert "→ 4" in lines[sub_calc + 1]
    assert indent(lines[line_of(lines, "final answer: Cats nap in the sun.", sub)]) > \
        indent(lines[sub])
    # the tool's own result comes after the sub-run, back at the tool's depth
    result = line_of(lines, "→ Cats nap in the sun.", sub_calc)
    assert indent(lines[result]) == indent(lines[sub])
    final = line_of(lines, "final answer: The writer says: Cats nap in the sun.", result)
    assert line_of(lines, "step 3", result) < final
    # offsets from the run's start grow from step to step (the top-level run's steps)
    offsets = [float(re.match(r"\+(\d+\.\d+)s  steps? ", l).group(1))
               for l in lines if re.match(r"\+\d+\.\d+s  steps? \d", l)]
    assert len(offsets) == 3 and offsets == sorted(offsets)
    assert "memory read: session 'default', 0 messages" in out


def test_trace_text_is_printed_literally(project: Path, server: Any) -> None:
    server.script("Thought: [bold]x[/bold] and [/] and [red]\x1b[31mred\x1b[0m\n"
                  "Action: calculator[[/]]",
                  "Final Answer: done [/]")
    run_id = run(project, server)
    for env in (None, {"FORCE_COLOR": "1"}):  # piped, then as if on a colour terminal
        out = show(project, run_id, env=env)
        text = ANSI.sub("", out)
        assert "thought: [bold]x[/bold] and [/] and [red]\\x1b[31mred\\x1b[0m" in text
        assert "calculator[[/]]" in text
        assert "final answer: done [/]" in text
        assert "\x1b[31mred" not in out  # the trace's escape codes are shown, not obeyed
    assert ANSI.search(out)  # FORCE_COLOR did colour it


def test_long_outputs_are_cut_unless_full(project: Path, server: Any) -> None:
    server.script("Thought: delegate\nAction: writer[write a lot]",
                  f"Final Answer: {LONG}",
                  "Final Answer: short")
    run_id = run(project, server)
    out = show(project, run_id)
    assert LONG not in out.replace("\n", " ")
    assert "more characters; --full shows all" in out
    assert "prompt:" not in out
    lines = out.splitlines()
    assert max(len(l) for l in lines) <= 120  # a sensible width when piped
    full = show(project, run_id, "--full")
    # wrapped at word boundaries: every word is still whole
    words = set(re.findall(r"[^\s│├└─]+", full))
    assert {f"word{i}" for i in range(150)} <= words
    assert "more characters" not in full
    # each run's last prompt, message by message, and the raw replies
    assert "prompt: 1 message (the run's last call)" in full
    assert "[user] You can use these tools:" in full
    assert "Question: write a lot" in full and "Question: cats" in full
    assert "reply: Thought: delegate" in full


def test_native_tool_calls_show_their_arguments(project: Path, server: Any) -> None:
    server.script({"tool_calls": [{"name": "calculator", "arguments": {"expression": "2+2"}},
                                  {"name": "calculator", "arguments": {"expression": "3*3"}}]},
                  "both done")
    run_id = run(project, server, "loop.style=tools")
    lines = show(project, run_id).splitlines()
    step = line_of(lines, "steps 1-2")
    first = line_of(lines, 'calculator {"expression": "2+2"}', step)
    second = line_of(lines, 'calculator {"expression": "3*3"}', first)
    assert "→ 4" in lines[first + 1] and "→ 9" in lines[second + 1]
    assert "final answer: both done" in lines[line_of(lines, "step 3", second) + 2]


def _cut(project: Path, run_id: str, name: str, keep: int, tail: str = "") -> None:
    lines = (project / "traces" / f"{run_id}.jsonl").read_text().splitlines(keepends=True)
    (project / "traces" / f"{name}.jsonl").write_text("".join(lines[:keep]) + tail)


def test_a_crashed_run_shows_what_was_recorded(project: Path, server: Any) -> None:
    server.script("Thought: compute\nAction: calculator[6*7]",
                  "Thought: delegate\nAction: writer[a line about cats]",
                  "Thought: sub computes\nAction: calculator[2+2]",
                  "Final Answer: Cats nap in the sun.",
                  "Final Answer: ok")
    run_id = run(project, server)
    events = [json.loads(l) for l in (project / "traces" / f"{run_id}.jsonl").read_text()
              .splitlines()]
    # crashed while the writer's second model call was in flight
    at = next(i for i, e in enumerate(events) if e["kind"] == "model_started"
              and e["run_id"] != run_id and e["step"] == 2) + 1
    _cut(project, run_id, "crash0000001", at)
    out = show(project, "crash0000001")
    lines = out.splitlines()
    assert lines[0].split()[-1] == "unfinished"
    assert "the trace ends at +" in out and "without the run's end" in out
    assert "answer" not in [l.split()[0] for l in lines if l.strip()]
    assert "→ 42" in out  # what happened before the crash is all there
    sub = line_of(lines, "▶ writer  run ")
    assert "unfinished" in lines[sub]
    assert "no reply recorded" in lines[line_of(lines, "step 2", sub) + 1]
    assert "no result recorded" in out
    assert "20+10 tokens" in lines[line_of(lines, "totals")]  # summed from the calls recorded
    # and a last line cut in the middle of its JSON is skipped
    _cut(project, run_id, "crash0000002", at, tail=json.dumps(events[at])[:40])
    assert show(project, "crash0000002") == out


def test_prefix_unknown_and_ambiguous_ids(project: Path, server: Any) -> None:
    server.script("Final Answer: hi")
    run_id = run(project, server)
    assert show(project, run_id[:4]) == show(project, run_id)
    proc = run_cli("trace", "show", "nope", "--dir", "traces", cwd=project)
    assert proc.returncode != 0 and proc.stdout == ""
    assert "no trace for run 'nope' in traces" in proc.stderr
    assert "Traceback" not in proc.stderr
    (project / "traces" / f"{run_id}x.jsonl").write_text(
        (project / "traces" / f"{run_id}.jsonl").read_text())
    proc = run_cli("trace", "show", run_id[:4], "--dir", "traces", cwd=project)
    assert proc.returncode != 0 and "matches 2 runs" in proc.stderr
    empty = project / "traces" / "empty0000000.jsonl"
    empty.write_text("")
    proc = run_cli("trace", "show", "empty", "--dir", "traces", cwd=project)
    assert proc.returncode != 0 and "not a readable trace" in proc.stderr


def test_a_rejected_reply_and_a_failed_run(project: Path, server: Any) -> None:
    server.script("I will just ramble on", {"status": 500, "body": "provider down"})
    run_id = run(project, server, "model.retries=0", ok=False)
    out = show(project, run_id)
    lines = out.splitlines()
    status = lines[0].split()[-1]
    assert status not in ("finished", "unfinished")
    error = next(l for l in lines if l.startswith("error"))
    assert "provider down" in error
    # step 1: the reply that could not be parsed, what the model was told, and the reply
    step1 = line_of(lines, "step 1")
    told = line_of(lines, "not accepted, the model was told: ", step1)
    assert "reply: I will just ramble on" in lines[line_of(lines, "model openai/scripted", step1)
                                                  + 1]
    # step 2: the call that failed, and the run's end under the timeline
    step2 = line_of(lines, "step 2", told)
    assert "no reply recorded" in lines[step2 + 1]
    end = line_of(lines, f"■ {status}: ", step2)
    assert "provider down" in lines[end] and not lines[end].startswith(("│", "├", "└"))
