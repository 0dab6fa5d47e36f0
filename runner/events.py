"""Typed events a run emits as it happens, and the sinks that show them."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, TextIO

__all__ = ["Event", "RunStarted", "ModelStarted", "ModelCalled", "Retried", "Thought",
           "ActionTaken", "Observed", "MemoryRead", "MemoryWritten", "FinalAnswer", "Warned",
           "RunEnded", "StderrPrinter"]


@dataclass
class Event:
    """Base of every event: which run, which step, when (wall-clock seconds)."""

    kind: ClassVar[str] = "event"
    run_id: str
    step: int
    t: float = field(default_factory=time.time, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON-ready data; values are shared, not copied."""
        names = _FIELDS.get(type(self))
        if names is None:
            names = _FIELDS[type(self)] = tuple(f.name for f in fields(self))
        return {"kind": self.kind, **{n: getattr(self, n) for n in names}}


_FIELDS: dict[type, tuple[str, ...]] = {}


@dataclass
class RunStarted(Event):
    kind: ClassVar[str] = "run_started"
    agent: str
    model: str
    input: Any
    parent_run_id: str | None = None
    resumed: bool = False
    settings: dict[str, Any] = field(default_factory=dict)
    """What shapes the model's requests: temperature, max_tokens, loop style, limits, budget."""
    tools: list[dict[str, Any]] = field(default_factory=list)
    """The JSON schemas of the agent's tools, as the model sees them."""


@dataclass
class ModelStarted(Event):
    """A model call begins (its retries and fallbacks included), with the exact request, so
    a call that never answers is on record too."""

    kind: ClassVar[str] = "model_started"
    model: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    """The messages sent, exactly as rendered."""


@dataclass
class ModelCalled(Event):
    """A model call ended with a reply: the raw reply (its request is on its ModelStarted)."""

    kind: ClassVar[str] = "model_called"
    model: str
    latency_s: float
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    finish_reason: str | None
    attempts: int
    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    """Native tool calls in the reply: id, name and the raw arguments string."""
    stop: list[str] | None = None


@dataclass
class Retried(Event):
    """A model call failed and will be tried again after `wait_s`."""

    kind: ClassVar[str] = "retry"
    model: str
    attempt: int
    error: str
    wait_s: float


@dataclass
class Thought(Event):
    kind: ClassVar[str] = "thought"
    text: str


@dataclass
class ActionTaken(Event):
    kind: ClassVar[str] = "action"
    tool: str
    input: Any
    call_id: str | None = None


@dataclass
class Observed(Event):
    kind: ClassVar[str] = "observation"
    tool: str | None
    text: str
    error: bool
    duration_s: float


@dataclass
class MemoryRead(Event):
    kind: ClassVar[str] = "memory_read"
    session: str
    messages: int


@dataclass
class MemoryWritten(Event):
    kind: ClassVar[str] = "memory_written"
    session: str
    messages: int


@dataclass
class FinalAnswer(Event):
    kind: ClassVar[str] = "final_answer"
    answer: Any


@dataclass
class Warned(Event):
    kind: ClassVar[str] = "warning"
    message: str


@dataclass
class RunEnded(Event):
    kind: ClassVar[str] = "run_ended"
    status: str
    answer: Any
    error: str | None
    duration_s: float
    steps: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    budget: dict[str, Any] = field(default_factory=dict)
    """What the run's budget has spent (shared with sub-agents): tokens, cost, tool calls, time."""


class StderrPrinter:
    """Shows a run's progress on stderr as it happens; the answer itself goes to stdout."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False,
                 redact: Callable[[str], str] | None = None) -> None:
        self.stream, self.quiet, self.redact = stream or sys.stderr, quiet, redact

    def __call__(self, ev: Event) -> None:
        if self.quiet:
            return
        line = self.format(ev)
        if line and self.redact is not None:
            line = self.redact(line)
        if line:
            self.stream.write(line + "\n")
            self.stream.flush()

    @staticmethod
    def format(ev: Event) -> str | None:
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
            text = ev.text if len(ev.text) <= 500 else ev.text[:500] + " ..."
            return f"Observation{' (error)' if ev.error else ''}: {text}"
        if isinstance(ev, Warned):
            return f"warning: {ev.message}"
        if isinstance(ev, Retried):
            return f"warning: retrying in {ev.wait_s:.1f}s: {ev.error}"
        if isinstance(ev, RunEnded):
            return f"■ {ev.status} in {ev.duration_s:.2f}s"  # the error follows, once
        return None
