"""Checkpoints: each run's state committed to SQLite after every step, for `runner runs` and
`runner resume`. One row per run, replaced in one transaction (WAL, busy timeout), so a
crash at any point leaves the last committed step intact and never a torn row.

Here too: what a run's state holds (`run_state`), a run rebuilt from it (`restore_run`), the
claim that lets one process at a time continue a run, and the settling, after a resume, of
the tool calls that were in flight when the run stopped. A state is written as standard JSON
and checked when it is read back: a row that is not what a run wrote is a CheckpointError
naming the database and the run, and `list` shows such a row as unreadable among the rest."""

from __future__ import annotations

import asyncio
import contextlib
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
from .result import Step, to_json

if TYPE_CHECKING:
    from .agent import Agent
    from .loop import Run

__all__ = ["RESUMABLE_STATUSES", "CheckpointError", "CheckpointStore", "restore_run", "run_state",
           "settle_pending", "open_store", "store_at", "is_remote"]

RESUMABLE_STATUSES = ("interrupted", "checkpoint_error", "model_timeout", "model_rate_limited")
"""How a run may end and still be worth `runner resume`: a later try can get past these."""
_STEP_FIELDS = tuple(f.name for f in fields(Step))


def run_state(run: Run) -> dict[str, Any]:
    """Everything a resume needs, as JSON-ready data."""
    r, src, ledger = run.result, run.spec.source, run.ledger
    usage, cost = run.budget.usage_since(run), run.budget.cost_since(run)
    return {"version": 1, "run_id": run.run_id, "parent_run_id": run.parent,
            "agent": run.spec.name, "spec_path": str(src.path), "spec_digest": src.digest,
            "overrides": src.overrides, "session": run.session, "input": r.input,
            "status": r.status, "answer": r.answer, "error": r.error,
            # shallow copies (dataclasses.asdict deep-copies: most of a checkpoint's cost)
            "steps": [{k: getattr(s, k) for k in _STEP_FIELDS} for s in r.steps],
            "messages": run.messages,
            "calls": run.calls, "parse_errors": run.parse_errors, "repeats": ledger.repeats,
            "approvals": ledger.approvals, "in_flight": sorted(ledger.in_flight),
            "budget": run.budget.spent(), "run_usage": {**asdict(usage), "cost_usd": cost},
            "owner": _owner(run.resumed),
            **({"context": run.context} if run.context else {}),
            **({"review": r.review} if r.review else {}),
            **({"handoff": run.handoff} if run.handoff else {})}


_owners: dict[tuple[int, bool], dict[str, Any]] = {}


def _owner(resumed: bool) -> dict[str, Any]:
    """Who runs the process (a resume refuses while it lives), and whether it continues a
    resumed run; looked up once per process."""
    key = (os.getpid(), resumed)  # a forked child is another owner
    owner = _owners.get(key)
    if owner is None:
        owner = _owners[key] = {"host": socket.gethostname(), "pid": key[0], "resumed": resumed}
    return owner


