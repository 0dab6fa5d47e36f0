"""Pipelines (`kind: sequence`): agents and chains run in order, each step's answer the next
one's input, in one trace.

Each step is a step of the pipeline's run (its action the step's name, its observation the
answer), committed as it ends: a resumed pipeline keeps the answers of the steps that had
finished and starts again at the one that failed or was cut short (which continues its own
run from its checkpoint where it can, see `runner.delegation`)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from . import events as ev
from .chain import bind_inputs
from .delegation import delegate
from .errors import DelegationFailed, Interrupted, OutputError
from .parsing import final_answer
from .result import Step, as_text

if TYPE_CHECKING:
    from .loop import Run
    from .resolve import Stage

__all__ = ["run_sequence"]


async def run_sequence(run: Run) -> None:
    """Run the steps not finished yet, in order; the last one's answer is the pipeline's."""
    r, spec = run.result, run.spec
    values: dict[str, Any] = {"input": r.input}
    if spec.inputs:
        values.update(bind_inputs(spec, r.input))
    done = {s.index: s for s in r.steps if s.observation is not None and not s.error}
    previous = r.input
    for i, (stage, agent) in enumerate(zip(run.agent.resolved.stages, run.agent.stages), 1):
        if i in done:
            previous = values[stage.name] = _answer(done[i].observation or "", stage)
            continue
        if run.stopping:
            raise Interrupted(run.stopping)
        given = _input(stage, {**values, "previous": previous}, previous)
        step = Step(i, action=stage.name, input=given)
        r.steps = [s for s in r.steps if s.index != i] + [step]  # a failed attempt's step
        run.emit(ev.ActionTaken(run.run_id, i, stage.name, given))
        result = await delegate(run, agent, given, f"step:{i}")
        try:
            if not result.ok:
                raise DelegationFailed(f"step {i} ({stage.name}) ended with {result.status}: "
                                       f"{result.error}", result.exception)
            answer = result.answer
            if stage.output is not None:
                answer = final_answer(as_text(answer), stage.output)
        except (DelegationFailed, OutputError) as exc:
            step.observation, step.error = str(exc), True
            run.emit(ev.Observed(run.run_id, i, stage.name, step.observation, True, 0.0))
            if isinstance(exc, OutputError):
                raise OutputError(f"step {i} ({stage.name}): {exc}") from None
            raise
        step.observation = as_text(answer)
        run.emit(ev.Observed(run.run_id, i, stage.name, step.observation, False, 0.0))
        previous = values[stage.name] = answer
        run.checkpoint()
    r.answer, r.status = previous, "finished"
    run.emit(ev.FinalAnswer(run.run_id, len(r.steps), r.answer))


def _input(stage: Stage, values: dict[str, Any], previous: Any) -> Any:
    """The step's input: its templates rendered over the values, else the previous answer."""
    if stage.inputs is not None:
        return {name: t.render(**values) for name, t in stage.inputs.items()}
    return stage.input.render(**values) if stage.input is not None else previous


def _answer(text: str, stage: Stage) -> Any:
    """A finished step's answer as it was, from its observation (structured answers as JSON)."""
    if stage.output is None and stage.sub.spec.output is None:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text
