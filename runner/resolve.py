"""A loaded spec checked against the installed plugins: its tools and their options, model
providers, memory backend, template, sub-agents (cycles and depth) and output schema.

`resolve(spec)` raises SpecErrors listing every problem at once, or returns a `Resolved`:
everything the composition root (`runner.agent`) needs to build the agent, so that nothing
else reads the plugin registry.
"""

from __future__ import annotations

import re
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

__all__ = ["Resolved", "ToolRef", "Stage", "resolve", "resolve_spec", "MAX_AGENT_DEPTH",
           "MAX_SUB_AGENTS", "CRITIC_INPUTS", "handoff_name"]

MAX_AGENT_DEPTH = 5
"""Sub-agents may nest this deep below the top-level agent (checked when a spec is resolved)."""

CRITIC_INPUTS = ("question", "draft", "criteria")
"""What a critic that is a chain may take as its named inputs."""

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
class Stage:
    """One step of a pipeline, checked: its agent and its compiled input templates."""

    sub: Resolved
    name: str
    """What later steps' templates call its answer (`as:`)."""
    input: PromptTemplate | None
    """Renders the step's input; None: the previous step's answer."""
    inputs: dict[str, PromptTemplate] | None
    """Render a chain's named inputs, instead of `input`."""
    output: Any = None
    """The step's own OutputSpec, checked besides its spec's."""


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
    stages: list[Stage] = field(default_factory=list)
    """A pipeline's steps (`kind: sequence`)."""
    handoffs: list[Resolved] = field(default_factory=list)
    """The agents this one may hand the conversation to."""
    critic: Resolved | None = None
    """`reflection.critic`, when it names a spec."""


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
    if spec.kind != "sequence":  # a sequence's steps call the models; it has none of its own
        provider = attempt(_provider, spec, ("model", "id"), spec.model.id, reg)
        if provider is not None:
            attempt(_model_options, spec, ("model", "options"), spec.model.options, provider)
            models.append((spec.model.id, provider.value))
        for i, fallback in enumerate(spec.model.fallbacks):
            provider = attempt(_provider, spec, ("model", "fallbacks", i), fallback.id, reg)
            if provider is not None:
                attempt(_model_options, spec, ("model", "fallbacks", i, "options"),
                        fallback.options, provider)
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
    prepare = pm_hooks.prepare_jinja2_environment
    template = attempt(load_template, src, spec.prompt, spec.kind, prepare)
    if spec.output is not None:
        attempt(_check_schema, spec, ("output", "schema"), spec.output)
    problems.extend(_kind_problems(spec))
    stages = [s for i, step in enumerate(spec.steps)
              if (s := attempt(_stage, spec, i, step, stack, prepare)) is not None]
    names = [s.name for s in stages]
    taken = {"input", "previous", *spec.inputs}
    problems.extend(src.error(("steps", i, "as"), f"two steps are called {n!r}; name one with "
                              f"as:" if n in names[:i] else f"step name {n!r} is taken by the "
                              f"pipeline's inputs; name the step with as:")
                    for i, n in enumerate(names) if n in names[:i] or n in taken)
    handoffs = [h for i, rel in enumerate(spec.handoffs) if (h := attempt(
        _sub_agent, spec, ("handoffs", i), ("handoffs", i), rel, stack)) is not None]
    tools = [handoff_name(h.spec.name) for h in handoffs]
    problems.extend(src.error(("handoffs", i), f"two handoffs give the tool {t!r}; their specs "
                              f"need different names") for i, t in enumerate(tools)
                    if t in tools[:i])
    critic = None
    if spec.reflection is not None and spec.reflection.critic is not None:
        key = ("reflection", "critic")
        critic = attempt(_sub_agent, spec, key, key, spec.reflection.critic, stack)
        if critic is not None and critic.spec.kind == "chain":
            unknown = sorted(set(critic.spec.inputs) - set(CRITIC_INPUTS))
            if unknown or not critic.spec.inputs:
                problems.append(src.error(key, f"a critic chain takes the inputs "
                                          f"{', '.join(CRITIC_INPUTS)}; {spec.reflection.critic} "
                                          + (f"has {unknown[0]!r}" if unknown else
                                             "declares none")))
    if problems:
        raise SpecErrors(problems)
    return Resolved(spec, refs, models, template, memory, pm_hooks, summary_model, stages,
                    handoffs, critic)


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


