"""The direct transport: LiteLLM translates and prices, the runner's own pooled aiohttp
session carries the request.

It covers the OpenAI-compatible providers that LiteLLM itself sends through its generic
OpenAI-compatible HTTP path: `openai` (and any `openai/...` model behind `api_base`),
`custom_openai`, `hosted_vllm`, and the OpenAI-compatible providers LiteLLM routes the same
way (`lm_studio`, `llamafile`, `litellm_proxy`, `deepinfra`, `perplexity`, ...),
non-streaming calls only. The provider's chat config builds the request
(`get_optional_params`, `validate_environment`, `get_complete_url`, `transform_request`) and
parses the reply (`transform_response`); LiteLLM's per-call logging object, callbacks, client
lookup and dispatch, which cost the most, are skipped. Measured by bench/step_overhead.py:
about 0.6-0.8 ms of client CPU per call, against 4-5 ms through `litellm.acompletion`.
The reply is read in pieces, and no further than `model.max_reply_bytes` raw or decoded
(gzip and deflate are decoded here, a bounded piece at a time).

All of a process's direct calls share one connection pool per event loop: at most
`RUNNER_MAX_CONNECTIONS` connections open at once (default: a quarter of the process's
file-descriptor limit, between 500 and 4,096), which is also the most requests in flight;
calls past it wait for a connection.
"""

from __future__ import annotations

import asyncio
import json
import os
import weakref
from typing import TYPE_CHECKING, Any

from .._files import fd_share
from ..errors import ModelError, ModelProviderError
from . import Message
from ..redact import clip, redact_text
from ._litellm import Inflater, ReplyLimit, api_key_for, import_litellm, internals, status_error

if TYPE_CHECKING:
    from ..spec import ModelSpec

__all__ = ["DirectTransport", "Unsupported", "transport_setting", "max_connections",
           "TRANSPORT_ENV", "CONNECTIONS_ENV"]

TRANSPORT_ENV = "RUNNER_TRANSPORT"
CONNECTIONS_ENV = "RUNNER_MAX_CONNECTIONS"

_ERROR_BODY_BYTES = 64 * 1024
"""Most of an error reply's body that is read: only a clipped snippet of it is shown."""

# Providers LiteLLM 1.106 sends through its generic OpenAI-compatible chat path
# (`_complete_custom_openai` / `_complete_hosted_vllm` in litellm/main.py, which hand the
# provider's chat config to BaseLLMHTTPHandler): the direct transport replays that path.
# Providers with their own branch before it in litellm's dispatch are left to acompletion.
_OWN_ROUTE = frozenset({
    "azure", "azure_text", "azure_ai", "deepseek", "text-completion-openai", "fireworks_ai",
    "together_ai", "heroku", "ragflow", "xai", "groq", "bedrock_mantle", "a2a", "gigachat",
    "sap", "aiohttp_openai", "cometapi", "minimax", "edenai", "fal_ai",
    # OAuth-style credentials and extra headers added in litellm's main.py
    "github_copilot", "chatgpt"})
_OPENAI_ROUTE = frozenset({
    "openai", "custom_openai", "deepinfra", "perplexity", "nvidia_nim", "cerebras", "baseten",
    "sambanova", "volcengine", "anyscale", "nebius", "wandb", "clarifai"})


def transport_setting() -> str:
    """`litellm` when RUNNER_TRANSPORT forces `litellm.acompletion`, else `auto`."""
    return "litellm" if os.environ.get(TRANSPORT_ENV, "").strip().lower() == "litellm" else "auto"


class _NullLogging:
    """Stands in for LiteLLM's per-call Logging object, which the translation only reports to."""

    model_call_details: dict[str, Any] = {}

    def pre_call(self, *args: Any, **kwargs: Any) -> None:
        pass

    def post_call(self, *args: Any, **kwargs: Any) -> None:
        pass


_NULL_LOGGING = _NullLogging()


