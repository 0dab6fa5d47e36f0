"""`prompt.examples_pool`: a spec carries many few-shot examples and each run's prompt gets
the `k` most like its question, so a small model sees the worked example of the operation
it is asked for (a percentage, a power, a share) without paying for all of them.

"Most like" is BM25 over the examples' question lines (SQLite FTS5 with the porter stemmer,
in memory, built once per agent), the run's words as the query; numbers are left out on both
sides (a question about 20 percent is not like an example about 20 eggs); when no word is
shared, the first `k` of the pool. The spec's own `examples` are always in, and go with the
chosen ones in order of likeness, the most alike last, next to the question: a researcher's
search example is the last one a question about the docs sees, and an arithmetic example the
last one a sum sees.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Sequence

from .search_local import match_expression

__all__ = ["ExamplePool"]

_QUESTION = re.compile(r"^\s*Question:\s*(.+)$", re.M)
_DIGITS = re.compile(r"\d+")
_GENERIC = frozenset({"many", "much"})
"""Words of almost every question ("how many", "how much"), left out of the query."""
_CACHED = 256
"""Questions whose choice is kept (a ReAct run renders its prompt at every step)..."""
_CACHED_CHARS = 2000
"""... if they are no longer than this (a long input is not held)."""


def _question_line(example: str) -> str:
    """What an example is matched on: its `Question:` line, else all of it."""
    m = _QUESTION.search(example)
    return m.group(1) if m else example


class ExamplePool:
    """The examples of a pool and the index over them."""

    def __init__(self, examples: list[str], k: int, fixed: Sequence[str] = ()) -> None:
        self.fixed, self.examples, self.k = list(fixed), list(examples), k
        self.every = self.fixed + self.examples
        """The index's rows: the fixed examples, then the pool's."""
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        self._db.execute("CREATE VIRTUAL TABLE pool USING fts5(q, tokenize='porter unicode61')")
        self._db.executemany("INSERT INTO pool(rowid, q) VALUES (?, ?)", [
            (i, _DIGITS.sub(" ", _question_line(e))) for i, e in enumerate(self.every)])
        self._lock = threading.Lock()
        self._chosen: OrderedDict[str, list[str]] = OrderedDict()

    def pick(self, question: str) -> list[str]:
        """The fixed examples and the `k` of the pool most like `question`, the most alike
        last."""
        with self._lock:
            hit = self._chosen.get(question)
            if hit is not None:
                self._chosen.move_to_end(question)
                return hit
            query = match_expression(" ".join(
                w for w in _DIGITS.sub(" ", question).split() if w.lower() not in _GENERIC))
            ranked = [r[0] for r in self._db.execute(
                "SELECT rowid FROM pool WHERE pool MATCH ? ORDER BY bm25(pool), rowid",
                (query,))] if query else []
            n = len(self.fixed)
            pooled = [i for i in ranked if i >= n]  # the pool's alike, then the rest in order
            pooled = (pooled + [i for i in range(n, len(self.every)) if i not in pooled])[:self.k]
            shown = [*range(n), *pooled]
            alike = [i for i in ranked if i in shown]
            unalike = [i for i in shown if i not in alike]
            chosen = [self.every[i] for i in [*unalike, *reversed(alike)]]
            if len(question) <= _CACHED_CHARS:
                self._chosen[question] = chosen
                if len(self._chosen) > _CACHED:
                    self._chosen.popitem(last=False)
            return chosen
