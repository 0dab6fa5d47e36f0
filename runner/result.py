"""What a run produced: its steps and the result, JSON-ready."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .models import Message, Usage

__all__ = ["Step", "RunResult", "as_text"]


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
    exception: BaseException | None = field(default=None, repr=False)

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
        return d


def as_text(value: Any) -> str:
    """A value as message text: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
