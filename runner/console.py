"""The terminal: the sinks that show a run's steps on stderr, and asking the person there.

`StderrPrinter` writes one plain line per step. `LivePrinter` is the live view on a
terminal: the same lines as they happen, and one transient spinner line with the elapsed
time of the model call or tool call in progress, redrawn by a background thread so the event
loop never waits on it. Anything else written to `sys.stderr` meanwhile (an approval prompt,
the Ctrl-C notice, a library's warning) goes through a proxy that clears the spinner line
first; a prompt left waiting on its line holds the spinner back until the run moves on.

Everything from a run that reaches the terminal is masked, then made `printable`: a model's
or a tool's escape sequences are shown, never obeyed. The answer on stdout is escaped when
stdout is a terminal and written exactly as the model gave it otherwise (`> answer.txt`);
`--json` writes every control code as a JSON escape, so it decodes to the exact text."""

from __future__ import annotations

import asyncio
import atexit
import itertools
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import click

from . import events as ev
from .events import (ActionTaken, Event, ModelCalled, Observed, Retried, Reviewed, RunEnded,
                     RunStarted, Thought, ToolProgress, Warned)
from .errors import EXIT_FAILED, exit_code_for
from .redact import json_printable, printable, redact_text, redact_value
from .result import as_text, to_json

__all__ = ["StderrPrinter", "LivePrinter", "restore_terminal", "printer", "terminal_approver",
           "exit_now", "report"]

FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
TICK_S = 0.08
GRACE_S = 0.1
"""A call that ends sooner never shows a spinner, so fast steps do not flicker."""
CLEAR_LINE = "\r\x1b[2K"
INDENT = "  "

_printers: weakref.WeakSet[LivePrinter] = weakref.WeakSet()


def exit_now(code: int) -> None:
    """Leave the process at once, after killing the tools' process groups, closing MCP
    sessions (their guards would end the servers anyway), clearing a spinner
    line and flushing trace lines, spans and output (skips ~1 s of interpreter teardown with
    LiteLLM)."""
    tools = sys.modules.get("runner.tools")  # not imported: no tool started a process
    if tools is not None:
        tools.kill_process_groups()
    mcp = sys.modules.get("runner.mcp_client")  # MCP sessions still open: close them cleanly
    if mcp is not None:
        mcp.close_all()
    restore_terminal()  # a spinner on the terminal: clear its line
    traces = sys.modules.get("runner.trace.writer")  # trace lines held until the loop's turn
    if traces is not None and hasattr(traces, "flush"):
        traces.flush()
    otel = sys.modules.get("runner.trace.otel")  # spans still buffered go out before we exit
    if otel is not None:
        otel.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def report(result: Any, as_json: bool, debug: bool, secrets: set[str],
            hint: str | None = None) -> None:
    """Print the answer (or the JSON result) on stdout and, unless the run finished, its
    error on stderr, then exit with the run's code."""
    if as_json:
        click.echo(json_printable(to_json(redact_value(result.to_dict(), secrets))))
    elif isinstance(result.answer, str) and result.ok:
        answer = redact_text(result.answer, secrets)
        # a terminal sees control codes escaped; a pipe or a file gets the model's text byte
        # for byte (color=True: click would strip some escape sequences from it)
        click.echo(printable(answer) if _isatty(sys.stdout) else answer, color=True)
    elif result.ok:  # structured output: JSON, its control codes as JSON escapes
        click.echo(json_printable(to_json(redact_value(result.answer, secrets))))
    if not result.ok:
        if debug and result.exception is not None:
            import traceback

            traceback.print_exception(result.exception)
        if not as_json:
            error = result.error or ""
            line = error if error.startswith(result.status) else f"{result.status}: {error}"
            click.echo(printable(redact_text(line, secrets)), err=True)
        if hint:
            click.echo(hint, err=True)
        raise SystemExit(exit_code_for(result.exception) if result.exception else EXIT_FAILED)


def printer(quiet: bool, secrets: set[str]) -> Callable[[Event], None]:
    """Steps on stderr: live (a spinner on each call) on a terminal, plain lines otherwise."""
    redact = lambda t: redact_text(t, secrets)  # noqa: E731
    if not quiet and sys.stderr.isatty() and os.environ.get("TERM") != "dumb":
        return LivePrinter(redact=redact)
    return StderrPrinter(quiet=quiet, redact=redact)


