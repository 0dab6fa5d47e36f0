"""The one module that imports LiteLLM, and the one table that translates its exceptions.

LiteLLM is imported lazily (its import costs about a second and 140 MB, and without
LITELLM_LOCAL_MODEL_COST_MAP it tries the network), offline, quietly and with the garbage
collector paused. Nobody above `runner.models` sees a LiteLLM exception type: `translate`
turns each into a runner ModelError, and HTTP statuses from either transport go through
`status_error`.

It also holds what both transports share about reaching a provider: the key a model sends
(`api_key_for`: never one from the environment to an `api_base` the spec names) and the cap
on a reply's size (`reply_limit`, `Inflater`), which LiteLLM's own httpx clients honour
through hooks added when LiteLLM is imported.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import gc
import os
import time
import zlib
from collections.abc import AsyncIterator
from contextvars import ContextVar
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import httpx  # LiteLLM's HTTP client; this module is imported only when LiteLLM is needed

from ..errors import (ModelAuthError, ModelError, ModelProviderError, ModelRateLimited,
                      ModelTimeout)
from ..redact import clip, redact_text

if TYPE_CHECKING:
    from ..spec import ModelSpec

__all__ = ["import_litellm", "internals", "translate", "status_error", "api_key_for", "NO_KEY",
           "Inflater", "ReplyLimit", "reply_limit"]

NO_KEY = "no-key"
"""The key sent to an `api_base` the spec names without `api_key_env`: LiteLLM needs one, and
no key from the environment may go to a host the spec names."""

# Their credentials are a cloud identity, not a key: a placeholder key would switch their
# authentication, so LiteLLM finds theirs as usual.
_CLOUD_AUTH = frozenset({"bedrock", "sagemaker", "sagemaker_chat", "sagemaker_nova",
                         "vertex_ai", "vertex_ai_beta"})

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
        _cap_clients()
        _litellm = litellm
    return _litellm


def api_key_for(spec: ModelSpec, provider: str) -> str | None:
    """The key a call sends: from `spec.api_key_env`; NO_KEY to an `api_base` without one;
    otherwise None, for the provider's own variable (as LiteLLM finds it)."""
    if spec.api_key_env:
        key = os.environ.get(spec.api_key_env)
        if not key:
            raise ModelAuthError(f"{spec.id}: environment variable {spec.api_key_env} is not set")
        return key
    if spec.api_base and provider not in _CLOUD_AUTH:
        return NO_KEY
    return None


# ------------------------------------------------------------------ the size of a reply

class ReplyLimit:
    """The size cap of one model call's reply, and the error once it was passed."""

    def __init__(self, cap: int, name: str) -> None:
        self.cap, self.name = cap, name
        self.error: ModelProviderError | None = None

    def exceeded(self, decoded: bool) -> ModelProviderError:
        """Note and return the error: the reply passed the cap (decompressed, if `decoded`)."""
        self.error = ModelProviderError(
            f"{self.name}: the reply is larger than model.max_reply_bytes ({self.cap:,} bytes"
            f"{' decompressed' if decoded else ''}); the rest was not read", retryable=False)
        return self.error

    def refuse(self, encoding: str) -> ModelProviderError:
        """Note and return the error: the reply has an encoding that cannot be decoded bounded."""
        self.error = ModelProviderError(
            f"{self.name}: the reply's Content-Encoding {encoding[:40]!r} is not gzip or deflate, "
            "the ones the runner decodes", retryable=False)
        return self.error


_limit: ContextVar[ReplyLimit | None] = ContextVar("runner_reply_limit", default=None)


class _Capped:
    """The block of `reply_limit` (a class: half the cost of a generator's, on every call)."""

    __slots__ = ("limit", "_token")

    def __init__(self, limit: ReplyLimit) -> None:
        self.limit = limit

    def __enter__(self) -> ReplyLimit:
        self._token = _limit.set(self.limit)
        return self.limit

    def __exit__(self, *exc: Any) -> None:
        _limit.reset(self._token)


def reply_limit(spec: ModelSpec, name: str) -> contextlib.AbstractContextManager[ReplyLimit]:
    """Cap the replies LiteLLM reads within the block (its transports consult this)."""
    return _Capped(ReplyLimit(spec.max_reply_bytes, name))


class Inflater:
    """Decodes a gzip or deflate body piece by piece, never more than asked for at once."""

    ENCODINGS = frozenset({"gzip", "x-gzip", "deflate"})

    def __init__(self, encoding: str) -> None:
        self._wbits = 31 if "gzip" in encoding else 15
        self._d = zlib.decompressobj(self._wbits)
        self._started = False

    def feed(self, data: bytes, room: int) -> bytes:
        """Up to `room` decoded bytes of `data`: fewer only when all of it is decoded (once a
        call fills `room`, the rest of its input is dropped: the caller stops there)."""
        out = bytearray()
        while data and len(out) < room:
            try:
                out += self._d.decompress(data, room - len(out))
            except zlib.error:
                if self._wbits != 15 or self._started:
                    raise ValueError("the reply's compressed body is corrupt") from None
                self._wbits = -15  # `deflate` sent raw, without its zlib header
                self._d = zlib.decompressobj(self._wbits)
                continue
            self._started = True
            if not self._d.eof:
                data = self._d.unconsumed_tail
            elif self._d.unused_data[:2] == b"\x1f\x8b" and self._wbits == 31:
                data = self._d.unused_data  # the next member of a multi-member gzip body
                self._d = zlib.decompressobj(self._wbits)
            else:
                break  # trailing bytes after the end of the stream are ignored
        return bytes(out)


