"""Opening the runner's SQLite files: WAL journal, so readers never block the writer;
synchronous=NORMAL, durable when the process dies (not on power loss); a busy timeout.

What a run keeps (prompts, answers, tool results) is private whatever the umask, as its
trace is: the folders the runner makes are 0700, its files 0600."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

__all__ = ["open_wal", "private_dir", "private_file"]


def private_dir(path: Path) -> None:
    """Make `path` and each missing folder above it, 0700 (folders that exist keep their mode)."""
    missing: list[Path] = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:  # made meanwhile by another process
            pass


def private_file(path: Path) -> None:
    """Create `path` empty and 0600 unless it exists (SQLite gives its -wal and -shm files the
    database file's mode); a dangling symlink is refused, not followed to make its target."""
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600))


def open_wal(path: Path, busy_timeout_s: float, schema: Iterable[str]) -> sqlite3.Connection:
    """An autocommit connection with `schema` (CREATE ... IF NOT EXISTS) applied."""
    private_dir(path.parent)
    private_file(path)
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
