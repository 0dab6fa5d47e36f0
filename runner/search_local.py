"""The `local` search backend: a SQLite FTS5 index (BM25, `porter unicode61`) over a folder
of Markdown, text and HTML files, cut into passages at headings and paragraphs.

The index is derived data in one WAL database: refreshed on each use from the files'
(size, mtime_ns, sha256), only changed files re-read, all of it in one `BEGIN IMMEDIATE`
transaction so two processes refreshing at once neither corrupt nor duplicate it. A query is
the user's words, each quoted, joined with OR: FTS5's syntax never sees user text."""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import ClassVar

from ._files import TooLarge, read_bounded
from ._sqlite import open_wal

__all__ = ["SUFFIXES", "Hit", "LocalIndex", "Refresh", "bump_generation", "generation",
           "html_blocks", "index_path", "match_expression", "passages"]

SUFFIXES = {".md": "md", ".markdown": "md", ".txt": "text", ".text": "text", ".rst": "text",
            ".html": "html", ".htm": "html"}
MAX_FILE_BYTES = 4_000_000
"""Larger files are skipped (and counted), not read."""
MAX_FILES = 50_000
MAX_QUERY_WORDS = 64
PASSAGE_CHARS = 1200
"""Paragraphs of one section are grouped up to about this size; a longer one is cut by lines."""
SNIPPET_TOKENS = 40
BUSY_TIMEOUT_S = 30.0
_SCHEMA = (
    ("CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER NOT NULL, "
     "mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL)"),
    ("CREATE TABLE IF NOT EXISTS chunks (id INTEGER PRIMARY KEY, path TEXT NOT NULL, "
     "line_start INTEGER NOT NULL, line_end INTEGER NOT NULL)"),
    "CREATE INDEX IF NOT EXISTS chunks_path ON chunks(path)",
    ("CREATE VIRTUAL TABLE IF NOT EXISTS passages USING fts5(heading, body, "
     "tokenize='porter unicode61')"),
    # the semantic backend's vectors, dropped with their passage (runner.search_semantic)
    ("CREATE TABLE IF NOT EXISTS vectors (id INTEGER PRIMARY KEY, model TEXT NOT NULL, "
     "vec BLOB NOT NULL)"),
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)
_WORD = re.compile(r"\w+")
STOPWORDS = frozenset(
    "a an and are as at be been but by can could did do does for from had has have how i if in "
    "into is it its me my no not of on or our should so such than that the their them then "
    "there these they this to was we were what when where which while who why will with "
    "would you your".split())
"""Function words left out of a query that has other words: they match nearly every
passage, and each such match would count as a finding when rankings are fused (hybrid)."""
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")


def index_path(folder: Path) -> Path:
    """Where the index of `folder` lives by default: `.runner/search/<hash>.db`."""
    digest = hashlib.sha256(os.fsencode(folder.resolve())).hexdigest()[:16]
    return Path(".runner") / "search" / f"{digest}.db"


