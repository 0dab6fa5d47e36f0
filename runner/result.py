"""What a run produced: its steps and the result, JSON-ready."""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .models import Message, Usage

__all__ = ["RunResult", "Step", "as_text", "to_json"]


@dataclass
class Step:
    """One model call and what came of it."""

    index: int
    thought: str = ""
    action: str | None = None
    input: Any = None
    observation: str | None = None
    error: bool = False
    raw: str = ""
    model_s: float = 0.0
    tool_s: float = 0.0
    call_id: str | None = None


@dataclass
class RunResult:
    """What a run produced, whether it finished or not."""

    run_id: str
    agent: str
    model: str
    input: Any
    answer: Any = None
    status: str = "running"
    steps: list[Step] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = None
    error: str | None = None
    incomplete: bool = False
    duration_s: float = 0.0
    review: list[dict[str, Any]] = field(default_factory=list)
    """Reflection: each draft with the critic's verdict on it (`round, draft, approved,
    problems, critic_run`), in order."""
    handed_to: str | None = None
    """Handoff: the agent that took over the conversation and gave the answer."""
    exception: BaseException | None = field(default=None, repr=False)

    @property
    def approved(self) -> bool | None:
        """Reflection: whether the critic approved the latest draft (None: none reviewed)."""
        return self.review[-1]["approved"] if self.review else None

    @property
    def ok(self) -> bool:
        return self.status == "finished"

    def fail(self, exc: BaseException, partial: str | None = None) -> None:
        """End as failed by `exc`, keeping the best partial answer, marked incomplete: an
        answer given too late (`partial`), else the latest thought, else the latest good
        observation."""
        self.exception = exc
        status = getattr(exc, "status", None)
        self.status = "interrupted" if not status or isinstance(
            exc, (asyncio.CancelledError, KeyboardInterrupt)) else status
        self.error = str(exc) or type(exc).__name__
        self.incomplete = True
        self.answer = partial or next(
            (s.thought for s in reversed(self.steps) if s.thought), None) or next(
            (s.observation for s in reversed(self.steps) if s.observation and not s.error), None)

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data (what `runner run --json` prints)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "exception"}
        d["steps"] = [asdict(s) for s in self.steps]
        d["usage"] = {**asdict(self.usage), "total_tokens": self.usage.total}
        d["approved"] = self.approved
        return d


def as_text(value: Any) -> str:
    """A value as message text: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else to_json(value)


_standard = json.JSONEncoder(ensure_ascii=False, default=str, allow_nan=False).encode
_NON_FINITE = "Out of range float values are not JSON compliant"


def to_json(value: Any, indent: int | None = None) -> str:
    """`value` as standard JSON (RFC 8259, what SQLite, jq and browsers read): NaN and
    ±Infinity, which Python's json.loads takes from a model, become "NaN", "Infinity" and
    "-Infinity"; anything else JSON cannot hold becomes its str()."""
    encode = _standard if indent is None else json.JSONEncoder(
        ensure_ascii=False, default=str, allow_nan=False, indent=indent).encode
    try:
        return encode(value)
    except ValueError as exc:
        if _NON_FINITE not in str(exc):
            raise
        return encode(_finite(value))  # only then: walking every value costs on each save


def _finite(value: Any) -> Any:
    """A copy of a JSON-like value with every non-finite float (a value or a key) as text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value).replace("inf", "Infinity").replace(
            "nan", "NaN")
    if isinstance(value, dict):
        return {_finite(k) if isinstance(k, float) else k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
