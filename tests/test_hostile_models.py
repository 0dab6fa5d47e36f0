"""Hostile and careless model servers (issue 9, items 2 and 12), met through the real call path.

* Fallbacks get their own connection settings, never the primary's: two scripted servers on
  127.0.0.1 that record every request's headers show where each model's request went and with
  which key. A string fallback goes to its provider's own server, which the tests point at a
  local one through the variable LiteLLM reads for it (`OPENAI_API_BASE`, `GROQ_API_BASE`,
  `ANTHROPIC_API_BASE`), so no request leaves the machine.
* A reply is read only up to `model.max_reply_bytes`, raw and decoded, streamed or not: a raw
  HTTP server plays an endless body, a gzip bomb (1 MB expanding to 1 GiB, made lazily from
  one repeated deflate block) and endless or one-line SSE streams; each ends with a typed
  error, and the process's peak memory stays far below what the reply would take.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

import runner
from runner.errors import ModelProviderError, SpecError, SpecErrors
from runner.models._litellm import NO_KEY, Inflater
from runner.models.litellm import LiteLLMModel
from runner.resolve import resolve
from runner.spec import ModelSpec, load_spec
from runner.testing import FakeClock, ScriptedOpenAIServer

GUARD_S = 90.0  # no call in this file may take longer, whatever breaks
ANSWER = "Thought: I know it\nFinal Answer: recovered"
PRIMARY_KEY = "sk-primary-4e1d0b7a93c2"
BACKUP_KEY = "sk-backup-8f2a6c1e5d07"
PROVIDER_KEYS = {"OPENAI_API_KEY": "sk-openai-1c9e4b2a7d60",
                 "GROQ_API_KEY": "gsk-groq-5a3f8e0d2b91",
                 "ANTHROPIC_API_KEY": "sk-ant-7b2d9c4e1f08",
                 "HOSTED_VLLM_API_KEY": "sk-vllm-2e8b5d1c9a47",
                 "DEEPINFRA_API_KEY": "sk-deepinfra-6d0a3f7c2e15"}
"""Every provider key a user may have in the environment; none may reach a host it is not for."""


@pytest.fixture(params=["direct", "litellm"])
def transport(request: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("RUNNER_TRANSPORT", "auto" if request.param == "direct" else "litellm")
    return request.param


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project root (pyproject.toml marks it) that is also the working directory."""
    monkeypatch.delenv("RUNNER_ROOT", raising=False)
    (tmp_path / "pyproject.toml").write_text("")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def complete(m: LiteLLMModel, **kw: Any) -> Any:
    """One call of `m`, failing the test instead of hanging past GUARD_S."""
    async def go() -> Any:
        return await asyncio.wait_for(
            m.complete([{"role": "user", "content": "What is 2+2?"}], **kw), GUARD_S)

    return asyncio.run(go())


# =========================================================================== item 2: fallbacks

