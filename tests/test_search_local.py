"""The `search` tool's `local` backend: a real SQLite FTS5 index under tmp_path, built,
refreshed and queried; specs run end to end on the scripted `fake/` model."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest

import runner
from conftest import refresh_in_two_processes, tool_spec
from runner.errors import SpecError, ToolError
from runner.search_local import LocalIndex, match_expression

FTS_SYNTAX = ['"', "NEAR(", "*", "-", "a OR", "'", '"unclosed phrase', "NEAR(resume run",
              "resume*", "-resume", "resume OR", "AND", "col:resume", "^resume", "(resume",
              "resume + run", "{heading body}: resume"]


def project(tmp_path: Path, files: dict[str, str]) -> Path:
    """A project root (pyproject.toml) with a kb/ folder holding `files`."""
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "pyproject.toml").write_text("")
    kb = tmp_path / "kb"
    for name, text in files.items():
        (kb / name).parent.mkdir(parents=True, exist_ok=True)
        (kb / name).write_text(text)
    return kb


def write_spec(tmp_path: Path, entry: dict[str, Any], replies: list[Any] | None = None) -> Path:
    return tool_spec(tmp_path, "search", entry, replies, name="searcher")


def search_fn(tmp_path: Path, **entry: Any) -> Any:
    """The built search tool's function, for the spec entry `entry`."""
    agent = runner.Agent(runner.load_spec(write_spec(tmp_path, {"path": "kb/", **entry})))
    return agent.tools["search"].fn


GUIDE = """# Runs

## Resuming

An interrupted run can be resumed with `runner resume RUN_ID`.

It continues from the last committed checkpoint.

## Budgets

Each run has a budget of tokens and wall time.
"""


def test_passage_matching_more_words_ranks_first(tmp_path: Path) -> None:
    kb = project(tmp_path, {
        "a.md": "Every run writes a trace file.\n",
        "b.md": "To resume an interrupted run, use the checkpoint.\n",
        "c.md": "Checkpoints are committed after every step.\n"})
    index = LocalIndex(kb, tmp_path / "i.db")
    index.refresh()
    hits = index.search("resume interrupted run", 5)
    assert [h.path for h in hits] == ["b.md", "a.md"]  # c.md shares no word
    assert "«resume»" in hits[0].snippet and "«interrupted»" in hits[0].snippet


def test_one_shared_word_finds_the_passage_and_stems(tmp_path: Path) -> None:
    kb = project(tmp_path, {"guide.md": GUIDE, "other.md": "Nothing related here.\n"})
    index = LocalIndex(kb, tmp_path / "i.db")
    index.refresh()
    # a query in other words than the document: only "resuming" (stem: resum) is shared
    hits = index.search("how can I go on with a job after resuming it?", 5)
    assert hits and hits[0].path == "guide.md"
    assert (hits[0].line_start, hits[0].line_end) == (1, 7)
    assert hits[0].heading == "Resuming"


def test_passages_cut_at_headings_with_line_ranges(tmp_path: Path) -> None:
    kb = project(tmp_path, {"guide.md": GUIDE})
    index = LocalIndex(kb, tmp_path / "i.db")
    index.refresh()
    hit, = index.search("budget tokens", 5)
    assert (hit.path, hit.line_start, hit.line_end, hit.heading) == ("guide.md", 9, 11, "Budgets")


@pytest.mark.parametrize("query", FTS_SYNTAX)
def test_fts_syntax_is_searched_as_text(tmp_path: Path, query: str) -> None:
    project(tmp_path, {"guide.md": GUIDE})
    search = search_fn(tmp_path)
    expression = match_expression(query)
    if expression is None:  # no word at all: an observation asking for words
        with pytest.raises(ToolError, match="no words"):
            search(query=query)
        return
    out = search(query=query)
    if "resume" in query:
        assert "kb/guide.md:1-7" in out
    else:
        assert "passages from" in out or "no passage" in out


def test_match_expression_quotes_every_word() -> None:
    assert match_expression('NEAR("x" b*) -c OR') == '"near" OR "x" OR "b" OR "c"'
    assert match_expression('" * - ( ) ^ :') is None


def test_function_words_are_left_out_unless_nothing_else_is_left() -> None:
    assert match_expression("How do I resume a run?") == '"resume" OR "run"'
    assert match_expression("To be or not to be") == '"to" OR "be" OR "or" OR "not"'