def terminal_approver() -> Callable[[str, dict[str, Any]], Any] | None:
    """Asks the person at the terminal, when there is one (else tools marked confirm are
    refused, unless --yes or loop.approve: always)."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return None

    async def ask(tool: str, args: dict[str, Any]) -> bool:
        # exactly what will run, as JSON, every control code escaped: an input cannot erase
        # this line or draw another prompt
        shown = json_printable(to_json(args))

        def prompt() -> str:
            sys.stderr.write(f"Allow {printable(tool)} {shown}? [y/N] ")
            sys.stderr.flush()
            return sys.stdin.readline()

        return (await asyncio.to_thread(prompt)).strip().lower() in ("y", "yes")

    return ask


class StderrPrinter:
    """Shows a run's progress on stderr as it happens; the answer itself goes to stdout."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False,
                 redact: Callable[[str], str] | None = None) -> None:
        self.stream, self.quiet, self.redact = stream or sys.stderr, quiet, redact

    def __call__(self, ev: Event) -> None:
        if self.quiet:
            return
        line = self.format(ev, self.redact)
        if line and self.redact is not None:
            line = self.redact(line)
        if line:
            self.stream.write(printable(line) + "\n")
            self.stream.flush()

    @staticmethod
    def format(ev: Event, redact: Callable[[str], str] | None = None) -> str | None:
        """One event as a line; a long observation is masked before it is cut (a secret cut
        in two would escape the mask)."""
        if isinstance(ev, RunStarted):
            return f"▶ {ev.agent} on {ev.model}"
        if isinstance(ev, ModelCalled):
            return (f"  · model {ev.latency_s * 1000:.0f} ms, {ev.prompt_tokens}+"
                    f"{ev.completion_tokens} tokens" + (f", {ev.attempts} attempts" if ev.attempts > 1 else ""))
        if isinstance(ev, Thought):
            return f"Thought: {ev.text}" if ev.text else None
        if isinstance(ev, ActionTaken):
            return f"Action: {ev.tool}[{ev.input}]"
        if isinstance(ev, Observed):
            return f"Observation{' (error)' if ev.error else ''}: {_clip(ev.text, redact)}"
        if isinstance(ev, ToolProgress):
            total = f"/{ev.total:g}" if ev.total is not None else ""
            return f"  · {ev.tool} {ev.progress:g}{total}" + (f" {ev.message}" if ev.message
                                                               else "")
        if isinstance(ev, Reviewed):
            verdict = "approved" if ev.approved else "not approved: " + "; ".join(ev.problems)
            return _clip(f"Review {ev.round} of {as_text(ev.draft)!r}: {verdict}", redact)
        if isinstance(ev, Warned):
            return f"warning: {ev.message}"
        if isinstance(ev, Retried):
            return f"warning: retrying in {ev.wait_s:.1f}s: {ev.error}"
        if isinstance(ev, RunEnded):
            return f"■ {ev.status} in {ev.duration_s:.2f}s"  # the error follows, once
        return None


def _clip(text: str, redact: Callable[[str], str] | None) -> str:
    """`text` masked, then cut to 500 characters (a secret cut in two would escape the mask)."""
    text = redact(text) if redact is not None else text
    return text if len(text) <= 500 else text[:500] + " ..."


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced or closed
        return False


def restore_terminal() -> None:
    """Clear any spinner line and stop redrawing (for exits that skip the run's end)."""
    for printer in list(_printers):
        printer.close()


atexit.register(restore_terminal)


@dataclass
class _Busy:
    """A model or tool call in progress: what the spinner line says about it."""

    label: str
    started: float
    depth: int
    order: int


