"""Traces: every event of a run as JSON lines in `.runner/traces/RUN_ID.jsonl`, redacted
before it is written, private (folders 0700, files 0600) and standard JSON (a model's NaN is
written "NaN").

When lines reach the file: an event after which the run waits on something outside it
(`model_started`: a model call; `action`: a tool; `retry`: a backoff; `run_ended`) is
written at once, with every line of its run still held; the others (a reply's
`model_called`, `thought`, `observation`, ...) are held only until the code that emitted
them gives the event loop back, then written together (one `write` per run and loop turn
instead of one per event). So a crash keeps everything before the last wait: a call that
never answers, or a tool that hangs or kills the process, is on record with all that led to
it. Lines go to the OS with `os.write` (no Python-side buffer: a killed process loses none);
`flush()` writes what any writer still holds (the CLI calls it before `os._exit`).

At most `MAX_OPEN` trace files are held open (least recently written closed first, and
reopened for appending when their run writes again): ten thousand runs at once must not run
the process out of file descriptors (with one open file per run, as before, they did, and
tracing stopped).

A sub-agent's events go to its top-level run's file, each line carrying its own `run_id`.
A model call's messages are stored with its `model_started` (so a call that never answers
is on record too), as a delta against the same run's previous call (`messages_delta`: how many messages are unchanged, how many characters of the next one,
then the rest), so a trace grows with the conversation rather than with its square;
`read_trace` restores the full `messages` of every call.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sys
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any

from .. import events as ev
from .._files import fd_share, private_dir
from ..models import Message
from ..redact import Redactor
from ..result import to_json
from ..spec import TraceSpec

__all__ = ["TraceWriter", "common_prefix", "flush", "MAX_OPEN"]

MAX_OPEN = fd_share(64, 8192)
"""Most trace files one writer holds open at once: a quarter of the process's file-descriptor
limit (the model connections take up to another quarter, runner.models.direct), 64 to 8,192."""

_WAITS = (ev.ModelStarted, ev.ActionTaken, ev.Retried, ev.RunEnded)
"""Events after which a run waits (or ends): written at once, with what their run held."""

_writers: weakref.WeakSet[TraceWriter] = weakref.WeakSet()


def flush() -> None:
    """Write every line any trace writer of this process still holds."""
    for writer in list(_writers):
        writer.flush()


class TraceWriter:
    """An event sink that appends each event to its run's trace file (see the module)."""

    def __init__(self, spec: TraceSpec, secrets: set[str]) -> None:
        self.dir = Path(spec.path)
        self.redactor = Redactor.for_trace(spec, secrets)
        self._fds: OrderedDict[str, int] = OrderedDict()
        """Open file of each top-level run (most recently written last), at most MAX_OPEN."""
        self._held: dict[str, list[str]] = {}
        """Lines of each top-level run not written yet (until the loop gets control back)."""
        self._flush_soon = False
        self._root: dict[str, str] = {}
        """run id -> its top-level run's id (sub-agents share their parent's file)."""
        self._sent: dict[str, tuple[list[Message], list[Message]]] = {}
        """Each run's previous model call: its messages (shallow copies, to compare with) and
        the same redacted, for the delta."""
        self._same: dict[int, tuple[Any, Any]] = {}
        """id -> (object, redacted): what every run of an agent starts with (its tools'
        schemas are one list), redacted once."""
        self._dir_made = False
        self._broken: str | None = None
        _writers.add(self)

    def __call__(self, event: ev.Event) -> None:
        if self._broken is not None:
            return
        try:
            self._write(event)
        except OSError as exc:  # observability must not end the run: say so once, go on
            self._stop(exc)

    def _stop(self, exc: OSError) -> None:
        self._broken = str(exc)
        self._held.clear()
        sys.stderr.write(f"warning: tracing stopped: {exc}\n")

    def _write(self, event: ev.Event) -> None:
        run_id = event.run_id
        started = isinstance(event, ev.RunStarted)
        if started:
            root = self._root.get(event.parent_run_id or "", event.parent_run_id) or run_id
            self._root[run_id] = root
            self._sent.pop(run_id, None)
            if root == run_id:
                self._create(run_id)
        root = self._root.get(run_id)
        if root is None:  # an event of a run this writer did not see start
            return
        data = event.to_dict()
        if started or isinstance(event, ev.ModelStarted):
            if started:  # the same list for every run of an agent: redacted once
                tools = data.pop("tools")
            else:
                del data["messages"]  # stored as a delta
            data = self._redacted(data)
            if started:
                data["tools"] = self._once(tools)
            else:  # the delta's messages are redacted already
                data["messages_delta"] = self._delta(run_id, event.messages)
            line = to_json(data)
        else:
            line = to_json(data)
            if not self.redactor.clean(line):  # the walk only where masking may change it
                line = to_json(self.redactor.value(data))
        held = self._held.get(root)
        if held is None:
            held = self._held[root] = []
        held.append(line + "\n")
        if isinstance(event, _WAITS):
            self._flush_root(root)
        elif not self._flush_soon:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
                self._flush_soon = True
            except RuntimeError:  # no event loop: nothing comes back to write it later
                self._flush_root(root)
        if isinstance(event, ev.RunEnded):
            self._sent.pop(run_id, None)
            if root == run_id:
                fd = self._fds.pop(run_id, None)
                if fd is not None:
                    os.close(fd)
            self._root.pop(run_id, None)

    def _redacted(self, value: Any) -> Any:
        """`value` masked: as it is where `Redactor.clean` says masking changes nothing (a
        look at its JSON, several times cheaper than walking every node)."""
        return value if self.redactor.clean(to_json(value)) else self.redactor.value(value)

    def _once(self, value: Any) -> Any:
        hit = self._same.get(id(value))
        if hit is None or hit[0] is not value:
            if len(self._same) >= 64:
                self._same.clear()
            hit = self._same[id(value)] = (value, self.redactor.value(value))
        return hit[1]

    def flush(self) -> None:
        """Write every line this writer holds."""
        self._flush_soon = False
        try:
            for root in list(self._held):
                self._flush_root(root)
        except OSError as exc:
            if self._broken is None:
                self._stop(exc)

    def _flush_root(self, root: str) -> None:
        lines = self._held.pop(root, None)
        if not lines:
            return
        data = "".join(lines).encode("utf-8")
        fd = self._fd(root)
        while data:  # a regular file takes it all, short of a full disk (then: OSError)
            data = data[os.write(fd, data):]

    def _create(self, run_id: str) -> None:
        if not self._dir_made:
            private_dir(self.dir)
            self._dir_made = True
        self._fd(run_id)

    def _fd(self, root: str) -> int:
        fd = self._fds.get(root)
        if fd is not None:
            self._fds.move_to_end(root)
            return fd
        while len(self._fds) >= MAX_OPEN:
            os.close(self._fds.popitem(last=False)[1])
        path = self.dir / f"{root}.jsonl"
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags, 0o600)
        except FileNotFoundError:  # the folder was removed while runs went on: made again
            private_dir(self.dir)
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE) or not self._fds:
                raise
            while self._fds:  # out of descriptors: give back every one held, try once more
                os.close(self._fds.popitem()[1])
            fd = os.open(path, flags, 0o600)
        self._fds[root] = fd
        return fd

    def _delta(self, run_id: str, messages: list[Message]) -> dict[str, Any]:
        """The messages as a delta against this run's previous call (both redacted).

        Only the messages that changed are redacted again: a conversation's earlier messages
        come back unchanged in every call, and redacting them all made tracing cost grow with
        the conversation's length at every step."""
        seen, before = self._sent.get(run_id, ([], []))
        kept, n = 0, min(len(messages), len(seen))
        while kept < n and messages[kept] == seen[kept]:
            kept += 1
        now = before[:kept] + [self._redacted(dict(m)) for m in messages[kept:]]
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
