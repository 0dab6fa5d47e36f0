"""Conversation memory: the interface and the built-in backends (buffer, sqlite, none; redis
is in `runner.memory_redis`)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from ._sqlite import open_wal
from .errors import RunnerError
from .models import Message

__all__ = ["Memory", "ListableMemory", "BufferMemory", "SQLiteMemory", "NoMemory",
           "SQLiteOptions"]


class Memory(Protocol):
    """Keeps the messages of past turns per session."""

    async def load(self, session: str, window: int | None = None) -> list[Message]:
        """The session's messages, oldest first (the last `window` of them if given)."""

    async def append(self, session: str, messages: list[Message]) -> None:
        """Add messages to the end of the session."""

    async def close(self) -> None:
        """Release connections."""


class ListableMemory(Memory, Protocol):
    """A memory that can also list and forget its sessions (`runner sessions`)."""

    async def sessions(self) -> list[dict[str, Any]]:
        """Each session: {"session", "messages" (count), "last_used" (epoch seconds)}."""

    async def clear(self, session: str) -> None:
        """Forget the session's messages."""


class NoMemory:
    """Remembers nothing."""

    async def load(self, session: str, window: int | None = None) -> list[Message]:
        return []

    async def append(self, session: str, messages: list[Message]) -> None:
        return None

    async def close(self) -> None:
        return None


class BufferMemory:
    """In-process memory: lives as long as the process (a chat REPL, a server)."""

    _shared: dict[str, list[Message]] = {}

    _shared_used: dict[str, float] = {}

    def __init__(self, store: dict[str, list[Message]] | None = None) -> None:
        self.store = self._shared if store is None else store
        self._used: dict[str, float] = self._shared_used if store is None else {}

    async def load(self, session: str, window: int | None = None) -> list[Message]:
        msgs = self.store.get(session, [])
        return list(msgs[-window:] if window else msgs)

    async def append(self, session: str, messages: list[Message]) -> None:
        self.store.setdefault(session, []).extend(messages)
        self._used[session] = time.time()

    async def sessions(self) -> list[dict[str, Any]]:
        return [{"session": name, "messages": len(msgs), "last_used": self._used.get(name)}
                for name, msgs in self.store.items() if msgs]

    async def clear(self, session: str) -> None:
        self.store.pop(session, None)

    async def close(self) -> None:
        return None


class SQLiteOptions(BaseModel):
    """Options of the sqlite memory backend."""

    model_config = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True)
    path: str = ".runner/memory.db"
    """Database file, relative to the current directory."""
    busy_timeout_s: float = 5.0
    """How long to wait for another process's lock before failing."""


class SQLiteMemory:
    """Memory in a SQLite file keyed by session, in WAL mode so readers never block writers."""

    def __init__(self, path: str | Path, busy_timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            try:
                db = open_wal(self.path, self.busy_timeout_s, [
                    "CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY, session TEXT "
                    "NOT NULL, role TEXT NOT NULL, content TEXT NOT NULL, created REAL NOT NULL)",
                    "CREATE INDEX IF NOT EXISTS messages_session ON messages(session, id)"])
            except (sqlite3.Error, OSError) as exc:
                raise RunnerError(f"memory database {self.path}: {exc}") from None
            self._db = db
        return self._db

    def _load(self, session: str, window: int | None) -> list[Message]:
        sql = "SELECT role, content FROM messages WHERE session=? ORDER BY id"
        args: tuple[Any, ...] = (session,)
        if window:
            sql = ("SELECT role, content FROM (SELECT id, role, content FROM messages WHERE "
                   "session=? ORDER BY id DESC LIMIT ?) ORDER BY id")
            args = (session, window)
        rows = self._conn().execute(sql, args).fetchall()
        return [{"role": r, "content": c} for r, c in rows]

    def _append(self, session: str, messages: list[Message]) -> None:
        db = self._conn()
        now = time.time()
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO messages(session, role, content, created) VALUES (?,?,?,?)",
                           [(session, m["role"], str(m["content"]), now) for m in messages])

    def _sessions(self) -> list[dict[str, Any]]:
        rows = self._conn().execute("SELECT session, COUNT(*), MAX(created) FROM messages "
                                    "GROUP BY session ORDER BY MAX(created) DESC").fetchall()
        return [{"session": s, "messages": n, "last_used": t} for s, n, t in rows]

    def _clear(self, session: str) -> None:
        db = self._conn()
        with db:
            db.execute("DELETE FROM messages WHERE session=?", (session,))

    async def sessions(self) -> list[dict[str, Any]]:
        return await self._call(self._sessions)

    async def clear(self, session: str) -> None:
        await self._call(self._clear, session)

    async def load(self, session: str, window: int | None = None) -> list[Message]:
        return await self._call(self._load, session, window)

    async def append(self, session: str, messages: list[Message]) -> None:
        await self._call(self._append, session, messages)

    async def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except sqlite3.Error as exc:
            raise RunnerError(f"memory database {self.path}: {exc}") from None

    async def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
