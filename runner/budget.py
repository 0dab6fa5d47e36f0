"""What a run (and its sub-agents) may spend: tokens, cost, tool calls and wall time."""

from __future__ import annotations

import time
from typing import Any

from .errors import LimitExceeded
from .models import Completion, Usage
from .spec import BudgetSpec

__all__ = ["Budget"]


class Budget:
    """Spending shared by a run and its sub-agents, checked before and after each call."""

    def __init__(self, spec: BudgetSpec) -> None:
        self.spec = spec
        self.usage = Usage()
        self.cost = 0.0
        self.tool_calls = 0
        self.deadline = time.monotonic() + spec.wall_s if spec.wall_s else None
        self._runs: dict[int, tuple[Usage, float | None]] = {}

    def _over(self, name: str, used: Any, limit: Any) -> None:
        if limit is not None and used >= limit:
            raise LimitExceeded(f"budget_{name}", used, limit)

    def check_before_call(self) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise LimitExceeded("budget_wall_s", round(time.monotonic() - self.deadline +
                                                       (self.spec.wall_s or 0), 3),
                                self.spec.wall_s)
        self._over("tokens", self.usage.total, self.spec.tokens)
        self._over("cost_usd", self.cost, self.spec.cost_usd)

    def charge(self, run: Any, reply: Completion) -> None:
        self.usage.prompt_tokens += reply.usage.prompt_tokens
        self.usage.completion_tokens += reply.usage.completion_tokens
        self.cost += reply.cost_usd or 0.0
        usage, cost = self._runs.get(id(run), (Usage(), None))
        usage.prompt_tokens += reply.usage.prompt_tokens
        usage.completion_tokens += reply.usage.completion_tokens
        if reply.cost_usd is not None:
            cost = (cost or 0.0) + reply.cost_usd
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
        if self.deadline is None:
            return timeout_s
        return max(0.001, min(timeout_s, self.deadline - time.monotonic()))

    def usage_since(self, run: Any) -> Usage:
        return self._runs.get(id(run), (Usage(), None))[0]

    def cost_since(self, run: Any) -> float | None:
        """The run's own cost, or None when no reply had a known price."""
        return self._runs.get(id(run), (Usage(), None))[1]
