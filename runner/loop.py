"""The ReAct loop: one step = render, call the model, parse, act, observe. Emits events."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, fields
from typing import Any

from . import events as ev
from .acting import observe
from .budget import Budget, Clock
from .chain import run_chain
from .checkpoints import CheckpointStore
from .errors import (Interrupted, LimitExceeded, MaxIterations, MaxParseErrors, OutputError,
                     RunnerError)
from .models import Completion, Message, Model, ModelTap, Usage, build_model
from .parsing import Action, Parsed, parse_text, parse_tool_calls
from .redact import redact_text
from .result import RunResult, Step, as_text
from .retry import complete_with_retries
from .spec import AgentSpec

__all__ = ["Agent", "Run", "RunResult", "Step"]

STOP = ["\nObservation:", "\nQuestion:"]
Approver = Callable[[str, dict[str, Any]], Awaitable[bool]]
_STEP_FIELDS = tuple(f.name for f in fields(Step))


class Agent:
    """A spec made runnable: its model(s), tools and memory, shared by all its runs."""

    def __init__(self, spec: AgentSpec, *, session: str | None = None, memory: Any = None,
                 depth: int = 0, sinks: list[Callable[[ev.Event], None]] | None = None,
                 clock: Clock | None = None, approver: Approver | None = None,
                 checkpoints: CheckpointStore | bool = True, tap: ModelTap | None = None,
                 memory_factory: Callable[[AgentSpec], Any] | None = None) -> None:
        """`approver(tool, args)` answers for tools marked `confirm` when loop.approve is `ask`;
        `checkpoints`: a store, True for the spec's (top-level agents only), or False;
        `tap` stands between the agent (and its sub-agents) and their models: record, replay;
        `memory_factory(spec)` makes the memory of this agent (unless `memory` is given) and
        of its sub-agents, instead of their specs' backends."""
        from .build import build_memory, build_observers, build_template, build_tools
        from .redact import env_secrets

        self.spec, self.depth, self.sinks = spec, depth, list(sinks or [])
        self.clock, self.approver, self.tap = clock or Clock(), approver, tap
        self.memory_factory = memory_factory
        self.secrets = spec.source.secrets | env_secrets()
        """Values masked wherever this agent's runs are stored."""
        if depth == 0:  # sub-agents share their parent's sinks: one trace per top-level run
            self.sinks.extend(build_observers(spec, self.secrets))
        if checkpoints is True:
            checkpoints = depth == 0 and spec.checkpoint.enabled
            if checkpoints:
                checkpoints = CheckpointStore(spec.checkpoint.path, secrets=self.secrets)
        self.checkpoints = checkpoints or None
        self.session = session or spec.memory.session

        def build() -> list[Model]:
            return [build_model(spec.model)] + [build_model(spec.model, f)
                                                for f in spec.model.fallbacks]

        self.models = tap.models(spec.name, build, spec.model) if tap is not None else build()
        self.tools = build_tools(spec, self)
        self.tool_schemas = [t.schema() for t in self.tools.values()]
        self.tool_views = [{"name": t.name, "description": t.description,
                            "input_hint": t.input_hint()} for t in self.tools.values()]
        self.template = build_template(spec)
        self.memory = memory if memory is not None else (memory_factory or build_memory)(spec)

    def start(self, input: Any, *, budget: Budget | None = None,
              parent_run_id: str | None = None) -> Run:
        return Run(self, input, budget or Budget(self.spec.budget, self.clock), parent_run_id)

    def restore(self, state: dict[str, Any]) -> Run:
        """A run rebuilt from its last checkpoint, ready to `execute()` from where it stopped."""
        budget = Budget(self.spec.budget, self.clock, spent=state["budget"])
        run = Run(self, state["input"], budget, state.get("parent_run_id"))
        run.run_id = run.result.run_id = state["run_id"]
        run.result.steps = [Step(**s) for s in state["steps"]]
        run.messages, run.calls = state["messages"], state["calls"]
        run.parse_errors, run.repeats = state["parse_errors"], state["repeats"]
        run.approvals, run.resumed = state["approvals"], True
        # calls that had started when the run stopped (None: an older checkpoint, where every
        # pending call of a tool marked idempotent: false counts as started)
        run.unknown = set(state["in_flight"]) if "in_flight" in state else None
        spent = state["run_usage"]
        budget.adopt(run, Usage(spent["prompt_tokens"], spent["completion_tokens"]),
                     spent["cost_usd"])
        return run

    async def run(self, input: Any, **kw: Any) -> RunResult:
        return await self.start(input, **kw).execute()

    def settings(self) -> dict[str, Any]:
        """What shapes this agent's model requests, for traces."""
        spec = self.spec
        return {"temperature": spec.model.temperature, "max_tokens": spec.model.max_tokens,
                "style": "tools" if self.native_tools() else "react",
                "max_iterations": spec.loop.max_iterations,
                "budget": spec.budget.model_dump(exclude_none=True), "depth": self.depth,
                "memory": spec.memory.backend, "spec": str(spec.source.path)}

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
        self.messages: list[Message] = []
        """The native tool-calling conversation (empty in text ReAct)."""
        self.calls = self.parse_errors = 0
        self._partial: str | None = None
        self.repeats: dict[str, int] = {}
        self.approvals: dict[str, bool] = {}
        self.resumed = False
        self.in_flight: set[int] = set()
        """Steps whose tool, marked idempotent: false, has started and not ended."""
        self.unknown: set[int] | None = set()
        self._stop: int | None = None
        self._in_model_call = False
        self._task: asyncio.Task[Any] | None = None
        self._owner = {"host": socket.gethostname(), "pid": os.getpid()}
        """Who runs it (a resume refuses while this process lives); once, not per commit."""

    def request_stop(self, signum: int) -> None:
        """Stop at the next step boundary (a model call in flight is abandoned at once)."""
        self._stop = signum
        if self._in_model_call and self._task is not None:
            self._task.cancel()

    def state(self) -> dict[str, Any]:
        """Everything a resume needs, as JSON-ready data."""
        r, src = self.result, self.spec.source
        usage, cost = self.budget.usage_since(self), self.budget.cost_since(self)
        return {"version": 1, "run_id": self.run_id, "parent_run_id": self.parent,
                "agent": self.spec.name, "spec_path": str(src.path), "spec_digest": src.digest,
                "overrides": src.overrides, "session": self.agent.session, "input": r.input,
                "status": r.status, "answer": r.answer, "error": r.error,
                # shallow copies (dataclasses.asdict deep-copies: most of a checkpoint's cost)
                "steps": [{k: getattr(s, k) for k in _STEP_FIELDS} for s in r.steps],
                "messages": self.messages,
                "calls": self.calls, "parse_errors": self.parse_errors, "repeats": self.repeats,
                "approvals": self.approvals, "in_flight": sorted(self.in_flight),
                "budget": self.budget.spent(), "run_usage": {**asdict(usage), "cost_usd": cost},
                "owner": self._owner}

    def checkpoint(self) -> None:
        """Commit the state (after every step, and before a tool that must not run twice)."""
        if self.agent.checkpoints is not None:
            self.agent.checkpoints.save(self.state())

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
        self._listener, self._task = listener, asyncio.current_task()
        r, spec = self.result, self.spec
        r.status = "running"
        self.emit(ev.RunStarted(self.run_id, len(r.steps), spec.name, spec.model.id, r.input,
                                self.parent, self.resumed, self.agent.settings(),
                                self.agent.tool_schemas))
        try:
            # committed before anything runs: a location that cannot be written fails the run
            # now, not after its first tool call, and `runner runs` shows the run at once
            self.checkpoint()
            history = await self.agent.memory.load(self.agent.session, spec.memory.window)
            self.emit(ev.MemoryRead(self.run_id, len(r.steps), self.agent.session, len(history)))
            if spec.kind == "chain":
                await run_chain(self)
            else:
                await self._loop(history)
            if r.status == "finished":
                await self.agent.memory.append(self.agent.session, [
                    {"role": "user", "content": redact_text(as_text(r.input), self.agent.secrets)},
                    {"role": "assistant",
                     "content": redact_text(as_text(r.answer), self.agent.secrets)}])
                self.emit(ev.MemoryWritten(self.run_id, len(r.steps), self.agent.session, 2))
        except asyncio.CancelledError:
            if self._stop is None:
                self._fail(Interrupted(2))
                raise
            if self._task is not None:
                self._task.uncancel()  # the stop was ours: end normally, state saved
            self._fail(Interrupted(self._stop))
        except (RunnerError, KeyboardInterrupt) as exc:
            self._fail(exc if isinstance(exc, RunnerError) else Interrupted(2))
        finally:
            r.duration_s = time.monotonic() - self._started
            r.usage, r.cost_usd = self.budget.usage_since(self), self.budget.cost_since(self)
            try:
                self.checkpoint()
            except RunnerError as exc:  # e.g. the disk is full: say so, keep the answer
                answer = r.answer
                self._fail(exc)
                r.answer = answer
            self.emit(ev.RunEnded(self.run_id, len(r.steps), r.status, r.answer, r.error,
                                  r.duration_s, len(r.steps), r.usage.prompt_tokens,
                                  r.usage.completion_tokens, r.cost_usd, self.budget.spent()))
        return r

    async def _loop(self, history: list[Message]) -> None:
        r, limits = self.result, self.spec.loop
        native = self.agent.native_tools()
        step = self._native_step if native else self._react_step
        if native and not self.messages:
            self.messages = self._native_messages(history)
        await self._settle_pending()
        while r.status == "running":
            if self._stop is not None:
                raise Interrupted(self._stop)
            if self.calls >= limits.max_iterations:
                raise MaxIterations(self.calls, limits.max_iterations)
            self.calls += 1
            before = len(r.steps)
            try:
                ok = await step(self.messages, history)
            except BaseException:
                if len(r.steps) == before:  # the model call failed or was abandoned: no step
                    self.calls -= 1
                raise
            self.parse_errors = 0 if ok else self.parse_errors + 1
            if r.status == "running":
                self.checkpoint()
            if self.parse_errors >= limits.max_parse_errors:
                raise MaxParseErrors(self.parse_errors, limits.max_parse_errors)

    async def _settle_pending(self) -> None:
        """After a resume: finish the tool calls that were in flight when the run stopped, and
        answer every native tool call of the last turn (providers reject one left open)."""
        pending = [s for s in self.result.steps if s.action and s.observation is None]
        await asyncio.gather(*(observe(self, Action(s.action, s.input, s.call_id), s, [],
                                             resumed=True) for s in pending if s.action))
        answered = {m.get("tool_call_id") for m in self.messages if m.get("role") == "tool"}
        late = [s for s in self.result.steps if s.call_id and s.call_id not in answered]
        if self.messages:
            for s in late:
                self.messages.append({"role": "tool", "tool_call_id": s.call_id,
                                      "content": s.observation or ""})
        if pending or late:
            self.checkpoint()

    def _fail(self, exc: BaseException) -> None:
        r = self.result
        r.exception = exc
        r.status = getattr(exc, "status", None) or "interrupted"
        if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)):
            r.status = "interrupted"
        r.error = str(exc) or type(exc).__name__
        r.incomplete = True
        # the best partial answer: an answer given too late, the latest thought, else the
        # latest good observation
        r.answer = self._partial or next(
            (s.thought for s in reversed(r.steps) if s.thought), None) or next(
            (s.observation for s in reversed(r.steps) if s.observation and not s.error), None)

    async def call_model(self, messages: list[Message], tools: Any = None,
                         stop: list[str] | None = None) -> Completion:
        self.budget.check_before_call()
        step = len(self.result.steps) + 1
        self.emit(ev.ModelStarted(self.run_id, step, self.spec.model.id, list(messages)))
        self._in_model_call = True
        try:
            reply = await complete_with_retries(
                self.agent.models, self.spec.model, messages, self.budget, tools=tools,
                stop=stop, on_retry=lambda m, e, w, n: self.emit(ev.Retried(
                    self.run_id, step, m.id, n, str(e), w)))
        finally:
            self._in_model_call = False
        self.result.messages = [*messages, {"role": "assistant", "content": reply.text}]
        try:
            self.budget.charge(self, reply)
        except LimitExceeded:  # the reply that crossed the budget was paid for: keep its answer
            final = parse_text(reply.text, reply.finish_reason).finish
            self._partial = (reply.text.strip() if tools and not reply.tool_calls
                             else final.answer.strip() if final else None)
            raise
        self.emit(ev.ModelCalled(
            self.run_id, step, reply.model, reply.latency_s, reply.usage.prompt_tokens,
            reply.usage.completion_tokens, reply.cost_usd, reply.finish_reason, reply.attempts,
            reply.text, [{"id": c.id, "name": c.name, "arguments": c.arguments}
                                         for c in reply.tool_calls], stop))
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
        for a, s in zip(parsed.actions, steps):
            s.action, s.input = a.tool, a.input
        await asyncio.gather(*(observe(self, a, s, parsed.warnings)
                               for a, s in zip(parsed.actions, steps)))
        return True

    def final_answer(self, text: str) -> Any:
        """The answer as given, or parsed and checked against output.schema."""
        if self.spec.output is None:
            return text.strip()
        from .output import parse_structured

        return parse_structured(text, self.spec.output.json_schema)
