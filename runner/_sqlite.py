"""Opening the runner's SQLite files: WAL journal, so readers never block the writer;
synchronous=NORMAL, durable when the process dies (not on power loss); a busy timeout.

What a run keeps (prompts, answers, tool results) is private whatever the umask, as its
trace is (`runner._files`); SQLite gives the -wal and -shm files the database file's mode."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

from ._files import private_dir, private_file

__all__ = ["open_wal"]


def open_wal(path: Path, busy_timeout_s: float, schema: Iterable[str]) -> sqlite3.Connection:
    """An autocommit connection with `schema` (CREATE ... IF NOT EXISTS) applied."""
    private_dir(path.parent)
    private_file(path, "-wal", "-shm")
    db = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None,
                         check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        for statement in schema:
            db.execute(statement)
    except BaseException:
        db.close()
        raise
    return db