def max_connections() -> int:
    """The pool's size: RUNNER_MAX_CONNECTIONS, else a quarter of the soft file-descriptor
    limit (each connection is one; traces, databases and tools need theirs), 500 to 4,096."""
    value = os.environ.get(CONNECTIONS_ENV, "").strip()
    if value:
        try:
            n = int(value)
        except ValueError:
            raise ModelError(f"{CONNECTIONS_ENV}={value[:40]!r}: expected a whole number of "
                             "connections") from None
        if n < 1:
            raise ModelError(f"{CONNECTIONS_ENV}={n}: expected at least 1")
        return n
    return fd_share(500, 4096)


# One pooled aiohttp session per event loop, closed when that loop shuts its async
# generators down (asyncio.run does), so nothing is left unclosed.
_sessions: weakref.WeakKeyDictionary[Any, tuple[Any, Any]] = weakref.WeakKeyDictionary()


async def _session() -> Any:
    loop = asyncio.get_running_loop()
    entry = _sessions.get(loop)
    if entry is not None and not entry[0].closed:
        return entry[0]
    import aiohttp

    session = aiohttp.ClientSession(
        # one limit for all hosts: most runs of a process call one server
        connector=aiohttp.TCPConnector(limit=max_connections(), limit_per_host=0,
                                       ttl_dns_cache=300, keepalive_timeout=120),
        # decoded by _read_body in bounded pieces; proxies from the environment: _proxy_for
        auto_decompress=False)

    async def close_with_loop() -> Any:
        try:
            yield
        finally:
            await session.close()

    closer = close_with_loop()
    await closer.__anext__()  # registered with the loop's async-generator shutdown
    _sessions[loop] = (session, closer)
    return session


_proxies: dict[str, tuple[Any, Any]] = {}


def _proxy_for(url: str) -> tuple[Any, Any]:
    """(proxy, proxy_auth) from HTTP(S)_PROXY / NO_PROXY for a URL, as aiohttp's trust_env
    would find them, but looked up once per URL instead of in a thread on every request."""
    hit = _proxies.get(url)
    if hit is None:
        from aiohttp.helpers import get_env_proxy_for_url
        from yarl import URL

        try:
            hit = get_env_proxy_for_url(URL(url))
        except LookupError:
            hit = (None, None)
        _proxies[url] = hit
    return hit


class Unsupported(Exception):
    """The direct transport cannot make this call the way LiteLLM would."""


