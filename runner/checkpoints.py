"""Checkpoints: each run's state committed to SQLite after every step, for `runner runs` and
`runner resume`. A save writes what changed since the store's last save of the run (its head,
the new steps and messages), in one transaction (WAL, busy timeout): its cost stays flat
however long the run, and a crash at any point leaves the last committed save intact, never
a torn state. `runs`, a view, still shows each run's whole state as one JSON text; a database
of an older runner, one whole state per row, is moved to this layout when opened, and its
runs load and then continue in pieces (see _SCHEMA).

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
import weakref
from collections.abc import Iterator
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
    if type(ledger.repeats) is not Tally:  # once per run (and after a restore)
        ledger.repeats = Tally(ledger.repeats)
    if type(ledger.approvals) is not Tally:
        ledger.approvals = Tally(ledger.approvals)
    return {"version": 1, "run_id": run.run_id, "parent_run_id": run.parent,
            "agent": run.spec.name, "spec_path": str(src.path), "spec_digest": src.digest,
            "overrides": src.overrides, "session": run.session, "input": r.input,
            "status": r.status, "answer": r.answer, "error": r.error,
            "steps": _step_dicts(run), "messages": run.messages,
            "calls": run.calls, "parse_errors": run.parse_errors, "repeats": ledger.repeats,
            "approvals": ledger.approvals, "in_flight": sorted(ledger.in_flight),
            "budget": run.budget.spent(), "run_usage": {**asdict(usage), "cost_usd": cost},
            "owner": _owner(run.resumed),
            **({"context": run.context} if run.context else {}),
            **({"review": r.review} if r.review else {}),
            **({"handoff": run.handoff} if run.handoff else {})}


class Steps(list):  # type: ignore[type-arg]
    """A run's steps as `run_state` gives them: a plain list of step dicts that also says how
    many of its first items are closed steps given before, the very same dicts (`closed`, of
    the build `token`), so that a store need not write them again."""

    token: object = None
    closed: int = 0


class _Built:
    """The dicts of a run's closed steps so far. A step whose observation is set never
    changes again (a tool's result, a parse failure, the critic's verdict, a sequence's
    answer are its last change), so its dict is built once; an open one on every save."""

    def __init__(self, source: list[Step]) -> None:
        self.source, self.dicts, self.token = source, [], object()
        self.dicts: list[dict[str, Any]]
        self.last: Step | None = None


_built: weakref.WeakKeyDictionary[Any, _Built] = weakref.WeakKeyDictionary()


def _step_dicts(run: Run) -> Steps:
    """The steps as shallow dicts (dataclasses.asdict deep-copies: most of what a checkpoint
    cost), the closed ones reused, so the work is the new and open steps', not the run's
    length. A list replaced (a restore, a sequence's retried step) or cut is built again."""
    steps, built = run.result.steps, _built.get(run)
    k = len(built.dicts) if built is not None else 0
    if built is None or built.source is not steps or len(steps) < k or (
            k and steps[k - 1] is not built.last):
        built = _built[run] = _Built(steps)
        k = 0
    dicts = built.dicts
    while k < len(steps) and steps[k].observation is not None:
        dicts.append({f: getattr(steps[k], f) for f in _STEP_FIELDS})
        k += 1
    built.last = steps[k - 1] if k else None
    out = Steps(dicts)  # a copy of k references: the states given before stay as they were
    out.extend({f: getattr(s, f) for f in _STEP_FIELDS} for s in steps[k:])
    out.token, out.closed = built.token, k
    return out


class Tally(dict):  # type: ignore[type-arg]
    """A dict of the tool ledger (repeats, approvals: they grow by a key per distinct tool
    call) that notes each key set, so that a store writes only those. Any other change
    renumbers it (a new `epoch`): the next save writes it whole."""

    __slots__ = ("log", "epoch")

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.log: list[Any] = []
        """The keys set, in order (a key set twice is here twice)."""
        self.epoch = 0

    def __setitem__(self, key: Any, value: Any) -> None:
        dict.__setitem__(self, key, value)
        self.log.append(key)

    def __reduce__(self) -> Any:  # a copy or a pickle is a new tally of the same items
        return (type(self), (dict(self),))


def _renumbers(name: str) -> Any:
    method = getattr(dict, name)

    def changed(self: Tally, *args: Any, **kw: Any) -> Any:
        try:
            return method(self, *args, **kw)
        finally:
            self.log, self.epoch = [], self.epoch + 1

    return changed


for _name in ("__delitem__", "__ior__", "pop", "popitem", "clear", "update", "setdefault"):
    setattr(Tally, _name, _renumbers(_name))


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

# A run is a head row (its state but for its steps and messages, which are small) and a row
# per step and per message, so that a save writes what changed since the last one, not the
# whole run again. `runs` is a view of each run's whole state as one JSON text, as databases
# before this one held it: `sqlite3 runs.db 'select state from runs'` still reads it, and so
# does an older runner (which cannot write it). The head's `_apart` says how many steps and
# messages are the run's; rows past them are left over from a longer save, never read.
_PIECES = ("run_steps", "run_messages")
_TALLIES = ("repeats", "approvals")
_APART = "_apart"
_LIST = ("(SELECT json_group_array(json(piece)) FROM (SELECT piece FROM {t} AS p WHERE "
         "p.run_id = h.run_id AND p.i < json_extract(h.state, '$._apart.{k}') ORDER BY p.i))")
_DICT = ("(SELECT json_group_object(json_extract(e.key, '$'), json(e.value)) FROM run_entries "
         "AS e WHERE e.run_id = h.run_id AND e.field = '{k}')")
_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS run_heads (run_id TEXT PRIMARY KEY, parent TEXT, "
    "agent TEXT NOT NULL, status TEXT NOT NULL, steps INTEGER NOT NULL, "
    "created REAL NOT NULL, updated REAL NOT NULL, state TEXT NOT NULL, epoch TEXT)",
    *(f"CREATE TABLE IF NOT EXISTS {t} (run_id TEXT NOT NULL, i INTEGER NOT NULL, "
      f"piece TEXT NOT NULL, PRIMARY KEY (run_id, i)) WITHOUT ROWID" for t in _PIECES),
    "CREATE TABLE IF NOT EXISTS run_entries (run_id TEXT NOT NULL, field TEXT NOT NULL, "
    "key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (run_id, field, key)) WITHOUT ROWID",
    "CREATE VIEW IF NOT EXISTS runs AS SELECT run_id, parent, agent, status, steps, created, "
    "updated, CASE WHEN json_valid(state) AND json_type(state, '$._apart') = 'object' THEN "
    "json_set(json_remove(state, '$._apart'), "
    f"'$.steps', {_LIST.format(t='run_steps', k='steps')}, "
    f"'$.messages', {_LIST.format(t='run_messages', k='messages')}, "
    f"'$.repeats', {_DICT.format(k='repeats')}, '$.approvals', {_DICT.format(k='approvals')}) "
    "ELSE state END AS state FROM run_heads AS h",
    # what a person or a test writes into `runs` goes to the head, as a whole state
    "CREATE TRIGGER IF NOT EXISTS runs_insert INSTEAD OF INSERT ON runs BEGIN "
    "DELETE FROM run_steps WHERE run_id = NEW.run_id; "
    "DELETE FROM run_messages WHERE run_id = NEW.run_id; "
    "DELETE FROM run_entries WHERE run_id = NEW.run_id; "
    "INSERT OR REPLACE INTO run_heads (run_id, parent, agent, status, steps, created, updated, "
    "state) VALUES (NEW.run_id, NEW.parent, NEW.agent, NEW.status, NEW.steps, NEW.created, "
    "NEW.updated, NEW.state); END",
    "CREATE TRIGGER IF NOT EXISTS runs_update INSTEAD OF UPDATE ON runs BEGIN "
    "UPDATE run_heads SET parent = NEW.parent, agent = NEW.agent, status = NEW.status, "
    "steps = NEW.steps, created = NEW.created, updated = NEW.updated, state = CASE WHEN "
    "NEW.state IS OLD.state THEN state ELSE NEW.state END, epoch = NULL "
    "WHERE run_id = OLD.run_id; END",
    "CREATE TRIGGER IF NOT EXISTS runs_delete INSTEAD OF DELETE ON runs BEGIN "
    "DELETE FROM run_heads WHERE run_id = OLD.run_id; "
    "DELETE FROM run_steps WHERE run_id = OLD.run_id; "
    "DELETE FROM run_messages WHERE run_id = OLD.run_id; "
    "DELETE FROM run_entries WHERE run_id = OLD.run_id; END"]


_APART_KEYS = ("steps", "messages", *_TALLIES)


def _in_pieces(state: dict[str, Any]) -> bool:
    """Whether a state is saved in pieces: its growing parts are what a run's are."""
    return (isinstance(state.get("steps"), list) and isinstance(state.get("messages"), list)
            and all(isinstance(state.get(k), dict) for k in _TALLIES))


def _schema(db: sqlite3.Connection) -> None:
    """The tables above; a database of an older runner (a `runs` table of whole states) has
    its table renamed to `run_heads`, its rows kept as they are: they load, and the next save
    of such a run writes it in pieces."""
    kind = "SELECT type FROM sqlite_master WHERE name = 'runs'"
    if (db.execute(kind).fetchone() or ("",))[0] == "view":
        return
    with _writing(db):  # two processes opening an old database: one renames
        if (db.execute(kind).fetchone() or ("",))[0] == "table":
            db.execute("ALTER TABLE runs RENAME TO run_heads")
            db.execute("ALTER TABLE run_heads ADD COLUMN epoch TEXT")
        for statement in _SCHEMA:
            db.execute(statement)


@contextlib.contextmanager
def _writing(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction: BEGIN IMMEDIATE (no other writer until it ends), COMMIT when
    the block ends, ROLLBACK if it raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        _rollback(db)
        raise


def _rollback(db: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):  # none open: a failed COMMIT may have ended it
        db.execute("ROLLBACK")


class _Cursor:
    """What a store last wrote of one run: the head's `epoch` (a store that finds another
    there, after a claim elsewhere say, writes the run whole), the steps up to the first open
    one, the messages so far and the ledger's tallies, by identity: a list replaced or
    shrunk, a tally renumbered, is written whole."""

    __slots__ = ("epoch", "token", "closed", "messages", "count", "last", "tallies")

    def __init__(self, epoch: str, state: dict[str, Any]) -> None:
        steps, messages = state["steps"], state["messages"]
        self.epoch = epoch
        self.token = steps.token if isinstance(steps, Steps) else None
        self.closed = steps.closed if isinstance(steps, Steps) else 0
        self.messages, self.count = messages, len(messages)
        self.last = messages[-1] if messages else None
        self.tallies = [(t, t.epoch, len(t.log)) if isinstance(t, Tally) else None
                        for t in (state[k] for k in _TALLIES)]

    def steps_from(self, steps: list[Any]) -> int | None:
        """The first step to write (the ones before were written and cannot have changed),
        or None: write them all."""
        if (self.token is not None and isinstance(steps, Steps) and steps.token is self.token
                and steps.closed >= self.closed):
            return self.closed
        return None

    def messages_from(self, messages: list[Any]) -> int | None:
        n = self.count
        if messages is self.messages and len(messages) >= n and (
                not n or messages[n - 1] is self.last):
            return n
        return None

    def keys_set(self, i: int, tally: Any) -> list[Any] | None:
        """The keys of a tally set since (or None: write it whole)."""
        seen = self.tallies[i]
        if seen is None or seen[0] is not tally or tally.epoch != seen[1] or len(
                tally.log) < seen[2]:
            return None
        return list(dict.fromkeys(tally.log[seen[2]:]))


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
        self._cursors: dict[str, _Cursor] = {}
        """Per run this store is saving: what it wrote last (see _Cursor)."""
        self._masked: frozenset[str] | None = None
        self._forms: set[str] = set()

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            try:
                db = open_wal(self.path, self.busy_timeout_s, [])
                try:
                    _schema(db)
                except BaseException:
                    db.close()
                    raise
            except (sqlite3.Error, OSError) as exc:
                raise CheckpointError(f"checkpoint database {self.path}: {exc}") from None
            self._db = db
        return self._db

    def save(self, state: dict[str, Any]) -> None:
        """Commit a run's state (replacing the previous one) in a single transaction: its
        head, and the steps, messages and ledger entries this store has not written yet (all
        of them the first time, or when they were replaced or another store wrote the run)."""
        if not _in_pieces(state):
            self._save_whole(state)  # not what a run writes: kept as it is, for load to refuse
            return
        run_id, steps, messages = state["run_id"], state["steps"], state["messages"]
        self._secret_forms()
        cur = self._cursors.pop(run_id, None)  # none kept if this save fails
        head, agent = self._head(state)
        since = None if cur is None else (cur.steps_from(steps), cur.messages_from(messages),
                                          *(cur.keys_set(i, state[k])
                                            for i, k in enumerate(_TALLIES)))
        now, epoch = time.time(), cur.epoch if cur is not None else None
        try:
            db = self._conn()
            with _writing(db):
                if epoch is None or db.execute(
                        "UPDATE run_heads SET status = ?, steps = ?, updated = ?, state = ? "
                        "WHERE run_id = ? AND epoch = ?",
                        (state["status"], len(steps), now, head, run_id, epoch)).rowcount != 1:
                    # first written by this store, or written by another since: all of it
                    since, epoch = None, os.urandom(8).hex()
                    db.execute(
                        "INSERT INTO run_heads(run_id, parent, agent, status, steps, created, "
                        "updated, state, epoch) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(run_id) "
                        "DO UPDATE SET parent=excluded.parent, agent=excluded.agent, "
                        "status=excluded.status, steps=excluded.steps, updated=excluded.updated, "
                        "state=excluded.state, epoch=excluded.epoch",
                        (run_id, state.get("parent_run_id"), agent, state["status"],
                         len(steps), now, now, head, epoch))
                self._write_pieces(db, state, since or (None,) * 4)
        except sqlite3.Error as exc:
            raise CheckpointError(f"checkpoint database {self.path}: {exc}") from None
        if state["status"] == "running":  # a run that ended forgets its cursor
            self._cursors[run_id] = _Cursor(epoch, state)

    def _write_pieces(self, db: sqlite3.Connection, state: dict[str, Any],
                      since: tuple[Any, ...]) -> None:
        """The steps and messages from where `since` says, the tallies' keys it names (None:
        all of one, its old rows deleted first)."""
        run_id = state["run_id"]
        for table, key, start in zip(_PIECES, ("steps", "messages"), since):
            if start is None:
                db.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
            rows = self._pieces(state, state[key], start or 0)
            if rows:
                db.executemany(f"INSERT OR REPLACE INTO {table} VALUES (?,?,?)", rows)
        for field, keys in zip(_TALLIES, since[2:]):
            tally = state[field]
            if keys is None:
                db.execute("DELETE FROM run_entries WHERE run_id = ? AND field = ?",
                           (run_id, field))
                keys = list(tally)
            if keys:
                db.executemany("INSERT OR REPLACE INTO run_entries VALUES (?,?,?,?)",
                               self._entries(state, field, keys))

    def _save_whole(self, state: dict[str, Any]) -> None:
        """A state in one row, as runners before pieces wrote them all."""
        text, agent = self._encode(state)
        now = time.time()
        self._cursors.pop(state["run_id"], None)
        try:
            db = self._conn()
            with _writing(db):
                for table in (*_PIECES, "run_entries"):
                    db.execute(f"DELETE FROM {table} WHERE run_id = ?", (state["run_id"],))
                db.execute(
                    "INSERT INTO run_heads(run_id, parent, agent, status, steps, created, "
                    "updated, state) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(run_id) DO UPDATE "
                    "SET status=excluded.status, steps=excluded.steps, updated=excluded.updated, "
                    "state=excluded.state, epoch=NULL",
                    (state["run_id"], state.get("parent_run_id"), agent, state["status"],
                     len(state["steps"]), now, now, text))
        except sqlite3.Error as exc:
            raise CheckpointError(f"checkpoint database {self.path}: {exc}") from None

    def _secret_forms(self) -> set[str]:
        """The secrets as they stand in JSON; when they change, every run is written whole
        at its next save, so that what was written before is masked too."""
        if self.secrets != self._masked:
            self._masked, self._forms = frozenset(self.secrets), json_forms(self.secrets)
            self._cursors.clear()
        return self._forms

    def _head(self, state: dict[str, Any]) -> tuple[str, str]:
        """The state but for what is kept apart, with how many of each there are."""
        head = {k: v for k, v in state.items() if k not in _APART_KEYS}
        head[_APART] = {k: len(state[k]) for k in _APART_KEYS}
        return self._encode(head)

    def _pieces(self, state: dict[str, Any], items: list[Any],
                start: int) -> list[tuple[str, int, str]]:
        """Rows for `items[start:]`: each as standard JSON, secrets masked."""
        run_id, forms = state["run_id"], self._forms
        try:
            return [(run_id, i, redact_text(text, forms) if forms else text)
                    for i in range(start, len(items)) for text in (to_json(items[i]),)]
        except (ValueError, RecursionError) as exc:  # a cycle, or nested past the stack
            raise self._bad_state(run_id, "the state cannot be written as "
                                  f"JSON ({type(exc).__name__})", verb="saved") from None

    def _entries(self, state: dict[str, Any], field: str,
                 keys: list[Any]) -> list[tuple[str, str, str, str]]:
        """Rows for these keys of a tally: key and value as standard JSON, secrets masked (a
        key holds a tool call's arguments)."""
        tally, forms, run_id = state[field], self._forms, state["run_id"]
        rows = []
        try:
            for key in keys:
                if key not in tally:  # set, then gone: the tally was renumbered, never here
                    continue
                k, v = to_json(key if isinstance(key, str) else str(key)), to_json(tally[key])
                rows.append((run_id, field, *((redact_text(k, forms), redact_text(v, forms))
                                              if forms else (k, v))))
        except (ValueError, RecursionError) as exc:
            raise self._bad_state(run_id, "the state cannot be written as "
                                  f"JSON ({type(exc).__name__})", verb="saved") from None
        return rows

    def _encode(self, state: dict[str, Any]) -> tuple[str, str]:
        """The state as standard JSON, and the agent's name, secrets masked."""
        try:
            text, agent = to_json(state), state["agent"]
        except (ValueError, RecursionError) as exc:  # a cycle, or nested past the stack
            raise self._bad_state(state.get("run_id"), "the state cannot be written as "
                                   f"JSON ({type(exc).__name__})", verb="saved") from None
        if self.secrets:  # each secret as it stands in JSON too (a quote or \ is escaped)
            text = redact_text(text, self._secret_forms())
            agent = redact_text(agent, self.secrets)
        return text, agent

    def load(self, run_id: str) -> dict[str, Any]:
        """The last committed state of a run (a unique prefix of its id is enough)."""
        if not run_id:
            raise SpecError("give a run id (see `runner runs`)")
        try:  # the id, else a prefix compared literally (LIKE takes `_` and `%` as wildcards)
            db = self._conn()
            db.execute("BEGIN")  # the head and its pieces from one commit
            try:
                rows = db.execute("SELECT run_id, state FROM run_heads WHERE run_id = ?",
                                  (run_id,)).fetchall() or db.execute(
                    "SELECT run_id, state FROM run_heads WHERE substr(run_id, 1, ?) = ? "
                    "LIMIT 2", (len(run_id), run_id)).fetchall()
                if not rows:
                    raise SpecError(f"no run {run_id!r} in {self.path} (see `runner runs`)")
                if len(rows) > 1:
                    raise SpecError(f"{run_id!r} matches several runs; give more of the id")
                self._cursors.pop(rows[0][0], None)
                return self._parse(*rows[0], db=db)
            finally:
                _rollback(db)  # a read: nothing to keep
        except sqlite3.Error as exc:
            raise CheckpointError(f"checkpoint database {self.path}: {exc}") from None

    def _parse(self, run_id: Any, text: Any, db: sqlite3.Connection | None = None
               ) -> dict[str, Any]:
        """A row's state, checked: a CheckpointError naming the database and run if it is not
        what a run wrote (not JSON, nested too deep, or not the expected shape). With `db`, a
        head's steps and messages are read from their rows."""
        try:
            state = json.loads(text)
            if db is not None and isinstance(state, dict) and _APART in state:
                self._join(db, run_id, state)
        except (ValueError, TypeError, RecursionError) as exc:
            why = "nested too deep" if isinstance(exc, RecursionError) else str(exc)
            raise self._bad_state(run_id, f"the state is not JSON ({why})") from None
        problem = _problem(state)
        if problem is not None:
            raise self._bad_state(run_id, problem)
        return state  # type: ignore[no-any-return]

    def _join(self, db: sqlite3.Connection, run_id: Any, state: dict[str, Any]) -> None:
        """A head made whole: its steps, messages and tallies from their rows."""
        apart = state.pop(_APART)
        counts = {k: apart.get(k) if isinstance(apart, dict) else None for k in _APART_KEYS}
        wrong = next((k for k, n in counts.items()
                      if not isinstance(n, int) or isinstance(n, bool)), None)
        if wrong is not None:
            raise self._bad_state(run_id, f"its count of {wrong} is not a number")
        for table, key in zip(_PIECES, ("steps", "messages")):
            texts = [r[0] for r in db.execute(
                f"SELECT piece FROM {table} WHERE run_id = ? AND i < ? ORDER BY i",
                (run_id, counts[key]))]
            state[key] = json.loads("[" + ",".join(map(str, texts)) + "]")
        for field in _TALLIES:
            rows = db.execute("SELECT key, value FROM run_entries WHERE run_id = ? AND "
                              "field = ?", (run_id, field)).fetchall()
            state[field] = {json.loads(k): json.loads(v) for k, v in rows}
        short = next((k for k in _APART_KEYS if len(state[k]) != counts[k]), None)
        if short is not None:
            raise self._bad_state(run_id, f"{len(state[short])} of its {counts[short]} "
                                  f"{short} are stored")

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
            with _writing(db):  # no other writer until COMMIT: read-check-write
                row = db.execute("SELECT run_id, state FROM run_heads WHERE run_id = ?",
                                 (run_id,)).fetchone()
                if row is None:
                    raise SpecError(f"no run {run_id!r} in {self.path} (see `runner runs`)")
                state = self._parse(*row, db=db)
                apart = _APART in json.loads(row[1])  # parsed above: a head, or a whole state
                if state["status"] == "finished":
                    raise SpecError(f"run {run_id} already finished; nothing to resume")
                busy = None if force else _busy(state)
                if busy is not None:
                    raise SpecError(busy)
                state.update(status="running", owner=_owner(True))
                text, _ = self._head(state) if apart else self._encode(state)
                # a new epoch (none): whoever saved this run before writes it whole next time
                db.execute("UPDATE run_heads SET status = ?, updated = ?, state = ?, "
                           "epoch = NULL WHERE run_id = ?", ("running", time.time(), text, run_id))
            hold(run_id)
        except sqlite3.Error as exc:
            raise CheckpointError(f"checkpoint database {self.path}: {exc}") from None
        self._cursors.pop(run_id, None)
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
                "json_valid(state) FROM run_heads ORDER BY updated DESC LIMIT ?",
                (limit,)).fetchall()
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
            row = self._conn().execute("SELECT state FROM run_heads WHERE run_id = ?",
                                       (run_id,)).fetchone()
        except sqlite3.Error as exc:
            raise CheckpointError(f"checkpoint database {self.path}: {exc}") from None
        return row[0] if row else None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