def _alive(pid: Any) -> bool:
    """Whether a process with this id exists and has not exited (a zombie has)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return True


_HELD: set[str] = set()
"""Runs this process is driving (or has claimed to resume): a second resume of one of them
in this process, two requests to a server say, is refused like one from another process."""


def hold(run_id: str) -> None:
    """Mark `run_id` as driven by this process until `release`."""
    _HELD.add(run_id)


def release(run_id: str) -> None:
    _HELD.discard(run_id)


def _busy(state: dict[str, Any]) -> str | None:
    """Why another run may not take this one now, or None: it is running in a live process on
    this machine, this one included while it drives the run (a process elsewhere cannot be
    checked; --force overrides)."""
    owner = state.get("owner")
    owner = owner if isinstance(owner, dict) else {}
    pid = owner.get("pid")
    if state["status"] != "running" or owner.get("host") != socket.gethostname():
        return None
    if pid == os.getpid():
        if state["run_id"] not in _HELD:
            return None  # ours, and no longer driven: a run whose last save failed, say
    elif not _alive(pid):
        return None
    doing = "is being resumed by" if owner.get("resumed") else "is still running in"
    return (f"run {state['run_id']} {doing} process {pid}; stop it first (resume with --force "
            f"if that process is not this run)")


# What a run's state holds, checked when it is read back ("input" may be anything).
_NONE, _NUM = type(None), (int, float)
_STATE: dict[str, tuple[type, ...]] = {
    "run_id": (str,), "agent": (str,), "status": (str,), "spec_path": (str,),
    "spec_digest": (str,), "overrides": (list,), "session": (str, _NONE), "steps": (list,),
    "messages": (list,), "calls": (int,), "parse_errors": (int,), "repeats": (dict,),
    "approvals": (dict,), "budget": (dict,), "run_usage": (dict,)}
_OPTIONAL: dict[str, tuple[type, ...]] = {
    "parent_run_id": (str, _NONE), "in_flight": (list,), "owner": (dict, _NONE),
    "context": (list,), "review": (list,), "handoff": (str,)}
_STEP: dict[str, tuple[type, ...]] = {
    "index": (int,), "thought": (str,), "action": (str, _NONE), "observation": (str, _NONE),
    "error": (bool,), "raw": (str,), "model_s": _NUM, "tool_s": _NUM, "call_id": (str, _NONE)}


def _problem(state: Any) -> str | None:
    """What makes `state` something other than a run's state as `run_state` writes it."""
    if not isinstance(state, dict):
        return f"the state is a JSON {type(state).__name__}, not an object"
    missing = [k for k in (*_STATE, "input") if k not in state]
    if missing:
        return f"the state has no {', '.join(missing)}"
    for key, types in (*_STATE.items(), *_OPTIONAL.items()):
        if key in state and not isinstance(state[key], types):
            return f"{key} is a {type(state[key]).__name__}"
    for i, step in enumerate(state["steps"]):
        where = f"steps[{i}]"
        if not isinstance(step, dict) or "index" not in step:
            return f"{where} is not a step"
        unknown = sorted(set(step) - set(_STEP_FIELDS))
        if unknown:
            return f"{where} has unknown fields {', '.join(map(str, unknown))}"
        wrong = next((k for k, types in _STEP.items() if k in step and
                      not isinstance(step[k], types)), None)
        if wrong:
            return f"{where}.{wrong} is a {type(step[wrong]).__name__}"
    usage = state["run_usage"]
    checks = {
        "messages": all(isinstance(m, dict) for m in state["messages"]),
        "context": all(isinstance(m, dict) for m in state.get("context", [])),
        "review": all(isinstance(d, dict) and isinstance(d.get("round"), int)
                      and isinstance(d.get("approved"), (bool, _NONE))
                      and isinstance(d.get("problems"), list)
                      and isinstance(d.get("critic_run"), (str, _NONE))
                      for d in state.get("review", [])),
        "overrides": all(isinstance(o, str) for o in state["overrides"]),
        "in_flight": all(isinstance(i, int) for i in state.get("in_flight", [])),
        "repeats": all(isinstance(v, int) for v in state["repeats"].values()),
        "approvals": all(isinstance(v, bool) for v in state["approvals"].values()),
        "budget": all(isinstance(v, _NUM) for v in state["budget"].values()),
        "run_usage": isinstance(usage.get("prompt_tokens"), int) and isinstance(
            usage.get("completion_tokens"), int) and isinstance(usage.get("cost_usd"),
                                                                (*_NUM, _NONE))}
    wrong = next((k for k, ok in checks.items() if not ok), None)
    return f"{wrong} holds values of the wrong type" if wrong else None


def restore_run(agent: Agent, state: dict[str, Any], budget: Budget | None = None) -> Run:
    """A run rebuilt from its last checkpoint, ready to `execute()` from where it stopped.
    With `budget` (a parent's), the run draws from it, brought up to what the run's own
    checkpoint says it had spent (see Budget.catch_up)."""
    shared = budget is not None
    budget = budget or Budget(agent.spec.budget, agent.clock, spent=state["budget"])
    run = agent.start(state["input"], budget=budget, parent_run_id=state.get("parent_run_id"),
                      run_id=state["run_id"], context=state.get("context"))
    run.result.review, run.handoff = state.get("review", []), state.get("handoff")
    run.session = state["session"]
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
    if shared:
        budget.catch_up(state["budget"])
    return run


async def settle_pending(run: Run, ctx: StepContext) -> None:
    """After a resume: finish the tool calls that were in flight when the run stopped, and
    answer every native tool call of the last turn (providers reject one left open)."""
    steps = run.result.steps
    pending = [s for s in steps if s.action and s.observation is None]
    await asyncio.gather(*(act(ctx, Action(s.action, s.input, s.call_id), s, [], resumed=True)
                           for s in pending if s.action))
    late = _unanswered(run.messages, [s for s in steps if s.call_id])
    for s in late:
        run.messages.append({"role": "tool", "tool_call_id": s.call_id,
                             "content": s.observation or ""})
    if pending or late:
        run.checkpoint()


