"""Opening the runner's SQLite files: WAL journal, so readers never block the writer;
synchronous=NORMAL, durable when the process dies (not on power loss); a busy timeout."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path


def open_wal(path: Path, busy_timeout_s: float, schema: Iterable[str]) -> sqlite3.Connection:
    """An autocommit connection with `schema` (CREATE ... IF NOT EXISTS) applied."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None,
                         check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    for statement in schema:
        db.execute(statement)
    return db