class RecordingServer(ScriptedOpenAIServer):
    """The scripted server, also keeping each request's path and headers; it answers Anthropic's
    /v1/messages too (with `ANSWER`)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, dict[str, str]]] = []
        """(path, headers by lower-case name) of every request."""

    def reset(self) -> None:
        super().reset()
        self.seen = []

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_post("/v1/messages", self._messages)
        return app

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.path, {k.lower(): v for k, v in request.headers.items()}))
        return await super()._chat(request)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.path, {k.lower(): v for k, v in request.headers.items()}))
        body = await request.json()
        self.requests.append(body)
        return web.json_response({
            "id": "msg_scripted", "type": "message", "role": "assistant", "model": body["model"],
            "content": [{"type": "text", "text": ANSWER}], "stop_reason": "end_turn",
            "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 5}})

    def models(self) -> list[str]:
        return [r["model"] for r in self.requests]

    def headers_text(self) -> str:
        """Every header of every request, as one text to search for a key."""
        return "\n".join(f"{k}: {v}" for _, h in self.seen for k, v in h.items())


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[RecordingServer, RecordingServer]]:
    a, b = RecordingServer().start(), RecordingServer().start()
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture
def pair(servers: tuple[RecordingServer, RecordingServer], monkeypatch: pytest.MonkeyPatch
         ) -> tuple[RecordingServer, RecordingServer]:
    """Server A (the primary's, failing) and server B, emptied; every provider key is set."""
    for server in servers:
        server.reset()
    for name, value in PROVIDER_KEYS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PRIMARY_KEY", PRIMARY_KEY)
    monkeypatch.setenv("BACKUP_KEY", BACKUP_KEY)
    for name in ("OPENAI_API_BASE", "OPENAI_BASE_URL", "GROQ_API_BASE", "ANTHROPIC_API_BASE",
                 "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    servers[0].default = {"status": 500, "body": json.dumps({"error": {"message": "down"}})}
    return servers


def run_agent(project: Path, model: dict[str, Any]) -> runner.RunResult:
    """A ReAct agent with `model` settings, run once (backoff waits on a FakeClock)."""
    data = {"version": 1, "name": "hostile",
            "model": {"retries": 1, "backoff_s": 0.01, **model},
            "loop": {"style": "react", "max_iterations": 2}, "memory": {"backend": "none"},
            "checkpoint": {"enabled": False}, "trace": {"enabled": False}}
    path = project / "hostile.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    agent = runner.Agent(runner.load_spec(path), clock=FakeClock(), checkpoints=False)
    try:
        return asyncio.run(asyncio.wait_for(agent.run("What is 2+2?"), GUARD_S))
    except TimeoutError:
        pytest.fail(f"the run was still going after {GUARD_S} s")


def primary(a: RecordingServer, **more: Any) -> dict[str, Any]:
    return {"id": "openai/primary", "api_base": a.url, "api_key_env": "PRIMARY_KEY", **more}


def test_a_fallback_entry_goes_to_its_own_server_with_its_own_key(
        pair: tuple[RecordingServer, RecordingServer], project: Path, transport: str) -> None:
    a, b = pair
    b.script(ANSWER)
    result = run_agent(project, primary(a, fallbacks=[
        {"id": "openai/backup", "api_base": b.url, "api_key_env": "BACKUP_KEY"}]))
    assert result.status == "finished" and result.answer == "recovered", result.error
    assert a.models() == ["primary", "primary"]  # retries + 1, and never the fallback
    assert b.models() == ["backup"]
    assert [h.get("authorization") for _, h in a.seen] == [f"Bearer {PRIMARY_KEY}"] * 2
    assert [h.get("authorization") for _, h in b.seen] == [f"Bearer {BACKUP_KEY}"]
    assert PRIMARY_KEY not in b.headers_text()
    assert not [k for k in PROVIDER_KEYS.values() if k in a.headers_text() + b.headers_text()]


@pytest.mark.parametrize("fallback,base_var,base,key_var,header", [
    ("openai/gpt-4o-mini", "OPENAI_API_BASE", "{url}", "OPENAI_API_KEY", "authorization"),
    ("groq/llama-3.1-8b-instant", "GROQ_API_BASE", "{url}", "GROQ_API_KEY", "authorization"),
    ("anthropic/claude-3-5-haiku-latest", "ANTHROPIC_API_BASE", "{root}", "ANTHROPIC_API_KEY",
     "x-api-key"),
])
def test_a_string_fallback_goes_to_its_providers_own_server_with_its_own_key(
        pair: tuple[RecordingServer, RecordingServer], project: Path, transport: str,
        monkeypatch: pytest.MonkeyPatch, fallback: str, base_var: str, base: str, key_var: str,
        header: str) -> None:
    """The README's case: a local primary that fails, then `fallbacks: [openai/gpt-4o-mini]`.
    The fallback's provider default is pointed at server B through the variable LiteLLM reads."""
    a, b = pair
    monkeypatch.setenv(base_var, base.format(url=b.url, root=b.url.removesuffix("/v1")))
    b.script(ANSWER)
    result = run_agent(project, primary(a, fallbacks=[fallback]))
    assert a.models() == ["primary", "primary"], "the fallback was sent to the primary's server"
    assert b.seen, result.error
    assert [h.get(header, "").removeprefix("Bearer ") for _, h in b.seen] == [
        PROVIDER_KEYS[key_var]] * len(b.seen)
    if not fallback.startswith("groq/"):  # LiteLLM's Groq reader wants a `service_tier`
        assert result.status == "finished" and len(b.seen) == 1, result.error
    others = [k for n, k in PROVIDER_KEYS.items() if n != key_var] + [PRIMARY_KEY]
    assert not [k for k in others if k in b.headers_text()]
    assert not [k for k in PROVIDER_KEYS.values() if k in a.headers_text()]


def test_a_fallback_never_gets_the_primarys_options(
        pair: tuple[RecordingServer, RecordingServer], project: Path, transport: str) -> None:
    """Options can carry credentials (`extra_headers`): each model sends only its own."""
    a, b = pair
    b.script(ANSWER)
    result = run_agent(project, primary(
        a, options={"extra_headers": {"X-Primary-Token": "primary-token-3f9c"}},
        fallbacks=[{"id": "openai/backup", "api_base": b.url,
                    "options": {"extra_headers": {"X-Backup": "yes"}}}]))
    assert result.status == "finished", result.error
    assert all(h.get("x-primary-token") == "primary-token-3f9c" for _, h in a.seen)
    assert "primary-token-3f9c" not in b.headers_text()
    assert b.seen[0][1].get("x-backup") == "yes"


@pytest.mark.parametrize("model_id,header", [
    ("openai/scripted", "authorization"), ("gpt-4o-mini", "authorization"),
    ("hosted_vllm/scripted", "authorization"), ("deepinfra/scripted", "authorization"),
    ("anthropic/claude-3-5-haiku-latest", "x-api-key")])
def test_api_base_without_api_key_env_sends_no_key_from_the_environment(
        pair: tuple[RecordingServer, RecordingServer], transport: str, model_id: str,
        header: str) -> None:
    a, _ = pair
    a.script("Final Answer: 4")
    base = a.url.removesuffix("/v1") if model_id.startswith("anthropic/") else a.url
    reply = complete(LiteLLMModel(ModelSpec(id=model_id, api_base=base, retries=0)))
    assert "Final Answer: " in reply.text and len(a.seen) == 1
    assert not [k for k in PROVIDER_KEYS.values() if k in a.headers_text()]
    assert a.seen[0][1].get(header) in (None, f"Bearer {NO_KEY}", NO_KEY)


def test_an_auth_error_moves_on_to_a_fallback_with_its_own_key(
        pair: tuple[RecordingServer, RecordingServer], project: Path, transport: str) -> None:
    """The primary's key is rejected: the fallback, with its own key, is still tried."""
    a, b = pair
    a.default = {"status": 401, "body": json.dumps({"error": {"message": "bad key"}})}
    b.script(ANSWER)
    result = run_agent(project, primary(a, fallbacks=[
        {"id": "openai/backup", "api_base": b.url, "api_key_env": "BACKUP_KEY"}]))
    assert result.status == "finished", result.error
    assert a.models() == ["primary"] and b.models() == ["backup"]


# --------------------------------------------------------------------------- the spec

def write_spec(project: Path, model: str) -> Path:
    path = project / "bad.yaml"
    path.write_text(f"model:\n  id: fake/x\n  fallbacks:\n{model}")
    return path


def errors_of(path: Path) -> list[str]:
    with pytest.raises(SpecError) as info:
        resolve(load_spec(path, [], env={}))
    exc = info.value
    return [e.render() for e in exc.errors] if isinstance(exc, SpecErrors) else [exc.render()]


def test_a_fallback_entry_is_checked_strictly(project: Path) -> None:
    path = write_spec(project, "    - openai/gpt-4o-mini\n    - id: openai/x\n"
                               "      api_bse: http://127.0.0.1:1/v1\n")
    assert errors_of(path) == [("bad.yaml:6:7: model.fallbacks[1].api_bse: unknown key "
                                "'api_bse' (did you mean 'api_base'?)")]


@pytest.mark.parametrize("entry,where,reason", [
    ("    - api_base: http://127.0.0.1:1/v1\n", "model.fallbacks[0].id", "missing required key"),
    ("    - 7\n", "model.fallbacks[0]", "a fallback is a model id"),
    ("    - id: openai/x\n      api_key_env: sk-not-a-name\n", "model.fallbacks[0].api_key_env",
     "should match pattern"),
    ("    - id: fak/y\n", "model.fallbacks[0]",
     "unknown model provider 'fak' (did you mean 'fake'?)"),
])
def test_a_bad_fallback_entry_is_a_spec_error(project: Path, entry: str, where: str,
                                              reason: str) -> None:
    (problem,) = errors_of(write_spec(project, entry))
    assert f": {where}: " in problem and reason in problem, problem


def test_a_fallback_is_written_back_as_it_was_given() -> None:
    """`runner explain` and the JSON Schema: an id stays an id, an entry a mapping."""
    spec = ModelSpec.model_validate({"fallbacks": [
        "openai/gpt-4o-mini", {"id": "groq/llama3", "api_key_env": "GROQ_KEY"}]})
    dumped = spec.model_dump(mode="json")["fallbacks"]
    assert dumped[0] == "openai/gpt-4o-mini" and dumped[1]["api_key_env"] == "GROQ_KEY"
    assert ModelSpec.model_validate({"fallbacks": dumped}) == spec
    assert spec.for_fallback(1).api_base is None and spec.for_fallback(1).id == "groq/llama3"
    items = ModelSpec.model_json_schema()["properties"]["fallbacks"]["items"]
    assert {"type": "string"} in items["anyOf"]


# =========================================================================== item 12: reply size

BOMB_MB = 1
"""The gzip bomb: this many MB on the wire, a GiB each once decoded (kept small: a client
without a cap holds it several times over before its test fails)."""
SAFETY_BYTES = 512 * 1024 * 1024
"""An endless reply stops here anyway, so a client without a cap fails its test, not the machine."""
PEAK_GROWTH_KB = 500 * 1024


def _gzip_block() -> tuple[bytes, bytes]:
    """(start, block) of a gzip stream of zeros: start, then block repeated, decodes to 1 MiB per
    piece; the stream never ends, which no capped reader finds out."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    mib = bytes(1 << 20)
    start = c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH)
    return start, c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH)


def _chat_json(content: str) -> bytes:
    return json.dumps({"id": "chatcmpl-h", "object": "chat.completion", "created": 0,
                       "model": "hostile", "choices": [{"index": 0, "finish_reason": "stop",
                       "message": {"role": "assistant", "content": content}}],
                       "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                 "total_tokens": 2}}).encode()


_SSE_CHUNK = b'data: {"id":"c","object":"chat.completion.chunk","created":0,"model":"hostile",' \
             b'"choices":[{"index":0,"delta":{"content":"tok "},"finish_reason":null}]}\n\n'


class HostileServer:
    """A raw HTTP/1.1 server on 127.0.0.1: every request gets the reply `mode` names."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.content = "Final Answer: 4"
        self.requests = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> HostileServer:
        ready = threading.Event()

        async def begin() -> None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()

        threading.Thread(target=self._loop.run_forever, daemon=True, name="hostile").start()
        asyncio.run_coroutine_threadsafe(begin(), self._loop)
        ready.wait(10)
        return self

    def stop(self) -> None:
        async def end() -> None:
            assert self._server is not None
            self._server.close()

        asyncio.run_coroutine_threadsafe(end(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            body = await reader.readexactly(int(length.group(1)) if length else 0)
            self.requests += 1
            await getattr(self, f"_{self.mode}")(writer, json.loads(body or b"{}"))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client hung up, as it should
        finally:
            writer.close()

    @staticmethod
    def _head(status: str, content_type: str, *extra: str) -> bytes:
        lines = [f"HTTP/1.1 {status}", f"Content-Type: {content_type}", "Connection: close", *extra]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def _forever(self, writer: asyncio.StreamWriter, first: bytes, piece: bytes) -> None:
        writer.write(first)
        sent = len(first)
        while sent < SAFETY_BYTES:
            writer.write(piece)
            sent += len(piece)
            await writer.drain()

    async def _ok(self, writer: asyncio.StreamWriter, body: dict[str, Any]) -> None:
        data = _chat_json(self.content)
        writer.write(self._head("200 OK", "application/json", f"Content-Length: {len(data)}")
                     + data)

    async def _gzip_ok(self, writer: asyncio.StreamWriter, body: dict[str, Any]) -> None:
        data = gzip.compress(_chat_json(self.content))
        writer.write(self._head("200 OK", "application/json", "Content-Encoding: gzip",
                                f"Content-Length: {len(data)}") + data)

    async def _endless_json(self, writer: asyncio.StreamWriter, body: dict[str, Any]) -> None:
        await self._forever(writer, self._head("200 OK", "application/json")
                            + b'{"id": "x", "choices": [{"message": {"content": "', b"a" * 65536)

    async def _endless_500(self, writer: asyncio.StreamWriter, body: dict[str, Any]) -> None:
        await self._forever(writer, self._head("500 Internal Server Error", "text/plain")
                            + b"error ", b"e" * 65536)

    async def _gzip_bomb(self, writer: asyncio.StreamWriter, body: dict[str, Any],
                         content_type: str = "application/json") -> None:
        start, block = _gzip_block()
        count = BOMB_MB * (1 << 20) // len(block)
        writer.write(self._head("200 OK", content_type, "Content-Encoding: gzip",
                                f"Content-Length: {len(start) + count * len(block)}") + start)
        for _ in range(count):
            writer.write(block)
            await writer.drain()

    async def _sse_gzip_bomb(self, writer: asyncio.StreamWriter, body: dict[str, Any]) -> None:
        await self._gzip_bomb(writer, body, "text/event-stream")

    async def _sse_endless(self, writer: asyncio.StreamWriter, body: dict[str, Any]) -> None:
        """Small chunks, each different (LiteLLM ends a stream that repeats one chunk)."""
        writer.write(self._head("200 OK", "text/event-stream"))
        for i in range(SAFETY_BYTES // len(_SSE_CHUNK)):
            writer.write(_SSE_CHUNK.replace(b'"tok ', f'"t{i} '.encode()))
            if i % 64 == 0:
                await writer.drain()

    async def _sse_line(self, writer: asyncio.StreamWriter, body: dict[str, Any]) -> None:
        await self._forever(writer, self._head("200 OK", "text/event-stream")
                            + _SSE_CHUNK[:-40], b"a" * 65536)  # one line that never ends


@pytest.fixture(scope="module")
def hostile_server() -> Iterator[HostileServer]:
    server = HostileServer().start()
    yield server
    server.stop()


@pytest.fixture
def hostile(hostile_server: HostileServer, monkeypatch: pytest.MonkeyPatch) -> HostileServer:
    hostile_server.mode, hostile_server.requests = "ok", 0
    hostile_server.content = "Final Answer: 4"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    return hostile_server


def peak_kb(reset: bool = False) -> int:
    """The process's peak resident memory (VmHWM) in kB; `reset` first sets the peak to the
    memory in use now, so that an earlier test's peak does not hide this one's."""
    if reset:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass  # an older kernel: the peak since the process started, a weaker bound
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1))  # type: ignore[union-attr]


CAP = "max_reply_bytes (16,777,216 bytes"


@pytest.mark.parametrize("mode,via,says", [
    ("endless_json", "direct", CAP), ("endless_json", "litellm", CAP),
    ("gzip_bomb", "direct", CAP + " decompressed"), ("gzip_bomb", "litellm", CAP + " decompressed"),
    ("sse_line", "stream", CAP), ("sse_gzip_bomb", "stream", CAP + " decompressed"),
    # small chunks without end: far more chunks than max_tokens (512) allows, long before the cap
    ("sse_endless", "stream", "more than 1,088 chunks for a reply of at most 512 tokens")])
def test_a_reply_past_the_cap_is_a_typed_error_in_bounded_memory(
        hostile: HostileServer, monkeypatch: pytest.MonkeyPatch, mode: str, via: str,
        says: str) -> None:
    monkeypatch.setenv("RUNNER_TRANSPORT", "auto" if via == "direct" else "litellm")
    hostile.mode = mode
    m = LiteLLMModel(ModelSpec(id="openai/hostile", api_base=hostile.url, retries=0,
                               timeout_s=GUARD_S - 10, stream=via == "stream"))
    before = peak_kb(reset=True)
    with pytest.raises(ModelProviderError) as info:
        complete(m)
    grown = peak_kb() - before
    assert m.transport == ("direct" if via == "direct" else "litellm")
    assert says in str(info.value), str(info.value)
    assert str(info.value).startswith("openai/hostile: ") and not info.value.retryable
    assert hostile.requests == 1
    assert grown < PEAK_GROWTH_KB, f"peak memory grew by {grown // 1024} MB"


def test_an_oversized_reply_is_not_retried(hostile: HostileServer, project: Path,
                                           transport: str) -> None:
    """No retry storm: the error is final for this model, whatever `retries` says."""
    hostile.mode = "gzip_bomb"
    path = project / "bomb.yaml"
    path.write_text(yaml.safe_dump({
        "version": 1, "model": {"id": "openai/hostile", "api_base": hostile.url, "retries": 3},
        "loop": {"style": "react"}, "memory": {"backend": "none"},
        "checkpoint": {"enabled": False}, "trace": {"enabled": False}}))
    agent = runner.Agent(runner.load_spec(path), clock=FakeClock(), checkpoints=False)
    result = asyncio.run(asyncio.wait_for(agent.run("q"), GUARD_S))
    assert result.status == "model_provider_error" and "max_reply_bytes" in result.error
    assert hostile.requests == 1


def test_an_endless_error_body_is_cut_not_read(hostile: HostileServer, transport: str) -> None:
    hostile.mode = "endless_500"
    before = peak_kb(reset=True)
    with pytest.raises(ModelProviderError, match="openai/hostile"):
        complete(LiteLLMModel(ModelSpec(id="openai/hostile", api_base=hostile.url, retries=0)))
    assert peak_kb() - before < PEAK_GROWTH_KB and hostile.requests == 1


@pytest.mark.parametrize("mode", ["ok", "gzip_ok"])
def test_max_reply_bytes_sets_the_cap(hostile: HostileServer, transport: str, mode: str) -> None:
    hostile.mode = mode
    spec = ModelSpec(id="openai/hostile", api_base=hostile.url, retries=0, max_reply_bytes=65536)
    hostile.content = "x" * 60_000
    assert complete(LiteLLMModel(spec)).text == "x" * 60_000  # gzip decoded, under the cap
    hostile.content = "x" * 70_000
    with pytest.raises(ModelProviderError, match=r"max_reply_bytes \(65,536 bytes"):
        complete(LiteLLMModel(spec))


def test_the_inflater_is_bounded_and_reads_every_gzip_and_deflate_form() -> None:
    text = b"hello world " * 1000
    for data, encoding in [(gzip.compress(text) + gzip.compress(text), "gzip"),  # two members
                           (zlib.compress(text), "deflate"),
                           (zlib.compress(text)[2:-4], "deflate")]:  # raw deflate, no header
        inflater = Inflater(encoding)
        out = b"".join(inflater.feed(data[i:i + 100], 1 << 20) for i in range(0, len(data), 100))
        assert out == text * (2 if data[:2] == b"\x1f\x8b" else 1)
    start, block = _gzip_block()
    assert len(Inflater("gzip").feed(start + block * 8, 1000)) == 1000