class LivePrinter:
    """An event sink for a terminal: the plain printer's lines, plus a spinner on the call
    in progress. Writes to `stream` (stderr); `redact` masks every line and label."""

    def __init__(self, redact: Callable[[str], str], stream: TextIO | None = None,
                 color: bool | None = None) -> None:
        self.redact = redact
        self.stream = stream or sys.stderr
        self.color = ("NO_COLOR" not in os.environ) if color is None else color
        self._lock = threading.RLock()
        self._depth: dict[str, int] = {}
        """run id -> how deep it nests (sub-agents are indented)."""
        self._busy: dict[tuple[str, str, int], _Busy] = {}
        self._order = itertools.count()
        self._top: str | None = None
        self._drawn = False
        """The spinner line is on the terminal and the cursor is at its end."""
        self._held = False
        """Someone else's unfinished line (a prompt) is on the terminal: do not draw."""
        self._dead = False
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._proxy: _StderrProxy | None = None

    # -- events ----------------------------------------------------------------------

    def __call__(self, event: ev.Event) -> None:
        with self._lock:
            self._held = False  # the run moved on: a prompt it was waiting for was answered
            ended = self._handle(event)
        if ended:  # outside the lock: close() waits for the spinner thread
            self.close()

    def _handle(self, event: ev.Event) -> bool:
        """Show the event; True when the top-level run ended."""
        rid = event.run_id
        if isinstance(event, ev.RunStarted):
            parent = event.parent_run_id
            self._depth[rid] = 0 if parent is None else self._depth.get(parent, 0) + 1
            if self._top is None:
                self._start(rid)
        depth = self._depth.get(rid, 0)
        if isinstance(event, ev.ModelStarted):
            self._begin((rid, "model", 0), f"model {event.model}", depth)
        elif isinstance(event, ev.ModelCalled):
            self._busy.pop((rid, "model", 0), None)
        elif isinstance(event, ev.ActionTaken):
            self._begin((rid, "tool", event.step), f"{event.tool}[{event.input}]", depth)
        elif isinstance(event, ev.Observed) and event.tool is not None:
            self._busy.pop((rid, "tool", event.step), None)
        elif isinstance(event, ev.RunEnded):
            for key in [k for k in self._busy if k[0] == rid]:
                del self._busy[key]
        line = StderrPrinter.format(event, self.redact)
        if line:
            self._line(INDENT * depth + printable(self.redact(line)), _style(event))
        if isinstance(event, ev.RunEnded):
            self._depth.pop(rid, None)
            return rid == self._top
        if not self._drawn:
            self._draw()
        return False

    def _start(self, run_id: str) -> None:
        """A top-level run begins: take over stderr, start the spinner thread."""
        self._top, self._dead = run_id, False
        _printers.add(self)
        if self.stream is sys.stderr and not isinstance(sys.stderr, _StderrProxy):
            self._proxy = sys.stderr = _StderrProxy(self, self.stream)
        self._stop.clear()
        self._ticker = threading.Thread(target=self._tick, name="runner-live", daemon=True)
        self._ticker.start()

    def close(self) -> None:
        """Clear the spinner line, give stderr back, stop the spinner thread."""
        with self._lock:
            self._busy.clear()
            self._clear()
            self._stop.set()
            if self._proxy is not None and sys.stderr is self._proxy:
                sys.stderr = self.stream
            self._proxy, self._top = None, None
            self._flush()
        _printers.discard(self)
        ticker, self._ticker = self._ticker, None
        if ticker is not None and ticker is not threading.current_thread():
            ticker.join(timeout=1.0)

    # -- drawing (always under the lock) ----------------------------------------------

    def _begin(self, key: tuple[str, str, int], label: str, depth: int) -> None:
        self._busy[key] = _Busy(printable(self.redact(label)), time.monotonic(), depth,
                                next(self._order))

    def _line(self, text: str, style: str) -> None:
        """A permanent line: above the spinner, which is redrawn under it."""
        self._clear()
        if self.color and style:
            text = f"\x1b[{style}m{text}\x1b[0m"
        self._write(text + "\n")
        self._flush()

    def _draw(self) -> None:
        if self._held or self._dead:
            return
        now = time.monotonic()
        due = [b for b in self._busy.values() if now - b.started >= GRACE_S]
        if not due:
            self._clear()
            self._flush()
            return
        busy = max(due, key=lambda b: b.order)
        others = sum(1 for b in self._busy.values() if b.depth == busy.depth) - 1
        frame = FRAMES[int(now / TICK_S) % len(FRAMES)]
        tail = f" … {now - busy.started:.1f}s" + (f" (+{others} more)" if others > 0 else "")
        head = INDENT * busy.depth + frame + " "
        room = self._width() - 1 - len(head) - len(tail)
        label = busy.label.replace("\n", " ")
        if len(label) > room:
            label = label[:max(0, room - 1)] + "…"
        if self.color:
            text = f"{head[:-2]}\x1b[36m{frame}\x1b[0m {label}\x1b[2m{tail}\x1b[0m"
        else:
            text = head + label + tail
        self._write(CLEAR_LINE + text)
        self._flush()
        self._drawn = True

    def _clear(self) -> None:
        if self._drawn:
            self._drawn = False
            self._write(CLEAR_LINE)

    def _tick(self) -> None:
        while not self._stop.wait(TICK_S):
            with self._lock:
                if self._busy and not self._stop.is_set():
                    self._draw()

    def _width(self) -> int:
        if os.environ.get("COLUMNS", "").isdigit():
            return int(os.environ["COLUMNS"])
        try:
            return os.get_terminal_size(self.stream.fileno()).columns or 80
        except (OSError, ValueError, AttributeError):
            return 80

    def _write(self, text: str) -> None:
        if self._dead:
            return
        try:
            self.stream.write(text)
        except (OSError, ValueError):  # the terminal went away: stop drawing, never fail a run
            self._dead = True

    def _flush(self) -> None:
        try:
            self.stream.flush()
        except (OSError, ValueError):
            self._dead = True


class _StderrProxy:
    """`sys.stderr` while a run is shown live: clears the spinner line before other text."""

    def __init__(self, printer: LivePrinter, real: TextIO) -> None:
        self._printer, self._real = printer, real

    def write(self, text: Any) -> int:
        printer = self._printer
        if not isinstance(text, str) or not text or printer._top is None:
            return self._real.write(text)
        with printer._lock:
            printer._clear()
            n = self._real.write(text)
            printer._held = not text.endswith("\n")  # a prompt waits on its line
            return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _style(event: ev.Event) -> str:
    """The SGR style of a permanent line."""
    if isinstance(event, ev.RunStarted):
        return "1"
    if isinstance(event, ev.ModelCalled):
        return "2"
    if isinstance(event, (ev.Warned, ev.Retried)):
        return "33"
    if isinstance(event, ev.Observed) and event.error:
        return "31"
    if isinstance(event, ev.RunEnded):
        return "32" if event.status == "finished" else "31"
    return ""