def _unanswered(messages: list[dict[str, Any]], native: list[Any]) -> list[Any]:
    """The steps of the last native turn that no tool message answers yet, by position: a
    server may reuse call ids across turns, or within one, so ids alone cannot tell."""
    turn = next((i for i in range(len(messages) - 1, -1, -1)
                 if messages[i].get("role") == "assistant" and messages[i].get("tool_calls")),
                None)
    if turn is None:
        return []
    calls = len(messages[turn]["tool_calls"])
    answered = sum(1 for m in messages[turn + 1:] if m.get("role") == "tool")
    return native[len(native) - calls:][answered:] if len(native) >= calls else []


_HAS = "SELECT 1 FROM runs WHERE run_id = ?"


def open_store(spec: Any, secrets: set[str] | None = None) -> CheckpointStore:
    """The store a spec's `checkpoint:` names (SQLite, or Redis: `runner.checkpoints_redis`)."""
    if spec.backend == "redis":
        from .checkpoints_redis import RedisCheckpointStore

        return RedisCheckpointStore(spec.url or "", lease_s=spec.lease_s,
                                    timeout_s=spec.timeout_s, secrets=secrets)
    return CheckpointStore(spec.path, secrets=secrets)


def is_remote(where: str) -> bool:
    """Whether `--db` names a Redis server rather than a SQLite file."""
    return where.startswith(("redis://", "rediss://", "unix://"))


