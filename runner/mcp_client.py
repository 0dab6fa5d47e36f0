"""MCP servers, as an agent's tools see them: one session per server per agent, on the
official `mcp` SDK.

Every session lives on one event loop of its own, in a daemon thread (the *host*): the SDK's
transports are anyio task groups that must be entered and left by the same task, an agent is
built by synchronous code and may serve runs on several event loops, one after another. A
call crosses to the host and back (a few tens of microseconds); cancelling the caller cancels
the request on the host, and the SDK then tells the server (`notifications/cancelled`).

A stdio server runs under `runner/_process_guard.py`, which ends its whole process tree when
the server exits, when the session closes, and when the runner dies, SIGKILL included. A
server that dies, or an HTTP session that breaks, is started again at the next call; one
that breaks again before any call succeeded stays down, and its tools say so.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import hashlib
import json
import os
import sys
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ToolError, ToolServerError

__all__ = ["ServerConfig", "Connection", "describe_result", "definition_hash", "close_all",
           "runner_version", "SAFE_ENV", "MAX_TOOLS"]

GUARD = str(Path(__file__).with_name("_process_guard.py"))
SAFE_ENV = ("HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "LANG", "LC_ALL", "LC_CTYPE",
            "TMPDIR")
"""Variables a stdio server gets from the runner's environment without being named (the
SDK's own safe set, plus the locale and TMPDIR); everything else only when the spec's `env`
names it."""
MAX_TOOLS = 1000
"""Most tools one server may list (pages of tools/list are read up to this)."""
MAX_PAGES = 100
STDERR_TAIL = 2000
"""The last characters of a stdio server's stderr, kept for error messages."""
CLOSE_TIMEOUT_S = 10.0
"""Longest wait for a session to close (the SDK waits 2 s for the server to exit, then 2 s
after SIGTERM; the guard answers SIGTERM at once)."""


# ---------------------------------------------------------------------------- the host loop

_host_loop: asyncio.AbstractEventLoop | None = None
_host_lock = threading.Lock()
_open: weakref.WeakSet[Connection] = weakref.WeakSet()


def _host() -> asyncio.AbstractEventLoop:
    """The event loop the sessions live on. Its thread lives as long as the process: the
    guards' parent-death signal fires when the thread that started them ends."""
    global _host_loop
    with _host_lock:
        if _host_loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="runner-mcp", daemon=True).start()
            _host_loop = loop
            atexit.register(close_all)
    return _host_loop


def _on_host(coro: Any) -> concurrent.futures.Future[Any]:
    return asyncio.run_coroutine_threadsafe(coro, _host())


def close_all() -> None:
    """At interpreter exit: close the sessions still open (the guards would end the servers
    anyway once the process is gone; this lets them shut down cleanly)."""
    futures = [c.close() for c in list(_open)]
    concurrent.futures.wait([f for f in futures if f is not None], CLOSE_TIMEOUT_S)


# ---------------------------------------------------------------------------- one server


@dataclass
class ServerConfig:
    """How to reach one server: a command (stdio) or a URL (streamable HTTP)."""

    name: str
    command: str | None = None
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    """Besides SAFE_ENV: exactly what the spec's `env` gives."""
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    start_timeout_s: float = 30.0
    where: str = ""
    """The spec entry, for messages (`agents/x.yaml tools[2]`)."""
    sse: bool = False
    """The URL speaks the older HTTP+SSE transport, not streamable HTTP."""

    @property
    def label(self) -> str:
        return f"MCP server {self.name!r}" + (f" ({self.where})" if self.where else "")