class DirectTransport:
    """One OpenAI-compatible model called with LiteLLM's translation over the runner's session.

    Replays what `litellm.acompletion` does for these providers (message clean-up, parameter
    mapping, the provider chat config's request and response transforms), without LiteLLM's
    per-call logging object, callbacks, client lookup and dispatch, which cost the most.
    `acompletion()` returns LiteLLM's ModelResponse; HTTP errors raise runner ModelErrors.
    """

    def __init__(self, litellm: Any, spec: ModelSpec, model_id: str, model: str, provider: str,
                 config: Any) -> None:
        self.litellm, self.spec, self.id = litellm, spec, model_id
        self.model, self.provider, self.config = model, provider, config
        self._hosted_vllm = provider == "hosted_vllm"
        self._params: dict[Any, dict[str, Any]] = {}
        self._tools_key: tuple[Any, str | None] = (None, None)
        """The last tools list and its key: an agent passes the same list on every call."""
        self._endpoints: dict[str | None, tuple[str, str | None, str | None]] = {}
        """(provider, key, api_base) per key sent, for a spec that names its api_base."""
        self._fix_messages = internals().validate_and_fix_openai_messages
        self._ModelResponse = litellm.ModelResponse
        _memoize_tool_sanitizing(config)
        import httpx

        self._httpx = httpx

    @classmethod
    def for_model(cls, spec: ModelSpec, model_id: str | None = None,
                  options: dict[str, Any] | None = None) -> DirectTransport | None:
        """The transport for this model, or None when only `litellm.acompletion` can call it."""
        model_id = model_id or spec.id
        if transport_setting() == "litellm" or spec.stream:
            return None
        litellm = import_litellm()
        options = spec.options if options is None else options
        try:
            lib = internals()
            OpenAIGPTConfig = lib.OpenAIGPTConfig  # noqa: N806
            if any(k in lib.all_litellm_params or k in ("extra_headers", "stream")
                   for k in options):
                return None  # LiteLLM settings, not request parameters
            if any(p.get("provider") == model_id.split("/", 1)[0]
                   for p in litellm.custom_provider_map or []):
                return None
            if any(getattr(litellm, n, None) for n in (
                    "callbacks", "success_callback", "failure_callback", "input_callback",
                    "_async_success_callback", "_async_failure_callback")):
                return None  # someone listens to LiteLLM's call events: keep them coming
            model, provider, _, _ = litellm.get_llm_provider(model_id, api_base=spec.api_base)
            if provider in _OWN_ROUTE or litellm.model_alias_map or not (
                    provider == "hosted_vllm" or provider in _OPENAI_ROUTE
                    or provider in litellm.openai_compatible_providers
                    or _json_provider(provider)):
                return None
            if provider == "openai" and (litellm.route_all_chat_openai_to_responses or (
                    litellm.model_cost.get(model) or {}).get("mode") == "responses"):
                return None  # LiteLLM bridges these to its Responses API
            config = lib.ProviderConfigManager.get_provider_chat_config(
                model=model, provider=lib.LlmProviders(provider))
            if not isinstance(config, OpenAIGPTConfig) \
                    or getattr(config, "uses_async_transform_request", False) \
                    or type(config).sign_request is not OpenAIGPTConfig.sign_request:
                return None
        except Exception:
            return None
        return cls(litellm, spec, model_id, model, provider, config)

    # -- request
    def _endpoint(self, api_key: str | None) -> tuple[str, str | None, str | None]:
        """(provider, api_key, api_base) resolved the way litellm.completion resolves them."""
        litellm = self.litellm
        if self.spec.api_base:  # a host the spec names gets the key the spec names, or none
            # nothing from the environment decides it: looked up once per key (about 0.1 ms
            # of get_llm_provider on every call before)
            hit = self._endpoints.get(api_key)
            if hit is None:
                _, provider, _, api_base = litellm.get_llm_provider(
                    self.id, api_base=self.spec.api_base, api_key=api_key)
                key = api_key if api_key is not None else api_key_for(self.spec, provider)
                if len(self._endpoints) >= 8:
                    self._endpoints.clear()
                hit = self._endpoints[api_key] = (provider, key, api_base or self.spec.api_base)
            return hit
        _, provider, dynamic_key, api_base = litellm.get_llm_provider(
            self.id, api_base=self.spec.api_base, api_key=api_key)
        if dynamic_key is not None:
            api_key = dynamic_key
        if self._hosted_vllm:
            api_base = api_base or litellm.api_base or os.environ.get("HOSTED_VLLM_API_BASE")
        else:
            api_base = (api_base or litellm.api_base or os.environ.get("OPENAI_BASE_URL")
                        or os.environ.get("OPENAI_API_BASE") or "https://api.openai.com/v1")
            api_key = (api_key or litellm.api_key or litellm.openai_key
                       or os.environ.get("OPENAI_API_KEY"))
        if not api_base:
            raise Unsupported("no api_base")
        return provider, api_key, api_base

    def _optional_params(self, params: dict[str, Any], tools: list[dict[str, Any]] | None,
                         stop: list[str] | None) -> dict[str, Any]:
        """LiteLLM's provider mapping of the call's parameters, cached per tools and stop."""
        if not tools:
            tools_key = None
        elif tools is self._tools_key[0]:
            tools_key = self._tools_key[1]
        else:
            tools_key = json.dumps(tools, sort_keys=True, default=str)
            self._tools_key = (tools, tools_key)
        key = (tools_key, tuple(stop) if stop else None,
               json.dumps(params, sort_keys=True, default=str))
        cached = self._params.get(key)
        if cached is None:
            litellm = self.litellm
            cached = litellm.get_optional_params(
                model=self.model, custom_llm_provider=self.provider, tools=tools or None,
                stop=stop or None, stream=None, **params)
            if not self._hosted_vllm:  # litellm.OpenAIConfig's class-level defaults
                for k, v in litellm.OpenAIConfig.get_config().items():
                    cached.setdefault(k, v)
            if len(self._params) >= 32:
                self._params.clear()
            self._params[key] = cached
        return dict(cached)

    async def acompletion(self, messages: list[Message], *,
                          tools: list[dict[str, Any]] | None = None,
                          stop: list[str] | None = None, api_key: str | None = None,
                          timeout: float | None = None, **params: Any) -> Any:
        """One chat completion: LiteLLM's ModelResponse, or a runner ModelError."""
        config, model = self.config, self.model
        try:
            provider, api_key, api_base = self._endpoint(api_key)
            messages = config.translate_developer_role_to_system_role(
                messages=self._fix_messages(messages))
            optional = self._optional_params(params, tools, stop)
            extra_body = optional.pop("extra_body", None)
            json_mode = optional.pop("json_mode", False)
            litellm_params = {"custom_llm_provider": provider, "api_base": api_base}
            headers = dict(self.litellm.headers or {})
            attribution = config.get_attribution_headers()
            if attribution:
                names = {n.lower() for n in headers}
                headers = {**{n: v for n, v in attribution.items() if n.lower() not in names},
                           **headers}
            headers = config.validate_environment(
                headers=headers, model=model, messages=messages, optional_params=optional,
                litellm_params=litellm_params, api_key=api_key, api_base=api_base)
            headers = {**{n: v for n, v in headers.items() if n.lower() != "accept-encoding"},
                       "Accept-Encoding": "gzip, deflate"}  # the encodings _read_body decodes
            url = config.get_complete_url(api_base=api_base, api_key=api_key, model=model,
                                          optional_params=optional, litellm_params=litellm_params,
                                          stream=False)
            data = config.transform_request(model=model, messages=messages,
                                            optional_params=optional,
                                            litellm_params=litellm_params, headers=headers)
            if extra_body is not None:
                data = {**data, **config.transform_extra_body(
                    extra_body=extra_body, request=data, model=model,
                    litellm_params=litellm_params)}
            body = json.dumps(data)
        except (Unsupported, ModelError):
            raise
        except Exception as exc:  # LiteLLM refused the messages or parameters
            raise ModelProviderError(f"{self.id}: cannot build the request: "
                                     f"{clip(f'{type(exc).__name__}: {exc}')}",
                                     retryable=False) from None

        import aiohttp

        session = await _session()
        proxy, proxy_auth = _proxy_for(url)
        async with session.post(url, data=body, headers=headers, proxy=proxy,
                                proxy_auth=proxy_auth, timeout=aiohttp.ClientTimeout(
                                    total=timeout or self.spec.timeout_s)) as resp:
            status, resp_headers, charset = resp.status, resp.headers, resp.charset
            content_type = resp.content_type
            if status >= 400:
                raw = await _read_body(resp, ReplyLimit(_ERROR_BODY_BYTES, self.id), cut=True)
            else:
                raw = await _read_body(resp, ReplyLimit(self.spec.max_reply_bytes, self.id))
        if status >= 400:
            raise status_error(status, self._error_detail(status, raw, content_type, api_key),
                                resp_headers, self.spec, provider, self.id)
        reply = self._httpx.Response(status, content=raw, headers=[  # the body is decoded now
            (n, v) for n, v in resp_headers.items()
            if n.lower() not in ("content-encoding", "content-length")])
        reply.encoding = charset or "utf-8"
        try:
            response = config.transform_response(
                model=model, raw_response=reply, model_response=self._ModelResponse(),
                logging_obj=_NULL_LOGGING, request_data=data, messages=messages,
                optional_params=optional, litellm_params=litellm_params, encoding=None,
                api_key=api_key, json_mode=json_mode)
            response._hidden_params.update(custom_llm_provider=provider, api_base=api_base,
                                           litellm_model_name=self.id, runner_transport="direct")
            return response
        except Exception:
            try:  # no choices: retryable, as from acompletion; not JSON at all: not
                json.loads(raw)
                kind, retryable = "not a chat completion", True
            except ValueError:
                kind, retryable = "not JSON", False
            raise ModelProviderError(
                f"{self.id}: the reply (HTTP {status}, {content_type or 'no content type'}) is "
                f"{kind}: {_snippet(raw, api_key)}", retryable=retryable) from None

    def _error_detail(self, status: int, raw: bytes, content_type: str,
                      api_key: str | None) -> str:
        text = _snippet(raw, api_key)
        try:
            err = json.loads(raw)
            if isinstance(err, dict):
                e = err.get("error", err)
                text = _snippet(str(e.get("message") if isinstance(e, dict) and e.get("message")
                                    else e).encode(), api_key)
        except ValueError:
            if "html" in (content_type or ""):
                text = f"an HTML page ({text})"
        return f"HTTP {status}: {text}"


