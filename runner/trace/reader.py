"""Reading traces back: a trace file's events with every model call's messages restored
from their deltas, finding a run's file by a prefix of its id, listing recent runs, and the
tree of runs, steps and calls that `trace show` and `trace view` draw."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import RunnerError
from ..models import Message

__all__ = ["read_trace", "find_trace", "list_traces", "summarize", "build_tree", "iter_runs",
           "expand_delta"]



def read_trace(path: str | Path) -> list[dict[str, Any]]:
    """A trace's events, with every model call's full `messages` restored (on its
    model_started). A last line cut short by a crash is skipped."""
    events: list[dict[str, Any]] = []
    sent: dict[str, list[Message]] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if not isinstance(e, dict):
                continue
            if e.get("kind") == "run_started":
                sent.pop(e.get("run_id"), None)
            delta = e.pop("messages_delta", None)
            if isinstance(delta, dict):
                e["messages"] = sent[e.get("run_id")] = expand_delta(sent.get(e.get("run_id"), []),
                                                                delta)
            events.append(e)
    return events


def expand_delta(before: list[Message], delta: dict[str, Any]) -> list[Message]:
    same, prefix, new = delta.get("same", 0), delta.get("prefix", 0), list(delta.get("new", []))
    if prefix and new and same < len(before):
        new[0] = {**new[0], "content": before[same]["content"][:prefix] + new[0]["content"]}
    return [*before[:same], *new]


def find_trace(folder: str | Path, run_id: str) -> Path:
    """The trace file of RUN_ID (a unique prefix is enough)."""
    folder = Path(folder)
    exact = folder / f"{run_id}.jsonl"
    if exact.is_file():
        return exact
    found = sorted(folder.glob(f"{_glob_safe(run_id)}*.jsonl")) if folder.is_dir() else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise RunnerError(f"no trace for run {run_id!r} in {folder}")
    raise RunnerError(f"{run_id!r} matches {len(found)} runs: "
                      f"{', '.join(p.stem for p in found[:5])}; give more of the id")


def _glob_safe(text: str) -> str:
    return "".join(c for c in text if c.isalnum() or c in "-_")


def list_traces(folder: str | Path, limit: int = 20) -> list[dict[str, Any]]:
    """Summaries of the most recent traces, newest first: reads each file's first line and
    its last run_ended, not the whole file."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    files = sorted(folder.glob("*.jsonl"), key=lambda p: p.stat().st_mtime, reverse=True)
    return [s for s in (summarize(p) for p in files[:limit]) if s is not None]


def summarize(path: Path) -> dict[str, Any] | None:
    """One line of `runner trace list`: status, agent, steps, tokens, cost, duration."""
    head, tail = _head_and_tail(path)
    try:
        first = json.loads(head)
    except ValueError:
        return None
    run_id = first.get("run_id", path.stem)
    end = next((e for e in (_loads(line) for line in reversed(tail))
                if e and e.get("kind") == "run_ended" and e.get("run_id") == run_id), None)
    summary = {"run_id": run_id, "agent": first.get("agent", "?"),
               "model": first.get("model", "?"), "started": first.get("t"),
               "input": first.get("input"), "status": "unfinished", "steps": None,
               "tokens": None, "cost_usd": None, "duration_s": None, "path": str(path)}
    if end:
        summary.update(status=end.get("status"), steps=end.get("steps"),
                       tokens=(end.get("prompt_tokens") or 0) + (end.get("completion_tokens") or 0),
                       cost_usd=end.get("cost_usd"), duration_s=end.get("duration_s"))
    return summary


def _head_and_tail(path: Path, tail_bytes: int = 1 << 16) -> tuple[str, list[str]]:
    with open(path, "rb") as f:
        head = f.readline().decode("utf-8", "replace")
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - tail_bytes))
        tail = f.read().decode("utf-8", "replace").splitlines()
    return head, tail


def _loads(line: str) -> dict[str, Any] | None:
    try:
        e = json.loads(line)
    except ValueError:
        return None
    return e if isinstance(e, dict) else None


# -- the run as a tree ----------------------------------------------------------------------


