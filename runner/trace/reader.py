"""Reading traces back: a trace file's events with every model call's messages restored
from their deltas, finding a run's file by a prefix of its id, listing recent runs, and the
tree of runs, steps and calls that `trace show` and `trace view` draw.

A trace may have been edited, cut or replaced by anything: reads are bounded (a line, a
file), only regular files are read, and an event whose fields have the wrong types is a
RunnerError naming the file and line; `list_traces` lists such a file as unreadable."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .._files import open_regular
from ..errors import RunnerError
from ..models import Message, token_count

__all__ = ["MAX_LINE_BYTES", "MAX_TRACE_BYTES", "build_tree", "expand_delta", "find_trace",
           "iter_runs", "list_traces", "read_trace", "read_tree", "summarize"]

MAX_LINE_BYTES = 32 << 20
"""The longest event read back (the longest is a model call's first prompt)."""
MAX_TRACE_BYTES = 1 << 30
"""The largest trace file `trace show` and `trace view` read."""
MAX_PROGRESS = 20
"""Progress updates kept per tool call (the last ones)."""
_MEMORY_FIELDS: dict[str, tuple[str, ...]] = {
    "memory_read": (), "memory_written": (), "memory_recalled": ("recalled",),
    "memory_summarized": ("tokens_before", "tokens_after", "reused", "error")}
"""The memory events, and what each adds to its item beside the session and count."""

_NONE = type(None)
_INT, _NUM, _TEXT = (int, _NONE), (int, float, _NONE), (str, _NONE)
_FIELDS: dict[str, tuple[type, ...]] = {
    "kind": (str,), "run_id": (str,), "t": (int, float), "step": _INT, "steps": _INT,
    "attempt": _INT, "attempts": _INT, "prompt_tokens": _INT, "completion_tokens": _INT,
    "latency_s": _NUM, "duration_s": _NUM, "wait_s": _NUM, "cost_usd": _NUM,
    "parent_run_id": _TEXT, "agent": _TEXT, "model": _TEXT, "tool": _TEXT, "call_id": _TEXT,
    "text": _TEXT, "status": _TEXT, "message": _TEXT, "session": _TEXT,
    "finish_reason": _TEXT, "error": (str, bool, _NONE), "resumed": (bool, _NONE),
    "settings": (dict, _NONE), "budget": (dict, _NONE), "tools": (list, _NONE),
    "tool_calls": (list, _NONE), "stop": (list, _NONE), "messages": (list, int),
    "messages_delta": (dict,), "round": _INT, "approved": (bool, _NONE),
    "problems": (list, _NONE), "critic_run_id": _TEXT}
"""The type of each field an event may have (a memory event's `messages` is a count)."""


def read_trace(path: str | Path) -> list[dict[str, Any]]:
    """A trace's events, with every model call's full `messages` restored (on its
    model_started). A line that is not a JSON object (a last line cut short by a crash, say)
    is skipped; an event with fields of the wrong type, a line longer than MAX_LINE_BYTES, a
    file larger than MAX_TRACE_BYTES or one that is not a regular file (a FIFO, /dev/zero)
    is a RunnerError naming the file."""
    events: list[dict[str, Any]] = []
    sent: dict[str, list[Message]] = {}
    with _open_regular(path) as f:
        if os.fstat(f.fileno()).st_size > MAX_TRACE_BYTES:
            raise RunnerError(f"{path}: larger than {MAX_TRACE_BYTES} bytes")
        total = 0
        for number, line in enumerate(_lines(f, path), 1):
            total += len(line)
            if total > MAX_TRACE_BYTES:  # it grew while being read
                raise RunnerError(f"{path}: larger than {MAX_TRACE_BYTES} bytes")
            e = _event(line, path, number)
            if e is None:
                continue
            rid = e["run_id"]
            if e["kind"] == "run_started":
                sent.pop(rid, None)
            delta = e.pop("messages_delta", None)
            if delta is not None:
                e["messages"] = sent[rid] = _expand(sent.get(rid, []), delta, path, number)
            events.append(e)
    return events


def read_tree(path: str | Path) -> dict[str, Any]:
    """The run of a trace file as a tree (see build_tree), or a RunnerError naming the file."""
    events = read_trace(path)
    try:
        return build_tree(events)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise RunnerError(f"{path}: not a readable trace: {exc}") from None


def _open_regular(path: str | Path) -> IO[bytes]:
    """The file opened for reading, if it is a regular file: never blocks on a FIFO, never
    reads a device."""
    try:
        return open_regular(path)
    except OSError as exc:
        raise RunnerError(f"{path}: {exc.strerror or exc}") from None


def _lines(f: IO[bytes], path: str | Path) -> Iterator[bytes]:
    """The file's lines, each at most MAX_LINE_BYTES (else a RunnerError naming the line)."""
    number = 0
    while line := f.readline(MAX_LINE_BYTES + 1):
        number += 1
        if len(line) > MAX_LINE_BYTES:
            raise RunnerError(f"{path}: line {number} is longer than {MAX_LINE_BYTES} bytes")
        yield line


def _event(line: bytes | str, path: str | Path, number: int) -> dict[str, Any] | None:
    """Line `number` (0: not known) as an event; None if it is not a JSON object; a
    RunnerError naming the file and line if it is one whose fields have the wrong types."""
    try:
        e = json.loads(line.decode("utf-8", "replace") if isinstance(line, bytes) else line)
    except (ValueError, RecursionError):  # cut short, or nested past the parser's stack
        return None
    if not isinstance(e, dict):
        return None
    where = f"{path}: line {number}" if number else f"{path}: an event near its end"
    for key, types in _FIELDS.items():
        if (key in e or key in ("kind", "run_id")) and not isinstance(e.get(key), types):
            raise RunnerError(f"{where}: {key} is a {type(e.get(key)).__name__}")
    problem = _messages_problem(e.get("messages")) if isinstance(e.get("messages"), list) \
        else None
    problem = problem or next((f"{key} holds something other than objects" for key in (
        "tool_calls", "tools") if not all(isinstance(c, dict) for c in e.get(key) or [])), None)
    if problem is None and not all(isinstance(s, str) for s in e.get("stop") or []):
        problem = "stop holds something other than text"
    if problem is not None:
        raise RunnerError(f"{where}: {problem}")
    return e


def _messages_problem(messages: list[Any]) -> str | None:
    if all(isinstance(m, dict) and isinstance(m.get("content"), (str, list, _NONE))
           for m in messages):
        return None
    return "messages holds something other than messages"


def _expand(before: list[Message], delta: dict[str, Any], path: str | Path,
            number: int) -> list[Message]:
    """expand_delta, once the delta is checked."""
    same, prefix, new = delta.get("same", 0), delta.get("prefix", 0), delta.get("new", [])
    problem = None
    if not (isinstance(same, int) and isinstance(prefix, int) and isinstance(new, list)) \
            or same < 0 or prefix < 0:
        problem = "messages_delta is not a delta"
    else:
        problem = _messages_problem(new)
        if problem is None and prefix and new and same < len(before) and not (
                isinstance(before[same].get("content"), str)
                and isinstance(new[0].get("content"), str)):
            problem = "messages_delta continues a message that is not text"
    if problem is not None:
        raise RunnerError(f"{path}: line {number}: {problem}")
    return expand_delta(before, delta)


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
    its last run_ended, not the whole file. A file that cannot be read that way is listed
    with status `unreadable` and an `error`, among the rest."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    files = sorted(((_mtime(p), p) for p in folder.glob("*.jsonl")), reverse=True)
    return [summarize(p, mtime) for mtime, p in files[:limit]]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # a dangling symlink: its own time
        try:
            return path.lstat().st_mtime
        except OSError:
            return 0.0


def summarize(path: Path, mtime: float | None = None) -> dict[str, Any]:
    """One line of `runner trace list`: status, agent, steps, tokens, cost, duration."""
    try:
        head, tail = _head_and_tail(path)
        first = _event(head, path, 1)
        if first is None or first["kind"] != "run_started":
            raise RunnerError(f"{path}: " + ("empty" if not head.strip() else
                                             "the first line is not a run_started event"))
        run_id = first["run_id"]
        ends = (_event(line, path, 0) for line in reversed(tail[1:]))  # tail[0] may be cut
        end = next((e for e in ends if e and e["kind"] == "run_ended" and
                    e["run_id"] == run_id), None)
    except RunnerError as exc:
        return {"run_id": path.stem, "agent": "?", "model": "?", "started": mtime,
                "input": None, "status": "unreadable", "steps": None, "tokens": None,
                "cost_usd": None, "duration_s": None, "path": str(path), "error": str(exc)}
    summary = {"run_id": run_id, "agent": first.get("agent", "?"),
               "model": first.get("model", "?"), "started": first.get("t"),
               "input": first.get("input"), "status": "unfinished", "steps": None,
               "tokens": None, "cost_usd": None, "duration_s": None, "path": str(path)}
    if end:  # tokens and cost of the whole trace: the budget shared with its sub-agents
        team = isinstance(end.get("budget"), dict) and "prompt_tokens" in end["budget"]
        used = end["budget"] if team else end
        cost = end.get("cost_usd")
        if team and isinstance(used.get("cost_usd"), (int, float)) and (
                cost is not None or used["cost_usd"] > 0):  # an unknown price stays unknown
            cost = used["cost_usd"]
        summary.update(status=end.get("status"), steps=end.get("steps"),
                       tokens=token_count(used.get("prompt_tokens")) + token_count(
                           used.get("completion_tokens")),
                       cost_usd=cost, duration_s=end.get("duration_s"))
    return summary


def _head_and_tail(path: Path, tail_bytes: int = 1 << 16) -> tuple[bytes, list[bytes]]:
    """The first line (at most MAX_LINE_BYTES) and the lines of the last `tail_bytes`."""
    with _open_regular(path) as f:
        head = next(_lines(f, path), b"")
        size = f.seek(0, os.SEEK_END)
        start = max(len(head), size - tail_bytes)
        f.seek(start)
        tail = f.read(tail_bytes).splitlines()
    return head, tail if start > len(head) else [b"", *tail]


# -- the run as a tree ----------------------------------------------------------------------


def build_tree(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The trace as nested, JSON-ready data for `trace show` and `trace view`.

    A run: `run_id, agent, model, input, settings, tools, start, end, status, answer, error,
    duration_s, prompt_tokens, completion_tokens, cost_usd, budget, items`. Its `items`, in
    order, are `{"type": "step", ...}` (one model call and what came of it: `start, end,
    model: {start, end (None: never answered), latency_s, messages, text, tool_calls, tokens,
    cost, ...},
    retries, thought, tools: [{tool, input, call_id, start, end, duration_s, output, error,
    run: <sub-run or None>}], answer, failure, warnings`), `{"type": "memory", ...}`,
    `{"type": "review", round, approved, problems, critic_run_id}` (reflection) and
    `{"type": "warning", ...}`. A sub-agent's run nests in the tool call that started it, or
    (a pipeline's step, a critic, a handoff's target) is an item `{"type": "subrun", run}`.
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
        elif kind == "tool_progress" and step is not None:
            call = _open_call(step, e.get("step"))
            if call is not None:  # the last few updates: a chatty server cannot bloat it
                call.setdefault("progress", []).append(
                    {"t": t, "progress": e.get("progress"), "total": e.get("total"),
                     "message": e.get("message")})
                del call["progress"][:-MAX_PROGRESS]
        elif kind == "observation" and step is not None:
            call = _open_call(step, e.get("step")) if e.get("tool") else None
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
        elif kind == "review":  # reflection: the critic's verdict on a draft
            run["items"].append({"type": "review", "t": t, "round": e.get("round"),
                                 "approved": bool(e.get("approved")),
                                 "problems": e.get("problems") or [],
                                 "critic_run_id": e.get("critic_run_id")})
        elif kind in _MEMORY_FIELDS:
            run["items"].append({"type": "memory", "t": t, "op": kind.split("_")[1],
                                 "session": e.get("session"), "messages": e.get("messages"),
                                 **{k: e.get(k) for k in _MEMORY_FIELDS[kind]}})
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


def _open_call(step: dict[str, Any], index: Any) -> dict[str, Any] | None:
    """The call of `step` numbered `index` that has not ended yet."""
    return next((c for c in step["tools"] if c["index"] == index and c["end"] is None), None)
