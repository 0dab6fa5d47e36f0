"""Acting on a model's reply: running its tool calls, with loop detection, a person's
approval for tools marked confirm, and the at-most-once rule for tools that are not
idempotent. Every failure becomes an observation that tells the model what to do next."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from . import events as ev
from .checkpoints import CheckpointError
from .errors import LimitExceeded, LoopDetected, ToolError
from .parsing import Action
from .result import Step
from .tools import Tool, ToolContext, format_output, parse_arguments, run_tool

if TYPE_CHECKING:
    from .loop import Run

__all__ = ["observe", "UNKNOWN_OUTCOME"]

UNKNOWN_OUTCOME = ("the run was interrupted while {tool} was running, and {tool} is not safe to "
                   "repeat, so it was not run again: its outcome is unknown. Check its effect "
                   "before calling it again.")


async def observe(run: Run, action: Action, step: Step, warnings: list[str],
                  resumed: bool = False) -> None:
    """Run one action of `step` and record its observation, with events either side."""
    step.action, step.input = action.tool, action.input
    run.emit(ev.ActionTaken(run.run_id, step.index, action.tool, action.input, action.call_id))
    started = time.monotonic()
    text, step.error = await _invoke(run, action, step, resumed)
    if warnings:
        text += "\n(" + " ".join(warnings) + ")"
    step.observation, step.tool_s = text, time.monotonic() - started
    run.emit(ev.Observed(run.run_id, step.index, action.tool, text, step.error, step.tool_s))


async def _invoke(run: Run, action: Action, step: Step, resumed: bool) -> tuple[str, bool]:
    """Run one tool call; every failure becomes advice for the model."""
    tools = run.agent.tools
    t = tools.get(action.tool)
    if t is None:
        from .spec import did_you_mean

        return (f"unknown tool {action.tool!r}{did_you_mean(action.tool, tools)}; tools are: "
                f"{', '.join(tools) or '(none)'}", True)
    if resumed and not t.idempotent and (run.unknown is None or step.index in run.unknown):
        return UNKNOWN_OUTCOME.format(tool=t.name), True
    try:
        args = parse_arguments(t, action.input)
        # a call re-run after a resume was already counted by loop detection
        refusal = (None if resumed else _repeated(run, t, args, step)) or \
            await _approve(run, t, args, step)
        if refusal:
            return refusal, True
        run.budget.charge_tool_call()
        ctx = ToolContext(run.run_id, run.spec.source.root, run.agent.depth,
                          {"budget": run.budget, "run": run})
        timeout = run.budget.clip(t.timeout_s or run.spec.loop.tool_timeout_s)
        if not t.idempotent and run.agent.checkpoints is not None:
            run.in_flight.add(step.index)  # committed first: a resume will not re-run it
            run.checkpoint()
        try:
            out = await run_tool(t, args, ctx, timeout)
        finally:
            run.in_flight.discard(step.index)
    except (LimitExceeded, CheckpointError):
        raise
    except ToolError as exc:
        return f"tool {t.name} failed: {exc}", True
    except Exception as exc:
        return f"tool {t.name} failed: {type(exc).__name__}: {exc}", True
    limit = run.agent.tool_max_chars.get(t.name, run.spec.loop.max_observation_chars)
    return format_output(out, limit), False


def _repeated(run: Run, t: Tool, args: Any, step: Step) -> str | None:
    """Loop detection: the model is told once, then the run ends (loop_detected)."""
    key = f"{t.name}:{json.dumps(dict(args), sort_keys=True, default=str)}"
    count = run.repeats[key] = run.repeats.get(key, 0) + 1
    limit = run.spec.loop.max_repeats
    if count > limit:
        raise LoopDetected(count, limit)
    if count < limit:
        return None
    message = (f"{t.name} has been called with this same input {count} times; it was not "
               f"run again. Change the input, use another tool, or give the final answer.")
    run.emit(ev.Warned(run.run_id, step.index, message))
    return message


async def _approve(run: Run, t: Tool, args: Any, step: Step) -> str | None:
    """For tools marked confirm: the person's decision (kept in the checkpoint)."""
    if not t.confirm:
        return None
    key = f"{step.index}:{t.name}"
    mode = run.spec.loop.approve
    if key not in run.approvals:
        if mode != "ask":
            run.approvals[key] = mode == "always"
        elif run.agent.approver is None:
            return (f"{t.name} needs a person's approval and this run is not interactive, so "
                    f"it was not run (allow it with --yes or loop.approve: always)")
        else:
            run.approvals[key] = bool(await run.agent.approver(t.name, dict(args)))
            run.checkpoint()
    if run.approvals[key]:
        return None
    return f"running {t.name} was declined" + (" by the spec (loop.approve: never)"
                                              if mode == "never" else " by the person")
