"""`runner serve FOLDER`: every agent spec under a folder behind one HTTP API, on Starlette
and uvicorn.

    GET  /v1/agents                  the agents: name, description, input and output schemas
    POST /v1/agents/{name}/runs      run one: {"input": ...} or {"inputs": {...}}, optional
                                     "session", "stream" (server-sent events) and "wait"
    GET  /v1/runs/{id}               a run's status, and its result once it ended
    POST /v1/runs/{id}/cancel        stop a run at its next step boundary (state checkpointed)
    POST /v1/chat/completions        the OpenAI wire format, the agent's name as the model id
    GET  /v1/models[/{id}]           the agents as OpenAI models

Each run is a task of the server, not of the request that started it: a caller that goes
away loses nothing (the run ends, and `GET /v1/runs/{id}` has its result). Runs of one
agent share its Agent (models, tools, MCP servers); a run continues a conversation only if
its request names a `session` (the `X-Session-Id` header or the body's field), and a
caller's sessions and runs are out of reach of callers holding another token. Errors are
JSON in OpenAI's shape, `{"error": {"message", "type", "code"}}`, with a 4xx status for
what the caller got wrong.

SIGTERM (or SIGINT) stops accepting connections and lets runs in flight finish for
`--grace` seconds; then the rest are stopped, which checkpoints them (`runner resume`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import re
import signal
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import events as ev
from ..agent import Agent
from ..api import session_memory
from ..budget import Budget
from ..errors import SpecError
from ..loop import Run
from ..redact import Redactor, redact_value
from ..result import RunResult, as_text, to_json
from .agents import Served, close_all, is_loopback, load_agents, run_input

__all__ = ["Limits", "Service", "build_app", "serve_main", "TOKEN_ENV", "SESSION_HEADER"]

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


# A run that did not finish, as a chat completion's HTTP status: the caller may retry later
# (429, 503, 504) or the agent failed (502).
_CHAT_STATUS = {"model_rate_limited": 429, "interrupted": 503, "model_timeout": 504}


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


# ---------------------------------------------------------------------- requests


async def _body(request: Any, limit: int) -> dict[str, Any]:
    """The request's JSON object, read up to `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body is over {limit} bytes", code="too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the request body is over {limit} bytes", code="too_large")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks) or b"null")
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"the request body is not JSON: {exc}"[:300],
                       code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, not "
                       f"{type(body).__name__}", code="invalid_json")
    return body


def _check(body: dict[str, Any], allowed: dict[str, type | tuple[type, ...]],
           strict: bool = True) -> None:
    """Type-check the known fields of a body; with `strict`, unknown fields are an error."""
    if strict:
        unknown = sorted(set(body) - set(allowed))
        if unknown:
            raise ApiError(400, f"unknown field {unknown[0]!r}; fields are: "
                           f"{', '.join(allowed)}", param=unknown[0])
    for key, types in allowed.items():
        if key in body and body[key] is not None and not isinstance(body[key], types):
            names = types.__name__ if isinstance(types, type) else " or ".join(
                t.__name__ for t in types)
            raise ApiError(400, f"{key} must be a {names}, not {type(body[key]).__name__}",
                           param=key)


def _run_arguments(served: Served, check: Any, body: dict[str, Any]) -> dict[str, Any]:
    """`{"input": ...}` or `{"inputs": {...}}`, checked against the agent's input schema."""
    if "inputs" in body and "input" in body:
        raise ApiError(400, "give input or inputs, not both", param="inputs")
    arguments = body["inputs"] if "inputs" in body else {"input": body.get("input")}
    if not isinstance(arguments, dict):
        raise ApiError(400, "inputs must be an object of named inputs", param="inputs")
    problems = list(check.iter_errors(arguments))
    if problems:
        first = problems[0]
        where = ".".join(map(str, first.absolute_path)) or ("inputs" if "inputs" in body
                                                            else "input")
        raise ApiError(400, f"{served.name}: {where}: {first.message}", param=where)
    return arguments


