"""Checkpoints in Redis (`checkpoint: {backend: redis, url: ...}`), so that a run started by
one worker can be resumed by another, on redis-py's synchronous client (a checkpoint is a
synchronous write between steps, as with SQLite).

A run is one hash (`state`, `agent`, `status`, `steps`, `created`, `updated`, `parent`) and a
member of a sorted set by last update, written together in one MULTI/EXEC. Each save also
stamps the run with a lease (`lease_s`): a run whose last save is older than its lease, on a
host where its process cannot be checked, counts as abandoned, so `runner resume` on another
worker may take it; a claim is a WATCH/MULTI transaction, so of two workers resuming one run
exactly one gets it. The at-most-once rule for `idempotent: false` tools rides in the state
(the call in flight is committed before it starts) and so holds across workers.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from .checkpoints import CheckpointStore, _busy, _owner, hold
from .errors import CheckpointError, SpecError
from .redact import redact_text

__all__ = ["RedisCheckpointStore"]


class RedisCheckpointStore(CheckpointStore):
    """Run states in Redis; the same contract as the SQLite store."""

    def __init__(self, url: str, *, lease_s: float = 120.0, timeout_s: float = 5.0,
                 prefix: str = "runner:runs:", secrets: set[str] | None = None) -> None:
        super().__init__(".runner/unused.db", timeout_s, secrets)
        self.path = redact_text(url, ())  # type: ignore[assignment]  # password masked
        self.url, self.lease_s, self.timeout_s, self.prefix = url, lease_s, timeout_s, prefix
        self._client: Any = None

    # ------------------------------------------------------------------ connection

    def _redis(self) -> Any:
        if self._client is None:
            import redis

            self._client = redis.Redis.from_url(self.url, socket_timeout=self.timeout_s,
                                                socket_connect_timeout=self.timeout_s,
                                                decode_responses=True)
        return self._client

    def _key(self, run_id: str) -> str:
        return f"{self.prefix}run:{run_id}"

    def _index(self) -> str:
        return f"{self.prefix}index"

    def _do(self, op: Any) -> Any:
        import redis.exceptions as rx

        try:
            return op(self._redis())
        except rx.AuthenticationError:
            raise CheckpointError(f"checkpoint store {self.path}: the server refused the "
                                  f"password") from None
        except rx.ResponseError as exc:
            raise CheckpointError(f"checkpoint store {self.path}: {exc}") from None
        except (rx.ConnectionError, rx.TimeoutError, OSError) as exc:
            raise CheckpointError(f"checkpoint store {self.path}: cannot reach the server "
                                  f"({type(exc).__name__})") from None

    # ------------------------------------------------------------------ the contract

    def save(self, state: dict[str, Any]) -> None:
        now = time.time()
        state = {**state, "lease_until": now + self.lease_s}
        text, agent = self._encode(state)
        key = self._key(state["run_id"])

        def write(r: Any) -> Any:
            with r.pipeline(transaction=True) as pipe:
                pipe.hsetnx(key, "created", now)
                pipe.hset(key, mapping={"state": text, "agent": agent,
                                        "status": state["status"],
                                        "steps": len(state["steps"]), "updated": now,
                                        "parent": state.get("parent_run_id") or ""})
                pipe.zadd(self._index(), {state["run_id"]: now})
                return pipe.execute()

        self._do(write)

    def load(self, run_id: str) -> dict[str, Any]:
        if not run_id:
            raise SpecError("give a run id (see `runner runs`)")
        found = self._match(run_id)
        return self._parse(found, self._state_text(found))

    def _match(self, run_id: str) -> str:
        """The run `run_id` names: itself, or the one run it is a prefix of."""
        if self._do(lambda r: r.exists(self._key(run_id))):
            return run_id
        ids = [i for i in self._do(lambda r: r.zrange(self._index(), 0, -1))
               if i.startswith(run_id)][:2]
        if not ids:
            raise SpecError(f"no run {run_id!r} in {self.path} (see `runner runs`)")
        if len(ids) > 1:
            raise SpecError(f"{run_id!r} matches several runs; give more of the id")
        return ids[0]

    def claim(self, run_id: str, force: bool = False) -> dict[str, Any]:
        import redis.exceptions as rx

        key = self._key(run_id)

        def take(r: Any) -> dict[str, Any]:
            with r.pipeline(transaction=True) as pipe:
                for _ in range(20):  # another worker wrote meanwhile: read again
                    try:
                        pipe.watch(key)
                        text = pipe.hget(key, "state")
                        if text is None:
                            raise SpecError(f"no run {run_id!r} in {self.path} (see "
                                            f"`runner runs`)")
                        state = self._parse(run_id, text)
                        if state["status"] == "finished":
                            raise SpecError(f"run {run_id} already finished; nothing to "
                                            f"resume")
                        busy = None if force else self._busy(state)
                        if busy is not None:
                            raise SpecError(busy)
                        now = time.time()
                        state.update(status="running", owner=_owner(True),
                                     lease_until=now + self.lease_s)
                        new, _ = self._encode(state)
                        pipe.multi()
                        pipe.hset(key, mapping={"state": new, "status": "running",
                                                "updated": now})
                        pipe.zadd(self._index(), {run_id: now})
                        pipe.execute()
                        return state
                    except rx.WatchError:
                        continue
            raise CheckpointError(f"checkpoint store {self.path}: run {run_id} kept changing "
                                  f"while it was claimed")

        state = self._do(take)
        hold(run_id)
        return state

    def _busy(self, state: dict[str, Any]) -> str | None:
        """On this host, the process check of the SQLite store; elsewhere, the lease."""
        owner = state.get("owner") if isinstance(state.get("owner"), dict) else {}
        if state["status"] != "running" or owner.get("host") == socket.gethostname():
            return _busy(state)
        until = state.get("lease_until")
        if isinstance(until, (int, float)) and until > time.time():
            return (f"run {state['run_id']} is running on {owner.get('host')} (process "
                    f"{owner.get('pid')}); its lease runs {until - time.time():.0f}s more "
                    f"(resume with --force if that worker is gone)")
        return None

    def has(self, run_id: str) -> bool:
        try:
            return bool(self._do(lambda r: r.exists(self._key(run_id))))
        except CheckpointError:
            return False

    def list(self, limit: int = 20) -> list[dict[str, Any]]:
        ids = self._do(lambda r: r.zrevrange(self._index(), 0, limit - 1))

        def rows(r: Any) -> Any:
            with r.pipeline(transaction=False) as pipe:
                for i in ids:
                    pipe.hmget(self._key(i), "parent", "agent", "status", "steps", "created",
                               "updated", "state")
                return pipe.execute()

        listed = []
        for run_id, (parent, agent, status, steps, created, updated, text) in zip(
                ids, self._do(rows)):
            if text is None:
                continue  # deleted since the index was read
            try:
                budget, valid = json.dumps(json.loads(text).get("budget")), 1
            except (ValueError, TypeError, AttributeError, RecursionError):
                budget, valid = None, 0
            listed.append(self._listed((run_id, parent or None, agent, status, _int(steps),
                                        _float(created), _float(updated), budget, valid)))
        return listed

    def _state_text(self, run_id: str) -> Any:
        return self._do(lambda r: r.hget(self._key(run_id), "state"))

    def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            try:
                client.close()
            except Exception:  # a connection that already broke
                pass


def _int(value: Any) -> Any:
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


def _float(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value
