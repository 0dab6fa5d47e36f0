"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1, for tests and benchmarks.

LiteLLM really calls it, so tests cover the whole call path. Each request takes the next
item of the script:

    "text"                                        a plain reply
    {"content": "...", "tool_calls": [{"name": "calculator", "arguments": {"expression": "2+2"}}],
     "finish_reason": "stop", "usage": {"prompt_tokens": 10, "completion_tokens": 5}}
    {"status": 500, "body": "...", "headers": {...}}   an HTTP error (any status, any body:
                                                  "content_type" sets its type)
    {"delay": 2.0, ...}                           any item, answered after 2 s

Faults (for tests of the retry layer and the deadlines):

    {"status": 429, "headers": {"Retry-After": "7"}}              rate limited, retry in 7 s;
    {"status": 429, "headers": {"Retry-After": http_date(30)}}    ... or at an HTTP date
    {"fault": "html"}            200, text/html: an nginx welcome page instead of JSON
    {"fault": "invalid_json"}    200, application/json, a body that is not JSON
    {"fault": "empty_choices"}   200, a chat.completion whose `choices` is []
    {"hang": true}               the request is read, then nothing is sent back (not even a
                                 status line) until the client goes away or the server stops
    {"trickle": 0.5, ...}        a streamed reply (request has stream=true) waits 0.5 s before
                                 each SSE chunk; a plain reply sends its JSON body
                                 `trickle_bytes` bytes (default 1) at a time, 0.5 s apart
                                 (Content-Length is sent first, so the client keeps waiting)
    {"content": "...", "cut_stream": true}   a streamed reply that stops without a
                                 finish_reason and without `data: [DONE]`

`{"fault": ...}` items take `"status"` (default 200) and `"content_type"` to vary them.

When the script is empty, `responder` (if set: a function of the request body that returns an
item) or else `default` (if set) answers. Requests are recorded (`record=False` keeps none,
for long benchmarks). `tool_call_responder(n)` plays n calculator calls then a final answer
per conversation, telling conversations apart by what the request already holds: its `tool`
messages (native tool calling) or its own earlier `Thought: scripted step` lines (text ReAct).

`FakeClock` is a runner.budget.Clock for tests: `Agent(spec, clock=FakeClock())` records the
waits of the retry layer (backoff, Retry-After) in `clock.sleeps` instead of sleeping.

Standalone, for benchmarks and manual runs (prints the base URL on its first line):

    python -m runner.testing --port 8080 --default "Final Answer: hi"
    python -m runner.testing --tool-calls 20          # 20 calculator calls, then an answer
    python -m runner.testing --script replies.json    # a JSON list of items, then --default
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import web

__all__ = ["ScriptedOpenAIServer", "tool_call_responder", "FakeClock", "http_date", "FAULTS"]

REACT_MARK = "Thought: scripted step"

FAULTS: dict[str, tuple[str, str]] = {
    "html": ("text/html", "<!DOCTYPE html><html><head><title>Welcome to nginx!</title></head>"
                          "<body><h1>Welcome to nginx!</h1></body></html>"),
    "invalid_json": ("application/json", '{"id": "chatcmpl-1", "choices": [{"message": '),
    "empty_choices": ("application/json", json.dumps({
        "id": "chatcmpl-empty", "object": "chat.completion", "created": 0, "model": "scripted",
        "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 0,
                                 "total_tokens": 1}})),
}
"""`{"fault": name}` items: (content type, body), sent with status 200."""


def http_date(seconds_from_now: float) -> str:
    """An HTTP date (as in a Retry-After header) `seconds_from_now` in the future, rounded
    up to the next whole second so a wait until it is never shorter than asked."""
    import email.utils
    import math

    return email.utils.formatdate(math.ceil(time.time() + seconds_from_now), usegmt=True)


