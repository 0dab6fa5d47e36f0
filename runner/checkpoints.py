"""Checkpoints: each run's state committed to SQLite after every step, for `runner runs` and
`runner resume`. One row per run, replaced in one transaction (WAL, busy timeout), so a
crash at any point leaves the last committed step intact and never a torn row."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from ._sqlite import open_wal
from .errors import RunnerError, SpecError

__all__ = ["CheckpointStore", "CheckpointError"]

RESUMABLE = {"running", "interrupted"}


class CheckpointError(RunnerError):
    """The checkpoint database cannot be read or written."""

    status = "checkpoint_error"


class CheckpointStore:
    """Run states in a SQLite file (default `.runner/runs.db`)."""

    def __init__(self, path: str | Path = ".runner/runs.db", busy_timeout_s: float = 5.0,
                 secrets: set[str] | None = None) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self.secrets = set(secrets or ())
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            try:
                db = open_wal(self.path, self.busy_timeout_s, [
                    "CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, parent TEXT, "
                    "agent TEXT NOT NULL, status TEXT NOT NULL, steps INTEGER NOT NULL, "
                    "created REAL NOT NULL, updated REAL NOT NULL, state TEXT NOT NULL)"])
            except (sqlite3.Error, OSError) as exc:
                raise CheckpointError(f"checkpoint database {self.path}: {exc}") from None
            self._db = db
        return self._db

    def save(self, state: dict[str, Any]) -> None:
        """Commit a run's state (replacing the previous one) in a single transaction."""
        from .redact import redact_text

        text = json.dumps(state, ensure_ascii=False, default=str)
        agent = state["agent"]
        if self.secrets:  # each secret as it stands in JSON too (a quote or \ is escaped)
            text = redact_text(text, self._masks())
            agent = redact_text(agent, self.secrets)
        now = time.time()
        try:
            self._conn().execute(
                "INSERT INTO runs(run_id, parent, agent, status, steps, created, updated, state) "
                "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(run_id) DO UPDATE SET status=excluded.status, "
                "steps=excluded.steps, updated=excluded.updated, state=excluded.state",
                (state["run_id"], state.get("parent_run_id"), agent, state["status"],
                 len(state["steps"]), now, now, text))
        except sqlite3.Error as exc:
            raise CheckpointError(f"checkpoint database {self.path}: {exc}") from None

    def _masks(self) -> set[str]:
        return self.secrets | {json.dumps(s, ensure_ascii=False)[1:-1] for s in self.secrets}

    def load(self, run_id: str) -> dict[str, Any]:
        """The last committed state of a run (a unique prefix of its id is enough)."""
        if not run_id:
            raise SpecError("give a run id (see `runner runs`)")
        try:  # the id, else a prefix compared literally (LIKE takes `_` and `%` as wildcards)
            db = self._conn()
            rows = db.execute("SELECT state FROM runs WHERE run_id = ?", (run_id,)).fetchall() \
                or db.execute("SELECT state FROM runs WHERE substr(run_id, 1, ?) = ? LIMIT 2",
                              (len(run_id), run_id)).fetchall()
        except sqlite3.Error as exc:
            raise CheckpointError(f"checkpoint database {self.path}: {exc}") from None
        if not rows:
            raise SpecError(f"no run {run_id!r} in {self.path} (see `runner runs`)")
        if len(rows) > 1:
            raise SpecError(f"{run_id!r} matches several runs; give more of the id")
        state: dict[str, Any] = json.loads(rows[0][0])
        return state

    def list(self, limit: int = 20) -> list[dict[str, Any]]:
        """The most recently updated runs: id, agent, status, steps, times, usage."""
        try:
            rows = self._conn().execute(
                "SELECT run_id, parent, agent, status, steps, created, updated, "
                "json_extract(state, '$.budget') FROM runs ORDER BY updated DESC LIMIT ?",
                (limit,)).fetchall()
        except sqlite3.Error as exc:
            raise CheckpointError(f"checkpoint database {self.path}: {exc}") from None
        keys = ("run_id", "parent", "agent", "status", "steps", "created", "updated")
        return [{**dict(zip(keys, r[:7])), "budget": json.loads(r[7] or "{}")} for r in rows]

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