def _memoize_tool_sanitizing(config: Any) -> None:
    """Have this config (a transport's own instance) clean a tools list once, not on every
    call: `transform_request` passes the tools through `_sanitized_tools_update_for_openai`
    (regex patterns Python cannot compile dropped, a walk over every schema: about 0.1 ms a
    call), a function of the list, the provider and the host alone, and an agent sends the
    same list (the one `_optional_params` caches) on every call."""
    sanitize = getattr(config, "_sanitized_tools_update_for_openai", None)
    if sanitize is None:  # not in this LiteLLM: nothing to save
        return
    memo: dict[tuple[int, Any, Any], tuple[Any, Any]] = {}

    def sanitized(optional_params: Any, litellm_params: Any) -> Any:
        tools = optional_params.get("tools")
        key = (id(tools), litellm_params.get("custom_llm_provider"),
               litellm_params.get("api_base"))
        hit = memo.get(key)
        if hit is None or hit[0] is not tools:  # the list itself is held: its id stays its
            if len(memo) >= 8:
                memo.clear()
            hit = memo[key] = (tools, sanitize(optional_params, litellm_params))
        return hit[1]

    config._sanitized_tools_update_for_openai = sanitized


async def _read_body(resp: Any, limit: ReplyLimit, cut: bool = False) -> bytes:
    """A reply's body, decoded, read until its raw or decoded size passes `limit.cap`: then a
    ModelProviderError, or (`cut`) the body up to the cap. The rest is never read."""
    encoding = (resp.headers.get("Content-Encoding") or "").strip().lower()
    inflater = Inflater(encoding) if encoding in Inflater.ENCODINGS else None
    if inflater is None and encoding not in ("", "identity"):
        if cut:
            return b"(a body in an unsupported encoding)"
        raise limit.refuse(encoding)
    cap, raw, body = limit.cap, 0, bytearray()
    async for chunk in resp.content.iter_any():
        raw += len(chunk)
        if inflater is not None:
            try:
                chunk = inflater.feed(chunk, cap - len(body) + 1)
            except ValueError as exc:
                if cut:
                    return bytes(body)
                raise ModelProviderError(f"{limit.name}: {exc}", retryable=False) from None
        body += chunk
        if raw > cap or len(body) > cap:
            resp.close()  # the rest is never read: the connection is dropped, not reused
            if cut:
                return bytes(body[:cap])
            raise limit.exceeded(len(body) > cap and raw <= cap)
    return bytes(body)


def _json_provider(provider: str) -> bool:
    registry = internals().JSONProviderRegistry
    try:
        return registry is not None and bool(registry.exists(provider))
    except Exception:
        return False


def _snippet(raw: bytes, secret: str | None, limit: int = 200) -> str:
    text = raw.decode("utf-8", "replace")
    if secret and len(secret) >= 6:
        text = redact_text(text, {secret})
    return clip(text, limit) if text.strip() else "(empty body)"