class FakeClock:
    """A runner.budget.Clock whose time moves only when something sleeps on it.

    `Agent(spec, clock=FakeClock())`: backoff and Retry-After waits are recorded in `sleeps`
    and cost no real time (each yields to the event loop once); the wall-clock budget counts
    only those waits, so model calls themselves take no (fake) time."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


def _tool_calls(item: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"id": c.get("id") or f"call_{uuid.uuid4().hex[:8]}", "type": "function",
             "function": {"name": c["name"], "arguments": c["arguments"] if isinstance(
                 c["arguments"], str) else json.dumps(c["arguments"])}}
            for c in item.get("tool_calls") or []]


def tool_call_responder(n: int, answer: str = "done") -> Callable[[dict[str, Any]], Any]:
    """A responder that answers `n` calculator calls, then `answer`, in every conversation.

    With `tools` in the request it counts the request's `tool` messages and replies with a
    native call; without, it counts its own earlier `Thought: scripted step` lines in the
    prompt and replies in text ReAct (`Action: calculator[k+1]`, then `Final Answer:`)."""

    def respond(body: dict[str, Any]) -> Any:
        messages = body.get("messages") or []
        if body.get("tools"):
            done = sum(1 for m in messages if m.get("role") == "tool")
            if done < n:
                return {"tool_calls": [{"name": "calculator",
                                        "arguments": {"expression": f"{done}+1"}}]}
            return {"content": answer}
        done = sum(str(m.get("content") or "").count(REACT_MARK) for m in messages)
        if done < n:
            return {"content": f"{REACT_MARK} {done + 1}\nAction: calculator[{done}+1]"}
        return {"content": f"Thought: I now know the final answer\nFinal Answer: {answer}"}

    return respond


class ScriptedOpenAIServer:
    """Serves /v1/chat/completions from a script, in a background thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self.requests: list[dict[str, Any]] = []
        self.default: Any = None
        self.responder: Callable[[dict[str, Any]], Any] | None = None
        self.record = True
        self._script: deque[Any] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- control
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def script(self, *items: Any) -> ScriptedOpenAIServer:
        self._script.extend(items)
        return self

    def reset(self) -> None:
        self._script.clear()
        self.requests.clear()
        self.default = None
        self.responder = None

    def start(self) -> ScriptedOpenAIServer:
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._start())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="scripted-openai", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        self._stopping = True  # releases hanging and trickling requests
        if self._loop is not None and self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> ScriptedOpenAIServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- serving
    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        return app

    async def _start(self) -> None:
        self._stopping = False
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "scripted", "object": "model"}]})

    def _next(self, body: dict[str, Any]) -> Any:
        if self._script:
            return self._script.popleft()
        if self.responder is not None:
            return self.responder(body)
        if self.default is not None:
            return self.default
        return {"status": 500, "body": json.dumps({"error": {
            "message": "scripted server: the script is empty", "type": "server_error"}})}

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if self.record:
            self.requests.append(body)
        item = self._next(body)
        if isinstance(item, str):
            item = {"content": item}
        if item.get("delay"):
            await asyncio.sleep(float(item["delay"]))
        if item.get("hang"):
            return await self._hang(request)
        if "fault" in item:
            content_type, text = FAULTS[item["fault"]]
            item = {"status": 200, "body": text, "content_type": content_type, **{
                k: v for k, v in item.items() if k != "fault"}}
        if "status" in item:
            return web.Response(status=item["status"], text=item.get("body", ""),
                                headers=item.get("headers"), content_type=item.get(
                                    "content_type", "application/json"))
        if body.get("stream"):
            return await self._stream(request, body, item)
        calls = _tool_calls(item)
        message = {"role": "assistant", "content": item.get("content")}
        if calls:
            message["tool_calls"] = calls
        reply = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion",
            "created": int(time.time()), "model": body.get("model", "scripted"),
            "choices": [{"index": 0, "message": message, "finish_reason": item.get(
                "finish_reason", "tool_calls" if calls else "stop")}],
            "usage": self._usage(item)}
        if item.get("trickle"):
            return await self._trickle(request, json.dumps(reply).encode(),
                                       float(item["trickle"]), int(item.get("trickle_bytes", 1)))
        return web.json_response(reply)

    def _gone(self, request: web.Request) -> bool:
        """The server is stopping or the client has closed the connection."""
        transport = request.transport
        return self._stopping or transport is None or transport.is_closing()

    async def _hang(self, request: web.Request) -> web.StreamResponse:
        """Send nothing at all (no status line) until the client gives up."""
        while not self._gone(request):
            await asyncio.sleep(0.02)
        raise asyncio.CancelledError  # aiohttp drops the connection without a reply

    async def _pause(self, request: web.Request, seconds: float) -> bool:
        """Wait `seconds`, or less if the client goes away; True when it has."""
        end = time.monotonic() + seconds
        while not self._gone(request):
            left = end - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(left, 0.02))
        return True

    async def _trickle(self, request: web.Request, data: bytes, every: float,
                       size: int) -> web.StreamResponse:
        """A complete, valid reply sent `size` bytes at a time, `every` seconds apart."""
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = len(data)
        try:
            await resp.prepare(request)
            for i in range(0, len(data), max(1, size)):
                if await self._pause(request, every):
                    break
                await resp.write(data[i:i + max(1, size)])
            else:
                await resp.write_eof()
        except ConnectionError:
            pass  # the client gave up, as it should
        return resp

    @staticmethod
    def _usage(item: dict[str, Any]) -> dict[str, int]:
        u = item.get("usage") or {"prompt_tokens": 10, "completion_tokens": 5}
        return {**u, "total_tokens": u["prompt_tokens"] + u["completion_tokens"]}

    async def _stream(self, request: web.Request, body: dict[str, Any],
                      item: dict[str, Any]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        base = {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": body.get("model", "scripted")}

        trickle = float(item.get("trickle") or 0)

        async def send(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> None:
            if trickle and await self._pause(request, trickle):
                raise ConnectionResetError("the client went away")
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                     **extra}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())

        try:
            await self._stream_items(resp, body, item, base, send)
        except ConnectionError:
            pass  # the client gave up (a deadline fired)
        return resp

    async def _stream_items(self, resp: web.StreamResponse, body: dict[str, Any],
                            item: dict[str, Any], base: dict[str, Any], send: Any) -> None:
        await send({"role": "assistant", "content": ""})
        text = item.get("content") or ""
        for i in range(0, len(text), 8):
            await send({"content": text[i:i + 8]})
        for i, call in enumerate(_tool_calls(item)):
            await send({"tool_calls": [{"index": i, **call}]})
        if not item.get("cut_stream"):
            calls = bool(item.get("tool_calls"))
            await send({}, item.get("finish_reason", "tool_calls" if calls else "stop"))
            if (body.get("stream_options") or {}).get("include_usage"):
                chunk = {**base, "choices": [], "usage": self._usage(item)}
                await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--default", default="Final Answer: ok",
                        help="reply to every request (JSON for a structured item)")
    parser.add_argument("--tool-calls", type=int, metavar="N",
                        help="per conversation: N calculator calls, then a final answer")
    parser.add_argument("--script", metavar="FILE",
                        help="a JSON list of items played in order before the default")
    args = parser.parse_args()
    server = ScriptedOpenAIServer(port=args.port)
    server.record = False  # a long-running server must not grow
    try:
        server.default = json.loads(args.default)
    except json.JSONDecodeError:
        server.default = args.default
    if args.tool_calls is not None:
        server.responder = tool_call_responder(args.tool_calls)
    if args.script:
        with open(args.script, encoding="utf-8") as f:
            items = json.load(f)
        if not isinstance(items, list):
            parser.error("--script: the file must hold a JSON list of items")
        server.script(*items)
    server.start()
    print(server.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()

