"""Handoffs (`handoffs: [billing.yaml, support.yaml]`): the agent may transfer the
conversation to another agent, which continues it with its own prompt and tools and
answers the user directly.

Each target is a tool `transfer_to_NAME` the model can call. The call ends the agent's
loop; the target then runs on the user's question with the conversation so far (the
session's history, what this agent found, and why it handed over) before it, and its
answer is the run's answer (`handed_to` names it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field

from . import events as ev
from .delegation import delegate
from .errors import DelegationFailed, SpecError
from .result import as_text
from .spec import AgentSpec
from .tools import Tool, tool

if TYPE_CHECKING:
    from .loop import Run
    from .result import Step

__all__ = ["handoff_tool", "handoff_step", "hand_off"]

MAX_NOTE_CHARS = 2000
"""Longest observation of this agent passed on to the target, per step."""


def handoff_tool(name: str, target: AgentSpec) -> Tool:
    """The tool that hands the conversation to `target` (the loop acts on the call)."""

    async def transfer(reason: Annotated[str, Field(
            description="why this agent should take over, in one line")] = "") -> str:
        return f"The conversation was handed to {target.name}."

    about = f": {target.description.rstrip('.')}" if target.description else ""
    return tool(transfer, name=name, description=f"Hand the conversation to the "
                f"{target.name} agent{about}. It answers the user directly.")


def handoff_step(run: Run, steps: list[Step]) -> Step | None:
    """The step among `steps` that handed the conversation over, if one did."""
    handoffs = run.agent.handoffs
    return next((s for s in steps if s.action in handoffs and not s.error
                 and s.observation is not None), None) if handoffs else None


async def hand_off(run: Run, history: list[Any]) -> None:
    """Let the chosen agent answer the user, with the conversation so far before the question."""
    r = run.result
    name = run.handoff or ""
    target = run.agent.handoffs.get(name)
    if target is None:  # resumed with --force after the spec lost that handoff
        raise SpecError(f"the run handed the conversation over with {name}, which "
                        f"{run.spec.name} no longer has; its handoffs: "
                        f"{', '.join(run.agent.handoffs) or 'none'}")
    chosen = next((s for s in reversed(r.steps) if s.action == name), None)
    given = chosen.input if chosen is not None else None
    reason = given.get("reason", "") if isinstance(given, dict) else as_text(given or "")
    found = [{"role": "assistant", "content": f"{s.action}: {s.observation[:MAX_NOTE_CHARS]}"}
             for s in r.steps if s.action and s.action not in run.agent.handoffs
             and s.observation and not s.error]
    note = f"({run.spec.name} handed this conversation to {target.spec.name}" + (
        f": {reason})" if reason else ")")
    context = [*history, *found, {"role": "assistant", "content": note}]
    run.checkpoint()  # the choice is kept: a resume goes straight to the target
    place = f"handoff:{chosen.index if chosen is not None else 0}"
    result = await delegate(run, target, r.input, place, context=context)
    if not result.ok:
        raise DelegationFailed(f"{target.spec.name}, handed the conversation, ended with "
                               f"{result.status}: {result.error}", result.exception)
    r.answer, r.handed_to, r.status = result.answer, target.spec.name, "finished"
    run.emit(ev.FinalAnswer(run.run_id, len(r.steps), r.answer))