def match_expression(text: str) -> str | None:
    """The user's words as an FTS5 query: each quoted, joined with OR (ranked, not a filter),
    STOPWORDS left out unless there is nothing else; None when the text holds no word."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(text):
        seen.setdefault(word.lower(), None)
        if len(seen) >= MAX_QUERY_WORDS:
            break
    words = [w for w in seen if w not in STOPWORDS] or list(seen)
    # \w never matches '"', so the quotes cannot be closed from inside
    return " OR ".join(f'"{w}"' for w in words) or None


# ---------------------------------------------------------------------------- passages

Line = tuple[int, str]
"""(line number, text)"""


@dataclass
class Block:
    """A heading or a paragraph: its lines."""

    lines: list[Line]
    heading: bool = False


@dataclass
class Passage:
    line_start: int
    line_end: int
    heading: str
    body: str


def text_blocks(text: str, markdown: bool) -> list[Block]:
    """Paragraphs (runs of non-blank lines) and, in Markdown, headings outside code fences."""
    blocks: list[Block] = []
    current: list[Line] = []
    fenced = False
    for n, line in enumerate(text.splitlines(), 1):
        if markdown and _FENCE.match(line):
            fenced = not fenced
        heading = markdown and not fenced and _HEADING.match(line)
        if heading or not line.strip():
            if current:
                blocks.append(Block(current))
                current = []
            if heading:
                blocks.append(Block([(n, line.strip())], heading=True))
            continue
        current.append((n, line))
    if current:
        blocks.append(Block(current))
    return blocks


class _HTMLText(HTMLParser):
    """Visible text of a page as blocks, with the source lines they came from."""

    SKIP: ClassVar[frozenset[str]] = frozenset({"script", "style", "template", "noscript",
                                                "svg"})
    HEADINGS: ClassVar[frozenset[str]] = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
    BREAKS: ClassVar[frozenset[str]] = frozenset({"p", "div", "br", "li", "tr", "td", "th", "section", "article", "header",
              "footer", "pre", "blockquote", "ul", "ol", "table", "title", "dd", "dt", "hr",
              "main", "nav", "aside", "figure", "figcaption", "form", *HEADINGS})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self._lines: list[Line] = []
        self._skip = 0
        self._heading = False

    def _flush(self) -> None:
        lines = [(n, t.strip()) for n, t in self._lines if t.strip()]
        if lines:
            self.blocks.append(Block(lines, heading=self._heading))
        self._lines = []

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag in self.SKIP:
            self._skip += 1
        elif tag in self.BREAKS:
            self._flush()
            self._heading = tag in self.HEADINGS

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag in self.BREAKS:
            self._flush()
            self._heading = False

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        line = self.getpos()[0]
        for i, part in enumerate(data.split("\n")):
            if i == 0 and self._lines and self._lines[-1][0] == line:
                self._lines[-1] = (line, self._lines[-1][1] + part)
            else:
                self._lines.append((line + i, part))


def html_blocks(text: str) -> list[Block]:
    """The visible text of an HTML document (no script or style) as blocks."""
    parser = _HTMLText()
    parser.feed(text)
    parser.close()
    parser._flush()
    for b in parser.blocks:  # a heading block reads like a Markdown heading
        if b.heading:
            b.lines = [(b.lines[0][0], " ".join(t for _, t in b.lines))]
    return parser.blocks


def passages(blocks: list[Block]) -> list[Passage]:
    """Blocks grouped into passages: a heading starts one; paragraphs of a section are
    joined up to PASSAGE_CHARS; a longer paragraph is cut by lines, a longer line by size."""
    out: list[Passage] = []
    heading = ""
    heads: set[int] = set()
    lines: list[Line] = []

    def emit() -> None:
        if lines:
            out.append(Passage(lines[0][0], lines[-1][0], heading,
                               "\n".join(t for _, t in lines)))
            lines.clear()

    def size() -> int:
        return sum(len(t) + 1 for _, t in lines)

    for block in blocks:
        if block.heading:
            if any(n not in heads for n, _ in lines):
                emit()  # headings with no text under them join the next section's passage
            heads.add(block.lines[0][0])
            heading = block.lines[0][1].lstrip("#").strip()[:300]
            lines.extend(block.lines)
            continue
        own = sum(len(t) + 1 for _, t in block.lines)
        if lines and size() + own > PASSAGE_CHARS and lines[-1][0] not in heads:
            emit()  # a heading stays with the paragraph under it
        for n, text in block.lines:
            while len(text) > PASSAGE_CHARS:
                emit()
                lines.append((n, text[:PASSAGE_CHARS]))
                emit()
                text = text[PASSAGE_CHARS:]
            if lines and size() + len(text) > PASSAGE_CHARS:
                emit()
            lines.append((n, text))
    emit()
    return out


def file_passages(data: bytes, kind: str) -> list[Passage]:
    """The passages of a file's bytes (undecodable bytes replaced)."""
    text = data.decode("utf-8", errors="replace")
    if kind == "html":
        return passages(html_blocks(text))
    return passages(text_blocks(text, markdown=kind == "md"))


# ---------------------------------------------------------------------------- the index


@dataclass
class Hit:
    """One passage found: its file (relative to the folder), lines, marked snippet and text."""

    path: str
    line_start: int
    line_end: int
    heading: str
    snippet: str
    score: float
    text: str = ""
    """The whole passage, as written (no marks: a model copies them into its answer)."""


@dataclass
class Refresh:
    """What a refresh did: files added, changed, removed, read (content hashed), skipped."""

    added: int = 0
    changed: int = 0
    removed: int = 0
    read: int = 0
    skipped: int = 0
    files: int = 0


