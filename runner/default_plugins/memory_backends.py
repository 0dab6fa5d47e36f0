"""The built-in memory backends: `buffer` (in-process), `sqlite` (a file, per session) and
`redis` (a server, shared by workers; the client is imported only when it is used)."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl
from ..memory import BufferMemory, SQLiteMemory, SQLiteOptions
from ..memory_redis import RedisMemory, RedisOptions


def _buffer(spec: Any, options: Any) -> BufferMemory:
    return BufferMemory()


def _sqlite(spec: Any, options: SQLiteOptions) -> SQLiteMemory:
    return SQLiteMemory(options.path, options.busy_timeout_s)


def _redis(spec: Any, options: RedisOptions) -> RedisMemory:
    return RedisMemory(options)


@hookimpl
def register_memory(register: Any) -> None:
    register("buffer", _buffer)
    register("sqlite", _sqlite, SQLiteOptions)
    register("redis", _redis, RedisOptions)
