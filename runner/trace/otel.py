"""OpenTelemetry export of a run's spans over OTLP/HTTP, after the GenAI semantic conventions.

One run gives a trace: `invoke_agent {agent}` holds a `step {n}` per loop iteration, each
holding its `chat {model}` call and its `execute_tool {tool}` calls; a sub-agent's
`invoke_agent` nests under the `execute_tool` span that called it. Spans are built from the
run's events as they arrive, with the events' own times, and sent by a batch processor in
the background; a collector that is down never slows or fails a run. Prompts, replies and
tool inputs/outputs are exported only when asked (`capture_content`), and redacted first;
so is every other string a span carries (its name, tool names and call ids from the model,
model ids, sessions, errors): nothing leaves the process without the run's redactor.

The OpenTelemetry SDK is imported only when export is configured, and the global tracer
provider is left alone: an application's own OpenTelemetry setup is not touched.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from ..redact import Redactor
from ..result import to_json
from ..spec import OtlpSpec
from .otlp import flush, pipeline_for, warn_once

__all__ = ["otel_sink", "flush"]

CONTENT_ON = {"true", "span_only", "span_and_event"}
"""Values of OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT that turn content capture on."""

# LiteLLM provider prefixes whose gen_ai.provider.name differs from the prefix (the
# conventions' well-known values MUST be used where one applies)
_PROVIDERS = {"azure": "azure.ai.openai", "azure_ai": "azure.ai.inference",
              "bedrock": "aws.bedrock", "vertex_ai": "gcp.vertex_ai", "gemini": "gcp.gemini",
              "mistral": "mistral_ai", "xai": "x_ai", "watsonx": "ibm.watsonx.ai",
              "moonshot": "moonshot_ai"}

def otel_sink(spec: OtlpSpec, redactor: Redactor) -> Any:
    """An event sink exporting spans over OTLP, or None when no endpoint is configured."""
    pipeline = pipeline_for(spec)
    if pipeline is None:
        return None
    env_content = os.environ.get("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "")
    content = spec.capture_content or env_content.strip().lower() in CONTENT_ON
    return SpanSink(pipeline.tracer, redactor, content)


# --- from events to spans --------------------------------------------------------------------


def _ns(t: float) -> int:
    return int(t * 1e9)


def _model(model_id: str) -> tuple[str, str]:
    """(gen_ai.provider.name, model name as requested) from a LiteLLM model id."""
    prefix, sep, name = model_id.partition("/")
    if not sep:
        return "_OTHER", model_id
    return _PROVIDERS.get(prefix, prefix), name


def _json(value: Any) -> str:
    return to_json(value)


def _decoded(value: Any) -> Any:
    """A JSON text as the object it holds (the conventions want arguments as objects)."""
    if isinstance(value, str) and value.lstrip()[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            pass
    return value


def _chat_message(message: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI-style message as a GenAI-conventions message (role + typed parts)."""
    role, content = message.get("role", "user"), message.get("content")
    parts: list[dict[str, Any]] = []
    if role == "tool":
        parts.append({"type": "tool_call_response", "id": message.get("tool_call_id"),
                      "response": content})
    elif isinstance(content, str) and content:
        parts.append({"type": "text", "content": content})
    elif isinstance(content, list):
        for item in content:
            if isinstance(item, dict) and item.get("type") == "text":
                parts.append({"type": "text", "content": item.get("text", "")})
            elif isinstance(item, dict):
                parts.append({**item, "type": str(item.get("type", "unknown"))})
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        parts.append({"type": "tool_call", "id": call.get("id"), "name": fn.get("name"),
                      "arguments": _decoded(fn.get("arguments"))})
    return {"role": role, "parts": parts}


@dataclass
class _RunSpans:
    """The open spans of one run."""

    span: Any
    ctx: Any
    tool_descriptions: dict[str, str | None]
    settings: dict[str, Any]
    step: Any = None
    step_ctx: Any = None
    chat: Any = None
    tools: dict[tuple[int, str], Any] = field(default_factory=dict)
    called: set[int] = field(default_factory=set)
    """Ids of tool spans a sub-agent run already nests under."""

    def parent(self) -> Any:
        return self.step_ctx if self.step_ctx is not None else self.ctx


