"""Traces: every event of a run as JSON lines in `.runner/traces/RUN_ID.jsonl`, written and
flushed as it happens (a crash keeps everything before it), redacted before it is written,
private (folders 0700, files 0600) and standard JSON (a model's NaN is written "NaN").

A sub-agent's events go to its top-level run's file, each line carrying its own `run_id`.
A model call's messages are stored with its `model_started` (so a call that never answers
is on record too), as a delta against the same run's previous call (`messages_delta`: how many messages are unchanged, how many characters of the next one,
then the rest), so a trace grows with the conversation rather than with its square;
`read_trace` restores the full `messages` of every call.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import IO, Any

from .. import events as ev
from .._files import private_dir
from ..models import Message
from ..redact import Redactor
from ..result import to_json
from ..spec import TraceSpec

__all__ = ["TraceWriter", "common_prefix"]


class TraceWriter:
    """An event sink that appends each event to its run's trace file and flushes it."""

    def __init__(self, spec: TraceSpec, secrets: set[str]) -> None:
        self.dir = Path(spec.path)
        self.redactor = Redactor.for_trace(spec, secrets)
        self._files: dict[str, IO[str]] = {}
        """Open file of each top-level run."""
        self._root: dict[str, str] = {}
        """run id -> its top-level run's id (sub-agents share their parent's file)."""
        self._sent: dict[str, tuple[list[Message], list[Message]]] = {}
        """Each run's previous model call: its messages (shallow copies, to compare with) and
        the same redacted, for the delta."""
        self._broken: str | None = None

    def __call__(self, event: ev.Event) -> None:
        if self._broken is not None:
            return
        try:
            self._write(event)
        except OSError as exc:  # observability must not end the run: say so once, go on
            self._broken = str(exc)
            sys.stderr.write(f"warning: tracing stopped: {exc}\n")

    def _write(self, event: ev.Event) -> None:
        run_id = event.run_id
        if isinstance(event, ev.RunStarted):
            root = self._root.get(event.parent_run_id or "", event.parent_run_id) or run_id
            self._root[run_id] = root
            self._sent.pop(run_id, None)
            if root == run_id:
                self._open(run_id)
        data = event.to_dict()
        if isinstance(event, ev.ModelStarted):
            del data["messages"]  # stored as a delta, below
        data = self.redactor.value(data)
        if isinstance(event, ev.ModelStarted):  # the delta's messages are redacted already
            data["messages_delta"] = self._delta(run_id, event.messages)
        f = self._files.get(self._root.get(run_id, run_id))
        if f is None:  # an event of a run this writer did not see start
            return
        f.write(to_json(data) + "\n")
        f.flush()
        if isinstance(event, ev.RunEnded):
            self._sent.pop(run_id, None)
            if self._root.get(run_id) == run_id:
                self._files.pop(run_id).close()
            self._root.pop(run_id, None)

    def _open(self, run_id: str) -> None:
        private_dir(self.dir)
        fd = os.open(self.dir / f"{run_id}.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._files[run_id] = os.fdopen(fd, "a", encoding="utf-8")

    def _delta(self, run_id: str, messages: list[Message]) -> dict[str, Any]:
        """The messages as a delta against this run's previous call (both redacted).

        Only the messages that changed are redacted again: a conversation's earlier messages
        come back unchanged in every call, and redacting them all made tracing cost grow with
        the conversation's length at every step."""
        seen, before = self._sent.get(run_id, ([], []))
        kept, n = 0, min(len(messages), len(seen))
        while kept < n and messages[kept] == seen[kept]:
            kept += 1
        now = before[:kept] + [self.redactor.value(m) for m in messages[kept:]]
        self._sent[run_id] = (seen[:kept] + [dict(m) for m in messages[kept:]], now)
        same = kept  # messages that differ only where redaction masks them count as unchanged
        while same < min(len(now), len(before)) and now[same] == before[same]:
            same += 1
        new, prefix = now[same:], 0
        if new and same < len(before):
            a, b = before[same].get("content"), new[0].get("content")
            if isinstance(a, str) and isinstance(b, str) and \
                    before[same].get("role") == new[0].get("role"):
                prefix = common_prefix(a, b)
                if prefix:
                    new = [{**new[0], "content": b[prefix:]}, *new[1:]]
        return {"same": same, "prefix": prefix, "new": new}


def common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix (a binary search over C-level comparisons)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo
