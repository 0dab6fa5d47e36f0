"""Chains (`kind: chain`): one templated model call with named inputs and no tools."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import events as ev
from .errors import OutputError, SpecError
from .parsing import final_answer
from .result import Step
from .spec import AgentSpec

if TYPE_CHECKING:
    from .loop import Run

__all__ = ["bind_inputs", "run_chain"]


def bind_inputs(spec: AgentSpec, given: Any) -> dict[str, Any]:
    """The template's values from what the caller gave: a dict, or one bare value when the
    chain has exactly one required input; defaults fill the rest."""
    names = list(spec.inputs)
    if not isinstance(given, dict):
        required = [n for n, d in spec.inputs.items()
                    if d is None or (d.default is None and d.required)]
        if len(required) != 1:
            raise SpecError(f"this chain takes named inputs ({', '.join(names)}); "
                            f"pass --input NAME=VALUE")
        given = {required[0]: given}
    unknown = set(given) - set(names)
    if unknown:
        raise SpecError(f"unknown input {sorted(unknown)[0]!r}; inputs are: {', '.join(names)}")
    values = {}
    for name, decl in spec.inputs.items():
        if name in given:
            values[name] = given[name]
        elif decl is not None and (decl.default is not None or not decl.required):
            values[name] = decl.default
        else:
            raise SpecError(f"missing input {name!r} (pass --input {name}=...)")
    return values


async def run_chain(run: Run) -> None:
    """Render the prompt with the inputs, make one call, keep the (validated) answer."""
    spec, r = run.spec, run.result
    values = bind_inputs(spec, r.input)
    prompt = run.agent.template.render(**spec.prompt.variables, vars=spec.prompt.variables,
                                       **values)
    reply = await run.call_model([{"role": "user", "content": prompt}],
                                 stop=spec.model.stop or None)
    r.steps.append(Step(1, raw=reply.text, model_s=reply.latency_s))
    if reply.finish_reason == "length" and spec.output is not None:
        raise OutputError(f"the reply was cut off at max_tokens ({spec.model.max_tokens})")
    r.answer = final_answer(reply.text, spec.output)
    r.status = "finished"
    run.emit(ev.FinalAnswer(run.run_id, 1, r.answer))