async def _on_request(request: httpx.Request) -> None:
    """An httpx request hook: within a `reply_limit` block, ask only for the encodings decoded
    here, and send nothing more once the cap was passed (a client retrying inside LiteLLM)."""
    limit = _limit.get()
    if limit is None:
        return
    if limit.error is not None:
        raise httpx.ReadError(str(limit.error), request=request)
    request.headers["Accept-Encoding"] = "gzip, deflate"


async def _on_response(response: httpx.Response) -> None:
    """An httpx response hook: within a `reply_limit` block, the body is read through the cap,
    gzip and deflate decoded here in bounded pieces instead of whole by httpx."""
    limit = _limit.get()
    if limit is None:
        return
    encoding = response.headers.get("content-encoding", "").strip().lower()
    inflater = None
    if encoding in Inflater.ENCODINGS:
        inflater = Inflater(encoding)
        for name in ("content-encoding", "content-length"):  # decoded here, not by httpx
            response.headers.pop(name, None)
    elif encoding not in ("", "identity"):
        raise httpx.DecodingError(str(limit.refuse(encoding)), request=response.request)
    response.stream = _CappedStream(response.stream, limit, inflater)


def _capped(client: Any) -> Any:
    """`client` (an httpx.AsyncClient LiteLLM made) with the hooks that cap replies."""
    if isinstance(client, httpx.AsyncClient) and _on_response not in client.event_hooks["response"]:
        hooks = client.event_hooks
        client.event_hooks = {"request": [*hooks["request"], _on_request],
                              "response": [*hooks["response"], _on_response]}
    return client


class _CappedStream(httpx.AsyncByteStream):
    """A reply's bytes, decoded, failing once the raw or the decoded count passes the cap."""

    def __init__(self, inner: Any, limit: ReplyLimit, inflater: Inflater | None) -> None:
        self._inner, self._limit, self._inflater = inner, limit, inflater

    async def __aiter__(self) -> AsyncIterator[bytes]:
        cap, raw, decoded = self._limit.cap, 0, 0
        async for chunk in self._inner:
            raw += len(chunk)
            if raw > cap:
                raise httpx.ReadError(str(self._limit.exceeded(False)))
            if self._inflater is not None:
                try:
                    chunk = self._inflater.feed(chunk, cap - decoded + 1)
                except ValueError as exc:
                    raise httpx.DecodingError(str(exc)) from None
            decoded += len(chunk)
            if decoded > cap:
                raise httpx.ReadError(str(self._limit.exceeded(True)))
            if chunk:
                yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


def _cap_clients() -> None:
    """Give every httpx client LiteLLM makes for model calls the hooks that cap replies: LiteLLM
    has no setting that bounds a chat reply, so its two client factories are wrapped, once
    (whatever the transport: its aiohttp one, httpx's own, a proxy's)."""
    try:  # both exist in the pinned LiteLLM (pyproject.toml); a test fails if they move
        from litellm.llms.custom_httpx.http_handler import AsyncHTTPHandler
        from litellm.llms.openai.common_utils import BaseOpenAILLM
    except ImportError:
        return

    create_client = AsyncHTTPHandler.create_client  # every AsyncHTTPHandler's client
    sdk_client = BaseOpenAILLM._get_async_http_client  # the openai SDK route's

    def create(self: Any, *args: Any, **kwargs: Any) -> Any:
        return _capped(create_client(self, *args, **kwargs))

    def sdk(*args: Any, **kwargs: Any) -> Any:
        return _capped(sdk_client(*args, **kwargs))

    AsyncHTTPHandler.create_client = create  # type: ignore[method-assign]
    BaseOpenAILLM._get_async_http_client = staticmethod(sdk)  # type: ignore[method-assign]


_internals: SimpleNamespace | None = None


def internals() -> SimpleNamespace:
    """The LiteLLM internals the direct transport replays (imported once, on first use)."""
    global _internals
    if _internals is None:
        import_litellm()
        from litellm.llms.openai.chat.gpt_transformation import OpenAIGPTConfig
        from litellm.types.utils import LlmProviders, all_litellm_params
        from litellm.utils import ProviderConfigManager, validate_and_fix_openai_messages

        try:
            from litellm.llms.openai_like.json_loader import JSONProviderRegistry
        except ImportError:
            JSONProviderRegistry = None  # noqa: N806
        _internals = SimpleNamespace(
            OpenAIGPTConfig=OpenAIGPTConfig, LlmProviders=LlmProviders,
            all_litellm_params=all_litellm_params, ProviderConfigManager=ProviderConfigManager,
            validate_and_fix_openai_messages=validate_and_fix_openai_messages,
            JSONProviderRegistry=JSONProviderRegistry)
    return _internals


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
    if not spec.api_key_env and spec.api_base and provider not in _CLOUD_AUTH:
        return ("no key was sent: a key goes to an api_base only from the variable that "
                "api_key_env names")
    var = spec.api_key_env or f"{provider.upper().replace('-', '_')}_API_KEY"
    return f"check the API key in ${var}"


def status_error(status: int, message: str, headers: Any, spec: ModelSpec,
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


def translate(exc: Exception, spec: ModelSpec, provider: str,
               model_id: str | None = None) -> ModelError:
    """A LiteLLM or transport exception as a runner ModelError (the message never has a key)."""
    name = model_id or spec.id
    litellm = import_litellm()
    status = getattr(exc, "status_code", None)
    message = f"{type(exc).__name__}: {getattr(exc, 'message', None) or exc}"
    key = os.environ.get(spec.api_key_env) if spec.api_key_env else None
    if key and len(key) >= 6:  # masked even where its variable's name does not look secret
        message = redact_text(message, {key})
    message = clip(message)
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
    return status_error(status, message, headers, spec, provider, name)

