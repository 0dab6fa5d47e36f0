"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1, for tests and benchmarks.

LiteLLM really calls it, so tests cover the whole call path. Each request takes the next
item of the script:

    "text"                                        a plain reply
    {"content": "...", "tool_calls": [{"name": "calculator", "arguments": {"expression": "2+2"}}],
     "finish_reason": "stop", "usage": {"prompt_tokens": 10, "completion_tokens": 5}}
    {"status": 500, "body": "...", "headers": {...}}   an HTTP error (any status, any body:
                                                  "content_type" sets its type)
    {"delay": 2.0, ...}                           any item, answered after 2 s

When the script is empty, `responder` (if set: a function of the request body that returns an
item) or else `default` (if set) answers. Requests are recorded (`record=False` keeps none,
for long benchmarks). `tool_call_responder(n)` plays n calculator calls then a final answer
per conversation, telling conversations apart by what the request already holds: its `tool`
messages (native tool calling) or its own earlier `Thought: scripted step` lines (text ReAct).

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

__all__ = ["ScriptedOpenAIServer", "tool_call_responder"]

REACT_MARK = "Thought: scripted step"


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


if __name__ == "__main__":
    main()
