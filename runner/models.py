"""The model interface, the LiteLLM adapter and the runner's one retry layer.

This is the only module that knows LiteLLM: it is imported lazily (its import costs ~2 s and
would otherwise try the network), its exceptions are translated here into runner.errors, and
the transport it uses can change here without touching anything above.

Two transports, chosen per model on its first call:

* `direct` (the default where it applies): LiteLLM only translates and prices. Its provider
  chat config builds the request (`get_optional_params`, `validate_environment`,
  `get_complete_url`, `transform_request`) and parses the reply (`transform_response`),
  `completion_cost` prices it, and the runner's own pooled aiohttp session (one per event
  loop, closed when the loop shuts down) carries it. It covers OpenAI-compatible providers
  that LiteLLM itself sends through its generic OpenAI-compatible HTTP path: `openai` (and
  any `openai/...` model behind `api_base`), `custom_openai`, `hosted_vllm`, and the
  OpenAI-compatible providers LiteLLM routes the same way (`lm_studio`, `llamafile`,
  `litellm_proxy`, `deepinfra`, `perplexity`, ...), non-streaming calls only.
  Measured by bench/step_overhead.py (21-call tool conversations, a bare loop): about
  0.6-0.8 ms of client CPU per call, against 4-5 ms for the route below.
* `litellm`: `litellm.acompletion`, for everything else: streaming, other providers
  (anthropic, ollama, bedrock, ...), plugins registered as LiteLLM custom providers
  (`local/`), OpenAI models LiteLLM bridges to its Responses API, options that are
  LiteLLM settings rather than request parameters, and any process where LiteLLM callbacks
  (langfuse, custom loggers, ...) are registered when the model makes its first call.
  `RUNNER_TRANSPORT=litellm` forces it.
"""

from __future__ import annotations

import asyncio
import email.utils
import gc
import json
import os
import time
import weakref
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, Protocol

from .errors import (ModelAuthError, ModelError, ModelProviderError, ModelRateLimited,
                     ModelTimeout)
from .spec import ModelSpec

__all__ = ["Model", "Completion", "ToolCall", "Usage", "LiteLLMModel", "DirectTransport",
           "build_model", "import_litellm", "transport_setting",
           "Message"]

Message = dict[str, Any]


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass
class Completion:
    """One model reply, provider-neutral."""

    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = None
    model: str = ""
    latency_s: float = 0.0
    attempts: int = 1


class ModelTap(Protocol):
    """Stands between agents and their models (`--record`, `--replay`)."""

    def models(self, agent: str, build: Callable[[], list[Model]], spec: ModelSpec
               ) -> list[Model]:
        """The models agent `agent` calls, as `spec` configures them; `build()` makes the
        spec's own (not called when replaying, so no model is loaded and no key is needed)."""


class Model(Protocol):
    """What the loop needs from a model; plugins return one from their factory."""

    id: str

    def supports_tools(self) -> bool:
        """Whether native tool calling works for this model."""

    async def complete(self, messages: list[Message], *, tools: list[dict[str, Any]] | None = None,
                       stop: list[str] | None = None) -> Completion:
        """One call; raise a runner.errors.ModelError subclass on failure."""


# --------------------------------------------------------------------------- lazy LiteLLM

_litellm: Any = None


def import_litellm() -> Any:
    """Import LiteLLM once, offline and quietly, with the garbage collector paused."""
    global _litellm
    if _litellm is None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        os.environ.setdefault("LITELLM_MODE", "PRODUCTION")  # else it loads a stray .env file
        # For acompletion, LiteLLM's plain-httpx OpenAI route: 4-5 ms of client CPU per call
        # against 5.5-10 ms for its openai-SDK route (bench/step_overhead.py --transports
        # litellm,litellm-sdk); RUNNER_LITELLM_OPENAI_SDK=1 switches back.
        if os.environ.get("RUNNER_LITELLM_OPENAI_SDK") != "1":
            os.environ.setdefault("EXPERIMENTAL_OPENAI_BASE_LLM_HTTP_HANDLER", "True")
        enabled = gc.isenabled()
        gc.disable()
        try:
            import litellm
        finally:
            if enabled:
                gc.enable()
            gc.freeze()
        litellm.telemetry = False
        litellm.drop_params = True
        litellm.suppress_debug_info = True
        _litellm = litellm
    return _litellm


