"""Load-time checks of a validated spec against the installed plugins: tools and their
options, model providers, memory backends, templates, sub-agents and the output schema."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from .errors import SpecError, SpecErrors
from .plugins import registry
from .spec import (_COMMON_TOOL_KEYS, AgentSpec, MemorySpec, ToolRef, _pydantic_errors, _Strict,
                   did_you_mean)

MAX_AGENT_DEPTH = 5


class _CommonToolOptions(_Strict):
    """Keys every tools entry accepts besides the tool's own options."""

    name: str | None = None
    """The name the model sees, when it should differ from the tool's."""
    timeout_s: float | None = Field(None, gt=0, le=3600)
    """Deadline for one call of this tool, instead of loop.tool_timeout_s."""
    description: str | None = None
    """What the model is told the tool does, instead of the tool's own description."""
    max_output_chars: int | None = Field(None, ge=1, le=10_000_000)
    """Longer output of this tool is cut to this size, instead of loop.max_observation_chars."""
    confirm: bool | None = None
    """Ask before each call (see loop.approve); default: what the tool's plugin says."""
    idempotent: bool | None = None
    """false: a call interrupted by a crash is not re-run on resume; the model is told instead."""


def check_spec(spec: AgentSpec, _stack: tuple[Path, ...] = ()) -> None:
    """Raise SpecErrors listing every problem found; fill spec.tool_refs."""
    src = spec.source
    problems: list[SpecError] = []

    def attempt(fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except SpecErrors as exc:
            problems.extend(exc.errors)
        except SpecError as exc:
            problems.append(exc)
        return None

    reg = registry()
    from .models import check_model_id

    for key, model_id in [(("model", "id"), spec.model.id),
                          *((("model", "fallbacks", i), f) for i, f in enumerate(spec.model.fallbacks))]:
        why = check_model_id(model_id, set(reg.models))
        if why:
            problems.append(src.error(key, why))
    if spec.memory.backend != "none":
        mem = reg.memory.get(spec.memory.backend)
        if mem is None:
            problems.append(src.error(("memory", "backend"), f"unknown memory backend "
                                      f"{spec.memory.backend!r}{did_you_mean(spec.memory.backend, reg.memory)}; "
                                      f"available: none, {', '.join(sorted(reg.memory))}"))
        else:
            attempt(_check_options, spec, ("memory",), mem.extra.get("options"),
                    spec.memory.model_extra or {}, MemorySpec.model_fields)
    seen: dict[str, int] = {}
    refs = []
    for i, entry in enumerate(spec.tools):
        ref = attempt(_tool_ref, spec, i, entry, _stack)
        if ref is None:
            continue
        if ref.alias in seen:
            problems.append(src.error(("tools", i), f"tool name {ref.alias!r} is already used by "
                                      f"tools[{seen[ref.alias]}]; rename one with name:"))
        seen[ref.alias] = i
        refs.append(ref)
    spec._tools = refs
    attempt(_check_template, spec)
    if spec.output is not None:
        attempt(_check_schema, spec)
    if spec.kind == "chain" and spec.tools:
        problems.append(src.error(("tools",), "a chain makes one model call and cannot use tools; "
                                  "use kind: agent"))
    if problems:
        raise SpecErrors(problems)


def _check_options(spec: AgentSpec, key: tuple[Any, ...], model: type[BaseModel] | None,
                   values: dict[str, Any], also: Iterable[str] = ()) -> Any:
    """Validate plugin options; `also` are the other keys allowed beside them (for messages)."""
    if model is None:
        if values:
            name = next(iter(values))
            allowed = ", ".join(also)
            raise spec.source.error(key + (name,), f"unknown key {name!r}"
                                    f"{did_you_mean(name, also) or f'; allowed: {allowed}'}")
        return None
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise SpecErrors(_pydantic_errors(exc, spec.source, model, key, values, also)) from None


def _tool_ref(spec: AgentSpec, i: int, entry: Any, stack: tuple[Path, ...]) -> ToolRef:
    src, tools = spec.source, registry().tools
    key: tuple[Any, ...] = ("tools", i)
    shorthand = False
    if isinstance(entry, str):
        name, options = entry, {}
    elif isinstance(entry, dict) and len(entry) == 1:
        name, options = next(iter(entry.items()))
        key += (name,)
        if name == "agent" and isinstance(options, str):
            options = {"spec": options}  # `- agent: x.yaml` is short for `- agent: {spec: x.yaml}`
            shorthand = True
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise src.error(key, "tool options must be a mapping")
    else:
        raise src.error(key, "a tool is a name (- calculator) or a mapping with one key "
                             "(- search: {path: kb/})")
    factory = tools.get(name)
    if factory is None:
        raise src.error(key, f"unknown tool {name!r}{did_you_mean(name, tools)}; "
                             f"available: {', '.join(sorted(tools))}")
    common = {k: options[k] for k in _COMMON_TOOL_KEYS if k in options}
    rest = {k: v for k, v in options.items() if k not in _COMMON_TOOL_KEYS}
    try:
        c = _CommonToolOptions.model_validate(common)
    except ValidationError as exc:
        raise SpecErrors(_pydantic_errors(exc, src, _CommonToolOptions, key, common)) from None
    built = _check_options(spec, key, factory.value.options, rest, sorted(_COMMON_TOOL_KEYS))
    ref = ToolRef(name, rest, c.name or name, c.timeout_s, c.description, c.max_output_chars,
                  c.confirm, c.idempotent, built)
    if name == "agent":
        ref.subspec = _load_subagent(spec, key, key if shorthand else key + ("spec",),
                                     built.spec, stack)
        ref.alias = c.name or ref.subspec.name
    return ref


def _load_subagent(spec: AgentSpec, key: tuple[Any, ...], path_key: tuple[Any, ...], rel: str,
                   stack: tuple[Path, ...]) -> AgentSpec:
    from .spec import load_spec

    path = spec.source.resolve(rel, path_key)
    if path in stack:
        chain = " -> ".join(p.name for p in (*stack, path))
        raise spec.source.error(key, f"sub-agent cycle: {chain}")
    if len(stack) > MAX_AGENT_DEPTH:
        raise spec.source.error(key, f"sub-agents nested deeper than {MAX_AGENT_DEPTH}")
    return load_spec(path, env=spec.source.env, _stack=stack)


def _check_template(spec: AgentSpec) -> None:
    from .build import build_template

    build_template(spec)


def _check_schema(spec: AgentSpec) -> None:
    import jsonschema

    assert spec.output is not None
    try:
        jsonschema.Draft202012Validator.check_schema(spec.output.json_schema)
    except jsonschema.SchemaError as exc:
        where = ("output", "schema", *exc.absolute_path)
        raise spec.source.error(where, f"invalid JSON Schema: {exc.message}") from None
