"""Checkpoints: each run's state committed to SQLite after every step, for `runner runs` and
`runner resume`. One row per run, replaced in one transaction (WAL, busy timeout), so a
crash at any point leaves the last committed step intact and never a torn row.

Here too: what a run's state holds (`run_state`), a run rebuilt from it (`restore_run`), and
the settling, after a resume, of the tool calls that were in flight when the run stopped."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._sqlite import open_wal
from .acting import StepContext, act
from .budget import Budget
from .errors import CheckpointError, SpecError
from .models import Usage
from .parsing import Action
from .redact import json_forms, redact_text
from .result import Step

if TYPE_CHECKING:
    from .agent import Agent
    from .loop import Run

__all__ = ["CheckpointStore", "CheckpointError", "run_state", "restore_run", "settle_pending",
           "RESUMABLE_STATUSES"]

RESUMABLE_STATUSES = ("interrupted", "checkpoint_error", "model_timeout", "model_rate_limited")
"""How a run may end and still be worth `runner resume`: a later try can get past these."""
_STEP_FIELDS = tuple(f.name for f in fields(Step))


def run_state(run: Run) -> dict[str, Any]:
    """Everything a resume needs, as JSON-ready data."""
    r, src, ledger = run.result, run.spec.source, run.ledger
    usage, cost = run.budget.usage_since(run), run.budget.cost_since(run)
    return {"version": 1, "run_id": run.run_id, "parent_run_id": run.parent,
            "agent": run.spec.name, "spec_path": str(src.path), "spec_digest": src.digest,
            "overrides": src.overrides, "session": run.agent.session, "input": r.input,
            "status": r.status, "answer": r.answer, "error": r.error,
            # shallow copies (dataclasses.asdict deep-copies: most of a checkpoint's cost)
            "steps": [{k: getattr(s, k) for k in _STEP_FIELDS} for s in r.steps],
            "messages": run.messages,
            "calls": run.calls, "parse_errors": run.parse_errors, "repeats": ledger.repeats,
            "approvals": ledger.approvals, "in_flight": sorted(ledger.in_flight),
            "budget": run.budget.spent(), "run_usage": {**asdict(usage), "cost_usd": cost},
            "owner": _owner()}


_owners: dict[int, dict[str, Any]] = {}


def _owner() -> dict[str, Any]:
    """Who runs the process (a resume refuses while it lives); looked up once per process."""
    pid = os.getpid()  # a forked child is another owner
    owner = _owners.get(pid)
    if owner is None:
        owner = _owners[pid] = {"host": socket.gethostname(), "pid": pid}
    return owner


def restore_run(agent: Agent, state: dict[str, Any]) -> Run:
    """A run rebuilt from its last checkpoint, ready to `execute()` from where it stopped."""
    budget = Budget(agent.spec.budget, agent.clock, spent=state["budget"])
    run = agent.start(state["input"], budget=budget, parent_run_id=state.get("parent_run_id"))
    run.run_id = run.result.run_id = state["run_id"]
    run.result.steps = [Step(**s) for s in state["steps"]]
    run.messages, run.calls = state["messages"], state["calls"]
    run.parse_errors, run.resumed = state["parse_errors"], True
    ledger = run.ledger
    ledger.repeats, ledger.approvals = state["repeats"], state["approvals"]
    # calls that had started when the run stopped (None: an older checkpoint, where every
    # pending call of a tool marked idempotent: false counts as started)
    ledger.unknown = set(state["in_flight"]) if "in_flight" in state else None
    spent = state["run_usage"]
    budget.adopt(run, Usage(spent["prompt_tokens"], spent["completion_tokens"]),
                 spent["cost_usd"])
    return run


async def settle_pending(run: Run, ctx: StepContext) -> None:
    """After a resume: finish the tool calls that were in flight when the run stopped, and
    answer every native tool call of the last turn (providers reject one left open)."""
    steps = run.result.steps
    pending = [s for s in steps if s.action and s.observation is None]
    await asyncio.gather(*(act(ctx, Action(s.action, s.input, s.call_id), s, [], resumed=True)
                           for s in pending if s.action))
    answered = {m.get("tool_call_id") for m in run.messages if m.get("role") == "tool"}
    late = [s for s in steps if s.call_id and s.call_id not in answered]
    if run.messages:
        for s in late:
            run.messages.append({"role": "tool", "tool_call_id": s.call_id,
                                 "content": s.observation or ""})
    if pending or late:
        run.checkpoint()


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
        text = json.dumps(state, ensure_ascii=False, default=str)
        agent = state["agent"]
        if self.secrets:  # each secret as it stands in JSON too (a quote or \ is escaped)
            text = redact_text(text, json_forms(self.secrets))
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