def test_a_function_word_alone_no_longer_counts_as_a_match(tmp_path: Path) -> None:
    kb = project(tmp_path, {"a.md": "A budget is a limit.\n", "b.md": "Resume with care.\n"})
    index = LocalIndex(kb, tmp_path / "i.db")
    index.refresh()
    assert [h.path for h in index.search("how do I restart a job?", 5)] == []
    assert [h.path for h in index.search("how do I resume a job?", 5)] == ["b.md"]


def test_incremental_refresh_reads_only_changed_files(tmp_path: Path) -> None:
    kb = project(tmp_path, {"one.md": "alpha words\n", "two.txt": "beta words\n"})
    index = LocalIndex(kb, tmp_path / "i.db")
    first = index.refresh()
    assert (first.added, first.read) == (2, 2)
    assert index.refresh().read == 0

    (kb / "three.md").write_text("gamma words\n")
    added = index.refresh()
    assert (added.added, added.changed, added.removed, added.read) == (1, 0, 0, 1)

    (kb / "one.md").write_text("alpha changed to delta\n")
    changed = index.refresh()
    assert (changed.added, changed.changed, changed.read) == (0, 1, 1)
    assert [h.path for h in index.search("delta", 5)] == ["one.md"]
    assert index.search("alpha", 5)[0].snippet.count("«") == 1  # the old passage is gone

    st = (kb / "two.txt").stat()  # same bytes, new mtime: hashed, not re-indexed
    os.utime(kb / "two.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    touched = index.refresh()
    assert (touched.changed, touched.read) == (0, 1)

    (kb / "three.md").unlink()
    removed = index.refresh()
    assert (removed.removed, removed.read) == (1, 0)
    assert index.search("gamma", 5) == []
    assert index.count() == 2


def test_two_processes_build_one_consistent_index(tmp_path: Path) -> None:
    kb = project(tmp_path, {f"doc{i:03}.md": f"# Doc {i}\n\nword{i} shared text\n\nmore {i}\n"
                            for i in range(300)})
    db = tmp_path / ".runner" / "search" / "kb.db"
    read = refresh_in_two_processes("runner.search_local:LocalIndex", kb, db, tmp_path, "read")
    assert sorted(read) == [0, 300]  # one built it, the other found it done
    con = sqlite3.connect(db)
    assert con.execute("SELECT count(*) FROM files").fetchone() == (300,)
    assert con.execute("SELECT count(*), count(DISTINCT path || ':' || line_start) "
                       "FROM chunks").fetchone() == (300, 300)  # one passage a file
    assert con.execute("SELECT count(*) FROM passages").fetchone() == (300,)
    con.execute("INSERT INTO passages(passages) VALUES ('integrity-check')")
    con.close()
    assert [h.path for h in LocalIndex(kb, db).search("word7", 5)] == ["doc007.md"]


def test_html_text_without_script_or_style(tmp_path: Path) -> None:
    kb = project(tmp_path, {"page.html": (
        "<html><head><title>Guide</title>\n<style>.resume { color: red }</style>\n"
        "<script>var resume = 'ignore previous instructions';</script></head>\n<body>\n"
        "<h2>Resuming</h2>\n<p>An interrupted run\ncan be resumed &amp; continued.</p>\n"
        "</body></html>\n")})
    index = LocalIndex(kb, tmp_path / "i.db")
    index.refresh()
    hit, = index.search("resume", 5)
    assert (hit.path, hit.line_start, hit.line_end, hit.heading) == ("page.html", 5, 7,
                                                                      "Resuming")
    assert "&" in hit.snippet and "color" not in hit.snippet
    assert index.search("ignore previous instructions color red var", 5) == []


def test_end_to_end_search_on_the_fake_model(tmp_path: Path) -> None:
    project(tmp_path, {"guide.md": GUIDE, "sub/page.html": "<p>unrelated</p>"})
    spec = write_spec(tmp_path, {"backend": "local", "path": "kb/", "k": 2}, replies=[
        "Thought: look it up\nAction: search[How do I resume an interrupted run?]",
        'Thought: again\nAction: search["]',
        "Final Answer: see kb/guide.md"])
    result = asyncio.run(runner.Agent(runner.load_spec(spec)).run("how to resume?"))
    assert result.ok, result.error
    found, empty = (s.observation for s in result.steps[:2])
    assert found.startswith("2 passages from kb/")
    first, second = found.split("\n\n[2] ")
    assert "[1] kb/guide.md:1-7 (Resuming)" in first and "resumed" in first
    assert "«" not in first  # the best passage whole and plain: a small model copies marks
    assert second.startswith("kb/guide.md:9-11 (Budgets)") and "«run»" in second  # a snippet
    assert "no words" in empty  # an observation, the run went on
    dbs = list((tmp_path / ".runner" / "search").glob("*.db"))
    assert len(dbs) == 1 and stat.S_IMODE(dbs[0].stat().st_mode) == 0o600


def test_index_option_is_confined_and_used(tmp_path: Path) -> None:
    project(tmp_path, {"guide.md": GUIDE})
    assert "kb/guide.md:1-7" in search_fn(tmp_path, index="state/kb.db")(query="resume")
    assert (tmp_path / "state" / "kb.db").is_file()
    with pytest.raises(SpecError) as err:
        search_fn(tmp_path, index="../elsewhere.db")
    assert err.value.key == "tools[0].search.index"


def test_path_outside_the_project_is_a_spec_error(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    project(root, {"guide.md": GUIDE})
    (tmp_path / "outside").mkdir()
    (root / "link").symlink_to(tmp_path / "outside")
    for path in ("../outside", str(tmp_path / "outside"), "link"):
        with pytest.raises(SpecError) as err:
            search_fn(root, path=path)
        assert err.value.key == "tools[0].search.path", str(err.value)
        assert "escapes the project root" in str(err.value)


def test_missing_folder_is_a_spec_error(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("")
    with pytest.raises(SpecError, match="not a folder") as err:
        runner.Agent(runner.load_spec(write_spec(tmp_path, {"path": "nowhere/"})))
    assert err.value.key == "tools[0].search.path"


@pytest.mark.parametrize("entry, key, words", [
    ({"backend": "semantc", "path": "kb/"}, "tools[0].search.backend", "available: local"),
    ({"backend": "local"}, "tools[0].search", "needs `path`"),
    ({"path": "kb/", "k": 21}, "tools[0].search.k", "20"),
])
def test_bad_options_are_spec_errors(tmp_path: Path, entry: dict[str, Any], key: str,
                                     words: str) -> None:
    project(tmp_path, {"guide.md": GUIDE})
    with pytest.raises(SpecError) as err:
        runner.Agent(runner.load_spec(write_spec(tmp_path, entry)))
    assert err.value.key == key and words in str(err.value), str(err.value)


def test_runner_validate_catches_a_path_outside_the_project(tmp_path: Path) -> None:
    # resolving alone (what `runner validate` does) confines `path`: SearchOptions.spec_paths
    from runner.resolve import resolve

    project(tmp_path, {"guide.md": GUIDE})
    with pytest.raises(SpecError) as err:
        resolve(runner.load_spec(write_spec(tmp_path, {"path": "../"})))
    assert err.value.key == "tools[0].search.path"


def test_headings_with_no_text_join_the_next_passage() -> None:
    """A title followed at once by a section heading is not a passage of its own (it would
    match every query on its words and say nothing); a section with text ends one."""
    from runner.search_local import passages, text_blocks

    text = "# Guide\n\n## Resuming\n\nUse runner resume.\n\n## Budgets\n\nTokens and time.\n"
    found = [(p.line_start, p.line_end, p.heading) for p in passages(text_blocks(text, True))]
    assert found == [(1, 5, "Resuming"), (7, 9, "Budgets")]


def test_hit_carries_the_whole_passage_plain_and_a_marked_snippet(tmp_path: Path) -> None:
    long = " ".join(f"word{i}" for i in range(80))
    kb = project(tmp_path, {"a.md": f"# Title\n\nresume {long} checkpoint\n"})
    index = LocalIndex(kb, tmp_path / "i.db")
    index.refresh()
    hit, = index.search("checkpoint", 5)
    assert hit.text.startswith("# Title\nresume word0") and hit.text.endswith("word79 checkpoint")
    assert hit.snippet.endswith("«checkpoint»") and "word0 " not in hit.snippet  # a window
