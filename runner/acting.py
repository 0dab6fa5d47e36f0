"""Acting on a model's reply: running its tool calls, with loop detection, a person's
approval for tools marked confirm, and the at-most-once rule for tools that are not
idempotent. Every failure becomes an observation that tells the model what to do next.

It works on an explicit `StepContext` (what a run lends its tool calls) and `ToolLedger`
(what a run remembers of them, kept in its checkpoint), never on the run itself."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import events as ev
from .budget import Budget
from .errors import (CheckpointError, Interrupted, LimitExceeded, LoopDetected, ToolError,
                     did_you_mean)
from .parsing import Action, RawArguments
from .result import Step
from .spec import LoopSpec
from .tools import (Tool, ToolContext, cut_deep, format_output, parse_arguments, run_tool,
                    too_deep)

__all__ = ["StepContext", "ToolLedger", "act", "UNKNOWN_OUTCOME", "answer_contradicts"]

UNKNOWN_OUTCOME = ("the run was interrupted while {tool} was running, and {tool} is not safe to "
                   "repeat, so it was not run again: its outcome is unknown. Check its effect "
                   "before calling it again.")


@dataclass
class ToolLedger:
    """What a run remembers of its tool calls; it is part of the run's checkpoint."""

    repeats: dict[str, int] = field(default_factory=dict)
    """Each tool and input seen, and how often (loop detection)."""
    approvals: dict[str, bool] = field(default_factory=dict)
    """`step:tool` -> the person's (or the spec's) decision, so a resume does not ask twice."""
    in_flight: set[int] = field(default_factory=set)
    """Steps whose tool, marked idempotent: false, has started and not ended."""
    unknown: set[int] | None = field(default_factory=set)
    """After a resume, the steps that were in flight when the run stopped (None: an older
    checkpoint, where every pending call of a tool marked idempotent: false counts)."""


@dataclass
class StepContext:
    """What a run lends the tool calls of its steps."""

    run_id: str
    tools: dict[str, Tool]
    loop: LoopSpec
    budget: Budget
    root: Path
    depth: int
    ledger: ToolLedger
    emit: Callable[[ev.Event], None]
    """Send an event to the run's sinks and listener."""
    forward: Callable[[ev.Event], None]
    """Pass a sub-agent's event to whoever streams the run."""
    checkpoint: Callable[[], None] | None
    """Commit the run's state now (None: the run keeps no checkpoints)."""
    approver: Callable[[str, dict[str, Any]], Awaitable[bool]] | None = None
    run: Any = None
    """The run itself, lent to tools that start sub-agents' runs (`runner.delegation`)."""


async def act(ctx: StepContext, action: Action, step: Step, warnings: list[str],
              resumed: bool = False) -> None:
    """Run one action of `step` and record its observation, with events either side."""
    if too_deep(action.input):  # events, redaction, trace and checkpoint would recurse into it
        action = replace(action, input=RawArguments(json.dumps(cut_deep(action.input))))
    step.action, step.input = action.tool, action.input
    ctx.emit(ev.ActionTaken(ctx.run_id, step.index, action.tool, action.input, action.call_id))
    started = time.monotonic()
    text, step.error = await _invoke(ctx, action, step, resumed)
    if warnings:
        text += "\n(" + " ".join(warnings) + ")"
    step.observation, step.tool_s = text, time.monotonic() - started
    ctx.emit(ev.Observed(ctx.run_id, step.index, action.tool, text, step.error, step.tool_s))


