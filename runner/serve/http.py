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
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from .. import events as ev
from ..agent import Agent
from ..api import session_memory
from ..errors import SpecError
from ..redact import redact_value
from ..result import RunResult, as_text, to_json
from .agents import Served, is_loopback, load_agents, run_input
from .runs import (KEEPALIVE_S, SESSION_HEADER, TOKEN_ENV, ApiError, Limits, Service,
                   Tracked)

__all__ = ["Limits", "Service", "build_app", "serve_main", "TOKEN_ENV", "SESSION_HEADER"]

# A run that did not finish, as a chat completion's HTTP status: the caller may retry later
# (429, 503, 504) or the agent failed (502).
_CHAT_STATUS = {"model_rate_limited": 429, "interrupted": 503, "model_timeout": 504}

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
