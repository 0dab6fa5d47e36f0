"""Grammar-held sampling for the embedded model at about the cost of unheld sampling.

llama-cpp-python puts the grammar first in the sampler chain: before every token it checks
all 262k tokens of Gemma's vocabulary against the grammar, which made a run 60% slower.
Here the plain chain picks the token first and the grammar checks only that one; only when
the grammar refuses it are all tokens checked and the pick made again among the allowed
(llama.cpp's own common sampler does the same, "grammar second"). The model usually writes
what the grammar allows, so most tokens cost one check.

Imported only where a Llama is built: it imports llama_cpp."""

from __future__ import annotations

import ctypes
import math
from typing import Any

import llama_cpp
import numpy as np


class GrammarSecond:
    """A sampler for Llama.generate, which calls only .sample(ctx, idx): the plain chain
    (penalties, then greedy or top-k/p and dist) with a grammar's veto."""

    def __init__(self, chain: Any, grammar: Any, n_vocab: int) -> None:
        self.chain, self.grammar, self.n_vocab = chain, grammar, n_vocab
        self.data = (llama_cpp.llama_token_data * n_vocab)()
        self.view = np.ctypeslib.as_array(self.data)  # fields id, logit, p
        self.ids = np.arange(n_vocab, dtype=np.int32)
        self.one = (llama_cpp.llama_token_data * 1)()

    def _candidates(self, ctx: Any, idx: int) -> Any:
        """All tokens with this position's logits (samplers reorder and cut them in place)."""
        logits = llama_cpp.llama_get_logits_ith(ctx.ctx, idx)
        self.view["id"] = self.ids
        self.view["logit"] = np.ctypeslib.as_array(logits, shape=(self.n_vocab,))
        self.view["p"] = 0.0
        return llama_cpp.llama_token_data_array(
            data=ctypes.cast(self.data, llama_cpp.llama_token_data_p), size=self.n_vocab,
            selected=-1, sorted=False)

    def _allowed(self, token: int) -> bool:
        self.one[0].id, self.one[0].logit, self.one[0].p = token, 0.0, 0.0
        single = llama_cpp.llama_token_data_array(
            data=ctypes.cast(self.one, llama_cpp.llama_token_data_p), size=1, selected=-1,
            sorted=False)
        llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(single))
        return not math.isinf(single.data[0].logit)

    def sample(self, ctx: Any, idx: int = -1) -> int:
        cur = self._candidates(ctx, idx)
        llama_cpp.llama_sampler_apply(self.chain.sampler, ctypes.byref(cur))
        token = int(cur.data[cur.selected].id)
        if not self._allowed(token):
            cur = self._candidates(ctx, idx)
            llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(cur))
            llama_cpp.llama_sampler_apply(self.chain.sampler, ctypes.byref(cur))
            token = int(cur.data[cur.selected].id)
        llama_cpp.llama_sampler_accept(self.chain.sampler, token)
        llama_cpp.llama_sampler_accept(self.grammar, token)
        return token

    def close(self) -> None:
        if self.grammar:
            llama_cpp.llama_sampler_free(self.grammar)
            self.grammar = None

    def __del__(self) -> None:
        self.close()


class Llama(llama_cpp.Llama):  # type: ignore[misc]
    """llama_cpp.Llama whose grammar, when a call has one, samples second (GrammarSecond)."""

    def _init_sampler(self, *args: Any, grammar: Any = None, **kwargs: Any) -> Any:
        chain = super()._init_sampler(*args, **kwargs)
        if grammar is None:
            return chain
        return GrammarSecond(chain, self.grammar_sampler(grammar._grammar), self._n_vocab)

    def grammar_sampler(self, text: str) -> Any:
        """A llama.cpp grammar sampler of this GBNF text; ValueError if it does not parse
        (llama-cpp-python's own add_grammar would crash the process on it)."""
        sampler = llama_cpp.llama_sampler_init_grammar(
            self._model.vocab, text.encode("utf-8"), b"root")
        if not sampler:
            raise ValueError("the grammar does not parse")
        return sampler

    def parses(self, text: str) -> bool:
        """Whether llama.cpp accepts this GBNF text."""
        try:
            llama_cpp.llama_sampler_free(self.grammar_sampler(text))
        except ValueError:
            return False
        return True
