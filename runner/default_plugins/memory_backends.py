"""The built-in memory backends: `buffer` (in-process) and `sqlite` (a file, per session)."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl
from ..memory import BufferMemory, SQLiteMemory, SQLiteOptions


def _buffer(spec: Any, options: Any) -> BufferMemory:
    return BufferMemory()


def _sqlite(spec: Any, options: SQLiteOptions) -> SQLiteMemory:
    return SQLiteMemory(options.path, options.busy_timeout_s)


@hookimpl
def register_memory(register: Any) -> None:
    register("buffer", _buffer)
    register("sqlite", _sqlite, SQLiteOptions)
