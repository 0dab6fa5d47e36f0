"""The one module that imports LiteLLM, and the one table that translates its exceptions.

LiteLLM is imported lazily (its import costs about a second and 140 MB, and without
LITELLM_LOCAL_MODEL_COST_MAP it tries the network), offline, quietly and with the garbage
collector paused. Nobody above `runner.models` sees a LiteLLM exception type: `translate`
turns each into a runner ModelError, and HTTP statuses from either transport go through
`status_error`.
"""

from __future__ import annotations

import asyncio
import email.utils
import gc
import os
import time
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from ..errors import (ModelAuthError, ModelError, ModelProviderError, ModelRateLimited,
                      ModelTimeout)
from ..redact import clip, redact_text

if TYPE_CHECKING:
    from ..spec import ModelSpec

__all__ = ["import_litellm", "internals", "translate", "status_error"]

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

