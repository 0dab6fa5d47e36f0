"""Recall (`memory: {window: 20, recall: {k: 4}}`): the earlier turns of a session most like
the question, brought back into the prompt beside the recent window (or after the summary).

A turn is a user message and the replies that followed it. Turns are embedded with the model
the semantic search uses (all-MiniLM-L6-v2, in-process); each turn's vector is kept in
`.runner/recall/vectors.db` by the hash of its text, so a turn is embedded once, whichever
process asks. The embedder loads on the first recall of a process (about a second).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

from . import events as ev
from .models import Message

__all__ = ["recall", "CACHE", "turns"]

CACHE = Path(".runner") / "recall" / "vectors.db"
HEADER = "Earlier turns of this conversation that may matter now:"


def turns(messages: list[Message]) -> list[list[Message]]:
    """The messages grouped in turns, each starting at a user message."""
    out: list[list[Message]] = []
    for m in messages:
        if m.get("role") == "user" or not out:
            out.append([m])
        else:
            out[-1].append(m)
    return out


async def recall(run: Any, session: str, full: list[Message], shown: list[Message],
                 question: str) -> list[Message]:
    """`shown` (the window, or the summary and recent turns) with the `k` earlier turns of
    `full` most like `question` put before its recent part, oldest first."""
    spec = run.spec.memory.recall
    recent = [m for m in shown if m.get("role") != "system"]
    older = full[:len(full) - len(recent)] if recent else full
    candidates = turns(older)
    if spec is None or not candidates or not question.strip():
        return shown
    started = time.monotonic()
    picked = await asyncio.to_thread(_pick, candidates, question, spec.k, spec.min_score)
    run.emit(ev.MemoryRecalled(run.run_id, len(run.result.steps), session, len(candidates),
                               len(picked), time.monotonic() - started))
    if not picked:
        return shown
    head = [m for m in shown if m.get("role") == "system"]  # the summary, if there is one
    brought = [m for i in sorted(picked) for m in candidates[i]]
    return [*head, {"role": "system", "content": HEADER}, *brought, *recent]


def _pick(candidates: list[list[Message]], question: str, k: int, floor: float) -> list[int]:
    """Indices of the k turns most similar to the question (cosine of unit vectors)."""
    from .search_semantic import embedder, top

    texts = ["\n".join(str(m.get("content", "")) for m in t) for t in candidates]
    scores = _vectors(texts) @ embedder().embed([question])[0]
    return [int(i) for i in top(scores, k) if scores[i] >= floor]


def _vectors(texts: list[str]) -> Any:
    """A vector per text: from the cache, else embedded now and kept."""
    import numpy as np

    from ._sqlite import open_wal
    from .search_semantic import embedder

    model = embedder()
    keys = [hashlib.sha256(f"{model.model_id}\n{t}".encode()).hexdigest() for t in texts]
    db = open_wal(CACHE, 5.0, ["CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, "
                               "vector BLOB NOT NULL)"])
    try:
        found: dict[str, Any] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            rows = db.execute(f"SELECT key, vector FROM vectors WHERE key IN "
                              f"({','.join('?' * len(chunk))})", chunk).fetchall()
            found.update((key, np.frombuffer(blob, dtype=np.float32)) for key, blob in rows)
        missing = [i for i, key in enumerate(keys) if key not in found]
        if missing:
            fresh = model.embed([texts[i] for i in missing])
            with db:
                db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)",
                               [(keys[i], fresh[j].tobytes()) for j, i in enumerate(missing)])
            found.update((keys[i], fresh[j]) for j, i in enumerate(missing))
    finally:
        db.close()
    return np.stack([found[key] for key in keys])
