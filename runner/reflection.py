"""Reflection (`reflection: {critic: critic.yaml, max_rounds: 2, criteria: [...]}`): each
final answer is a draft a critic reviews against the criteria; until it approves or the
rounds run out, its problems go back to the agent as the observation of its answer, and the
agent revises in the same run (every review and revision counts against the run's budget;
the revisions' model calls count against `loop.max_iterations` too, the reviews do not).

The critic is another spec (an agent, or a chain whose inputs may be `question`, `draft` and
`criteria`), or the agent's own model with the built-in critic prompt. Its verdict is read
as JSON (`{"approved": true}` or `{"approved": false, "problems": [...]}`) or as text
(`APPROVE`, or one problem per `- ` line); anything else is one problem, quoted. Every draft
and verdict is kept in the result's `review` and in the checkpoint: a resumed run reviews
the draft it stopped at."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import events as ev
from .delegation import delegate
from .errors import Interrupted, NotApproved
from .prompts import PromptTemplate
from .result import as_text

if TYPE_CHECKING:
    from .loop import Run

__all__ = ["reflect", "parse_verdict", "FEEDBACK"]

FEEDBACK = ("A reviewer checked this answer against the criteria and found problems:\n"
            "{problems}\nRevise the answer to fix each problem, then give the Final Answer.")
MAX_PROBLEMS, MAX_PROBLEM_CHARS = 20, 500
_APPROVE = re.compile(r"^[\s*_#>'\"`]*(approved?|lgtm)\b", re.I)
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+(.*\S)")


async def reflect(run: Run, history: list[Any]) -> None:
    """Draft, review, revise, until the critic approves or `max_rounds` reviews are done."""
    r, spec = run.result, run.spec.reflection
    assert spec is not None
    while True:
        if not r.review or r.review[-1]["approved"] is not None:  # else: a resumed review
            await run.drive_loop(history)
            if r.status != "finished" or r.handed_to is not None:
                return  # failed, or another agent answered
            r.review.append({"round": len(r.review) + 1, "draft": r.answer, "approved": None,
                             "problems": [], "critic_run": None})
            r.status = "running"
            run.checkpoint()  # the draft is kept before the critic sees it
        entry = r.review[-1]
        approved, problems, critic_run = await _review(run, entry)
        entry.update(approved=approved, problems=problems, critic_run=critic_run)
        run.emit(ev.Reviewed(run.run_id, len(r.steps), entry["round"], approved, problems,
                             critic_run, entry["draft"]))
        if approved or entry["round"] >= spec.max_rounds:
            r.answer = entry["draft"]
            if not approved:
                run.partial = entry["draft"]
                raise NotApproved(f"the critic did not approve the answer after "
                                  f"{entry['round']} round{'s' if entry['round'] != 1 else ''}"
                                  f": {'; '.join(problems)[:MAX_PROBLEM_CHARS]}")
            r.status = "finished"
            return
        _feed_back(run, problems)
        run.checkpoint()


async def _review(run: Run, entry: dict[str, Any]) -> tuple[bool, list[str], str | None]:
    """The critic's verdict on one draft: (approved, problems, the critic's run id)."""
    spec = run.spec.reflection
    assert spec is not None
    question, draft, criteria = as_text(run.result.input), as_text(entry["draft"]), spec.criteria
    critic = run.agent.critic
    if critic is None:  # the agent's own model, with the built-in prompt
        prompt = _critic_template().render(instructions=spec.prompt or "", question=question,
                                           draft=draft, criteria=criteria)
        reply = await run.call_model([{"role": "user", "content": prompt}])
        return (*parse_verdict(reply.text), None)
    named = {"question": question, "draft": draft, "criteria": "\n".join(
        f"- {c}" for c in criteria)}
    if critic.spec.kind == "chain":  # its inputs are among these (checked when resolved)
        given: Any = {k: v for k, v in named.items() if k in critic.spec.inputs}
    else:
        given = _critic_template().render(instructions="", question=question, draft=draft,
                                          criteria=criteria)
    result = await delegate(run, critic, given, f"review:{entry['round']}")
    if isinstance(result.exception, Interrupted):  # the run stops: a resume reviews again
        raise result.exception
    if not result.ok:
        return False, [f"the critic could not review the answer ({result.status}: "
                       f"{result.error}); check it against the criteria yourself"], \
            result.run_id
    return (*parse_verdict(result.answer), result.run_id)


def parse_verdict(verdict: Any) -> tuple[bool, list[str]]:
    """(approved, problems) from a critic's answer: JSON or text (see the module)."""
    if isinstance(verdict, str):
        text = verdict.strip().removeprefix("```json").removeprefix("```").removesuffix("```")
        try:
            verdict = json.loads(text) if text.lstrip().startswith("{") else verdict
        except ValueError:
            pass
    if isinstance(verdict, dict):
        approved = verdict.get("approved", verdict.get("approve"))
        problems = verdict.get("problems", [])
        problems = [as_text(p) for p in (problems if isinstance(problems, list) else [problems])]
        if isinstance(approved, bool):
            return approved, _clip(problems)
        verdict = as_text(verdict)
    text = as_text(verdict).strip()
    if not text:
        return False, ["the reviewer gave no verdict; check the answer against the criteria "
                       "again"]
    bullets = [m.group(1) for line in text.splitlines() if (m := _BULLET.match(line))]
    if _APPROVE.match(text):
        return True, _clip(bullets)
    return False, _clip(bullets or [text])


def _clip(problems: list[str]) -> list[str]:
    return [p[:MAX_PROBLEM_CHARS] for p in problems[:MAX_PROBLEMS]]


def _feed_back(run: Run, problems: list[str]) -> None:
    """Give the critic's problems to the agent as the observation of its answer."""
    text = FEEDBACK.format(problems="\n".join(f"- {p}" for p in problems))
    last = run.result.steps[-1]
    if run.messages:  # native tool calling: the answer was the last assistant message
        run.messages.append({"role": "user", "content": text})
    else:
        last.observation = text


@functools.cache
def _critic_template() -> PromptTemplate:
    return PromptTemplate(Path(__file__).parent / "templates", name="critic.md.j2")