def _retry_after(headers: Any) -> float | None:
    value = headers.get("retry-after") if headers is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time()) if when else None


def _key_hint(spec: ModelSpec, provider: str) -> str:
    var = spec.api_key_env or f"{provider.upper().replace('-', '_')}_API_KEY"
    return f"check the API key in ${var}"


def _clip(text: str, limit: int = 400) -> str:
    """One line, at most `limit` characters, with secret-looking environment values masked."""
    from .redact import env_secrets, redact_text

    text = redact_text(" ".join(text.split()), env_secrets())
    return text[:limit] + ("..." if len(text) > limit else "")


def _status_error(status: int, message: str, headers: Any, spec: ModelSpec,
                  provider: str, model_id: str | None = None) -> ModelError:
    """The ModelError for an HTTP error status; both transports map statuses through here.
    `model_id` names the model that failed (a fallback's, not always spec.id)."""
    name = model_id or spec.id
    if status in (401, 403):
        return ModelAuthError(f"{name}: authentication failed ({status}); "
                              f"{_key_hint(spec, provider)}")
    if status == 429:
        return ModelRateLimited(f"{name}: rate limited (429)", _retry_after(headers))
    if status in (400, 404, 422):
        return ModelProviderError(f"{name}: {message}", retryable=False)
    if status >= 500 or status == 408:
        return ModelProviderError(f"{name}: {message}", retryable=True)
    return ModelProviderError(f"{name}: {message}", retryable=False)


def _translate(exc: Exception, spec: ModelSpec, provider: str,
               model_id: str | None = None) -> ModelError:
    """A LiteLLM or transport exception as a runner ModelError (the message never has a key)."""
    name = model_id or spec.id
    litellm = import_litellm()
    status = getattr(exc, "status_code", None)
    message = f"{type(exc).__name__}: {getattr(exc, 'message', None) or exc}"
    key = os.environ.get(spec.api_key_env) if spec.api_key_env else None
    if key and len(key) >= 6:  # masked even where its variable's name does not look secret
        message = message.replace(key, "***")
    message = _clip(message)
    # LiteLLM keeps the provider's headers (Retry-After) here; `exc.response` is its own stub
    headers = getattr(exc, "litellm_response_headers", None) or getattr(
        getattr(exc, "response", None), "headers", None)
    if isinstance(exc, (asyncio.TimeoutError, litellm.Timeout)):
        return ModelTimeout(f"{name}: no reply within {spec.timeout_s:g}s")
    if isinstance(exc, (litellm.AuthenticationError, litellm.PermissionDeniedError)):
        status = 401 if status not in (401, 403) else status
    elif isinstance(exc, litellm.RateLimitError):
        status = 429
    elif isinstance(exc, (litellm.BadRequestError, litellm.NotFoundError)):
        status = status if status in (400, 404, 422) else 400
    elif isinstance(exc, litellm.APIConnectionError) or status is None:
        return ModelProviderError(f"{name}: {message}", retryable=True)
    return _status_error(status, message, headers, spec, provider, name)


# --------------------------------------------------------------------------- transports

TRANSPORT_ENV = "RUNNER_TRANSPORT"

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
        connector=aiohttp.TCPConnector(limit=1000, limit_per_host=500, ttl_dns_cache=300,
                                       keepalive_timeout=120),
        auto_decompress=True)  # proxies from the environment: _proxy_for, resolved once

    async def close_with_loop() -> Any:
        try:
            yield
        finally:
            await session.close()

    closer = close_with_loop()
    await closer.__anext__()  # registered with the loop's async-generator shutdown
    _sessions[loop] = (session, closer)
    return session


async def close_sessions() -> None:
    """Close the running loop's pooled session now (it is otherwise closed with the loop)."""
    entry = _sessions.pop(asyncio.get_running_loop(), None)
    if entry is not None:
        await entry[1].aclose()


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


