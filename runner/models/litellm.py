"""The LiteLLM adapter, a default plugin: every model id LiteLLM speaks (`openai/...`,
`anthropic/...`, `ollama/...`, a bare `gpt-4o-mini`, ...) is registered here, under each of
LiteLLM's provider prefixes. A plugin that registers one of these prefixes takes its place.

Non-streaming calls to OpenAI-compatible providers go through the direct transport
(`runner.models.direct`); everything else (streaming, other providers, options that are
LiteLLM settings rather than request parameters, and any process where LiteLLM callbacks are
registered when the model makes its first call) goes through `litellm.acompletion`.
`RUNNER_TRANSPORT=litellm` forces that path everywhere.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from ..errors import ModelError, ModelProviderError
from ..hookspecs import hookimpl
from . import Completion, Message, ToolCall, Usage
from .providers import LITELLM_PROVIDERS

if TYPE_CHECKING:
    from ..spec import ModelSpec
    from .direct import DirectTransport

__all__ = ["LiteLLMModel", "import_litellm"]


def import_litellm() -> Any:
    """The LiteLLM module (see runner.models._litellm); loading this plugin imports neither it
    nor the transports, so a run on another provider's model never pays for them."""
    from ._litellm import import_litellm as load

    return load()


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
            from .direct import DirectTransport

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
        from ._litellm import api_key_for

        key = api_key_for(s, self.provider)  # never another model's: fallbacks have their own spec
        if key is not None:
            kw["api_key"] = key
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
        from ._litellm import reply_limit, translate

        litellm = import_litellm()
        kw = self._kwargs(messages, tools, stop)
        started = time.perf_counter()
        with reply_limit(self.spec, self.id) as limit:  # LiteLLM's transports read it
            try:
                async with asyncio.timeout(self.spec.timeout_s):
                    resp = await self._call(litellm, kw)
            except ModelError:
                raise
            except Exception as exc:
                if limit.error is not None:  # whatever LiteLLM made of the transport's error
                    raise limit.error from None
                raise translate(exc, self.spec, self.provider, self.id) from None
        return self._completion(litellm, resp, time.perf_counter() - started)

    async def _call(self, litellm: Any, kw: dict[str, Any]) -> Any:
        if not kw.get("stream"):
            direct = self.direct_transport()
            if direct is not None:
                from .direct import Unsupported

                params = dict(kw)
                for k in ("model", "api_base"):
                    params.pop(k, None)
                try:
                    return await direct.acompletion(params.pop("messages"), **params)
                except Unsupported:
                    self._direct = None
            return await litellm.acompletion(**kw)
        chunks = []
        most = 2 * self.spec.max_tokens + 64  # a chunk carries a token, but for a few framing ones
        stream = await litellm.acompletion(**kw)
        try:
            async for chunk in stream:
                chunks.append(chunk)
                if len(chunks) > most:
                    raise ModelProviderError(
                        f"{self.id}: the stream sent more than {most:,} chunks for a reply of at "
                        f"most {self.spec.max_tokens:,} tokens (model.max_tokens)",
                        retryable=False)
        finally:
            if hasattr(stream, "aclose"):
                await stream.aclose()  # a stream left early must not keep its connection
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



@hookimpl
def register_models(register: Any) -> None:
    register("", LiteLLMModel, family="LiteLLM")  # a bare id, such as gpt-4o-mini
    first = ("openai", "anthropic", "ollama", "hosted_vllm")  # the examples messages give
    for prefix in (*first, *sorted(LITELLM_PROVIDERS - set(first))):
        register(prefix, LiteLLMModel, family="LiteLLM")
