"""Both model transports (direct: LiteLLM's translation over the runner's aiohttp session;
litellm: litellm.acompletion) against the scripted server: the same Completion, the same
requests on the wire, the same errors."""

from __future__ import annotations

import asyncio
import gc
import json
import warnings
from typing import Any

import pytest

from runner.errors import ModelAuthError, ModelProviderError, ModelRateLimited, ModelTimeout
from runner.models.litellm import LiteLLMModel
from runner.spec import ModelSpec

TOOLS = [{"type": "function", "function": {
    "name": "calculator", "description": "Evaluates an arithmetic expression.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                   "required": ["expression"]}}}]
ASK = [{"role": "user", "content": "What is 2+2?"}]


@pytest.fixture(params=["direct", "litellm"])
def transport(request: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("RUNNER_TRANSPORT", "auto" if request.param == "direct" else "litellm")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    return request.param


def model(server: Any, **kw: Any) -> LiteLLMModel:
    spec = ModelSpec(**{"id": "openai/scripted", "api_base": server.url, "retries": 0, **kw})
    return LiteLLMModel(spec)


def complete(m: LiteLLMModel, messages: list[dict[str, Any]] = ASK, **kw: Any) -> Any:
    async def go() -> Any:
        return await m.complete([dict(x) for x in messages], **kw)

    return asyncio.run(go())


def test_text_reply(server: Any, transport: str) -> None:
    server.script({"content": "Final Answer: 4", "usage": {"prompt_tokens": 12,
                                                           "completion_tokens": 3}})
    m = model(server)
    reply = complete(m, stop=["\nObservation:"])
    assert m.transport == transport
    assert reply.text == "Final Answer: 4" and reply.tool_calls == []
    assert reply.finish_reason == "stop"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (12, 3)
    assert reply.model == "openai/scripted" and reply.cost_usd is None
    body = server.requests[-1]
    assert body["stop"] == ["\nObservation:"] and body["max_tokens"] == 512
    assert "stream" not in body


def test_tool_calls(server: Any, transport: str) -> None:
    server.script({"tool_calls": [{"id": "call_a", "name": "calculator",
                                   "arguments": {"expression": "2+2"}},
                                  {"id": "call_b", "name": "calculator",
                                   "arguments": {"expression": "3*3"}}]})
    reply = complete(model(server), tools=TOOLS)
    assert reply.finish_reason == "tool_calls" and reply.text == ""
    assert [(c.id, c.name, json.loads(c.arguments)) for c in reply.tool_calls] == [
        ("call_a", "calculator", {"expression": "2+2"}),
        ("call_b", "calculator", {"expression": "3*3"})]
    assert server.requests[-1]["tools"] == TOOLS


def test_streaming_falls_back_to_acompletion(server: Any, transport: str) -> None:
    server.script({"content": "Thought: add\nFinal Answer: 4"},
                  {"tool_calls": [{"id": "call_s", "name": "calculator",
                                   "arguments": {"expression": "1+1"}}]})
    m = model(server, stream=True)
    assert m.transport == "litellm"
    assert complete(m).text == "Thought: add\nFinal Answer: 4"
    reply = complete(m, tools=TOOLS)
    assert [(c.name, json.loads(c.arguments)) for c in reply.tool_calls] == [
        ("calculator", {"expression": "1+1"})]
    assert all(r.get("stream") is True for r in server.requests)


def test_same_requests_on_the_wire(server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A conversation with tool results: both transports send the same bodies."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    history = [{"role": "system", "content": "Be brief."}, *ASK,
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function",
                    "function": {"name": "calculator", "arguments": '{"expression": "2+2"}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "4"}]
    bodies = {}
    for name, setting in (("direct", "auto"), ("litellm", "litellm")):
        monkeypatch.setenv("RUNNER_TRANSPORT", setting)
        server.reset()
        server.script("4", "4")
        m = model(server, temperature=0.2, options={"seed": 7, "top_p": 0.9})
        complete(m, history, tools=TOOLS)
        complete(m, history, stop=["\nObservation:"])
        assert m.transport == name
        bodies[name] = list(server.requests)
    assert bodies["direct"] == bodies["litellm"]


def test_cost_from_litellm_prices(server: Any, transport: str) -> None:
    server.script({"content": "hi", "usage": {"prompt_tokens": 1000, "completion_tokens": 100}})
    reply = complete(model(server, id="openai/gpt-4o-mini"))
    assert reply.cost_usd == pytest.approx(1000 * 0.15e-6 + 100 * 0.6e-6)


@pytest.mark.parametrize("status", [401, 403])
def test_auth_error_names_the_variable_not_the_key(server: Any, transport: str, status: int,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """No api_base: the provider's own server (here OPENAI_API_BASE) and its own variable."""
    monkeypatch.setenv("OPENAI_API_BASE", server.url)
    server.script({"status": status, "body": json.dumps({"error": {
        "message": "Incorrect API key provided: sk-test-not-a-real-key"}})})
    with pytest.raises(ModelAuthError) as info:
        complete(LiteLLMModel(ModelSpec(id="openai/scripted", retries=0)))
    assert "$OPENAI_API_KEY" in str(info.value) and "sk-test" not in str(info.value)
    assert not info.value.retryable


def test_auth_error_at_an_api_base_without_api_key_env_says_no_key_was_sent(
        server: Any, transport: str) -> None:
    """An api_base without api_key_env gets no key from the environment (issue 9, item 2)."""
    server.script({"status": 401, "body": json.dumps({"error": {"message": "key needed"}})})
    with pytest.raises(ModelAuthError) as info:
        complete(model(server))
    assert "no key was sent" in str(info.value) and "api_key_env" in str(info.value)
    assert "OPENAI_API_KEY" not in str(info.value)


def test_auth_error_names_api_key_env(server: Any, transport: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCRIPTED_KEY", "sk-scripted-secret")
    server.script({"status": 401, "body": "{}"})
    with pytest.raises(ModelAuthError, match=r"\$SCRIPTED_KEY") as info:
        complete(model(server, api_key_env="SCRIPTED_KEY"))
    assert "sk-scripted-secret" not in str(info.value)
    assert server.requests[-1] is not None


def test_rate_limit_with_retry_after(server: Any, transport: str) -> None:
    server.script({"status": 429, "headers": {"Retry-After": "7"}, "body": json.dumps(
        {"error": {"message": "slow down", "type": "rate_limit"}})})
    with pytest.raises(ModelRateLimited) as info:
        complete(model(server))
    assert info.value.retryable and info.value.retry_after == 7


@pytest.mark.parametrize("status,retryable", [(500, True), (503, True), (400, False),
                                              (404, False), (422, False)])
def test_status_errors(server: Any, transport: str, status: int, retryable: bool) -> None:
    server.script({"status": status, "body": json.dumps({"error": {
        "message": f"scripted {status} for sk-test-not-a-real-key"}})})
    with pytest.raises(ModelProviderError) as info:
        complete(model(server))
    assert info.value.retryable is retryable
    assert "openai/scripted" in str(info.value) and f"scripted {status}" in str(info.value)
    assert "sk-test-not-a-real-key" not in str(info.value)


@pytest.mark.parametrize("body,content_type,retryable", [
    ("<html><body>Welcome to nginx!</body></html>", "text/html", False),
    ("not json at all", "application/json", False),
    (json.dumps({"id": "x", "object": "chat.completion", "choices": []}), "application/json",
     True),
    (json.dumps({"hello": "world"}), "application/json", True),
])
def test_malformed_replies(server: Any, transport: str, body: str, content_type: str,
                           retryable: bool) -> None:
    server.script({"status": 200, "body": body, "content_type": content_type})
    with pytest.raises(ModelProviderError, match="openai/scripted") as info:
        complete(model(server))
    assert info.value.retryable is retryable


def test_html_error_page(server: Any, transport: str) -> None:
    server.script({"status": 502, "body": "<html><h1>502 Bad Gateway</h1></html>",
                   "content_type": "text/html"})
    with pytest.raises(ModelProviderError) as info:
        complete(model(server))
    assert info.value.retryable


def test_timeout(server: Any, transport: str) -> None:
    server.script({"delay": 1.0, "content": "late"})
    with pytest.raises(ModelTimeout, match="0.2s"):
        complete(model(server, timeout_s=0.2))


def test_connection_refused_is_retryable(transport: str) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m = LiteLLMModel(ModelSpec(id="openai/scripted", api_base=f"http://127.0.0.1:{port}/v1",
                               retries=0))
    with pytest.raises(ModelProviderError) as info:
        complete(m)
    assert info.value.retryable


def test_switch_and_coverage(server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNNER_TRANSPORT", raising=False)
    for model_id in ("openai/scripted", "hosted_vllm/scripted", "lm_studio/scripted",
                     "gpt-4o-mini"):
        assert model(server, id=model_id).transport == "direct", model_id
    for model_id in ("anthropic/claude-3-5-haiku-latest", "ollama/llama3", "groq/llama3-8b"):
        assert model(server, id=model_id).transport == "litellm", model_id
    # LiteLLM settings in options (not request parameters) keep acompletion
    assert model(server, options={"num_retries": 2}).transport == "litellm"
    assert model(server, options={"top_k": 5}).transport == "direct"
    # LiteLLM callbacks only hear calls made through acompletion
    from runner.models.litellm import import_litellm

    monkeypatch.setattr(import_litellm(), "success_callback", ["langfuse"])
    assert model(server).transport == "litellm"
    monkeypatch.undo()
    monkeypatch.setenv("RUNNER_TRANSPORT", "litellm")
    assert model(server).transport == "litellm"


def test_hosted_vllm_direct(server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNNER_TRANSPORT", raising=False)
    server.script("hello")
    m = model(server, id="hosted_vllm/scripted", options={"top_k": 5})
    assert complete(m).text == "hello" and m.transport == "direct"
    assert server.requests[-1]["top_k"] == 5 and server.requests[-1]["model"] == "scripted"


def test_session_closed_with_its_loop(server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from runner.models import direct

    monkeypatch.delenv("RUNNER_TRANSPORT", raising=False)
    server.default = "ok"
    m = model(server)
    sessions = []

    async def go() -> None:
        await m.complete(list(ASK))
        await m.complete(list(ASK))
        sessions.append(direct._sessions[asyncio.get_running_loop()][0])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(go())
        asyncio.run(go())  # a new loop gets its own session
        gc.collect()
    assert len(sessions) == 2 and sessions[0] is not sessions[1]
    assert all(s.closed for s in sessions)
    assert not [w for w in caught if "nclosed" in str(w.message)]


def test_embedded_model_that_cannot_load_fails_the_run_with_a_typed_error(tmp_path: Any) -> None:
    """Weights that will not load are a model_provider_error naming the model, not a crash."""
    import runner

    spec = tmp_path / "s.yaml"
    spec.write_text("version: 1\nmodel: {id: local/gemma-3-270m, retries: 0, options: "
                    f"{{model_path: {tmp_path / 'missing.gguf'}}}}}\nmemory: {{backend: none}}\n"
                    "checkpoint: {enabled: false}\ntrace: {enabled: false}\n")
    result = runner.run_agent(spec, "q")
    assert result.status == "model_provider_error", result.error
    assert result.error.startswith("local/gemma-3-270m: ") and "\n" not in result.error


def test_the_same_tools_on_every_call_are_cleaned_the_same_way(
        server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The direct transport cleans an agent's tools list once (LiteLLM drops a pattern
    Python's re cannot compile) and reuses it: every call sends what litellm.acompletion
    sends, call after call."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    tools = [{"type": "function", "function": {
        "name": "lookup", "description": "Finds a word.",
        "parameters": {"type": "object", "required": ["word"], "properties": {
            "word": {"type": "string", "pattern": "^\\p{L}+$"}}}}}]
    bodies = {}
    for name, setting in (("direct", "auto"), ("litellm", "litellm")):
        monkeypatch.setenv("RUNNER_TRANSPORT", setting)
        server.reset()
        server.script("a", "b", "c")
        m = model(server)

        async def three() -> None:
            for _ in range(3):
                await m.complete([dict(x) for x in ASK], tools=tools)

        asyncio.run(three())
        assert m.transport == name
        bodies[name] = list(server.requests)
    sent = bodies["direct"]
    assert sent[0] == sent[1] == sent[2] == bodies["litellm"][0]
    assert "pattern" not in json.dumps(sent[0]["tools"])  # cleaned, each time
    assert "pattern" in json.dumps(tools)  # the agent's own list is left as it was


def test_the_connection_pool_is_sized_by_the_environment(
        server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from runner.errors import ModelError
    from runner.models import direct

    monkeypatch.delenv("RUNNER_TRANSPORT", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    monkeypatch.setenv("RUNNER_MAX_CONNECTIONS", "3")
    server.default = "ok"
    m = model(server)
    limits = []

    async def go() -> None:
        await asyncio.gather(*(m.complete(list(ASK)) for _ in range(5)))
        limits.append(direct._sessions[asyncio.get_running_loop()][0].connector.limit)

    asyncio.run(go())
    assert limits == [3] and len(server.requests) == 5
    for bad in ("many", "0", "-2"):
        monkeypatch.setenv("RUNNER_MAX_CONNECTIONS", bad)
        with pytest.raises(ModelError, match="RUNNER_MAX_CONNECTIONS"):
            direct.max_connections()
    monkeypatch.delenv("RUNNER_MAX_CONNECTIONS")
    assert 500 <= direct.max_connections() <= 4096
