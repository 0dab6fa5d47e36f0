"""The runs of `runner serve`: who may call, which runs may start (runs at once, runs
waiting, budgets capped), the runs in flight and recently ended, their events for streams,
and draining on shutdown. Each run is a task of the server, not of the request that started
it: a caller that goes away cancels nothing."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import events as ev
from ..agent import Agent
from ..budget import Budget
from ..loop import Run
from ..redact import Redactor, redact_value
from ..result import RunResult, to_json
from .agents import Served, close_all

__all__ = ["Limits", "ApiError", "Tracked", "Service", "TOKEN_ENV", "SESSION_HEADER",
           "KEEP_FINISHED", "KEEPALIVE_S"]

TOKEN_ENV = "RUNNER_SERVE_TOKEN"
"""Bearer tokens callers must send (comma-separated, one per caller); required beyond
loopback. Each token's runs and sessions are its own."""
SESSION_HEADER = "x-session-id"
SESSION_PATTERN = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
KEEP_FINISHED = 10_000
"""Ended runs whose results `GET /v1/runs/{id}` still has (the oldest are forgotten)."""
KEEPALIVE_S = 15.0
"""An SSE comment this often while a stream has nothing to say (proxies drop idle ones)."""


@dataclass
class Limits:
    """What one server accepts: runs at once (as many again may wait), request size, and caps
    on every run's budget."""

    max_runs: int = 64
    max_request_bytes: int = 1_000_000
    max_run_tokens: int | None = None
    max_run_seconds: float | None = None
    grace_s: float = 30.0
    max_waiting: int | None = None
    """Runs that may wait for a slot; default: max_runs."""


class ApiError(Exception):
    """A request the server refuses: its HTTP status and an OpenAI-shaped error body."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.param = (status, message, kind,
                                                                       code, param)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}



@dataclass
class Tracked:
    """A run of this server: who started it, its task, and who is listening to its events."""

    run: Run
    served: Served
    caller: str
    task: asyncio.Task[RunResult] | None = None
    listeners: list[Callable[[ev.Event | None], None]] = field(default_factory=list)
    started: bool = False
    """Whether it got a slot (until then, it is `queued`)."""

    def hear(self, event: ev.Event | None) -> None:
        for listener in list(self.listeners):
            listener(event)

    def subscribe(self) -> asyncio.Queue[ev.Event | None]:
        """A queue of the run's events from now on (None once it ended)."""
        queue: asyncio.Queue[ev.Event | None] = asyncio.Queue()
        self.listeners.append(queue.put_nowait)
        if self.ended:
            queue.put_nowait(None)
        return queue

    @property
    def ended(self) -> bool:
        return self.task is not None and self.task.done()


