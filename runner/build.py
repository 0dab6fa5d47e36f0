"""Building a spec's runtime parts: its tools, its prompt template and its memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import TemplateError
from .memory import NoMemory
from .plugins import registry
from .prompts import PromptTemplate
from .spec import AgentSpec, ToolRef
from .tools import Tool, renamed

__all__ = ["BuildContext", "build_tools", "build_template", "build_memory", "build_observers"]


class BuildContext:
    """What a ToolFactory gets besides its options: the spec, its entry, the building agent."""

    def __init__(self, spec: AgentSpec, ref: ToolRef, agent: Any) -> None:
        self.spec, self.ref, self.agent = spec, ref, agent

    def resolve(self, rel: str) -> Path:
        """A path from the tool's options, confined to the project root."""
        return self.spec.source.resolve(rel, ("tools", self.ref.name))


def build_tools(spec: AgentSpec, agent: Any) -> dict[str, Tool]:
    tools: dict[str, Tool] = {}
    agent.tool_max_chars = {}
    reg = registry().tools
    for ref in spec.tool_refs:
        factory = reg[ref.name].value
        t = renamed(factory.build(ref.built_options, BuildContext(spec, ref, agent)),
                    ref.alias if ref.alias != ref.name else None, ref.description)
        for key in ("timeout_s", "confirm", "idempotent"):
            if getattr(ref, key) is not None:
                setattr(t, key, getattr(ref, key))
        if ref.max_output_chars is not None:
            agent.tool_max_chars[t.name] = ref.max_output_chars
        tools[t.name] = t
    return tools


_templates: dict[tuple[Path, str | None, str | None], PromptTemplate] = {}


def build_template(spec: AgentSpec) -> PromptTemplate:
    """The spec's compiled template (cached per file and text)."""
    src, p = spec.source, spec.prompt
    if p.template and p.text:
        raise src.error(("prompt", "text"), "give prompt.template or prompt.text, not both")
    if spec.kind == "chain" and not (p.template or p.text):
        raise src.error(("prompt",), "a chain needs prompt.template or prompt.text")
    name = None
    if p.template:
        path = src.resolve(p.template, ("prompt", "template"))
        if not path.is_file():
            raise src.error(("prompt", "template"), f"template file {p.template!r} not found")
        name = path.relative_to(src.root).as_posix()
    key = (src.root, name, p.text)
    tmpl = _templates.get(key)
    if tmpl is None:
        try:
            tmpl = PromptTemplate(src.root, name=name, text=p.text,
                                  origin=f"{src.path}: prompt.text" if p.text else str(src.path))
        except TemplateError as exc:
            if p.text and exc.line is not None:
                raise src.error(("prompt", "text"), f"{exc.reason} (line {exc.line} of the "
                                                    f"template)") from None
            raise
        _templates[key] = tmpl
    return tmpl


def build_memory(spec: AgentSpec) -> Any:
    backend = spec.memory.backend
    if backend == "none":
        return NoMemory()
    reg = registry().memory[backend]
    options_model = reg.extra.get("options")
    options = options_model.model_validate(spec.memory.model_extra or {}) if options_model else None
    return reg.value(spec.memory, options)


def build_observers(spec: AgentSpec, secrets: set[str]) -> list[Any]:
    """The sinks a top-level run gets from its spec: the trace file, OpenTelemetry export."""
    from .redact import Redactor

    sinks: list[Any] = []
    if spec.trace.enabled:
        from .traces import TraceWriter

        sinks.append(TraceWriter(spec.trace, secrets))
    from .otel import otel_sink

    exporter = otel_sink(spec.trace.otlp, Redactor.for_trace(spec.trace, secrets))
    if exporter is not None:
        sinks.append(exporter)
    return sinks