def _model_options(spec: AgentSpec, key: tuple[Any, ...], options: dict[str, Any],
                   provider: Registration) -> None:
    """A provider's own check of its `options` (`register(prefix, factory, check_options=f)`:
    f(options) -> None, or (option, reason) for the first bad one)."""
    check = provider.extra.get("check_options")
    problem = check(options) if check is not None else None
    if problem is not None:
        raise spec.source.error((*key, problem[0]), problem[1])


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
    if not path.is_file():
        raise src.error(path_key, f"no spec file {rel!r} (the path is relative to "
                                  f"{shown_path(src.path)})")
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


def handoff_name(agent: str) -> str:
    """The tool that hands the conversation to the agent called `agent` (letters, digits, `_`
    and `-` only, as providers require)."""
    return "transfer_to_" + re.sub(r"[^A-Za-z0-9_-]", "_", agent)


def _kind_problems(spec: AgentSpec) -> list[SpecError]:
    """Keys that the spec's kind does not take."""
    src, kind = spec.source, spec.kind
    problems = []
    if kind == "chain" and spec.tools:
        problems.append(src.error(("tools",), "a chain makes one model call and cannot use tools; "
                                  "use kind: agent"))
    if kind == "sequence":
        if not spec.steps:
            problems.append(src.error(("steps",), "a sequence needs steps: (- agent: x.yaml)"))
        if spec.tools:
            problems.append(src.error(("tools",), "a sequence runs its steps and has no tools "
                                      "of its own; give them to a step's agent"))
        problems.extend(src.error((key,), f"a sequence has no {key} of its own: each step's "
                                  f"spec has its own") for key in ("model", "prompt", "loop")
                        if key in spec.model_fields_set)
    elif spec.steps:
        problems.append(src.error(("steps",), f"steps: belong to kind: sequence, not {kind}"))
    for key in ("reflection", "handoffs"):
        if kind != "agent" and getattr(spec, key):
            problems.append(src.error((key,), f"{key}: needs kind: agent (this is a {kind})"))
    return problems


def _stage(spec: AgentSpec, i: int, step: Any, stack: tuple[Path, ...],
           prepare: Any) -> Stage:
    key: tuple[Any, ...] = ("steps", i)
    sub = _sub_agent(spec, key, key + ("agent",), step.agent, stack)
    if step.inputs is not None:
        if sub.spec.kind != "chain":
            raise spec.source.error(key + ("inputs",), f"inputs: name a chain's inputs; "
                                    f"{step.agent} is a {sub.spec.kind} (give input:)")
        unknown = sorted(set(step.inputs) - set(sub.spec.inputs))
        if unknown:
            raise spec.source.error(key + ("inputs", unknown[0]), f"{step.agent} has no input "
                                    f"{unknown[0]!r}{did_you_mean(unknown[0], sub.spec.inputs)}; "
                                    f"its inputs: {', '.join(sub.spec.inputs) or 'none'}")
        missing = [n for n, d in sub.spec.inputs.items() if n not in step.inputs and (
            d is None or (d.default is None and d.required))]
        if missing:
            raise spec.source.error(key + ("inputs",), f"{step.agent} needs the input "
                                    f"{missing[0]!r}, which has no default")
    if step.output is not None:
        _check_schema(spec, key + ("output", "schema"), step.output)
    inputs = None if step.inputs is None else {
        n: _step_template(spec, key + ("inputs", n), text, prepare)
        for n, text in step.inputs.items()}
    given = None if step.input is None else _step_template(spec, key + ("input",), step.input,
                                                          prepare)
    name = step.as_ or (sub.spec.name if sub.spec.name.isidentifier() else f"step{i + 1}")
    return Stage(sub, name, given, inputs, step.output)


def _step_template(spec: AgentSpec, key: tuple[Any, ...], text: str,
                   prepare: Any) -> PromptTemplate:
    try:
        return PromptTemplate(spec.source.root, text=text, prepare=prepare,
                              origin=f"{spec.source.path}: {'.'.join(map(str, key))}")
    except SpecError as exc:
        raise spec.source.error(key, getattr(exc, "reason", str(exc))) from None


def _check_schema(spec: AgentSpec, key: tuple[Any, ...], output: Any) -> None:
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(output.json_schema)
    except jsonschema.SchemaError as exc:
        raise spec.source.error((*key, *exc.absolute_path),
                                f"invalid JSON Schema: {exc.message}") from None
