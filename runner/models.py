"""The model interface, the LiteLLM adapter and the runner's one retry layer.

This is the only module that knows LiteLLM: it is imported lazily (its import costs ~2 s and
would otherwise try the network), its exceptions are translated here into runner.errors, and
the transport it uses can change here without touching anything above.
"""

from __future__ import annotations

import asyncio
import email.utils
import gc
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import (ModelAuthError, ModelError, ModelProviderError, ModelRateLimited,
                     ModelTimeout, SpecError)
from .spec import ModelSpec

__all__ = ["Model", "Completion", "ToolCall", "Usage", "LiteLLMModel", "build_model",
           "complete_with_retries", "import_litellm", "Message"]

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
        # The plain-httpx OpenAI route: ~2.4 ms of client time per call against ~7 ms for the
        # openai SDK route (bench/step_overhead.py); RUNNER_LITELLM_OPENAI_SDK=1 switches back.
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


def _translate(exc: Exception, spec: ModelSpec, provider: str) -> ModelError:
    """A LiteLLM or transport exception as a runner ModelError (the message never has a key)."""
    litellm = import_litellm()
    status = getattr(exc, "status_code", None)
    message = f"{type(exc).__name__}: {getattr(exc, 'message', None) or exc}"
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if isinstance(exc, (asyncio.TimeoutError, litellm.Timeout)):
        return ModelTimeout(f"{spec.id}: no reply within {spec.timeout_s:g}s")
    if isinstance(exc, (litellm.AuthenticationError, litellm.PermissionDeniedError)) \
            or status in (401, 403):
        return ModelAuthError(f"{spec.id}: authentication failed ({status}); "
                              f"{_key_hint(spec, provider)}")
    if isinstance(exc, litellm.RateLimitError) or status == 429:
        return ModelRateLimited(f"{spec.id}: rate limited (429)", _retry_after(headers))
    if isinstance(exc, (litellm.BadRequestError, litellm.NotFoundError)) or status in (400, 404, 422):
        return ModelProviderError(f"{spec.id}: {message}", retryable=False)
    if isinstance(exc, litellm.APIConnectionError) or status is None or status >= 500 or status == 408:
        return ModelProviderError(f"{spec.id}: {message}", retryable=True)
    return ModelProviderError(f"{spec.id}: {message}", retryable=False)


class LiteLLMModel:
    """Any model LiteLLM speaks, called through `litellm.acompletion`."""

    def __init__(self, spec: ModelSpec, model_id: str | None = None) -> None:
        self.spec = spec
        self.id = model_id or spec.id
        self.provider = self.id.split("/", 1)[0] if "/" in self.id else "openai"
        self._tools_supported: bool | None = None

    def supports_tools(self) -> bool:
        if self._tools_supported is None:
            litellm = import_litellm()
            try:
                self._tools_supported = bool(litellm.supports_function_calling(model=self.id))
            except Exception:
                self._tools_supported = False
        return self._tools_supported

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
            resp = await asyncio.wait_for(self._call(litellm, kw), self.spec.timeout_s)
        except ModelError:
            raise
        except Exception as exc:
            raise _translate(exc, self.spec, self.provider) from None
        return self._completion(litellm, resp, time.perf_counter() - started)

    async def _call(self, litellm: Any, kw: dict[str, Any]) -> Any:
        if not kw.get("stream"):
            return await litellm.acompletion(**kw)
        chunks = []
        stream = await litellm.acompletion(**kw)
        async for chunk in stream:
            chunks.append(chunk)
        if not chunks or not any(c.choices and c.choices[0].finish_reason for c in chunks):
            raise ModelProviderError(f"{self.id}: the stream ended without a finish", retryable=True)
        return litellm.stream_chunk_builder(chunks, messages=kw["messages"])

    def _completion(self, litellm: Any, resp: Any, latency: float) -> Completion:
        choices = getattr(resp, "choices", None)
        if not choices:
            raise ModelProviderError(f"{self.id}: the reply has no choices", retryable=True)
        choice = choices[0]
        msg = choice.message
        calls = [ToolCall(tc.id or f"call_{i}", tc.function.name or "", tc.function.arguments or "")
                 for i, tc in enumerate(getattr(msg, "tool_calls", None) or [])]
        usage = getattr(resp, "usage", None)
        cost = (getattr(resp, "_hidden_params", None) or {}).get("response_cost")
        if cost is None:
            try:
                cost = litellm.completion_cost(completion_response=resp)
            except Exception:
                cost = None
        return Completion(
            text=msg.content or "", tool_calls=calls, finish_reason=choice.finish_reason,
            usage=Usage(getattr(usage, "prompt_tokens", 0) or 0,
                        getattr(usage, "completion_tokens", 0) or 0),
            cost_usd=cost, model=self.id, latency_s=latency)


def build_model(spec: ModelSpec, model_id: str | None = None) -> Model:
    """The Model for an id: a plugin's provider by prefix, else LiteLLM."""
    from .plugins import registry

    model_id = model_id or spec.id
    prefix = model_id.split("/", 1)[0] if "/" in model_id else ""
    reg = registry().models.get(prefix)
    if reg is not None:
        return reg.value(spec, model_id)
    return LiteLLMModel(spec, model_id)


Sleep = Callable[[float], Awaitable[None]]


async def complete_with_retries(models: list[Model], spec: ModelSpec, messages: list[Message], *,
                                tools: list[dict[str, Any]] | None = None,
                                stop: list[str] | None = None,
                                deadline: float | None = None,
                                sleep: Sleep = asyncio.sleep,
                                on_retry: Callable[[ModelError, float], None] | None = None
                                ) -> Completion:
    """Call the first model, retrying retryable failures with jittered backoff (honouring
    Retry-After), then each fallback in turn. `deadline` is a time.monotonic() value."""
    last: ModelError | None = None
    attempts = 0
    for model in models:
        for attempt in range(spec.retries + 1):
            attempts += 1
            try:
                result = await model.complete(messages, tools=tools, stop=stop)
                result.attempts = attempts
                return result
            except ModelError as exc:
                last = exc
                if not exc.retryable or attempt == spec.retries:
                    break
                wait = min(8.0, 0.5 * 2 ** attempt) * (0.5 + random.random() / 2)
                if isinstance(exc, ModelRateLimited) and exc.retry_after is not None:
                    wait = max(wait, exc.retry_after)
                if deadline is not None and time.monotonic() + wait >= deadline:
                    break
                if on_retry is not None:
                    on_retry(exc, wait)
                await sleep(wait)
        if isinstance(last, ModelAuthError):
            break
    assert last is not None
    raise last


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


_ = SpecError  # re-exported for plugin factories that reject a spec
