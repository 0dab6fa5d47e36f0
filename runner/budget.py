"""What a run (and its sub-agents) may spend: tokens, cost, tool calls and wall time; and
the clock it is measured by (tests inject a fake one instead of waiting)."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from .errors import LimitExceeded
from .models import Completion, Usage, token_count
from .spec import BudgetSpec

__all__ = ["Budget", "Clock"]


class Clock:
    """Real time. runner.testing.FakeClock replaces it where waiting would slow tests."""

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Budget:
    """Spending shared by a run and its sub-agents, checked before and after each call."""

    def __init__(self, spec: BudgetSpec, clock: Clock | None = None,
                 spent: dict[str, Any] | None = None) -> None:
        self.spec, self.clock = spec, clock or Clock()
        spent = spent or {}
        # a hand-edited or hostile checkpoint must not start a budget below zero
        self.usage = Usage(spent.get("prompt_tokens", 0), spent.get("completion_tokens", 0))
        self.cost: float = _amount(spent.get("cost_usd")) or 0.0
        self.tool_calls: int = token_count(spent.get("tool_calls", 0))
        self._elapsed_before: float = _amount(spent.get("wall_s")) or 0.0
        self.started = self.clock.monotonic()
        self.deadline = (self.started + spec.wall_s - self._elapsed_before
                         if spec.wall_s else None)
        self._runs: dict[int, tuple[Usage, float | None]] = {}

    def spent(self) -> dict[str, Any]:
        """What has been spent, for a checkpoint (a resumed run starts from it)."""
        return {"prompt_tokens": self.usage.prompt_tokens,
                "completion_tokens": self.usage.completion_tokens, "cost_usd": self.cost,
                "tool_calls": self.tool_calls, "wall_s": round(self.elapsed(), 3)}

    def elapsed(self) -> float:
        return self._elapsed_before + self.clock.monotonic() - self.started

    def remaining(self) -> float | None:
        """Seconds left before the wall-clock budget, or None when there is none."""
        return None if self.deadline is None else self.deadline - self.clock.monotonic()

    def wall_exceeded(self) -> LimitExceeded:
        return LimitExceeded("budget_wall_s", round(self.elapsed(), 3), self.spec.wall_s)

    def _over(self, name: str, used: Any, limit: Any) -> None:
        if limit is not None and used >= limit:
            raise LimitExceeded(f"budget_{name}", used, limit)

    def check_before_call(self) -> None:
        left = self.remaining()
        if left is not None and left <= 0:
            raise self.wall_exceeded()
        self._over("tokens", self.usage.total, self.spec.tokens)
        self._over("cost_usd", self.cost, self.spec.cost_usd)

    def charge(self, run: Any, reply: Completion) -> None:
        """Count a reply's usage (for the whole budget and for `run`), then check the limits.

        Only ever adds: what a server reports is clamped to >= 0 first, so negative usage or
        cost can never refund the budget and turn it off."""
        used = Usage(reply.usage.prompt_tokens, reply.usage.completion_tokens)
        price = _amount(reply.cost_usd)
        self.usage.prompt_tokens += used.prompt_tokens
        self.usage.completion_tokens += used.completion_tokens
        self.cost += price or 0.0
        usage, cost = self._runs.get(id(run), (Usage(), None))
        usage.prompt_tokens += used.prompt_tokens
        usage.completion_tokens += used.completion_tokens
        if price is not None:
            cost = (cost or 0.0) + price
        self._runs[id(run)] = (usage, cost)
        if self.spec.tokens is not None and self.usage.total > self.spec.tokens:
            raise LimitExceeded("budget_tokens", self.usage.total, self.spec.tokens)
        if self.spec.cost_usd is not None and self.cost > self.spec.cost_usd:
            raise LimitExceeded("budget_cost_usd", round(self.cost, 6), self.spec.cost_usd)

    def charge_tool_call(self) -> None:
        self._over("tool_calls", self.tool_calls, self.spec.tool_calls)
        self.tool_calls += 1

    def clip(self, timeout_s: float) -> float:
        """A timeout no later than the run's deadline."""
        left = self.remaining()
        return timeout_s if left is None else max(0.001, min(timeout_s, left))

    def catch_up(self, spent: dict[str, Any]) -> None:
        """Count what a sub-agent's checkpoint says this shared budget had spent, where that
        is more than it holds now: the sub-agent's run went on after the parent's last
        checkpoint (a crash), and a resumed parent must not spend it again. Clamped like a
        reply's usage; never lowers a count."""
        self.usage.prompt_tokens = max(self.usage.prompt_tokens,
                                       token_count(spent.get("prompt_tokens", 0)))
        self.usage.completion_tokens = max(self.usage.completion_tokens,
                                           token_count(spent.get("completion_tokens", 0)))
        self.cost = max(self.cost, _amount(spent.get("cost_usd")) or 0.0)
        self.tool_calls = max(self.tool_calls, token_count(spent.get("tool_calls", 0)))

    def adopt(self, run: Any, usage: Usage, cost: float | None) -> None:
        """Start `run`'s own count from what it spent before it was resumed."""
        self._runs[id(run)] = (usage, cost)

    def usage_since(self, run: Any) -> Usage:
        return self._runs.get(id(run), (Usage(), None))[0]

    def cost_since(self, run: Any) -> float | None:
        """The run's own cost, or None when no reply had a known price."""
        return self._runs.get(id(run), (Usage(), None))[1]


def _amount(value: Any) -> float | None:
    """A reported cost or time, safe to add: None stays unknown; a negative, non-numeric or
    non-finite amount counts as 0.0 (never a refund)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0.0
    return max(0.0, float(value))
