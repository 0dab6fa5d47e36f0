"""A loaded spec checked against the installed plugins: its tools and their options, model
providers, memory backend, template, sub-agents (cycles and depth) and output schema.

`resolve(spec)` raises SpecErrors listing every problem at once, or returns a `Resolved`:
everything the composition root (`runner.agent`) needs to build the agent, so that nothing
else reads the plugin registry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import SpecError, SpecErrors, did_you_mean
from .memory import Memory, NoMemory
from .plugins import Registration, Registry, hooks, registry
from .prompts import PromptTemplate, load_template
from .spec import (COMMON_TOOL_KEYS, AgentSpec, CommonToolOptions, MemorySpec, ModelSpec,
                   load_spec, pydantic_errors, redact_errors)
from .spec import shown_path
from .tools import GROUP_NAME, ToolFactory

__all__ = ["Resolved", "ToolRef", "resolve", "resolve_spec", "MAX_AGENT_DEPTH", "MAX_SUB_AGENTS"]

MAX_AGENT_DEPTH = 5
"""Sub-agents may nest this deep below the top-level agent (checked when a spec is resolved)."""

MAX_SUB_AGENTS = 100
"""Most sub-agents below one agent, each use of a spec counted: the agents a run builds."""


@dataclass
class ToolRef:
    """One entry of `tools:`, checked: the factory, its validated options and common keys."""

    name: str
    """The registered tool (or factory) name."""
    alias: str
    """The name the model sees (`name:` in the entry renames it)."""
    factory: ToolFactory
    options: Any
    """The factory's options, validated by its pydantic model."""
    common: CommonToolOptions
    key: tuple[Any, ...]
    """Where the entry is in the spec, for errors found while building it."""
    sub: Resolved | None = None
    """The sub-agent of an `agent` entry."""


@dataclass
class Resolved:
    """A spec with everything the installed plugins provide for it."""

    spec: AgentSpec
    tools: list[ToolRef]
    models: list[tuple[str, Callable[..., Any]]]
    """(model id, factory) for `model.id` and then each fallback; each factory takes the spec's
    `model` settings, and a fallback's applies the fallback's own connection settings to them."""
    template: PromptTemplate
    memory: Callable[[], Memory]
    """Makes the spec's memory backend (not opened until the agent is built)."""
    hooks: Any = field(repr=False, default=None)
    """The plugins' lifecycle hooks (`on_event`), for the composition root."""
    summary_model: tuple[str, Callable[..., Any]] | None = None
    """(model id, factory) of `memory.summarize.model`, when it names one."""


@dataclass
class _SubAgents:
    """The sub-agents met while resolving one top-level spec, so that a spec named many times
    is read once: without this, six specs each naming the next eight times were 37,449 loads."""

    done: dict[tuple[Path, int], tuple[Resolved, int] | SpecError] = field(default_factory=dict)
    """By (file, depth): the resolved spec and how many agents it brings, or its problems."""
    below: dict[tuple[Path, ...], int] = field(default_factory=dict)
    """Agents counted so far below each spec being resolved (keyed by its stack)."""


_SUB_AGENTS: ContextVar[_SubAgents | None] = ContextVar("runner_sub_agents", default=None)


def resolve(spec: AgentSpec, _stack: tuple[Path, ...] = ()) -> Resolved:
    """Check `spec` against the installed plugins; raise SpecErrors listing every problem
    (no message shows a value that came from a secret variable)."""
    token = _SUB_AGENTS.set(_SubAgents()) if not _stack or _SUB_AGENTS.get() is None else None
    try:
        return _resolve(spec, _stack)
    except SpecError as exc:
        if isinstance(exc, SpecErrors):  # a sub-agent named several times: its problems once
            exc.errors = list({id(e): e for e in exc.errors}.values())
            exc.args = (exc.render(),)
        redact_errors(exc, spec.source.secrets)
        raise
    finally:
        if token is not None:
            _SUB_AGENTS.reset(token)


