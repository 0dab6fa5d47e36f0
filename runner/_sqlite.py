"""Opening the runner's SQLite files: WAL journal, so readers never block the writer;
synchronous=NORMAL, durable when the process dies (not on power loss); a busy timeout.

What a run keeps (prompts, answers, tool results) is private whatever the umask, as its
trace is (`runner._files`); SQLite gives the -wal and -shm files the database file's mode."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

from ._files import private_dir, private_file

__all__ = ["open_wal"]


def open_wal(path: Path, busy_timeout_s: float, schema: Iterable[str]) -> sqlite3.Connection:
    """An autocommit connection with `schema` (CREATE ... IF NOT EXISTS) applied."""
    private_dir(path.parent)
    private_file(path, "-wal", "-shm")
    # switching a new file to WAL reports "locked" at once, without waiting out the busy
    # timeout, while another process creates the same file: wait for it here, bounded
    deadline = time.monotonic() + busy_timeout_s
    while True:
        try:
            return _open(path, busy_timeout_s, schema)
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _open(path: Path, busy_timeout_s: float, schema: Iterable[str]) -> sqlite3.Connection:
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