def build_tree(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The trace as nested, JSON-ready data for `trace show` and `trace view`.

    A run: `run_id, agent, model, input, settings, tools, start, end, status, answer, error,
    duration_s, prompt_tokens, completion_tokens, cost_usd, budget, items`. Its `items`, in
    order, are `{"type": "step", ...}` (one model call and what came of it: `start, end,
    model: {start, end (None: never answered), latency_s, messages, text, tool_calls, tokens,
    cost, ...},
    retries, thought, tools: [{tool, input, call_id, start, end, duration_s, output, error,
    run: <sub-run or None>}], answer, failure, warnings`), `{"type": "memory", ...}` and
    `{"type": "warning", ...}`. A sub-agent's run nests in the tool call that started it.
    """
    runs: dict[str, dict[str, Any]] = {}
    current: dict[str, dict[str, Any]] = {}  # run id -> its open step
    root: dict[str, Any] | None = None
    for e in events:
        rid, kind, t = e.get("run_id"), e.get("kind"), e.get("t", 0.0)
        if kind == "run_started":
            run = runs.get(rid)
            if run is None:  # a resumed run continues the same node
                run = runs[rid] = {
                    "run_id": rid, "agent": e.get("agent"), "model": e.get("model"),
                    "input": e.get("input"), "parent_run_id": e.get("parent_run_id"),
                    "settings": e.get("settings", {}), "tools": e.get("tools", []),
                    "start": t, "end": None, "status": "unfinished", "answer": None,
                    "error": None, "duration_s": None, "prompt_tokens": 0,
                    "completion_tokens": 0, "cost_usd": None, "budget": {}, "items": [],
                    "resumes": 0}
                _attach(run, runs, current)
                if root is None:
                    root = run
            else:
                run["resumes"] += 1
                run["items"].append({"type": "resumed", "t": t})
            continue
        run = runs.get(rid)
        if run is None:
            continue
        step = current.get(rid)
        if kind == "model_started" or (kind == "model_called" and (
                step is None or step["model"]["end"] is not None)):
            start = t if kind == "model_started" else t - (e.get("latency_s") or 0.0)
            step = current[rid] = _new_step(e.get("step"), start)
            run["items"].append(step)
            if kind == "model_started":
                step["model"].update(model=e.get("model"), messages=e.get("messages", []))
                continue
        if kind == "model_called":
            m = step["model"]
            m.update(model=e.get("model"), end=t, latency_s=e.get("latency_s"),
                     prompt_tokens=e.get("prompt_tokens"),
                     completion_tokens=e.get("completion_tokens"), cost_usd=e.get("cost_usd"),
                     finish_reason=e.get("finish_reason"), attempts=e.get("attempts"),
                     text=e.get("text", ""), tool_calls=e.get("tool_calls", []),
                     stop=e.get("stop"))
            if "messages" in e:  # an older trace: the messages came with the reply
                m["messages"] = e["messages"]
            step["end"] = max(step["end"], t)
        elif kind == "retry" and step is not None:
            step["retries"].append({"t": t, "model": e.get("model"), "attempt": e.get("attempt"),
                                    "error": e.get("error"), "wait_s": e.get("wait_s")})
        elif kind == "thought" and step is not None:
            step["thought"] = e.get("text", "")
        elif kind == "action" and step is not None:
            step["tools"].append({"index": e.get("step"), "tool": e.get("tool"),
                                  "input": e.get("input"), "call_id": e.get("call_id"),
                                  "start": t, "end": None, "duration_s": None, "output": None,
                                  "error": False, "run": None})
        elif kind == "observation" and step is not None:
            call = next((c for c in step["tools"] if c["index"] == e.get("step")
                         and c["end"] is None), None) if e.get("tool") else None
            if call is None:  # a parse failure or a rejected answer: advice to the model
                step["failure"] = e.get("text")
            else:
                call.update(end=t, duration_s=e.get("duration_s"), output=e.get("text"),
                            error=bool(e.get("error")))
            step["end"] = max(step["end"], t)
        elif kind == "final_answer":
            if step is None:
                step = current[rid] = _new_step(e.get("step"), t)
                run["items"].append(step)
            step["answer"] = e.get("answer")
        elif kind == "warning":
            (step["warnings"] if step is not None else run["items"]).append(
                e.get("message") if step is not None else {"type": "warning", "t": t,
                                                          "message": e.get("message")})
        elif kind in ("memory_read", "memory_written"):
            run["items"].append({"type": "memory", "t": t, "op": kind.split("_")[1],
                                 "session": e.get("session"), "messages": e.get("messages")})
        elif kind == "run_ended":
            run.update(end=t, status=e.get("status"), answer=e.get("answer"),
                       error=e.get("error"), duration_s=e.get("duration_s"),
                       steps=e.get("steps"), prompt_tokens=e.get("prompt_tokens", 0),
                       completion_tokens=e.get("completion_tokens", 0),
                       cost_usd=e.get("cost_usd"), budget=e.get("budget", {}))
            current.pop(rid, None)
    if root is None:
        raise ValueError("the trace has no run_started event")
    return root


def _new_step(index: int | None, start: float) -> dict[str, Any]:
    return {"type": "step", "index": index, "start": start, "end": start,
            "model": {"start": start, "end": None}, "retries": [], "thought": "", "tools": [],
            "answer": None, "failure": None, "warnings": []}


def _attach(run: dict[str, Any], runs: dict[str, dict[str, Any]],
            current: dict[str, dict[str, Any]]) -> None:
    """Nest a sub-agent's run in the parent's tool call that started it."""
    parent = runs.get(run["parent_run_id"] or "")
    if parent is None:
        return
    step = current.get(parent["run_id"])
    calls = [c for c in (step["tools"] if step else []) if c["run"] is None and c["end"] is None]
    match = next((c for c in calls if c["tool"] == run["agent"]), calls[0] if calls else None)
    if match is not None:
        match["run"] = run
    else:
        parent["items"].append({"type": "subrun", "t": run["start"], "run": run})


def iter_runs(run: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A run and every sub-run under it, depth first."""
    yield run
    for item in run["items"]:
        for call in item.get("tools", []):
            if call.get("run"):
                yield from iter_runs(call["run"])
        if item.get("type") == "subrun":
            yield from iter_runs(item["run"])
