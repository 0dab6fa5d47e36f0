"""The embedding model behind the semantic search backend: the real shipped model, offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.search_local import LocalIndex
from runner.search_semantic import DIM, Embedder

PASSAGES = ["An interrupted run can be resumed with runner resume RUN_ID.",
            "Budgets limit the tokens and the wall time of a run.",
            "Paris is the capital of France."]
QUERY = "How do I continue a job that was stopped halfway?"


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


def test_vectors_are_unit_length_and_batched(embedder: Embedder) -> None:
    before = embedder.calls
    vectors = embedder.embed(PASSAGES * 12, batch=16)  # 36 texts: 3 batches
    assert vectors.shape == (36, DIM)
    assert embedder.calls - before == 3
    assert abs(float((vectors * vectors).sum(axis=1).min()) - 1.0) < 1e-4
    assert embedder.embed([]).shape == (0, DIM)


def test_a_paraphrase_finds_what_full_text_misses(embedder: Embedder, tmp_path: Path) -> None:
    """The query shares no word stem with the passage it wants: BM25 cannot find it, the
    embeddings rank it first."""
    kb = tmp_path / "kb"
    kb.mkdir()
    for i, text in enumerate(PASSAGES):
        (kb / f"{i}.md").write_text(text + "\n")
    index = LocalIndex(kb, tmp_path / "i.db")
    index.refresh()
    assert "0.md" not in [h.path for h in index.search("continue job stopped halfway", 5)]
    scores = embedder.embed(PASSAGES) @ embedder.embed([QUERY])[0]
    assert int(scores.argmax()) == 0


def test_long_text_is_cut_not_refused(embedder: Embedder) -> None:
    vector, = embedder.embed(["word " * 5000])
    assert vector.shape == (DIM,)