class _Tail:
    """The end of a stdio server's stderr, read on the host loop from a pipe."""

    def __init__(self) -> None:
        self.text = ""
        self.total = 0
        """Characters read in all (`hint(since=...)` shows what came after a point)."""
        self.read_fd, write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        self.writer = os.fdopen(write_fd, "w")
        asyncio.get_running_loop().add_reader(self.read_fd, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self.read_fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        text = data.decode("utf-8", errors="replace")
        self.total += len(text)
        self.text = (self.text + text)[-STDERR_TAIL:]

    def hint(self, since: int = 0) -> str:
        new = self.total - since
        text = self.text[-new:] if 0 < new <= len(self.text) else self.text
        lines = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
        return f"; its stderr ends: {' | '.join(lines[-3:])[-600:]}" if lines else ""

    async def ended(self, timeout_s: float) -> None:
        """Wait (a little) for the server's last words: the pipe ends when its tree is gone."""
        for _ in range(int(timeout_s / 0.02)):
            if self.read_fd < 0:
                return
            await asyncio.sleep(0.02)

    def close(self) -> None:
        if self.read_fd < 0:
            return
        try:
            asyncio.get_running_loop().remove_reader(self.read_fd)
        except RuntimeError:
            pass
        os.close(self.read_fd)
        self.read_fd = -1
        if not self.writer.closed:
            self.writer.close()


class Connection:
    """One session with one server, shared by every run of the agent that built it."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._client: Any = None
        self._stop: asyncio.Event | None = None
        self._scope: Any = None
        self._task: asyncio.Task[None] | None = None
        self._tail: _Tail | None = None
        self._lock: asyncio.Lock | None = None
        self._broken: str | None = None
        """Why the session ended under us (a server that exited, a dropped connection)."""
        self._succeeded = False
        """A call succeeded since the last (re)start: a new break earns one more restart."""
        self.starts = 0
        self.closed = False
        _open.add(self)

    # ------------------------------------------------------------------ start and stop

    def start(self) -> concurrent.futures.Future[list[Any]]:
        """Start the server and list its tools, on the host; the future holds the tools."""
        return _on_host(self._start())

    async def _start(self) -> list[Any]:
        self._lock = self._lock or asyncio.Lock()
        ready: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._stop, self._broken, self._succeeded = asyncio.Event(), None, False
        self.starts += 1
        self._task = asyncio.create_task(self._serve(ready))
        try:
            return await asyncio.wait_for(asyncio.shield(ready), self.config.start_timeout_s)
        except asyncio.TimeoutError:
            hint = self._hint()  # before the end closes the pipe
            await self._end()
            if ready.done() and not ready.cancelled():
                ready.exception()  # retrieved: the timeout below is what the caller hears
            raise ToolServerError(f"{self.config.label} did not answer within "
                                  f"{self.config.start_timeout_s:g}s of starting{hint}") from None

    async def _serve(self, ready: asyncio.Future[list[Any]]) -> None:
        """The one task that enters the SDK's client, keeps it while the agent lives, and
        leaves it (which ends the server)."""
        import anyio

        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                async with self._connect() as client:
                    if self._tail is not None:  # the server holds its copy of the pipe now
                        self._tail.writer.close()
                    tools = await _list_tools(client)
                    self._client = client
                    ready.set_result(tools)
                    await self._stop.wait()  # type: ignore[union-attr]
        except BaseException as exc:  # the SDK raises groups of anything; all end here
            reason = _reason(exc)
            if not ready.done():
                ready.set_exception(ToolServerError(
                    f"{self.config.label} did not start: {reason}{self._hint()}"))
            else:
                self._broken = reason
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
        finally:
            self._client = None
            if self._tail is not None:
                self._tail.close()
                self._tail = None
            if not ready.done():
                ready.set_exception(ToolServerError(f"{self.config.label} was closed while "
                                                    f"starting"))

    def _connect(self) -> Any:
        from contextlib import asynccontextmanager

        from mcp import Client
        from mcp.types import Implementation

        info = Implementation(name="yaml-agent-runner", version=runner_version())
        c = self.config
        if c.url is not None and c.sse:
            from mcp.client.sse import sse_client

            return Client(sse_client(c.url, headers=c.headers or None), client_info=info)
        if c.url is not None:
            from mcp.client.streamable_http import streamable_http_client
            from mcp.shared._httpx_utils import create_mcp_http_client

            @asynccontextmanager
            async def http() -> Any:
                async with create_mcp_http_client(headers=c.headers or None) as http_client:
                    transport = streamable_http_client(c.url, http_client=http_client)
                    async with Client(transport, client_info=info) as client:
                        yield client

            return http()
        from mcp.client.stdio import StdioServerParameters, stdio_client

        self._tail = _Tail()
        env = {k: os.environ[k] for k in SAFE_ENV if k in os.environ} | c.env
        params = StdioServerParameters(
            command=sys.executable, args=["-I", "-S", GUARD, str(os.getpid()), c.command or "",
                                          *c.args], env=env, cwd=c.cwd)
        return Client(stdio_client(params, errlog=self._tail.writer), client_info=info)

    def close(self) -> concurrent.futures.Future[None] | None:
        """End the session (and the server's process tree); None if it was never started."""
        if self.closed:
            return None
        self.closed = True
        _open.discard(self)
        if self._task is None or _host_loop is None or _host_loop.is_closed():
            return None
        return _on_host(self._end())

    async def _end(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        if self._client is not None:
            self._stop.set()  # type: ignore[union-attr]  # leave the client normally
        elif self._scope is not None:
            self._scope.cancel()  # still starting: cancel the handshake
        try:
            await asyncio.wait_for(asyncio.shield(task), CLOSE_TIMEOUT_S)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            if self._scope is not None:
                self._scope.cancel()

    def _hint(self) -> str:
        return self._tail.hint() if self._tail is not None else ""

    # ------------------------------------------------------------------ calls

    async def call(self, tool: str, arguments: dict[str, Any],
                   on_progress: Callable[[float, float | None, str | None], None] | None = None
                   ) -> Any:
        """Call `tool` (its server's own name); the CallToolResult. Runs on the caller's
        loop; the request itself runs on the host. Cancelling the caller (the tool's timeout,
        the run's deadline, an interrupt) cancels the request, and the server is told."""
        progress = None
        if on_progress is not None:
            caller = asyncio.get_running_loop()

            async def progress(p: float, total: float | None, message: str | None) -> None:
                caller.call_soon_threadsafe(on_progress, p, total, message)

        return await asyncio.wrap_future(_on_host(self._call(tool, arguments, progress)))

    async def _call(self, tool: str, arguments: dict[str, Any], progress: Any) -> Any:
        import anyio
        from mcp.shared.exceptions import MCPError
        from mcp.types import CONNECTION_CLOSED, INTERNAL_ERROR

        resent = False
        while True:
            client = await self._ready()
            since = self._tail.total if self._tail is not None else 0
            try:
                result = await client.call_tool(tool, arguments, progress_callback=progress)
            except MCPError as exc:
                code, message = exc.error.code, exc.error.message
                if not resent and _session_gone(exc):
                    await self._drop(f"the session ended ({message})")
                    resent = True
                    continue  # the server never took the call: send it again, once
                if code == CONNECTION_CLOSED:
                    raise await self._broke("closed the connection during the call", since)
                if self.config.url is not None and code == INTERNAL_ERROR:
                    # an HTTP error in place of an answer (a restarted server may answer a
                    # session it forgot with 400, not 404): a new session next time, and
                    # this call is not sent again, as it may have run
                    await self._drop(f"the server answered {message!r}")
                    raise ToolError(f"{self.config.label}: {message}; a new session is "
                                    f"opened for the next call") from None
                raise ToolError(f"{self.config.label}: {message}") from None
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError) as exc:
                raise await self._broke(f"lost the connection ({type(exc).__name__})", since)
            self._succeeded = True
            # the SDK hands each progress notification to a task of its own, which may not
            # have run yet: let them, so no progress arrives after the result
            for _ in range(2):
                await asyncio.sleep(0)
            return result

    async def _ready(self) -> Any:
        """The live client, the server started again first if it broke (once per break)."""
        if self.closed:
            raise ToolError(f"{self.config.label} is closed")
        async with self._lock:  # type: ignore[union-attr]
            if self._client is not None and self._broken is None:
                return self._client
            reason = self._broken or "its session ended"
            if self.starts > 1 and not self._succeeded:
                raise ToolError(f"{self.config.label} is down: {reason}, and it broke again "
                                f"after being restarted; it is not started again")
            await self._end()
            try:
                await self._start()
            except ToolServerError as exc:
                raise ToolError(f"{exc} (after {reason})") from None
            return self._client

    async def _drop(self, reason: str) -> None:
        async with self._lock:  # type: ignore[union-attr]
            self._broken = self._broken or reason
            self._succeeded = True  # a forgotten session is not the server failing

    async def _broke(self, what: str, since: int = 0) -> ToolError:
        hint = ""
        if self._tail is not None:
            await self._tail.ended(1.0)
            hint = self._tail.hint(since)
        async with self._lock:  # type: ignore[union-attr]
            self._broken = self._broken or what
            again = self.starts == 1 or self._succeeded
        return ToolError(f"{self.config.label} {what}{hint}; " + (
            "it is started again for the next call" if again else
            "it had been restarted already and is not started again"))


def runner_version() -> str:
    """The installed distribution's version (what MCP peers are told we are)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("yaml-agent-runner")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "0+source"


async def _list_tools(client: Any) -> list[Any]:
    tools: list[Any] = []
    cursor = None
    for _ in range(MAX_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None or len(tools) >= MAX_TOOLS:
            break
    return tools[:MAX_TOOLS]


def _session_gone(exc: Any) -> bool:
    """An HTTP server that forgot the session (404): the request was not processed."""
    from mcp.types import INVALID_REQUEST

    return exc.error.code == INVALID_REQUEST and \
        "session terminated" in exc.error.message.lower()


def _reason(exc: BaseException) -> str:
    """The first real cause inside what the SDK raised (exception groups included)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, asyncio.CancelledError) or type(exc).__name__ == "Cancelled":
        return "cancelled"
    error = getattr(exc, "error", None)
    message = getattr(error, "message", None) or str(exc) or type(exc).__name__
    if isinstance(exc, FileNotFoundError):
        return f"command not found ({exc.filename or message})"
    return f"{type(exc).__name__}: {message}"[:500]


# ---------------------------------------------------------------------------- results


def describe_result(result: Any, max_chars: int) -> str:
    """A CallToolResult as the text a model reads: text and embedded text resources as they
    are, structured content as JSON when there is no text, images, audio and binary
    resources described (kind, MIME type, size) rather than dumped. Stops reading once
    `max_chars` are gathered."""
    parts: list[str] = []
    size = 0
    for item in result.content or ():
        kind = getattr(item, "type", "")
        if kind == "text":
            text = item.text
        elif kind in ("image", "audio"):
            text = f"[{kind}: {item.mime_type or 'unknown type'}, {_size(item.data)}]"
        elif kind == "resource":
            res = item.resource
            mime = getattr(res, "mime_type", None) or "unknown type"
            if getattr(res, "text", None) is not None:
                text = f"[resource {res.uri}]\n{res.text}"
            else:
                text = f"[resource {res.uri}: {mime}, {_size(getattr(res, 'blob', ''))}]"
        elif kind == "resource_link":
            text = f"[resource link: {item.uri}" + (f" ({item.name})" if item.name else "") + "]"
        else:
            text = f"[{kind or 'unknown'} content]"
        parts.append(text)
        size += len(text)
        if size > max_chars:
            break
    structured = getattr(result, "structured_content", None)
    if structured is not None and not any(p.strip() for p in parts):
        parts.append(json.dumps(structured, ensure_ascii=False, default=str))
    return "\n".join(parts)


def _size(b64: str) -> str:
    n = len(b64 or "") * 3 // 4
    return f"{n / 1024:.1f} KB" if n >= 1024 else f"{n} bytes"


def definition_hash(tool: Any) -> str:
    """A hash of everything a server says about a tool (name, title, description, schemas,
    annotations): a change to any of them is a new definition."""
    data = tool.model_dump(mode="json", by_alias=True, exclude_none=True,
                           include={"name", "title", "description", "input_schema",
                                    "output_schema", "annotations"})
    text = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()
