"""Runs of one agent on behalf of another: a supervisor's worker, a pipeline's step, a
critic's review, a handoff's target.

A child run draws from its parent's budget, its events go to the parent's trace and
listener, a stop requested of the parent reaches it, and it is committed to the parent's
checkpoint store under an id derived from the parent's run, the place it was made from
(`tool:3`, `step:2`, `review:1`) and its input. A resumed parent that makes the same
delegation again finds it: it takes the answer of a child that had finished and continues
one that had stopped (a crash, a signal, a timeout) from its last step, instead of running
either twice. A child that had failed for good, or whose spec has changed since, is kept as
it was, and the delegation runs afresh under the next id."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from .checkpoints import RESUMABLE_STATUSES
from .result import RunResult, as_text

if TYPE_CHECKING:
    from .agent import Agent
    from .loop import Run

__all__ = ["delegate", "child_id"]

_CONTINUED = frozenset((*RESUMABLE_STATUSES, "running"))
"""A child found in one of these states is continued from its checkpoint."""
MAX_ATTEMPTS = 100
"""Failed attempts of one delegation kept before it gives up looking for a free id."""


def child_id(parent_id: str, place: str, input: Any, attempt: int) -> str:
    """The run id of a delegation: the same parent, place, input and attempt give the same id."""
    key = "\x1f".join((parent_id, place, as_text(input), str(attempt)))
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:12]


async def delegate(parent: Run, agent: Agent, input: Any, place: str, *,
                   context: list[Any] | None = None) -> RunResult:
    """Run `agent` on `input` for `parent` (see the module's docstring) and return its result."""
    store, budget = agent.checkpoints, parent.budget
    run: Run | None = None
    for attempt in range(MAX_ATTEMPTS):
        rid = child_id(parent.run_id, place, input, attempt)
        if store is None or not store.has(rid):
            break
        state = store.load(rid)
        if state["spec_digest"] != agent.spec.source.digest:
            continue  # its spec changed since: kept as it was, and the delegation runs afresh
        if state["status"] == "finished":  # done before the parent stopped: not run again
            budget.catch_up(state["budget"])
            return RunResult(rid, state["agent"], agent.spec.model.id, state["input"],
                             answer=state["answer"], status="finished")
        if state["status"] in _CONTINUED:
            run = agent.restore(store.claim(rid), budget)
            break
    else:
        rid = child_id(parent.run_id, place, input, MAX_ATTEMPTS)
    if run is None:
        run = agent.start(input, budget=budget, parent_run_id=parent.run_id, run_id=rid,
                          context=context, session=agent.session_of(parent))
    parent.children.add(run)
    try:
        if parent.stopping:
            run.request_stop(parent.stopping)
        return await run.execute(listener=parent.forward)
    finally:
        parent.children.discard(run)
