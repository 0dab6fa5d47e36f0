"""The ReAct loop: one step = render, call the model, parse, act, observe. Emits events.

`Run` is one run of an agent: it knows the shape of a step, not how tools run
(`runner.acting`), how its state is stored or restored (`runner.checkpoints`) or how the
agent was put together (`runner.agent`)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from . import events as ev
from .acting import StepContext, ToolLedger, act, answer_contradicts
from .budget import Budget
from .chain import run_chain
from .checkpoints import hold, release, run_state, settle_pending
from .delegation import delegate
from .handoff import hand_off, handoff_step
from .reflection import reflect
from .sequence import run_sequence
from .summary import history_for
from .errors import (Interrupted, LimitExceeded, MaxIterations, MaxParseErrors, OutputError,
                     RunnerError)
from .models import Completion, Message, assistant_message, tool_messages
from .models.retry import complete_with_retries
from .parsing import Parsed, final_answer, parse_text, parse_tool_calls, partial_answer
from .result import RunResult, Step, as_text

if TYPE_CHECKING:
    from .agent import Agent

__all__ = ["Run", "STOP"]

STOP = ["\nObservation:", "\nQuestion:"]


class Run:
    """One run of an agent; iterate `events()` to drive it, then read `result`."""

    def __init__(self, agent: Agent, input: Any, budget: Budget, parent: str | None,
                 run_id: str | None = None) -> None:
        self.agent, self.spec, self.budget, self.parent = agent, agent.spec, budget, parent
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.result = RunResult(self.run_id, self.spec.name, self.spec.model.id, input)
        self._listener: Callable[[ev.Event], None] | None = None
        self._started = time.monotonic()
        self.messages: list[Message] = []
        """The native tool-calling conversation (empty in text ReAct)."""
        self.calls = self.parse_errors = 0
        self.answer_checked = False
        """Whether a final answer was sent back once already (loop.check_answer)."""
        self.partial: Any = None
        """The best answer so far, kept if the run fails (a reply past the budget, a draft
        the critic did not approve)."""
        self.ledger = ToolLedger()
        self.resumed = False
        self._stop: int | None = None
        self._in_model_call = False
        self._task: asyncio.Task[Any] | None = None
        self.context: list[Message] = []
        """Messages before the input that no memory holds (a handoff's conversation so far)."""
        self.children: set[Run] = set()
        """Sub-agents' runs in progress for this one: a stop requested of it reaches them."""
        self.handoff: str | None = None
        """The handoff tool the model called: its agent answers instead."""
        self.session: str | None = agent.session
        """The conversation this run continues (its memory's key), or None."""

    def step_context(self) -> StepContext:
        a = self.agent
        return StepContext(self.run_id, a.tools, self.spec.loop, self.budget,
                           self.spec.source.root, a.depth, self.ledger, self.emit, self.forward,
                           self.checkpoint if a.checkpoints is not None else None, a.approver,
                           self)

    @property
    def stopping(self) -> int | None:
        """The signal of a stop requested (the run ends at the next step boundary), or None."""
        return self._stop

    def request_stop(self, signum: int) -> None:
        """Stop at the next step boundary (a model call in flight is abandoned at once), the
        sub-agents' runs in progress too."""
        self._stop = signum
        for child in list(self.children):
            child.request_stop(signum)
        if self._in_model_call and self._task is not None:
            self._task.cancel()

    async def delegate(self, agent: Agent, input: Any, place: str) -> RunResult:
        """Run a sub-agent for this run: a worker called as a tool (`runner.delegation`)."""
        return await delegate(self, agent, input, place)

    def checkpoint(self) -> None:
        """Commit the state (after every step, and before a tool that must not run twice)."""
        if self.agent.checkpoints is not None:
            self.agent.checkpoints.save(run_state(self))

    def emit(self, event: ev.Event) -> None:
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
        r, spec, agent = self.result, self.spec, self.agent
        r.status = "running"
        self.emit(ev.RunStarted(self.run_id, len(r.steps), spec.name, spec.model.id, r.input,
                                self.parent, self.resumed, agent.settings(), agent.tool_schemas))
        hold(self.run_id)  # a second resume in this process is refused while this one drives
        try:
            # committed before anything runs: a location that cannot be written fails the run
            # now, not after its first tool call, and `runner runs` shows the run at once
            self.checkpoint()
            history = [] if spec.kind == "sequence" else await history_for(self)
            if spec.kind == "chain":
                await run_chain(self)
            elif spec.kind == "sequence":
                await run_sequence(self)
            elif spec.reflection is not None:
                await reflect(self, history)
            else:
                await self.drive_loop(history)
            if r.status == "finished" and self.session is not None:
                await agent.remember(r.input, r.answer, self.session)
                self.emit(ev.MemoryWritten(self.run_id, len(r.steps), self.session, 2))
        except asyncio.CancelledError:
            if self._stop is None:
                r.fail(Interrupted(2), self.partial)
                raise
            if self._task is not None:
                self._task.uncancel()  # the stop was ours: end normally, state saved
            r.fail(Interrupted(self._stop), self.partial)
        except (RunnerError, KeyboardInterrupt) as exc:
            r.fail(exc if isinstance(exc, RunnerError) else Interrupted(2), self.partial)
        finally:
            r.duration_s = time.monotonic() - self._started
            r.usage, r.cost_usd = self.budget.usage_since(self), self.budget.cost_since(self)
            try:
                self.checkpoint()
            except RunnerError as exc:  # e.g. the disk is full: say so, keep the answer
                answer = r.answer
                r.fail(exc)
                r.answer = answer
            release(self.run_id)
            self.emit(ev.RunEnded(self.run_id, len(r.steps), r.status, r.answer, r.error,
                                  r.duration_s, len(r.steps), r.usage.prompt_tokens,
                                  r.usage.completion_tokens, r.cost_usd, self.budget.spent()))
        return r

    async def drive_loop(self, history: list[Message]) -> None:
        """The tool loop, until an answer, a failure, or a handoff (whose agent answers)."""
        r, limits = self.result, self.spec.loop
        native = self.agent.native_tools()
        step = self._native_step if native else self._react_step
        if native and not self.messages:
            self.messages = self._native_messages(history)
        ctx = self.step_context()
        await settle_pending(self, ctx)
        while r.status == "running" and self.handoff is None:
            if self._stop is not None:
                raise Interrupted(self._stop)
            if self.calls >= limits.max_iterations:
                raise MaxIterations(self.calls, limits.max_iterations)
            self.calls += 1
            before = len(r.steps)
            try:
                ok = await step(ctx, self.messages, history)
            except BaseException:
                if len(r.steps) == before:  # the model call failed or was abandoned: no step
                    self.calls -= 1
                raise
            self.parse_errors = 0 if ok else self.parse_errors + 1
            if r.status == "running":
                self.checkpoint()
            if self.parse_errors >= limits.max_parse_errors:
                raise MaxParseErrors(self.parse_errors, limits.max_parse_errors)
        if self.handoff is not None:
            await hand_off(self, history)

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
            self.partial = partial_answer(reply, native=bool(tools))
            raise
        self.emit(ev.ModelCalled.of(self.run_id, step, reply, stop))
        return reply

    async def _react_step(self, ctx: StepContext, _messages: list[Message],
                          history: list[Message]) -> bool:
        steps = [{"raw": s.raw, "observation": s.observation} for s in self.result.steps]
        prompt = self.agent.prompt(self.result.input, history, steps=steps, native_tools=False)
        reply = await self.call_model([{"role": "user", "content": prompt}],
                                      stop=[*STOP, *self.spec.model.stop])
        parsed = parse_text(reply.text, reply.finish_reason)
        step = Step(len(self.result.steps) + 1, parsed.thought, raw=parsed.raw,
                    model_s=reply.latency_s)
        return await self._act(ctx, parsed, [step])

    def _native_messages(self, history: list[Message]) -> list[Message]:
        system = self.agent.prompt(self.result.input, history, steps=[], native_tools=True).strip()
        return [*([{"role": "system", "content": system}] if system else []), *history,
                {"role": "user", "content": as_text(self.result.input)}]

    async def _native_step(self, ctx: StepContext, messages: list[Message],
                           _history: list[Message]) -> bool:
        reply = await self.call_model(messages, tools=self.agent.tool_schemas,
                                      stop=self.spec.model.stop or None)
        parsed = parse_tool_calls(reply.text, reply.tool_calls, reply.finish_reason)
        messages.append(assistant_message(reply))
        n = len(self.result.steps) + 1
        steps = [Step(n + i, parsed.thought if i == 0 else "", call_id=a.call_id,
                      model_s=reply.latency_s) for i, a in enumerate(parsed.actions)] or \
            [Step(n, parsed.thought, model_s=reply.latency_s)]
        ok = await self._act(ctx, parsed, steps)
        # by position (one step per call, in order): calls may share an id
        answers = [s.observation or "" for s in steps] if parsed.actions else []
        told = parsed.failure or (steps[0].observation if steps[0].error else None)
        messages.extend(tool_messages(reply, answers, told))
        return ok

    async def _act(self, ctx: StepContext, parsed: Parsed, steps: list[Step]) -> bool:
        """Record the steps, then finish, report a parse failure, or run the actions."""
        r, first = self.result, steps[0]
        r.steps.extend(steps)
        if parsed.thought:
            self.emit(ev.Thought(self.run_id, first.index, parsed.thought))
        for w in parsed.warnings:
            self.emit(ev.Warned(self.run_id, first.index, w))
        problem = parsed.failure
        if problem is None and parsed.finish is not None:
            try:
                r.answer = final_answer(parsed.finish.answer, self.spec.output)
            except OutputError as exc:
                problem = str(exc)
            else:
                note = None if self.answer_checked or not self.spec.loop.check_answer else \
                    answer_contradicts(r.answer, r.steps[:-len(steps)], as_text(r.input))
                if note is not None:  # asked again, once: not a parse error
                    self.answer_checked, r.answer = True, None
                    first.observation, first.error = note, True
                    self.emit(ev.Observed(self.run_id, first.index, None, note, True, 0.0))
                    return True
                r.status = "finished"
                self.emit(ev.FinalAnswer(self.run_id, first.index, r.answer))
                return True
        if problem is not None:
            first.observation, first.error = problem, True
            self.emit(ev.Observed(self.run_id, first.index, None, problem, True, 0.0))
            return False
        for a, s in zip(parsed.actions, steps):
            s.action, s.input = a.tool, a.input
        await asyncio.gather(*(act(ctx, a, s, parsed.warnings)
                               for a, s in zip(parsed.actions, steps)))
        chosen = handoff_step(self, steps)
        self.handoff = chosen.action if chosen is not None else None
        return True