class LocalIndex:
    """The FTS5 index of one folder, kept in the SQLite file `db_path`."""

    def __init__(self, folder: Path, db_path: Path) -> None:
        self.folder, self.db_path = folder, db_path

    def connect(self) -> sqlite3.Connection:
        """A connection to the index, its schema applied (the caller closes it)."""
        return open_wal(self.db_path, BUSY_TIMEOUT_S, _SCHEMA)

    def _scan(self) -> tuple[dict[str, tuple[int, int, str]], int]:
        """The folder's indexable files: relative path -> (size, mtime_ns, kind); skipped."""
        found: dict[str, tuple[int, int, str]] = {}
        skipped = 0
        prefix = len(os.path.join(self.folder, ""))  # strings, not Paths: 10,000 files in ms
        for entry in _walk(self.folder):
            kind = SUFFIXES.get(os.path.splitext(entry.name)[1].lower())
            if kind is None:
                continue
            st = entry.stat(follow_symlinks=False)
            if st.st_size > MAX_FILE_BYTES or len(found) >= MAX_FILES:
                skipped += 1
                continue
            found[entry.path[prefix:].replace(os.sep, "/")] = (st.st_size, st.st_mtime_ns, kind)
        return found, skipped

    def refresh(self) -> Refresh:
        """Bring the index up to date with the folder; only new or changed files are read."""
        found, skipped = self._scan()
        stats = Refresh(skipped=skipped, files=len(found))
        db = self.connect()
        try:
            if not self._stale(db, found):
                return stats
            db.execute("BEGIN IMMEDIATE")  # one writer; a second refresher waits, then sees
            try:
                known = {p: (s, m, h) for p, s, m, h in db.execute(
                    "SELECT path, size, mtime_ns, sha256 FROM files")}
                for rel in known.keys() - found.keys():
                    self._drop(db, rel)
                    db.execute("DELETE FROM files WHERE path = ?", (rel,))
                    stats.removed += 1
                for rel, (size, mtime, kind) in found.items():
                    old = known.get(rel)
                    if old is not None and old[:2] == (size, mtime):
                        continue
                    try:
                        data = read_bounded(self.folder / rel, MAX_FILE_BYTES)
                    except (OSError, TooLarge):  # gone, grown or unreadable since the scan
                        if old is not None:
                            self._drop(db, rel)
                            db.execute("DELETE FROM files WHERE path = ?", (rel,))
                        stats.skipped += 1
                        continue
                    stats.read += 1
                    digest = hashlib.sha256(data).hexdigest()
                    if old is None or old[2] != digest:
                        if old is not None:
                            self._drop(db, rel)
                        self._add(db, rel, file_passages(data, kind))
                        stats.added += old is None
                        stats.changed += old is not None
                    db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)",
                               (rel, size, mtime, digest))
                bump_generation(db)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        finally:
            db.close()
        return stats

    @staticmethod
    def _stale(db: sqlite3.Connection, found: dict[str, tuple[int, int, str]]) -> bool:
        known = {p: (s, m) for p, s, m in db.execute("SELECT path, size, mtime_ns FROM files")}
        return known != {p: (s, m) for p, (s, m, _) in found.items()}

    @staticmethod
    def _drop(db: sqlite3.Connection, rel: str) -> None:
        for table in ("passages", "vectors"):
            db.execute(f"DELETE FROM {table} WHERE rowid IN "
                       "(SELECT id FROM chunks WHERE path = ?)", (rel,))
        db.execute("DELETE FROM chunks WHERE path = ?", (rel,))

    @staticmethod
    def _add(db: sqlite3.Connection, rel: str, found: list[Passage]) -> None:
        for p in found:
            cur = db.execute("INSERT INTO chunks (path, line_start, line_end) VALUES (?, ?, ?)",
                             (rel, p.line_start, p.line_end))
            db.execute("INSERT INTO passages (rowid, heading, body) VALUES (?, ?, ?)",
                       (cur.lastrowid, p.heading, p.body))

    def count(self) -> int:
        """How many passages the index holds."""
        db = self.connect()
        try:
            return int(db.execute("SELECT count(*) FROM chunks").fetchone()[0])
        finally:
            db.close()

    def search(self, query: str, k: int) -> list[Hit]:
        """The k best passages for the words of `query` (BM25; a heading weighs double);
        ValueError when the query has no word."""
        expression = match_expression(query)
        if expression is None:
            raise ValueError("the query has no words")
        db = self.connect()
        try:
            rows = db.execute(
                "SELECT c.path, c.line_start, c.line_end, passages.heading, "
                f"snippet(passages, 1, '«', '»', ' … ', {SNIPPET_TOKENS}), "
                "bm25(passages, 2.0, 1.0) AS score, passages.body "
                "FROM passages JOIN chunks c ON c.id = passages.rowid "
                "WHERE passages MATCH ? ORDER BY score LIMIT ?", (expression, k)).fetchall()
        finally:
            db.close()
        return [Hit(*row) for row in rows]


def bump_generation(db: sqlite3.Connection) -> None:
    """Mark the index changed (inside the writing transaction), so readers that keep a copy
    of it in memory (the semantic backend's vectors) know to read it again."""
    db.execute("INSERT INTO meta VALUES ('generation', 1) "
               "ON CONFLICT(key) DO UPDATE SET value = value + 1")


def generation(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
    return int(row[0]) if row else 0


def _walk(root: Path | str) -> Iterator[os.DirEntry[str]]:
    """Regular files under `root`, symlinks not followed (so none leads out of it), hidden
    files and folders skipped."""
    stack = [str(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            if e.name.startswith("."):
                continue
            if e.is_dir(follow_symlinks=False):
                stack.append(e.path)
            elif e.is_file(follow_symlinks=False):
                yield e