async def _invoke(ctx: StepContext, action: Action, step: Step,
                  resumed: bool) -> tuple[str, bool]:
    """Run one tool call; every failure becomes advice for the model."""
    tools, ledger = ctx.tools, ctx.ledger
    t = tools.get(action.tool)
    if t is None:
        return (f"unknown tool {action.tool!r}{did_you_mean(action.tool, tools)}; tools are: "
                f"{', '.join(tools) or '(none)'}", True)
    if resumed and not t.idempotent and (ledger.unknown is None or step.index in ledger.unknown):
        return UNKNOWN_OUTCOME.format(tool=t.name), True
    try:
        args = parse_arguments(t, action.input)
        # a call re-run after a resume was already counted by loop detection
        refusal = (None if resumed else _repeated(ctx, t, args, step)) or \
            await _approve(ctx, t, args, step)
        if refusal:
            return refusal, True
        ctx.budget.charge_tool_call()
        context = ToolContext(ctx.run_id, ctx.root, ctx.depth, ctx.budget, ctx.forward,
                              step.index, ctx.emit, ctx.run)
        timeout = ctx.budget.clip(t.timeout_s or ctx.loop.tool_timeout_s)
        if not t.idempotent and ctx.checkpoint is not None:
            ledger.in_flight.add(step.index)  # committed first: a resume will not re-run it
            ctx.checkpoint()
        try:
            out = await run_tool(t, args, context, timeout)
        finally:
            ledger.in_flight.discard(step.index)
    except (LimitExceeded, CheckpointError, Interrupted):  # a stopped sub-agent stops the run
        raise
    except ToolError as exc:
        return f"tool {t.name} failed: {exc}", True
    except Exception as exc:
        return f"tool {t.name} failed: {type(exc).__name__}: {exc}", True
    return format_output(out, t.max_output_chars or ctx.loop.max_observation_chars), False


def _repeated(ctx: StepContext, t: Tool, args: Any, step: Step) -> str | None:
    """Loop detection: the model is told once, then the run ends (loop_detected)."""
    # parse_arguments bounded the depth (MAX_ARGUMENT_DEPTH), so this cannot recurse far
    key = f"{t.name}:{json.dumps(dict(args), sort_keys=True, default=str)}"
    repeats = ctx.ledger.repeats
    count = repeats[key] = repeats.get(key, 0) + 1
    limit = ctx.loop.max_repeats
    if count > limit:
        raise LoopDetected(count, limit)
    if count < limit:
        return None
    message = (f"{t.name} has been called with this same input {count} times; it was not "
               f"run again. Change the input, use another tool, or give the final answer.")
    ctx.emit(ev.Warned(ctx.run_id, step.index, message))
    return message


async def _approve(ctx: StepContext, t: Tool, args: Any, step: Step) -> str | None:
    """For tools marked confirm: the person's decision (kept in the checkpoint)."""
    if not t.confirm:
        return None
    key = f"{step.index}:{t.name}"
    mode, approvals = ctx.loop.approve, ctx.ledger.approvals
    if key not in approvals:
        if mode != "ask":
            approvals[key] = mode == "always"
        elif ctx.approver is None:
            return (f"{t.name} needs a person's approval and this run is not interactive, so "
                    f"it was not run (allow it with --yes or loop.approve: always)")
        else:
            approvals[key] = bool(await ctx.approver(t.name, dict(args)))
            if ctx.checkpoint is not None:
                ctx.checkpoint()
    if approvals[key]:
        return None
    return f"running {t.name} was declined" + (" by the spec (loop.approve: never)"
                                              if mode == "never" else " by the person")


_BARE_NUMBER = re.compile(r"\s*(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*")
_IN_TEXT = re.compile(r"(?<![\w.,])-?\d+(?:,\d{3})*(?:\.\d+)?(?![\w])")


def answer_contradicts(answer: Any, earlier: list[Step], question: str = "") -> str | None:
    """What to tell the model when its final answer states numbers and none of them is the
    number the last tool call gave (the calculator said 216, the answer says 180), else None.

    Cheap and narrow on purpose: only a last observation that is one bare number (what the
    calculator returns) and an answer that is text holding a number that is not in the
    `question` (12 in "12 chapters hold 216 pages" restates it); a number shown rounded
    (3.57 for 3.5714...) agrees."""
    if not isinstance(answer, str):
        return None
    last = next((s for s in reversed(earlier) if s.action), None)
    if last is None or last.error or not isinstance(last.observation, str):
        return None
    bare = _BARE_NUMBER.fullmatch(last.observation)
    if bare is None:
        return None
    said = float(bare.group(1))
    asked = set(_IN_TEXT.findall(question))
    given = [g for g in _IN_TEXT.findall(answer) if g not in asked]
    if not given or any(_agrees(g, said) for g in given):
        return None
    return (f"Your final answer says {given[-1]}, but the last observation was "
            f"{bare.group(1)}. If {bare.group(1)} answers the question, give it as the final "
            f"answer; if not, take another step.")


def _agrees(text: str, value: float) -> bool:
    number = float(text.replace(",", ""))
    digits = len(text.split(".", 1)[1]) if "." in text else 0
    return math.isclose(number, value, rel_tol=1e-9, abs_tol=1e-12) or (
        math.isfinite(value) and round(value, digits) == number)