class _Unsupported(Exception):
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
        from litellm.utils import validate_and_fix_openai_messages

        self._fix_messages = validate_and_fix_openai_messages
        self._ModelResponse = litellm.ModelResponse
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
            from litellm.llms.openai.chat.gpt_transformation import OpenAIGPTConfig
            from litellm.types.utils import LlmProviders, all_litellm_params
            from litellm.utils import ProviderConfigManager

            if any(k in all_litellm_params or k in ("extra_headers", "stream")
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
            config = ProviderConfigManager.get_provider_chat_config(
                model=model, provider=LlmProviders(provider))
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
            raise _Unsupported("no api_base")
        return provider, api_key, api_base

    def _optional_params(self, params: dict[str, Any], tools: list[dict[str, Any]] | None,
                         stop: list[str] | None) -> dict[str, Any]:
        """LiteLLM's provider mapping of the call's parameters, cached per tools and stop."""
        key = (json.dumps(tools, sort_keys=True, default=str) if tools else None,
               tuple(stop) if stop else None, json.dumps(params, sort_keys=True, default=str))
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
        except (_Unsupported, ModelError):
            raise
        except Exception as exc:  # LiteLLM refused the messages or parameters
            raise ModelProviderError(f"{self.id}: cannot build the request: "
                                     f"{_clip(f'{type(exc).__name__}: {exc}')}",
                                     retryable=False) from None

        import aiohttp

        session = await _session()
        proxy, proxy_auth = _proxy_for(url)
        async with session.post(url, data=body, headers=headers, proxy=proxy,
                                proxy_auth=proxy_auth, timeout=aiohttp.ClientTimeout(
                                    total=timeout or self.spec.timeout_s)) as resp:
            raw = await resp.read()
            status, resp_headers, charset = resp.status, resp.headers, resp.charset
            content_type = resp.content_type
        if status >= 400:
            raise _status_error(status, self._error_detail(status, raw, content_type, api_key),
                                resp_headers, self.spec, provider, self.id)
        reply = self._httpx.Response(status, headers=list(resp_headers.items()), content=raw)
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


def _json_provider(provider: str) -> bool:
    try:
        from litellm.llms.openai_like.json_loader import JSONProviderRegistry

        return bool(JSONProviderRegistry.exists(provider))
    except Exception:
        return False


def _snippet(raw: bytes, secret: str | None, limit: int = 200) -> str:
    text = raw.decode("utf-8", "replace")
    if secret and len(secret) >= 6:
        text = text.replace(secret, "***")
    return _clip(text, limit) if text.strip() else "(empty body)"


class LiteLLMModel:
    """Any model LiteLLM speaks: through the direct transport where it applies, else
    `litellm.acompletion` (see the top of this module)."""

    def __init__(self, spec: ModelSpec, model_id: str | None = None) -> None:
        self.spec = spec
        self.id = model_id or spec.id
        self.provider = self.id.split("/", 1)[0] if "/" in self.id else "openai"
        self._tools_supported: bool | None = None
        self._direct: DirectTransport | None | bool = False  # False: not decided yet
        self._priced: bool | None = None
        import_litellm()  # now, so that a run's deadlines do not include the ~2 s import

    def supports_tools(self) -> bool:
        if self._tools_supported is None:
            litellm = import_litellm()
            try:
                self._tools_supported = bool(litellm.supports_function_calling(model=self.id))
            except Exception:
                self._tools_supported = False
        return self._tools_supported

    @property
    def transport(self) -> str:
        """`direct` or `litellm`: how this model's non-streaming calls travel."""
        return "direct" if self.direct_transport() is not None else "litellm"

    def direct_transport(self) -> DirectTransport | None:
        """The direct transport for this model, or None (decided once, on first use)."""
        if self._direct is False:
            self._direct = DirectTransport.for_model(self.spec, self.id)
        return self._direct  # type: ignore[return-value]

    def _kwargs(self, messages: list[Message], tools: list[dict[str, Any]] | None,
                stop: list[str] | None) -> dict[str, Any]:
        s = self.spec
        kw: dict[str, Any] = {"model": self.id, "messages": messages, "max_tokens": s.max_tokens,
                              "timeout": s.timeout_s, **s.options}
        if s.temperature is not None:
            kw["temperature"] = s.temperature
        if s.api_base:
            kw["api_base"] = s.api_base
        if s.api_key_env:
            key = os.environ.get(s.api_key_env)
            if not key:
                raise ModelAuthError(f"{self.id}: environment variable {s.api_key_env} is not set")
            kw["api_key"] = key
        elif s.api_base and self.provider in ("openai", "hosted_vllm"):
            kw["api_key"] = os.environ.get("OPENAI_API_KEY", "none")
        if stop:
            kw["stop"] = stop
        if tools:
            kw["tools"] = tools
        if s.stream:
            kw["stream"] = True
            kw["stream_options"] = {"include_usage": True}
        return kw

    async def complete(self, messages: list[Message], *, tools: list[dict[str, Any]] | None = None,
                       stop: list[str] | None = None) -> Completion:
        litellm = import_litellm()
        kw = self._kwargs(messages, tools, stop)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.spec.timeout_s):
                resp = await self._call(litellm, kw)
        except ModelError:
            raise
        except Exception as exc:
            raise _translate(exc, self.spec, self.provider, self.id) from None
        return self._completion(litellm, resp, time.perf_counter() - started)

    async def _call(self, litellm: Any, kw: dict[str, Any]) -> Any:
        if not kw.get("stream"):
            direct = self.direct_transport()
            if direct is not None:
                params = dict(kw)
                for k in ("model", "api_base"):
                    params.pop(k, None)
                try:
                    return await direct.acompletion(params.pop("messages"), **params)
                except _Unsupported:
                    self._direct = None
            return await litellm.acompletion(**kw)
        chunks = []
        stream = await litellm.acompletion(**kw)
        async for chunk in stream:
            chunks.append(chunk)
        if hasattr(stream, "received_finish_reason"):
            # LiteLLM's stream wrapper ends a stream the provider cut short with a finish_reason
            # "stop" of its own: what the provider really sent is kept on the wrapper
            finished = bool(stream.received_finish_reason
                            or getattr(stream, "intermittent_finish_reason", None))
        else:
            finished = any(c.choices and c.choices[0].finish_reason for c in chunks)
        if not chunks or not finished:
            raise ModelProviderError(f"{self.id}: the stream ended without a finish", retryable=True)
        return litellm.stream_chunk_builder(chunks, messages=kw["messages"])

    def _cost(self, litellm: Any, resp: Any) -> float | None:
        """LiteLLM's price for a reply; None for a model its price list does not know."""
        hidden = getattr(resp, "_hidden_params", None) or {}
        cost = hidden.get("response_cost")
        if cost is not None or self._priced is False:
            return cost  # an unpriced model stays unpriced: asking costs ~0.5 ms a call
        try:
            if hidden.get("runner_transport") == "direct":
                direct = self.direct_transport()
                assert direct is not None
                cost = litellm.completion_cost(completion_response=resp, model=direct.model,
                                               custom_llm_provider=direct.provider)
            else:
                cost = litellm.completion_cost(completion_response=resp)
        except Exception:
            if self._priced is None:
                self._priced = False
            return None
        self._priced = True
        return cost

    def _completion(self, litellm: Any, resp: Any, latency: float) -> Completion:
        choices = getattr(resp, "choices", None)
        if not choices:
            raise ModelProviderError(f"{self.id}: the reply has no choices", retryable=True)
        choice = choices[0]
        msg = choice.message
        calls = [ToolCall(tc.id or f"call_{i}", tc.function.name or "", tc.function.arguments or "")
                 for i, tc in enumerate(getattr(msg, "tool_calls", None) or [])]
        usage = getattr(resp, "usage", None)
        return Completion(
            text=msg.content or "", tool_calls=calls, finish_reason=choice.finish_reason,
            usage=Usage(getattr(usage, "prompt_tokens", 0) or 0,
                        getattr(usage, "completion_tokens", 0) or 0),
            cost_usd=self._cost(litellm, resp), model=self.id, latency_s=latency)


def build_model(spec: ModelSpec, model_id: str | None = None) -> Model:
    """The Model for an id: a plugin's provider by prefix, else LiteLLM."""
    from .plugins import registry

    model_id = model_id or spec.id
    prefix = model_id.split("/", 1)[0] if "/" in model_id else ""
    reg = registry().models.get(prefix)
    if reg is not None:
        return reg.value(spec, model_id)
    return LiteLLMModel(spec, model_id)


def check_model_id(model_id: str, providers: set[str]) -> str | None:
    """Why a model id cannot work (unknown provider prefix), or None."""
    if "/" not in model_id:
        return None
    prefix = model_id.split("/", 1)[0]
    from ._providers import LITELLM_PROVIDERS

    if prefix in providers or prefix in LITELLM_PROVIDERS:
        return None
    from .spec import did_you_mean

    return (f"unknown model provider {prefix!r}{did_you_mean(prefix, providers | LITELLM_PROVIDERS)}; "
            f"plugins provide: {', '.join(sorted(providers))}; LiteLLM knows "
            f"{len(LITELLM_PROVIDERS)} more (openai, anthropic, ollama, hosted_vllm, ...)")