class Service:
    """The agents served, the runs in flight and recently ended, admission and draining."""

    def __init__(self, served: list[Served], limits: Limits, tokens: list[str]) -> None:
        self.agents = {s.name: s for s in served}
        self.limits = limits
        self.tokens = tokens
        self.runs: dict[str, Tracked] = {}
        self._ended: deque[str] = deque()
        """Ids of ended runs, oldest first: the ones forgotten past KEEP_FINISHED."""
        self.active = 0
        self._slots: asyncio.Semaphore | None = None
        self.draining = False
        self._drained: asyncio.Task[None] | None = None
        self.started = int(time.time())
        self._redactors = {s.name: Redactor.for_trace(s.agent.spec.trace, s.agent.secrets)
                           for s in served}
        import jsonschema

        self.checks = {s.name: jsonschema.Draft202012Validator(s.input_schema) for s in served}
        """Each agent's input schema, compiled once."""

    # ------------------------------------------------------------------ callers

    def caller(self, authorization: str | None) -> str:
        """Who is calling: "" when no token is configured, else a digest of the token sent
        (an ApiError 401 when it is none of them)."""
        if not self.tokens:
            return ""
        given = (authorization or "").encode()
        for token in self.tokens:
            if hmac.compare_digest(given, f"Bearer {token}".encode()):
                return hashlib.sha256(token.encode()).hexdigest()[:16]
        raise ApiError(401, f"a valid bearer token is required (one of ${TOKEN_ENV})",
                       "authentication_error", "invalid_api_key")

    def agent(self, name: str) -> Served:
        served = self.agents.get(name)
        if served is None:
            raise ApiError(404, f"no agent named {name!r}; agents: {', '.join(self.agents)}",
                           code="model_not_found", param="model")
        return served

    def session_key(self, caller: str, session: Any) -> str | None:
        """The memory key of a caller's session (None: the run continues no conversation)."""
        if session is None:
            return None
        if not isinstance(session, str) or not SESSION_PATTERN.fullmatch(session):
            raise ApiError(400, "a session is 1 to 128 characters of A-Z a-z 0-9 . _ : @ -",
                           param="session")
        return f"{caller}:{session}" if caller else session

    # ------------------------------------------------------------------ runs

    def start(self, served: Served, input: Any, caller: str, session: str | None,
              context: list[Any] | None = None) -> Tracked:
        """Admit a run and start its task; it waits for a slot if max_runs are running."""
        limits = self.limits
        if self.draining:
            raise ApiError(503, "the server is shutting down", "server_error", "shutting_down")
        waiting_cap = limits.max_runs + (limits.max_waiting if limits.max_waiting is not None
                                         else limits.max_runs)
        if self.active >= waiting_cap:
            raise ApiError(429, f"{self.active} runs are running or waiting (at most "
                           f"{waiting_cap}); try again later", "rate_limit_error", "busy")
        agent = served.agent
        run = agent.start(input, budget=Budget(self._capped(agent), agent.clock),
                          context=context, session=session)
        tracked = Tracked(run, served, caller)
        self.runs[run.run_id] = tracked
        self.active += 1
        tracked.task = asyncio.get_running_loop().create_task(self._drive(tracked))
        return tracked

    def _capped(self, agent: Agent) -> Any:
        """The spec's budget with the server's caps applied."""
        budget, limits = agent.spec.budget, self.limits
        caps: dict[str, Any] = {}
        if limits.max_run_tokens is not None:
            caps["tokens"] = min(budget.tokens or limits.max_run_tokens, limits.max_run_tokens)
        if limits.max_run_seconds is not None:
            caps["wall_s"] = min(budget.wall_s or limits.max_run_seconds,
                                 limits.max_run_seconds)
        return budget.model_copy(update=caps) if caps else budget

    async def _drive(self, tracked: Tracked) -> RunResult:
        try:
            if self._slots is None:
                self._slots = asyncio.Semaphore(self.limits.max_runs)
            async with self._slots:
                tracked.started = True
                return await tracked.run.execute(listener=tracked.hear)
        finally:
            self.active -= 1
            tracked.hear(None)
            self._ended.append(tracked.run.run_id)
            while len(self._ended) > KEEP_FINISHED:
                self.runs.pop(self._ended.popleft(), None)

    def tracked(self, run_id: str, caller: str) -> Tracked:
        tracked = self.runs.get(run_id)
        if tracked is None or tracked.caller != caller:  # another caller's run is not there
            raise ApiError(404, f"no run {run_id!r} on this server", code="run_not_found")
        return tracked

    async def outcome(self, tracked: Tracked) -> RunResult:
        """The run's result once it ended; a caller that goes away does not cancel it."""
        assert tracked.task is not None
        return await asyncio.shield(tracked.task)

    def result_json(self, tracked: Tracked) -> dict[str, Any]:
        """A run's result as `runner run --json` prints it, secrets masked."""
        return redact_value(tracked.run.result.to_dict(), tracked.served.agent.secrets)

    def status_json(self, tracked: Tracked) -> dict[str, Any]:
        run = tracked.run
        body: dict[str, Any] = {"id": run.run_id, "object": "run", "agent": tracked.served.name,
                                "status": run.result.status if tracked.started else "queued",
                                "steps": len(run.result.steps)}
        if tracked.ended:
            body["result"] = self.result_json(tracked)
        return body

    def event_json(self, tracked: Tracked, event: ev.Event) -> str:
        """An event as one line of JSON, masked as the trace file masks it."""
        return to_json(self._redactors[tracked.served.name].value(event.to_dict()))

    # ------------------------------------------------------------------ shutting down

    def begin_drain(self, signum: int) -> asyncio.Task[None]:
        """Start draining (once): see `drain`."""
        if self._drained is None:
            self.draining = True
            self._drained = asyncio.get_running_loop().create_task(self.drain(signum))
        return self._drained

    async def drain(self, signum: int) -> None:
        """Refuse new runs; give those in flight `grace_s` to end, then stop the rest (each
        checkpointed at its step boundary, resumable)."""
        self.draining = True
        tasks = [t.task for t in self.runs.values() if t.task is not None and not t.ended]
        if tasks:
            await asyncio.wait(tasks, timeout=self.limits.grace_s)
        for tracked in list(self.runs.values()):
            if not tracked.ended:
                tracked.run.request_stop(signum)
        tasks = [t.task for t in self.runs.values() if t.task is not None and not t.ended]
        if tasks:
            await asyncio.wait(tasks)

    async def close(self) -> None:
        """Drain (if no signal began it), then close every agent."""
        try:
            await self.begin_drain(signal.SIGTERM)
        finally:
            await close_all(list(self.agents.values()))