class SpanSink:
    """Turns a run's events (and its sub-agents') into spans as they arrive."""

    def __init__(self, tracer: Any, redactor: Redactor, content: bool) -> None:
        from opentelemetry import trace

        self.tracer, self.redactor, self.content = tracer, redactor, content
        self.trace = trace
        self.runs: dict[str, _RunSpans] = {}
        self._handlers: dict[str, Callable[[Any], None]] = {
            "run_started": self._run_started, "model_started": self._model_started,
            "retry": self._retried, "model_called": self._model_called,
            "action": self._action, "observation": self._observed,
            "warning": self._warned, "memory_read": self._memory,
            "memory_written": self._memory, "memory_summarized": self._memory,
            "memory_recalled": self._memory,
            "run_ended": self._run_ended}

    def __call__(self, event: Any) -> None:
        handler = self._handlers.get(event.kind)
        if handler is None:
            return
        try:
            handler(event)
        except Exception as exc:  # telemetry must never end a run
            warn_once(f"OpenTelemetry export skipped a {event.kind} event: "
                       f"{type(exc).__name__}: {exc}")

    def _start(self, name: str, ctx: Any, t: float, attributes: dict[str, Any],
               content: dict[str, str] | None = None, client: bool = False) -> Any:
        """A span named `name`, with `attributes` redacted and `content` (redacted already)."""
        kind = self.trace.SpanKind.CLIENT if client else self.trace.SpanKind.INTERNAL
        return self.tracer.start_span(self.redactor.text(name), context=ctx, kind=kind,
                                      attributes={**self._attrs(attributes), **(content or {})},
                                      start_time=_ns(t))

    def _attrs(self, values: dict[str, Any]) -> dict[str, Any]:
        """Attributes redacted, without the unknown values (OpenTelemetry rejects None)."""
        return {k: self._redacted(v) for k, v in values.items() if v is not None}

    def _redacted(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redactor.text(value)
        if isinstance(value, (list, tuple)):
            return [self.redactor.text(v) if isinstance(v, str) else v for v in value]
        return value

    def _clip(self, text: str) -> str:
        """A message for an event or a status: redacted first, so no cut leaves half a secret."""
        return self.redactor.text(text)[:500]

    def _fail(self, span: Any, error_type: str, description: str | None = None) -> None:
        span.set_attribute("error.type", self.redactor.text(error_type))
        span.set_status(self.trace.Status(self.trace.StatusCode.ERROR, description and
                                          self.redactor.text(description)))

    def _content(self, value: Any) -> str:
        """Content as an attribute value: redacted, then JSON unless it is text."""
        value = self.redactor.value(value)
        return value if isinstance(value, str) else _json(value)

    # --- one handler per event kind ---

    def _run_started(self, e: Any) -> None:
        ctx = None  # a top-level run joins the caller's current trace, if it has one
        parent = self.runs.get(e.parent_run_id) if e.parent_run_id else None
        if parent is not None:  # under the parent's call of this sub-agent, if it is open
            tool = next((s for (_, name), s in parent.tools.items()
                         if name == e.agent and id(s) not in parent.called), None)
            if tool is not None:
                parent.called.add(id(tool))
            ctx = self.trace.set_span_in_context(tool if tool is not None else parent.span)
        provider, model = _model(e.model)
        attributes = {"gen_ai.operation.name": "invoke_agent", "gen_ai.provider.name": provider,
                      "gen_ai.agent.name": e.agent, "gen_ai.request.model": model,
                      "runner.run_id": e.run_id, "runner.parent_run_id": e.parent_run_id,
                      "runner.resumed": e.resumed or None}
        content: dict[str, str] = {}
        if self.content:
            text = e.input if isinstance(e.input, str) else _json(e.input)
            content["gen_ai.input.messages"] = self._content(
                [{"role": "user", "parts": [{"type": "text", "content": text}]}])
            if e.tools:
                content["gen_ai.tool.definitions"] = self._content(e.tools)
        span = self._start(f"invoke_agent {e.agent}", ctx, e.t, attributes, content)
        descriptions = {t["function"]["name"]: t["function"].get("description")
                        for t in e.tools if isinstance(t.get("function"), dict)}
        self.runs[e.run_id] = _RunSpans(span, self.trace.set_span_in_context(span), descriptions,
                                        e.settings)

    def _model_started(self, e: Any) -> None:
        run = self.runs.get(e.run_id)
        if run is None:
            return
        self._end_step(run, e.t, "_OTHER")
        run.step = self._start(f"step {e.step}", run.ctx, e.t, {"runner.step": e.step})
        run.step_ctx = self.trace.set_span_in_context(run.step)
        provider, model = _model(e.model)
        run.chat = self._start(f"chat {model}", run.step_ctx, e.t, {
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": provider,
            "gen_ai.request.model": model,
            "gen_ai.request.temperature": run.settings.get("temperature"),
            "gen_ai.request.max_tokens": run.settings.get("max_tokens")}, client=True)
        if self.content:  # on the start: a call that never answers still shows its input
            run.chat.set_attribute("gen_ai.input.messages",
                                   self._content([_chat_message(m) for m in e.messages]))

    def _retried(self, e: Any) -> None:
        run = self.runs.get(e.run_id)
        if run is not None and run.chat is not None:
            run.chat.add_event("retry", self._attrs({
                "runner.attempt": e.attempt, "runner.wait_s": e.wait_s, "runner.model": e.model,
                "runner.error": self._clip(e.error)}), timestamp=_ns(e.t))

    def _model_called(self, e: Any) -> None:
        run = self.runs.get(e.run_id)
        if run is None or run.chat is None:
            return
        chat, run.chat = run.chat, None
        chat.set_attributes(self._attrs({
            "gen_ai.response.model": _model(e.model)[1],
            "gen_ai.usage.input_tokens": e.prompt_tokens,
            "gen_ai.usage.output_tokens": e.completion_tokens,
            "gen_ai.response.finish_reasons": [e.finish_reason] if e.finish_reason else None,
            "gen_ai.request.stop_sequences": list(e.stop) if e.stop else None,
            "runner.attempts": e.attempts, "runner.cost_usd": e.cost_usd}))
        if self.content:
            parts: list[dict[str, Any]] = [{"type": "text", "content": e.text}] if e.text else []
            parts += [{"type": "tool_call", "id": c.get("id"), "name": c.get("name"),
                       "arguments": _decoded(c.get("arguments"))} for c in e.tool_calls]
            chat.set_attribute("gen_ai.output.messages", self._content([{
                "role": "assistant", "parts": parts,
                "finish_reason": e.finish_reason or "unknown"}]))
        chat.end(end_time=_ns(e.t))

    def _action(self, e: Any) -> None:
        run = self.runs.get(e.run_id)
        if run is None:
            return
        attributes = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": e.tool,
                      "gen_ai.tool.type": "function", "gen_ai.tool.call.id": e.call_id,
                      "gen_ai.tool.description": run.tool_descriptions.get(e.tool) or None}
        content = {"gen_ai.tool.call.arguments": self._content(_decoded(e.input))} \
            if self.content else None
        run.tools[(e.step, e.tool)] = self._start(f"execute_tool {e.tool}", run.parent(), e.t,
                                                  attributes, content)

    def _observed(self, e: Any) -> None:
        run = self.runs.get(e.run_id)
        if run is None:
            return
        if e.tool is None:  # a reply that could not be parsed or checked: no tool ran
            if run.step is not None:
                run.step.add_event("parse_error", self._attrs({
                    "runner.message": self._clip(e.text) if self.content else None}),
                    timestamp=_ns(e.t))
            return
        span = run.tools.pop((e.step, e.tool), None)
        if span is None:
            return
        run.called.discard(id(span))
        if e.error:  # the error text may quote the tool's input: content
            self._fail(span, "tool_error", self._clip(e.text) if self.content else None)
        elif self.content:
            span.set_attribute("gen_ai.tool.call.result", self._content(e.text))
        span.end(end_time=_ns(e.t))

    def _warned(self, e: Any) -> None:
        run = self.runs.get(e.run_id)
        if run is not None:
            span = run.step if run.step is not None else run.span
            span.add_event("warning", self._attrs({"runner.message": self._clip(e.message)}),
                           timestamp=_ns(e.t))

    def _memory(self, e: Any) -> None:
        run = self.runs.get(e.run_id)
        if run is not None:
            # a session is a conversation only when a memory backend keeps it (the settings
            # name the backend once the loop reports it)
            if e.kind == "memory_read" and run.settings.get("memory", "none") != "none":
                run.span.set_attribute("gen_ai.conversation.id", self.redactor.text(e.session))
            run.span.add_event(e.kind, self._attrs({"runner.memory.session": e.session,
                                                    "runner.memory.messages": e.messages}),
                               timestamp=_ns(e.t))

    def _end_step(self, run: _RunSpans, t: float, error_type: str) -> None:
        """End the current step and whatever in it is still open (a failed call or tool)."""
        if run.chat is not None:
            self._fail(run.chat, error_type, "the model call ended without a reply")
            run.chat.end(end_time=_ns(t))
            run.chat = None
        for span in run.tools.values():
            self._fail(span, error_type, "the run ended while the tool was running")
            span.end(end_time=_ns(t))
        run.tools.clear()
        if run.step is not None:
            run.step.end(end_time=_ns(t))
            run.step = run.step_ctx = None

    def _run_ended(self, e: Any) -> None:
        run = self.runs.pop(e.run_id, None)
        if run is None:
            return
        failed = e.status != "finished"
        self._end_step(run, e.t, e.status if failed else "_OTHER")
        span = run.span
        span.set_attributes(self._attrs({
            "runner.status": e.status, "runner.steps": e.steps,
            "gen_ai.usage.input_tokens": e.prompt_tokens,
            "gen_ai.usage.output_tokens": e.completion_tokens, "runner.cost_usd": e.cost_usd}))
        if self.content and e.answer is not None:
            text = e.answer if isinstance(e.answer, str) else _json(e.answer)
            span.set_attribute("gen_ai.output.messages", self._content([{
                "role": "assistant", "parts": [{"type": "text", "content": text}],
                "finish_reason": "stop"}]))
        if failed:
            self._fail(span, e.status, self._clip(e.error) if e.error else None)
        span.end(end_time=_ns(e.t))
