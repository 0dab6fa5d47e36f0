"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1, for tests and benchmarks.

LiteLLM really calls it, so tests cover the whole call path. Each request takes the next
item of the script:

    "text"                                        a plain reply
    {"content": "...", "tool_calls": [{"name": "calculator", "arguments": {"expression": "2+2"}}],
     "finish_reason": "stop", "usage": {"prompt_tokens": 10, "completion_tokens": 5}}
    {"status": 500, "body": "...", "headers": {...}}   an HTTP error

When the script is empty, `default` (if set) answers every request. Requests are recorded.
Run standalone with `python -m runner.testing --port 8080 --default "Final Answer: hi"`.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import deque
from typing import Any

from aiohttp import web

__all__ = ["ScriptedOpenAIServer"]


def _tool_calls(item: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"id": c.get("id") or f"call_{uuid.uuid4().hex[:8]}", "type": "function",
             "function": {"name": c["name"], "arguments": c["arguments"] if isinstance(
                 c["arguments"], str) else json.dumps(c["arguments"])}}
            for c in item.get("tool_calls") or []]


class ScriptedOpenAIServer:
    """Serves /v1/chat/completions from a script, in a background thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self.requests: list[dict[str, Any]] = []
        self.default: Any = None
        self._script: deque[Any] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

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
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "scripted", "object": "model"}]})

    def _next(self) -> Any:
        if self._script:
            return self._script.popleft()
        if self.default is not None:
            return self.default
        return {"status": 500, "body": json.dumps({"error": {
            "message": "scripted server: the script is empty", "type": "server_error"}})}

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        item = self._next()
        if isinstance(item, str):
            item = {"content": item}
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
        return web.json_response({
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion",
            "created": int(time.time()), "model": body.get("model", "scripted"),
            "choices": [{"index": 0, "message": message, "finish_reason": item.get(
                "finish_reason", "tool_calls" if calls else "stop")}],
            "usage": self._usage(item)})

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

        async def send(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> None:
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                     **extra}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())

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
        return resp


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--default", default="Final Answer: ok",
                        help="reply to every request (JSON for a structured item)")
    args = parser.parse_args()
    server = ScriptedOpenAIServer(port=args.port)
    try:
        server.default = json.loads(args.default)
    except json.JSONDecodeError:
        server.default = args.default
    server.start()
    print(server.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
