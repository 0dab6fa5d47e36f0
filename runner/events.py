"""Typed events a run emits as it happens (the terminal sinks that show them are in
`runner.console`; the trace file and OpenTelemetry sinks in `runner.trace`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

__all__ = ["Event", "RunStarted", "ModelStarted", "ModelCalled", "Retried", "Thought",
           "ActionTaken", "Observed", "ToolProgress", "MemoryRead", "MemoryWritten",
           "MemorySummarized", "MemoryRecalled", "Reviewed",
           "FinalAnswer", "Warned", "RunEnded"]


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
        values = getattr(self, "__dict__", None)
        # the instance's own dict holds just the fields, in order (what __init__ set): one
        # C-level copy per event instead of a getattr per field; else (slots, or attributes
        # set besides the fields) field by field
        if values is not None and tuple(values) == names:
            return {"kind": self.kind, **values}
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

    @classmethod
    def of(cls, run_id: str, step: int, reply: Any, stop: list[str] | None) -> ModelCalled:
        """The event of a Completion (`runner.models`)."""
        return cls(run_id, step, reply.model, reply.latency_s, reply.usage.prompt_tokens,
                   reply.usage.completion_tokens, reply.cost_usd, reply.finish_reason,
                   reply.attempts, reply.text, [{"id": c.id, "name": c.name,
                                                 "arguments": c.arguments}
                                                for c in reply.tool_calls], stop)


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
class ToolProgress(Event):
    """A running tool's progress (an MCP server's `notifications/progress`)."""

    kind: ClassVar[str] = "tool_progress"
    tool: str
    progress: float
    total: float | None = None
    message: str | None = None


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
class MemorySummarized(Event):
    """Older turns of the session summarized for the prompt (or the attempt that failed, the
    history then used whole)."""

    kind: ClassVar[str] = "memory_summarized"
    session: str
    messages: int
    """How many of the oldest messages the summary stands for."""
    tokens_before: int
    tokens_after: int
    model: str = ""
    reused: bool = False
    """The stored summary still covered them: no model call."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    error: str | None = None


@dataclass
class MemoryRecalled(Event):
    """Earlier turns of the session looked through, and how many were brought back."""

    kind: ClassVar[str] = "memory_recalled"
    session: str
    messages: int
    """How many earlier turns were looked through."""
    recalled: int
    duration_s: float = 0.0


@dataclass
class FinalAnswer(Event):
    kind: ClassVar[str] = "final_answer"
    answer: Any


@dataclass
class Reviewed(Event):
    """Reflection: the critic's verdict on a draft (the problems go back to the agent)."""

    kind: ClassVar[str] = "review"
    round: int
    approved: bool
    problems: list[str] = field(default_factory=list)
    critic_run_id: str | None = None
    """The critic's own run (None: the agent's model reviewed with the built-in prompt)."""
    draft: Any = None
    """The answer reviewed."""


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
