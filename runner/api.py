"""The Python API that mirrors `runner run`."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from typing import Any

from .errors import RunFailed
from .loop import Agent
from .result import RunResult
from .memory import SQLiteMemory
from .spec import AgentSpec, load_spec

__all__ = ["run_agent", "arun_agent", "make_agent"]


def make_agent(spec: AgentSpec | str | os.PathLike[str], *, overrides: Iterable[str] = (),
               session: str | None = None, sinks: list[Any] | None = None) -> Agent:
    """An Agent for a spec or a spec file. Naming a session asks for memory that outlives the
    process: a spec whose memory is `buffer` or `none` then uses SQLite in .runner/memory.db,
    so a later run of the same session continues the conversation."""
    if not isinstance(spec, AgentSpec):
        spec = load_spec(spec, overrides)
    memory = None
    if session is not None and spec.memory.backend in ("buffer", "none"):
        memory = SQLiteMemory(".runner/memory.db")
    return Agent(spec, session=session, memory=memory, sinks=sinks)


async def arun_agent(spec: AgentSpec | str | os.PathLike[str], input: Any, *,
                     overrides: Iterable[str] = (), session: str | None = None,
                     raise_on_error: bool = False, sinks: list[Any] | None = None) -> RunResult:
    """Run an agent once and return its RunResult (or raise RunFailed with it)."""
    agent = make_agent(spec, overrides=overrides, session=session, sinks=sinks)
    try:
        result = await agent.run(input)
    finally:
        await agent.memory.close()
    if raise_on_error and not result.ok:
        raise RunFailed(result)
    return result


def run_agent(spec: AgentSpec | str | os.PathLike[str], input: Any, **kw: Any) -> RunResult:
    """Synchronous form of arun_agent."""
    return asyncio.run(arun_agent(spec, input, **kw))
