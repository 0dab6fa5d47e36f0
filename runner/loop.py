"""The ReAct loop: one step = render, call the model, parse, act, observe. Emits events."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from . import events as ev
from .budget import Budget
from .errors import (LimitExceeded, MaxIterations, MaxParseErrors, OutputError, RunnerError,
                     ToolError)
from .result import RunResult, Step, as_text
from .chain import run_chain
from .models import Completion, Message, build_model, complete_with_retries
from .parsing import Action, Parsed, parse_text, parse_tool_calls
from .spec import AgentSpec
from .tools import ToolContext, format_output, parse_arguments, run_tool

__all__ = ["Agent", "Run", "RunResult", "Step"]

STOP = ["\nObservation:", "\nQuestion:"]


class Agent:
    """A spec made runnable: its model(s), tools and memory, shared by all its runs."""

    def __init__(self, spec: AgentSpec, *, session: str | None = None, memory: Any = None,
                 depth: int = 0, sinks: list[Callable[[ev.Event], None]] | None = None) -> None:
        from .build import build_memory, build_template, build_tools

        self.spec, self.depth, self.sinks = spec, depth, list(sinks or [])
        self.session = session or spec.memory.session
        self.models = [build_model(spec.model)] + [build_model(spec.model, f)
                                                   for f in spec.model.fallbacks]
        self.tools = build_tools(spec, self)
        self.tool_schemas = [t.schema() for t in self.tools.values()]
        self.tool_views = [{"name": t.name, "description": t.description,
                            "input_hint": t.input_hint()} for t in self.tools.values()]
        self.template = build_template(spec)
        self.memory = memory if memory is not None else build_memory(spec)

    def start(self, input: Any, *, budget: Budget | None = None,
              parent_run_id: str | None = None) -> Run:
        return Run(self, input, budget or Budget(self.spec.budget), parent_run_id)

    async def run(self, input: Any, **kw: Any) -> RunResult:
        return await self.start(input, **kw).execute()

    def native_tools(self) -> bool:
        style = self.spec.loop.style
        return bool(self.tools) and (style == "tools" or (
            style == "auto" and self.models[0].supports_tools()))


class Run:
    """One run of an agent; iterate `events()` to drive it, then read `result`."""

    def __init__(self, agent: Agent, input: Any, budget: Budget, parent: str | None) -> None:
        self.agent, self.spec, self.budget, self.parent = agent, agent.spec, budget, parent
        self.run_id = uuid.uuid4().hex[:12]
        self.result = RunResult(self.run_id, self.spec.name, self.spec.model.id, input)
        self._listener: Callable[[ev.Event], None] | None = None
        self._started = time.monotonic()

    def emit(self, event: ev.Event) -> None:
        from .plugins import hook

        hook().on_event(event=event)
        for sink in self.agent.sinks:
            sink(event)
        self.forward(event)

    def forward(self, event: ev.Event) -> None:
        """Pass an event to whoever streams this run (a sub-agent's sinks already saw it)."""
        if self._listener is not None:
            self._listener(event)

    async def events(self) -> AsyncIterator[ev.Event]:
        """Drive the run, yielding each event as it happens; `result` is set at the end."""
        queue: asyncio.Queue[ev.Event | None] = asyncio.Queue()
        task = asyncio.create_task(self.execute(listener=queue.put_nowait))
        task.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            if not task.done():
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def execute(self, listener: Callable[[ev.Event], None] | None = None) -> RunResult:
        """Drive the run to its end and return the result (events go to the sinks)."""
        self._listener = listener
        r, spec = self.result, self.spec
        self.emit(ev.RunStarted(self.run_id, 0, spec.name, spec.model.id, r.input, self.parent))
        try:
            history = await self.agent.memory.load(self.agent.session, spec.memory.window)
            if spec.kind == "chain":
                await run_chain(self)
            else:
                await self._loop(history)
            if r.status == "finished":
                await self.agent.memory.append(self.agent.session, [
                    {"role": "user", "content": as_text(r.input)},
                    {"role": "assistant", "content": as_text(r.answer)}])
        except (RunnerError, asyncio.CancelledError, KeyboardInterrupt) as exc:
            self._fail(exc)
            if not isinstance(exc, RunnerError):
                raise
        finally:
            r.duration_s = time.monotonic() - self._started
            r.usage, r.cost_usd = self.budget.usage_since(self), self.budget.cost_since(self)
            self.emit(ev.RunEnded(self.run_id, len(r.steps), r.status, r.answer, r.error,
                                  r.duration_s))
        return r

    async def _loop(self, history: list[Message]) -> None:
        r, limits = self.result, self.spec.loop
        native = self.agent.native_tools()
        step = self._native_step if native else self._react_step
        messages = self._native_messages(history) if native else []
        parse_errors = calls = 0
        while r.status == "running":
            if calls >= limits.max_iterations:
                raise MaxIterations(calls, limits.max_iterations)
            calls += 1
            ok = await step(messages, history)
            parse_errors = 0 if ok else parse_errors + 1
            if parse_errors >= limits.max_parse_errors:
                raise MaxParseErrors(parse_errors, limits.max_parse_errors)

    def _fail(self, exc: BaseException) -> None:
        r = self.result
        r.exception = exc
        r.status = getattr(exc, "status", None) or "interrupted"
        if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)):
            r.status = "interrupted"
        r.error = str(exc) or type(exc).__name__
        r.incomplete = True
        # the best partial answer: the latest thought, else the latest good observation
        r.answer = next((s.thought for s in reversed(r.steps) if s.thought), None) or next(
            (s.observation for s in reversed(r.steps) if s.observation and not s.error), None)

    async def call_model(self, messages: list[Message], tools: Any = None,
                    stop: list[str] | None = None) -> Completion:
        self.budget.check_before_call()
        reply = await complete_with_retries(
            self.agent.models, self.spec.model, messages, tools=tools, stop=stop,
            deadline=self.budget.deadline,
            on_retry=lambda e, w: self.emit(ev.Warned(self.run_id, len(self.result.steps),
                                                      f"retrying in {w:.1f}s: {e}")))
        self.budget.charge(self, reply)
        self.result.messages = [*messages, {"role": "assistant", "content": reply.text}]
        self.emit(ev.ModelCalled(self.run_id, len(self.result.steps) + 1, reply.model,
                                 reply.latency_s, reply.usage.prompt_tokens,
                                 reply.usage.completion_tokens, reply.cost_usd,
                                 reply.finish_reason, reply.attempts, reply.text))
        return reply

    def _prompt(self, history: list[Message], **extra: Any) -> str:
        spec = self.spec
        return self.agent.template.render(
            **spec.prompt.variables, vars=spec.prompt.variables,
            instructions=spec.prompt.instructions, history=history, input=self.result.input,
            tools=self.agent.tool_views,
            examples=spec.prompt.examples if spec.prompt.examples is not None else [], **extra)

    async def _react_step(self, _messages: list[Message], history: list[Message]) -> bool:
        steps = [{"raw": s.raw, "observation": s.observation} for s in self.result.steps]
        prompt = self._prompt(history, steps=steps, native_tools=False)
        reply = await self.call_model([{"role": "user", "content": prompt}],
                                      stop=[*STOP, *self.spec.model.stop])
        parsed = parse_text(reply.text, reply.finish_reason)
        step = Step(len(self.result.steps) + 1, parsed.thought, raw=parsed.raw,
                    model_s=reply.latency_s)
        return await self._act(parsed, [step])

    def _native_messages(self, history: list[Message]) -> list[Message]:
        system = self._prompt(history, steps=[], native_tools=True).strip()
        return [*([{"role": "system", "content": system}] if system else []), *history,
                {"role": "user", "content": as_text(self.result.input)}]

    async def _native_step(self, messages: list[Message], _history: list[Message]) -> bool:
        reply = await self.call_model(messages, tools=self.agent.tool_schemas,
                                      stop=self.spec.model.stop or None)
        parsed = parse_tool_calls(reply.text, reply.tool_calls, reply.finish_reason)
        calls = [{"id": c.id, "type": "function", "function": {"name": c.name,
                                                             "arguments": c.arguments}}
                 for c in reply.tool_calls]
        messages.append({"role": "assistant", "content": reply.text or None, "tool_calls": calls}
                        if calls else {"role": "assistant", "content": reply.text})
        n = len(self.result.steps) + 1
        steps = [Step(n + i, parsed.thought if i == 0 else "", call_id=a.call_id,
                      model_s=reply.latency_s) for i, a in enumerate(parsed.actions)] or \
            [Step(n, parsed.thought, model_s=reply.latency_s)]
        ok = await self._act(parsed, steps)
        answers = {s.call_id: s.observation or "" for s in steps if s.call_id}
        for c in reply.tool_calls:  # providers reject a call left unanswered, even one not run
            messages.append({"role": "tool", "tool_call_id": c.id,
                             "content": answers.get(c.id, parsed.failure or "")})
        if parsed.failure and not calls:
            messages.append({"role": "user", "content": parsed.failure})
        return ok

    async def _act(self, parsed: Parsed, steps: list[Step]) -> bool:
        """Record the steps, then finish, report a parse failure, or run the actions."""
        r = self.result
        r.steps.extend(steps)
        if parsed.thought:
            self.emit(ev.Thought(self.run_id, steps[0].index, parsed.thought))
        for w in parsed.warnings:
            self.emit(ev.Warned(self.run_id, steps[0].index, w))
        if parsed.failure:
            steps[0].observation, steps[0].error = parsed.failure, True
            self.emit(ev.Observed(self.run_id, steps[0].index, None, parsed.failure, True, 0.0))
            return False
        if parsed.finish is not None:
            try:
                r.answer = self.final_answer(parsed.finish.answer)
            except OutputError as exc:
                steps[0].observation, steps[0].error = str(exc), True
                self.emit(ev.Observed(self.run_id, steps[0].index, None, str(exc), True, 0.0))
                return False
            r.status = "finished"
            self.emit(ev.FinalAnswer(self.run_id, steps[0].index, r.answer))
            return True
        await asyncio.gather(*(self._observe(a, s, parsed.warnings)
                               for a, s in zip(parsed.actions, steps)))
        return True

    def final_answer(self, text: str) -> Any:
        """The answer as given, or parsed and checked against output.schema."""
        if self.spec.output is None:
            return text.strip()
        from .output import parse_structured

        return parse_structured(text, self.spec.output.json_schema)

    async def _observe(self, action: Action, step: Step, warnings: list[str]) -> None:
        step.action, step.input = action.tool, action.input
        self.emit(ev.ActionTaken(self.run_id, step.index, action.tool, action.input,
                                 action.call_id))
        started = time.monotonic()
        text, step.error = await self._invoke(action)
        if warnings:
            text += "\n(" + " ".join(warnings) + ")"
        step.observation, step.tool_s = text, time.monotonic() - started
        self.emit(ev.Observed(self.run_id, step.index, action.tool, text, step.error, step.tool_s))

    async def _invoke(self, action: Action) -> tuple[str, bool]:
        """Run one tool call; every failure becomes advice for the model."""
        tools = self.agent.tools
        t = tools.get(action.tool)
        if t is None:
            from .spec import did_you_mean

            return (f"unknown tool {action.tool!r}{did_you_mean(action.tool, tools)}; tools are: "
                    f"{', '.join(tools) or '(none)'}", True)
        try:
            args = parse_arguments(t, action.input)
            self.budget.charge_tool_call()
            ctx = ToolContext(self.run_id, self.spec.source.root, self.agent.depth,
                              {"budget": self.budget, "run": self})
            timeout = self.budget.clip(t.timeout_s or self.spec.loop.tool_timeout_s)
            out = await run_tool(t, args, ctx, timeout)
        except LimitExceeded:
            raise
        except ToolError as exc:
            return f"tool {t.name} failed: {exc}", True
        except Exception as exc:
            return f"tool {t.name} failed: {type(exc).__name__}: {exc}", True
        return format_output(out, self.agent.tool_max_chars.get(t.name, self.spec.loop.
                                                                  max_observation_chars)), False