def store_at(where: str, secrets: set[str] | None = None) -> CheckpointStore:
    """The store `--db` names: a SQLite file, or a `redis://` URL."""
    if is_remote(where):
        from .checkpoints_redis import RedisCheckpointStore

        return RedisCheckpointStore(where, secrets=secrets)
    return CheckpointStore(where, secrets=secrets)


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
        text, agent = self._encode(state)
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

    def _encode(self, state: dict[str, Any]) -> tuple[str, str]:
        """The state as standard JSON, and the agent's name, secrets masked."""
        try:
            text, agent = to_json(state), state["agent"]
        except (ValueError, RecursionError) as exc:  # a cycle, or nested past the stack
            raise self._bad_state(state.get("run_id"), "the state cannot be written as "
                                   f"JSON ({type(exc).__name__})", verb="saved") from None
        if self.secrets:  # each secret as it stands in JSON too (a quote or \ is escaped)
            text = redact_text(text, json_forms(self.secrets))
            agent = redact_text(agent, self.secrets)
        return text, agent

    def load(self, run_id: str) -> dict[str, Any]:
        """The last committed state of a run (a unique prefix of its id is enough)."""
        if not run_id:
            raise SpecError("give a run id (see `runner runs`)")
        try:  # the id, else a prefix compared literally (LIKE takes `_` and `%` as wildcards)
            db = self._conn()
            rows = db.execute("SELECT run_id, state FROM runs WHERE run_id = ?",
                              (run_id,)).fetchall() or db.execute(
                "SELECT run_id, state FROM runs WHERE substr(run_id, 1, ?) = ? LIMIT 2",
                (len(run_id), run_id)).fetchall()
        except sqlite3.Error as exc:
            raise CheckpointError(f"checkpoint database {self.path}: {exc}") from None
        if not rows:
            raise SpecError(f"no run {run_id!r} in {self.path} (see `runner runs`)")
        if len(rows) > 1:
            raise SpecError(f"{run_id!r} matches several runs; give more of the id")
        return self._parse(*rows[0])

    def _parse(self, run_id: Any, text: Any) -> dict[str, Any]:
        """A row's state, checked: a CheckpointError naming the database and run if it is not
        what a run wrote (not JSON, nested too deep, or not the expected shape)."""
        try:
            state = json.loads(text)
        except (ValueError, TypeError, RecursionError) as exc:
            why = "nested too deep" if isinstance(exc, RecursionError) else str(exc)
            raise self._bad_state(run_id, f"the state is not JSON ({why})") from None
        problem = _problem(state)
        if problem is not None:
            raise self._bad_state(run_id, problem)
        return state  # type: ignore[no-any-return]

    def _bad_state(self, run_id: Any, problem: str, verb: str = "resumed") -> CheckpointError:
        return CheckpointError(f"checkpoint database {self.path}: run {run_id}: {problem}; "
                               f"it cannot be {verb}")

    def claim(self, run_id: str, force: bool = False) -> dict[str, Any]:
        """Take an unfinished run for this process and return its state: read, checked and
        marked as this process's in one write transaction, so of two resumes started
        together exactly one gets it; the other gets a SpecError naming the process that
        has it. `force` takes it from a process that still lives."""
        try:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")  # no other writer until COMMIT: read-check-write
            try:
                row = db.execute("SELECT run_id, state FROM runs WHERE run_id = ?",
                                 (run_id,)).fetchone()
                if row is None:
                    raise SpecError(f"no run {run_id!r} in {self.path} (see `runner runs`)")
                state = self._parse(*row)
                if state["status"] == "finished":
                    raise SpecError(f"run {run_id} already finished; nothing to resume")
                busy = None if force else _busy(state)
                if busy is not None:
                    raise SpecError(busy)
                state.update(status="running", owner=_owner(True))
                text, _ = self._encode(state)
                db.execute("UPDATE runs SET status = ?, updated = ?, state = ? WHERE run_id = ?",
                           ("running", time.time(), text, run_id))
                db.execute("COMMIT")
                hold(run_id)
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise CheckpointError(f"checkpoint database {self.path}: {exc}") from None
        return state

    def has(self, run_id: str) -> bool:
        """Whether the database holds a row for `run_id` (never creates the database)."""
        if not self.path.is_file():
            return False
        try:
            if self._db is not None:
                return self._db.execute(_HAS, (run_id,)).fetchone() is not None
            with contextlib.closing(sqlite3.connect(self.path, timeout=self.busy_timeout_s)) as db:
                return db.execute(_HAS, (run_id,)).fetchone() is not None
        except sqlite3.Error:
            return False

    def list(self, limit: int = 20) -> list[dict[str, Any]]:
        """The most recently updated runs: id, agent, status, steps, times, usage. A row that
        is not what a run wrote comes with status `unreadable` and an `error`, among the rest."""
        try:  # json_valid first: json_extract of one malformed row fails the whole query
            rows = self._conn().execute(
                "SELECT run_id, parent, agent, status, steps, created, updated, "
                "CASE WHEN json_valid(state) THEN json_extract(state, '$.budget') END, "
                "json_valid(state) FROM runs ORDER BY updated DESC LIMIT ?", (limit,)).fetchall()
        except sqlite3.Error as exc:
            raise CheckpointError(f"checkpoint database {self.path}: {exc}") from None
        return [self._listed(row) for row in rows]

    def _listed(self, row: tuple[Any, ...]) -> dict[str, Any]:
        """One row of `list`."""
        keys = ("run_id", "parent", "agent", "status", "steps", "created", "updated")
        listed: dict[str, Any] = dict(zip(keys, row[:7]))
        budget, valid = row[7], row[8]
        problem = next((f"{k} is a {type(listed[k]).__name__}" for k, types in (
            ("run_id", (str,)), ("parent", (str, _NONE)), ("agent", (str,)), ("status", (str,)),
            ("steps", (int,)), ("created", _NUM), ("updated", _NUM))
            if not isinstance(listed[k], types)), None)
        try:
            if problem is None and not valid:  # e.g. a bare NaN an older runner wrote
                budget = json.loads(self._state_text(listed["run_id"])).get("budget")
            else:
                budget = json.loads(budget or "{}")
        except (ValueError, TypeError, AttributeError, RecursionError, CheckpointError):
            problem = "the state is not JSON"
        if problem is None and not (isinstance(budget, dict) and all(
                isinstance(v, _NUM) for v in budget.values())):
            problem = "its budget is not an object of numbers"
        if problem is None:
            return {**listed, "budget": budget}
        return {"run_id": str(listed["run_id"]), "parent": None, "agent": "?",
                "status": "unreadable", "steps": 0, "created": None, "updated": None,
                "budget": {}, "error": f"run {listed['run_id']}: {problem}"}

    def _state_text(self, run_id: str) -> Any:
        try:
            row = self._conn().execute("SELECT state FROM runs WHERE run_id = ?",
                                       (run_id,)).fetchone()
        except sqlite3.Error as exc:
            raise CheckpointError(f"checkpoint database {self.path}: {exc}") from None
        return row[0] if row else None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
