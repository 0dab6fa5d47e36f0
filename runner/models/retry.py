"""The runner's one retry layer: backoff with jitter, Retry-After, fallbacks, and the run's
wall-clock deadline, which covers every attempt and every wait.

LiteLLM's own retries are never used (`num_retries` silently needs tenacity, and the fast
routes make one attempt): a failed call here is retried `model.retries` times, so the
server sees exactly `retries + 1` requests per model.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

from ..budget import Budget
from ..errors import ModelError, ModelRateLimited
from ..spec import ModelSpec
from . import Completion, Message, Model

__all__ = ["complete_with_retries", "backoff"]


def backoff(spec: ModelSpec, attempt: int, exc: ModelError, rand: float | None = None) -> float:
    """Seconds to wait before retry number `attempt + 1`: exponential with jitter, at least
    the server's Retry-After."""
    base = min(spec.max_backoff_s, spec.backoff_s * 2 ** attempt)
    wait = base * (0.5 + (random.random() if rand is None else rand) / 2)
    if isinstance(exc, ModelRateLimited) and exc.retry_after is not None:
        wait = max(wait, exc.retry_after)
    return wait


async def _attempt(model: Model, messages: list[Message], tools: Any, stop: Any,
                   budget: Budget) -> Completion:
    left = budget.remaining()
    if left is None:
        return await model.complete(messages, tools=tools, stop=stop)
    if left <= 0:
        raise budget.wall_exceeded()
    deadline = asyncio.timeout(left)  # also covers plugin models that ignore timeouts
    try:
        async with deadline:
            return await model.complete(messages, tools=tools, stop=stop)
    except TimeoutError:
        if deadline.expired():
            raise budget.wall_exceeded() from None
        raise


async def complete_with_retries(models: list[Model], spec: ModelSpec, messages: list[Message],
                                budget: Budget, *, tools: list[dict[str, Any]] | None = None,
                                stop: list[str] | None = None,
                                on_retry: Callable[[Model, ModelError, float, int], None] | None = None
                                ) -> Completion:
    """Call the first model, retrying retryable failures, then each fallback in turn. A wait
    that would pass the run's deadline is not taken: the next fallback is tried instead.
    `on_retry(model, error, wait_s, attempt)` hears of each retry before its wait."""
    last: ModelError | None = None
    attempts = 0
    for model in models:
        for attempt in range(spec.retries + 1):
            attempts += 1
            try:
                result = await _attempt(model, messages, tools, stop, budget)
                result.attempts = attempts
                return result
            except ModelError as exc:
                last = exc
                if not exc.retryable or attempt == spec.retries:
                    break
                wait = backoff(spec, attempt, exc)
                left = budget.remaining()
                if left is not None and wait >= left:
                    asked = (" the server asked for" if isinstance(exc, ModelRateLimited)
                             and exc.retry_after is not None and wait <= exc.retry_after else "")
                    exc.args = (f"{exc} (not retried: the {wait:.1f}s wait{asked} would pass the "
                                f"run's wall-clock budget, {max(0.0, left):.1f}s left)",)
                    break
                if on_retry is not None:
                    on_retry(model, exc, wait, attempts)
                await budget.clock.sleep(wait)
        # a rejected key (401/403) moves on too: each fallback has its own key and server
    assert last is not None
    raise last