def _resolve(spec: AgentSpec, _stack: tuple[Path, ...]) -> Resolved:
    src = spec.source
    problems: list[SpecError] = []

    def attempt(fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except SpecErrors as exc:
            problems.extend(exc.errors)
        except SpecError as exc:
            problems.append(exc)
        return None

    reg = registry()
    stack = (*_stack, src.path)
    models = []
    provider = attempt(_provider, spec, ("model", "id"), spec.model.id, reg)
    if provider is not None:
        models.append((spec.model.id, provider.value))
    for i, fallback in enumerate(spec.model.fallbacks):
        provider = attempt(_provider, spec, ("model", "fallbacks", i), fallback.id, reg)
        if provider is not None:
            models.append((fallback.id, _fallback_factory(provider.value, i)))
    memory = attempt(_memory, spec, reg)
    summary_model = None
    summarize = spec.memory.summarize
    if summarize is not None and summarize.model:
        provider = attempt(_provider, spec, ("memory", "summarize", "model"), summarize.model,
                           reg)
        if provider is not None:
            summary_model = (summarize.model, provider.value)
    seen: dict[str, int] = {}
    refs = []
    for i, entry in enumerate(spec.tools):
        ref = attempt(_tool_ref, spec, i, entry, reg, stack)
        if ref is None:
            continue
        if ref.alias in seen:
            problems.append(src.error(("tools", i), f"tool name {ref.alias!r} is already used by "
                                      f"tools[{seen[ref.alias]}]; rename one with name:"))
        seen[ref.alias] = i
        refs.append(ref)
    pm_hooks = hooks()
    template = attempt(load_template, src, spec.prompt, spec.kind,
                       pm_hooks.prepare_jinja2_environment)
    if spec.output is not None:
        attempt(_check_schema, spec)
    if spec.kind == "chain" and spec.tools:
        problems.append(src.error(("tools",), "a chain makes one model call and cannot use tools; "
                                  "use kind: agent"))
    if problems:
        raise SpecErrors(problems)
    return Resolved(spec, refs, models, template, memory, pm_hooks, summary_model)


resolve_spec = resolve
"""`runner.resolve_spec`: the package exports `resolve` under this name, since `runner.resolve`
is this module."""


def _provider(spec: AgentSpec, key: tuple[Any, ...], model_id: str, reg: Registry) -> Registration:
    """The registration that makes `model_id`: by the prefix before `/` ("" for a bare id)."""
    prefix = model_id.split("/", 1)[0] if "/" in model_id else ""
    found = reg.models.get(prefix)
    if found is not None:
        return found
    own = sorted(n for n, r in reg.models.items() if n and not r.family)
    families: dict[str, list[str]] = {}
    for n, r in reg.models.items():
        if n and r.family:
            families.setdefault(r.family, []).append(n)
    known = [n for n in reg.models if n]
    more = "".join(f"; {family} knows {len(names)} more ({', '.join(names[:4])}, ...)"
                   for family, names in families.items())
    raise spec.source.error(key, f"unknown model provider {prefix!r}{did_you_mean(prefix, known)}; "
                                 f"plugins provide: {', '.join(own)}{more}")


def _fallback_factory(factory: Callable[..., Any], i: int) -> Callable[..., Any]:
    """The factory of fallback `i`: given the spec's `model` settings, as every model factory
    is, it builds the fallback from its own id, api_base, key and options, never the primary's."""

    def make(model: ModelSpec, model_id: str) -> Any:
        return factory(model.for_fallback(i), model_id)

    return make


def _memory(spec: AgentSpec, reg: Registry) -> Callable[[], Memory]:
    backend = spec.memory.backend
    if backend == "none":
        return NoMemory
    found = reg.memory.get(backend)
    if found is None:
        raise spec.source.error(("memory", "backend"), f"unknown memory backend {backend!r}"
                                f"{did_you_mean(backend, reg.memory)}; available: none, "
                                f"{', '.join(sorted(reg.memory))}")
    options = _options(spec, ("memory",), found.extra.get("options"),
                       spec.memory.model_extra or {}, MemorySpec.model_fields)
    factory = found.value
    return lambda: factory(spec.memory, options)


def _options(spec: AgentSpec, key: tuple[Any, ...], model: type[BaseModel] | None,
             values: dict[str, Any], also: Iterable[str] = ()) -> Any:
    """Validate a plugin's options; `also` are the other keys allowed beside them."""
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
        raise SpecErrors(pydantic_errors(exc, spec.source, model, key, values, also)) from None


def _tool_ref(spec: AgentSpec, i: int, entry: Any, reg: Registry,
              stack: tuple[Path, ...]) -> ToolRef:
    src = spec.source
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
    found = reg.tools.get(name)
    if found is None:
        raise src.error(key, f"unknown tool {name!r}{did_you_mean(name, reg.tools)}; "
                             f"available: {', '.join(sorted(reg.tools))}")
    factory: ToolFactory = found.value
    common = {k: options[k] for k in COMMON_TOOL_KEYS if k in options}
    rest = {k: v for k, v in options.items() if k not in COMMON_TOOL_KEYS}
    try:
        c = CommonToolOptions.model_validate(common)
    except ValidationError as exc:
        raise SpecErrors(pydantic_errors(exc, src, CommonToolOptions, key, common)) from None
    built = _options(spec, key, factory.options, rest, sorted(COMMON_TOOL_KEYS))
    if factory.named_group and not c.name:
        raise src.error(key, f"a {name} entry needs name: (the prefix of its tools' names)")
    if factory.named_group and not GROUP_NAME.match(c.name or ""):
        raise src.error(key + ("name",), f"name {c.name!r} must start with a letter and hold "
                        f"only letters, digits, _ and - (32 at most): it prefixes the names of "
                        f"its tools, which providers restrict")
    ref = ToolRef(name, c.name or name, factory, built, c, key)
    for field_name in getattr(factory.options, "spec_paths", ()):  # paths the entry confines
        if getattr(built, field_name) is not None:
            src.resolve(getattr(built, field_name), key + (field_name,))
    if name == "agent":
        ref.sub = _sub_agent(spec, key, key if shorthand else key + ("spec",), built.spec, stack)
        ref.alias = c.name or ref.sub.spec.name
    return ref


def _sub_agent(spec: AgentSpec, key: tuple[Any, ...], path_key: tuple[Any, ...], rel: str,
               stack: tuple[Path, ...]) -> Resolved:
    """The sub-agent `rel` of the spec at the end of `stack`: each file is loaded once per
    depth (what lies below it depends on the depth limit), its problems reported once, and
    the agents below one spec are capped at MAX_SUB_AGENTS, each use counted."""
    src = spec.source
    path = src.resolve(rel, path_key)
    if path in stack:
        chain = " -> ".join(p.name for p in (*stack, path))
        raise src.error(key, f"sub-agent cycle: {chain}")
    if len(stack) > MAX_AGENT_DEPTH:
        raise src.error(key, f"sub-agents nested deeper than {MAX_AGENT_DEPTH}")
    seen = _SUB_AGENTS.get() or _SubAgents()
    done = seen.done.get((path, len(stack)))
    if done is None:
        try:
            sub = resolve(load_spec(path, env=src.env), stack)
        except SpecError as exc:
            seen.done[(path, len(stack))] = exc
            raise
        done = seen.done[(path, len(stack))] = (sub, 1 + seen.below.get((*stack, path), 0))
    if isinstance(done, SpecError):
        raise done
    sub, size = done
    before = seen.below.get(stack, 0)
    seen.below[stack] = before + size
    if before <= MAX_SUB_AGENTS < before + size:
        raise src.error(key, f"more than {MAX_SUB_AGENTS} sub-agents in all below "
                             f"{shown_path(src.path)} (each use of a spec counts; "
                             f"{shown_path(path)} brings {size})")
    return sub


def _check_schema(spec: AgentSpec) -> None:
    import jsonschema

    assert spec.output is not None
    try:
        jsonschema.Draft202012Validator.check_schema(spec.output.json_schema)
    except jsonschema.SchemaError as exc:
        where = ("output", "schema", *exc.absolute_path)
        raise spec.source.error(where, f"invalid JSON Schema: {exc.message}") from None