def _chat_input(body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The last user message's text, and the conversation before it."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    conversation = []
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ("system", "developer", "user", "assistant", "tool"):
            raise ApiError(400, f"messages[{i}] needs a role of system, user or assistant",
                           param=f"messages[{i}].role")
        conversation.append({"role": "system" if role == "developer" else role,
                             "content": _text(m.get("content"), i)})
    if conversation[-1]["role"] != "user":
        raise ApiError(400, "the last message must be the user's", param="messages")
    last = conversation.pop()
    return last["content"], [m for m in conversation if m["role"] != "tool"]


def _text(content: Any, i: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        if any(p.get("type") != "text" or not isinstance(p.get("text"), str) for p in content):
            raise ApiError(400, f"messages[{i}]: only text content is supported",
                           param=f"messages[{i}].content")
        return "\n".join(p["text"] for p in content)
    raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts",
                   param=f"messages[{i}].content")


def _session(request: Any, body: dict[str, Any]) -> Any:
    return body.get("session", request.headers.get(SESSION_HEADER))


def _sse(data: str, event: str | None = None) -> bytes:
    """One server-sent event (the data is one line of JSON)."""
    return ((f"event: {event}\n" if event else "") + f"data: {data}\n\n").encode()


async def _events(tracked: Tracked, queue: asyncio.Queue[ev.Event | None]
                  ) -> AsyncIterator[ev.Event | None]:
    """The events `queue` (`tracked.subscribe()`) gets until the run ends; None, a keepalive
    tick, when there was nothing for KEEPALIVE_S."""
    try:
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
            except asyncio.TimeoutError:
                yield None
                continue
            if event is None:
                return
            yield event
    finally:
        tracked.listeners.remove(queue.put_nowait)


# ---------------------------------------------------------------------- the application


def build_app(service: Service) -> Any:
    """The Starlette application."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    def error(exc: ApiError) -> Response:
        return JSONResponse(exc.body(), exc.status, headers={"www-authenticate": "Bearer"}
                            if exc.status == 401 else None)

    def endpoint(handler: Callable[..., Any]) -> Callable[[Request], Any]:
        async def wrapped(request: Request) -> Response:
            try:
                caller = service.caller(request.headers.get("authorization"))
                return await handler(request, caller)
            except ApiError as exc:
                return error(exc)
            except Exception as exc:  # a bug of ours: said as JSON, in the server's log too
                import traceback

                traceback.print_exception(exc)
                return error(ApiError(500, f"internal error: {type(exc).__name__}",
                                      "server_error"))

        return wrapped

    async def list_agents(request: Request, caller: str) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"name": s.name, "description": s.agent.spec.description, "kind": s.agent.spec.kind,
             "input_schema": s.input_schema,
             "output_schema": s.agent.spec.output.json_schema if s.agent.spec.output else None}
            for s in service.agents.values()]})

    async def create_run(request: Request, caller: str) -> Response:
        served = service.agent(request.path_params["name"])
        body = await _body(request, service.limits.max_request_bytes)
        _check(body, {"input": object, "inputs": dict, "session": str, "stream": bool,
                      "wait": bool})
        arguments = _run_arguments(served, service.checks[served.name], body)
        session = service.session_key(caller, _session(request, body))
        tracked = service.start(served, run_input(served.agent.spec, arguments), caller,
                                session)
        location = {"location": f"/v1/runs/{tracked.run.run_id}"}
        if body.get("stream"):
            return StreamingResponse(_run_stream(tracked, tracked.subscribe()),
                                     media_type="text/event-stream",
                                     headers={**location, "cache-control": "no-cache"})
        if body.get("wait") is False:
            return JSONResponse(service.status_json(tracked), 202, headers=location)
        await service.outcome(tracked)
        return JSONResponse(service.result_json(tracked), headers=location)

    async def _run_stream(tracked: Tracked, queue: Any) -> AsyncIterator[bytes]:
        async for event in _events(tracked, queue):
            if event is None:
                yield b": waiting\n\n"
            else:
                yield _sse(service.event_json(tracked, event), event.kind)
        await service.outcome(tracked)
        yield _sse(to_json(service.result_json(tracked)), "result")

    async def get_run(request: Request, caller: str) -> Response:
        return JSONResponse(service.status_json(service.tracked(request.path_params["id"],
                                                                caller)))

    async def cancel_run(request: Request, caller: str) -> Response:
        tracked = service.tracked(request.path_params["id"], caller)
        if not tracked.ended:
            tracked.run.request_stop(signal.SIGINT)
            await service.outcome(tracked)
        return JSONResponse(service.status_json(tracked))

    def model_json(s: Served) -> dict[str, Any]:
        return {"id": s.name, "object": "model", "created": service.started,
                "owned_by": "yaml-agent-runner"}

    async def list_models(request: Request, caller: str) -> Response:
        return JSONResponse({"object": "list",
                             "data": [model_json(s) for s in service.agents.values()]})

    async def get_model(request: Request, caller: str) -> Response:
        return JSONResponse(model_json(service.agent(request.path_params["id"])))

    async def chat(request: Request, caller: str) -> Response:
        body = await _body(request, service.limits.max_request_bytes)
        # OpenAI clients send sampling fields the agent's spec decides: they are ignored
        _check(body, {"model": str, "messages": list, "stream": bool, "user": str,
                      "stream_options": dict}, strict=False)
        if not body.get("model"):
            raise ApiError(400, "model is required: the name of an agent (GET /v1/models)",
                           param="model")
        served = service.agent(body["model"])
        text, context = _chat_input(body)
        session = service.session_key(caller, request.headers.get(SESSION_HEADER))
        tracked = service.start(served, text, caller, session, context)
        chat_id = f"chatcmpl-{tracked.run.run_id}"
        if body.get("stream"):
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(_chat_stream(tracked, tracked.subscribe(), chat_id, usage),
                                     media_type="text/event-stream",
                                     headers={"cache-control": "no-cache"})
        result = await service.outcome(tracked)
        if not result.ok:
            return error(_run_failed(tracked))
        return JSONResponse({"id": chat_id, "object": "chat.completion",
                             "created": int(time.time()), "model": served.name,
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant",
                                                      "content": _answer(tracked)}}],
                             "usage": _usage(result)})

    def _answer(tracked: Tracked) -> str:
        answer = tracked.run.result.answer
        text = as_text(answer) if isinstance(answer, str) else to_json(answer)
        return as_text(redact_value(text, tracked.served.agent.secrets))

    def _run_failed(tracked: Tracked) -> ApiError:
        r = tracked.run.result
        return ApiError(_CHAT_STATUS.get(r.status, 502),
                        f"{tracked.served.name} ended with {r.status}: "
                        f"{redact_value(r.error or '', tracked.served.agent.secrets)} "
                        f"(run {r.run_id})", "server_error", r.status)

    async def _chat_stream(tracked: Tracked, queue: Any, chat_id: str,
                           usage: bool) -> AsyncIterator[bytes]:
        name, created = tracked.served.name, int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None,
                  **extra: Any) -> bytes:
            return _sse(json.dumps({"id": chat_id, "object": "chat.completion.chunk",
                                    "created": created, "model": name,
                                    "choices": [{"index": 0, "delta": delta,
                                                 "finish_reason": finish}], **extra}))

        yield chunk({"role": "assistant", "content": ""})
        async for event in _events(tracked, queue):  # progress as comments: clients skip them
            if event is None or isinstance(event, (ev.Observed, ev.FinalAnswer)):
                yield f": step {event.step if event else '...'}\n\n".encode()
        result = await service.outcome(tracked)
        if not result.ok:
            yield _sse(json.dumps(_run_failed(tracked).body()))
        else:
            yield chunk({"content": _answer(tracked)})
            yield chunk({}, "stop")
            if usage:
                yield _sse(json.dumps({"id": chat_id, "object": "chat.completion.chunk",
                                       "created": created, "model": name, "choices": [],
                                       "usage": _usage(result)}))
        yield b"data: [DONE]\n\n"

    async def not_found(request: Request, exc: HTTPException) -> Response:
        status = exc.status_code
        return error(ApiError(status, f"{request.method} {request.url.path}: "
                              f"{exc.detail}", code="not_found" if status == 404 else None))

    routes = [
        Route("/v1/agents", endpoint(list_agents), methods=["GET"]),
        Route("/v1/agents/{name:path}/runs", endpoint(create_run), methods=["POST"]),
        Route("/v1/runs/{id}", endpoint(get_run), methods=["GET"]),
        Route("/v1/runs/{id}/cancel", endpoint(cancel_run), methods=["POST"]),
        Route("/v1/chat/completions", endpoint(chat), methods=["POST"]),
        Route("/v1/models", endpoint(list_models), methods=["GET"]),
        Route("/v1/models/{id:path}", endpoint(get_model), methods=["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await service.close()

    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={HTTPException: not_found})


def _usage(result: RunResult) -> dict[str, int]:
    u = result.usage
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens}


# ---------------------------------------------------------------------- the process


def serve_main(paths: list[Path], host: str, port: int, limits: Limits,
               overrides: list[str]) -> None:
    """`runner serve`: check and build every agent, then serve until SIGTERM or SIGINT."""
    import click

    from ..spec import find_root

    tokens = [t.strip() for t in os.environ.get(TOKEN_ENV, "").split(",") if t.strip()]
    if not is_loopback(host) and not tokens:
        raise SpecError(f"--host {host} listens beyond loopback: set ${TOKEN_ENV} to the "
                        f"bearer token clients must send")
    targets = [p.resolve() for p in paths]
    # the runs' state (.runner/: traces, checkpoints, memory) goes to the served project
    os.chdir(find_root(targets[0] / "_" if targets[0].is_dir() else targets[0]))
    served = load_agents(targets, overrides, build=lambda resolved: Agent(
        resolved, memory=session_memory(resolved), run_sessions=True), qualify="/")
    service = Service(served, limits, tokens)
    click.echo(f"serving {', '.join(service.agents)} at http://{host}:{port}/v1", err=True)
    asyncio.run(_serve(service, host, port))


async def _serve(service: Service, host: str, port: int) -> None:
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if not self.should_exit:  # the first signal: drain, checkpoint the rest
                loop.call_soon_threadsafe(service.begin_drain, sig)
            super().handle_exit(sig, frame)

    loop = asyncio.get_running_loop()
    # uvicorn waits this long for connections (each waits for its run) after the signal
    config = uvicorn.Config(build_app(service), host=host, port=port, log_level="warning",
                            lifespan="on", timeout_graceful_shutdown=service.limits.grace_s + 30,
                            limit_concurrency=None, server_header=False)
    await Server(config).serve()
