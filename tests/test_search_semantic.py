"""The embedding model behind the semantic search backend: the real shipped model, offline."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import runner
from conftest import refresh_in_two_processes, tool_spec
from runner import search_semantic
from runner.errors import SpecError
from runner.search_local import Hit, LocalIndex
from runner.search_semantic import (DIM, RRF_K, Embedder, HybridIndex, SemanticIndex, embedder,
                                    fuse)

PASSAGES = ["An interrupted run can be resumed with runner resume RUN_ID.",
            "Budgets limit the tokens and the wall time of a run.",
            "Paris is the capital of France."]
QUERY = "How do I continue a job that was stopped halfway?"


@pytest.fixture(scope="module")
def model() -> Embedder:
    return embedder()


def test_vectors_are_unit_length_and_batched(model: Embedder) -> None:
    before = model.calls
    vectors = model.embed(PASSAGES * 12, batch=16)  # 36 texts: 3 batches
    assert vectors.shape == (36, DIM)
    assert model.calls - before == 3
    assert abs(float((vectors * vectors).sum(axis=1).min()) - 1.0) < 1e-4
    assert model.embed([]).shape == (0, DIM)


def test_a_paraphrase_finds_what_full_text_misses(model: Embedder, tmp_path: Path) -> None:
    """The query shares no word stem with the passage it wants: BM25 cannot find it, the
    embeddings rank it first."""
    kb = tmp_path / "kb"
    kb.mkdir()
    for i, text in enumerate(PASSAGES):
        (kb / f"{i}.md").write_text(text + "\n")
    index = LocalIndex(kb, tmp_path / "i.db")
    index.refresh()
    assert "0.md" not in [h.path for h in index.search("continue job stopped halfway", 5)]
    scores = model.embed(PASSAGES) @ model.embed([QUERY])[0]
    assert int(scores.argmax()) == 0


def test_long_text_is_cut_not_refused(model: Embedder) -> None:
    vector, = model.embed(["word " * 5000])
    assert vector.shape == (DIM,)


# ---------------------------------------------------------------------------- the backends

def folder_with(tmp_path: Path, files: dict[str, str]) -> Path:
    kb = tmp_path / "kb"
    for name, text in files.items():
        (kb / name).parent.mkdir(parents=True, exist_ok=True)
        (kb / name).write_text(text)
    return kb


def vector_ids(db: Path) -> list[int]:
    con = sqlite3.connect(db)
    try:
        return [r[0] for r in con.execute("SELECT v.id FROM vectors v JOIN chunks c "
                                          "ON c.id = v.id ORDER BY v.id")]
    finally:
        con.close()


def test_semantic_refresh_embeds_only_new_and_changed_passages(tmp_path: Path) -> None:
    kb = folder_with(tmp_path, {f"{i}.md": text + "\n" for i, text in enumerate(PASSAGES)})
    index = SemanticIndex(kb, tmp_path / "i.db")
    assert index.refresh() == 3
    assert index.refresh() == 0  # nothing changed: nothing embedded
    assert index.search(QUERY, 1)[0].path == "0.md"

    (kb / "2.md").write_text("Traces record every step a run takes.\n")
    (kb / "1.md").unlink()
    (kb / "3.md").write_text("Secrets are masked before a trace is written.\n")
    assert index.refresh() == 2  # the changed file and the new one
    assert len(vector_ids(tmp_path / "i.db")) == index.count() == 3
    con = sqlite3.connect(tmp_path / "i.db")
    assert con.execute("SELECT count(*) FROM vectors").fetchone() == (3,)  # none left over
    con.close()
    found = index.search("what does a run's log keep?", 3)
    assert [h.path for h in found][:1] == ["2.md"]
    assert "Paris" not in " ".join(h.text for h in found)  # the old text is gone
    assert {h.path for h in found} == {"0.md", "2.md", "3.md"}


def test_vectors_of_another_model_are_embedded_again(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    kb = folder_with(tmp_path, {"a.md": PASSAGES[0] + "\n"})
    index = SemanticIndex(kb, tmp_path / "i.db")
    assert index.refresh() == 1
    monkeypatch.setattr(embedder(), "model_id", "another/model")
    assert index.refresh() == 1
    assert index.search(QUERY, 1)[0].path == "a.md"


def test_a_passage_changed_while_it_was_embedded_keeps_no_stale_vector(
        tmp_path: Path) -> None:
    kb = folder_with(tmp_path, {"a.md": "Old text about cats.\n"})
    index = SemanticIndex(kb, tmp_path / "i.db")
    index.local.refresh()
    db = index.local.connect()
    (rowid, heading, body), = db.execute(
        "SELECT c.id, p.heading, p.body FROM chunks c JOIN passages p ON p.rowid = c.id")
    db.execute("UPDATE passages SET body = 'New text about dogs.' WHERE rowid = ?", (rowid,))
    index._store(db, embedder().model_id, [(rowid, heading, body)])  # read before the change
    assert db.execute("SELECT count(*) FROM vectors").fetchone() == (0,)
    db.close()


def test_an_interrupted_first_build_resumes_where_it_stopped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kb = folder_with(tmp_path, {f"{i:02}.md": f"Document number {i} about topic {i}.\n"
                                for i in range(10)})
    index = SemanticIndex(kb, tmp_path / "i.db")
    monkeypatch.setattr(search_semantic, "EMBED_BATCH", 4)
    real = Embedder.embed
    calls = []

    def failing(self: Embedder, texts: list[str], batch: int = 32) -> Any:
        calls.append(len(texts))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user pressed ^C during the second batch
        return real(self, texts, batch)

    monkeypatch.setattr(Embedder, "embed", failing)
    with pytest.raises(KeyboardInterrupt):
        index.refresh()
    assert len(vector_ids(tmp_path / "i.db")) == 4  # the first batch was kept
    assert index.refresh() == 6


def test_fusion_ranks_a_passage_both_find_above_one_either_finds() -> None:
    def hit(path: str) -> Hit:
        return Hit(path, 1, 2, "", path, 0.0, path)

    fused = fuse([[hit("bm25-only"), hit("both")], [hit("meaning-only"), hit("both")]], 3)
    assert [h.path for h in fused] == ["both", "bm25-only", "meaning-only"]
    assert fused[0].score == pytest.approx(2 / (RRF_K + 2))
    assert fused[1].score == pytest.approx(1 / (RRF_K + 1))
    assert len(fuse([[hit("a"), hit("b")]], 1)) == 1


def test_hybrid_finds_a_paraphrase_and_keeps_exact_words_first(tmp_path: Path) -> None:
    kb = folder_with(tmp_path, {
        "resume.md": PASSAGES[0] + "\n",
        "budget.md": PASSAGES[1] + "\n",
        "ids.md": "Every run has a RUN_ID like 20261203-ab12, printed when it starts.\n",
        "paris.md": PASSAGES[2] + "\n"})
    index = HybridIndex(kb, tmp_path / "i.db")
    index.refresh()
    # no shared word but "a", which BM25 finds in budget.md: meaning finds resume.md
    assert "resume.md" in [h.path for h in index.search(QUERY, 2)]
    assert "resume.md" not in [h.path for h in index.semantic.local.search(QUERY, 4)]
    exact = index.search("20261203-ab12", 2)
    assert exact[0].path == "ids.md" and "«20261203»" in exact[0].snippet  # BM25's marks kept
    with pytest.raises(ValueError):
        index.search('"*', 2)


def test_semantic_and_hybrid_backends_end_to_end(tmp_path: Path) -> None:
    for backend in ("semantic", "hybrid"):
        folder = tmp_path / backend
        folder_with(folder, {"guide.md": "# Runs\n\n## Resuming\n\n" + PASSAGES[0] + "\n",
                             "other.md": PASSAGES[2] + "\n"})
        spec = tool_spec(folder, "search", {"backend": backend, "path": "kb/", "k": 1},
                         replies=[f"Thought: look\nAction: search[{QUERY}]",
                                  "Thought: again\nAction: search[?!]",
                                  "Final Answer: see kb/guide.md"])
        agent = runner.Agent(runner.load_spec(spec))
        assert "marked" in agent.tools["search"].description or backend == "semantic"
        result = asyncio.run(agent.run("how to resume?"))
        assert result.ok, result.error
        found, empty = (s.observation for s in result.steps[:2])
        assert found.startswith("1 passages from kb/"), found
        assert "[1] kb/guide.md:1-5 (Resuming)" in found and "runner resume RUN_ID" in found
        assert "no words" in empty


def test_an_unknown_backend_names_the_folder_ones(tmp_path: Path) -> None:
    folder_with(tmp_path, {"a.md": "x\n"})
    with pytest.raises(SpecError) as err:
        runner.Agent(runner.load_spec(tool_spec(tmp_path, "search",
                                                {"backend": "semantik", "path": "kb/"})))
    assert "did you mean 'semantic'" in str(err.value) and "hybrid" in str(err.value)
    with pytest.raises(SpecError) as err:
        runner.Agent(runner.load_spec(tool_spec(tmp_path, "search", {"backend": "hybrid"})))
    assert "backend hybrid needs `path`" in str(err.value)


def test_two_processes_embed_each_passage_once(tmp_path: Path) -> None:
    kb = folder_with(tmp_path, {f"doc{i:03}.md": f"Note {i}: the number {i} is odd or even.\n"
                                for i in range(120)})
    db = tmp_path / ".runner" / "search" / "kb.db"
    embedded = refresh_in_two_processes("runner.search_semantic:HybridIndex", kb, db, tmp_path)
    assert sum(embedded) >= 120  # all embedded (a batch may be done twice)
    assert len(vector_ids(db)) == 120
    assert HybridIndex(kb, db).refresh() == 0
