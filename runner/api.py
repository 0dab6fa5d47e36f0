"""The Python API that mirrors `runner run`."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterable
from typing import Any

from .checkpoints import CheckpointStore
from .errors import RunFailed, SpecError
from .loop import Agent
from .memory import SQLiteMemory
from .redact import env_secrets
from .result import RunResult
from .spec import AgentSpec, load_spec

__all__ = ["run_agent", "arun_agent", "make_agent", "prepare_resume", "resume_run",
           "aresume_run"]


def make_agent(spec: AgentSpec | str | os.PathLike[str], *, overrides: Iterable[str] = (),
               session: str | None = None, sinks: list[Any] | None = None,
               **agent_options: Any) -> Agent:
    """An Agent for a spec or a spec file. Naming a session asks for memory that outlives the
    process: a spec whose memory is `buffer` or `none` then uses SQLite in .runner/memory.db,
    so a later run of the same session continues the conversation."""
    if not isinstance(spec, AgentSpec):
        spec = load_spec(spec, overrides)
    memory = None
    if session is not None and spec.memory.backend in ("buffer", "none"):
        memory = SQLiteMemory(".runner/memory.db")
    return Agent(spec, session=session, memory=memory, sinks=sinks, **agent_options)


async def arun_agent(spec: AgentSpec | str | os.PathLike[str], input: Any, *,
                     overrides: Iterable[str] = (), session: str | None = None,
                     raise_on_error: bool = False, sinks: list[Any] | None = None) -> RunResult:
    """Run an agent once and return its RunResult (or raise RunFailed with it)."""
    agent = make_agent(spec, overrides=overrides, session=session, sinks=sinks)
    try:
        result = await agent.run(input)
    finally:
        await agent.memory.close()
        if agent.checkpoints is not None:
            agent.checkpoints.close()
    if raise_on_error and not result.ok:
        raise RunFailed(result)
    return result


def run_agent(spec: AgentSpec | str | os.PathLike[str], input: Any, **kw: Any) -> RunResult:
    """Synchronous form of arun_agent."""
    return asyncio.run(arun_agent(spec, input, **kw))


def prepare_resume(run_id: str, *, db: str | os.PathLike[str] = ".runner/runs.db",
                   force: bool = False, **agent_options: Any) -> tuple[Agent, dict[str, Any]]:
    """The agent and last committed state of an unfinished run. The spec is reloaded with
    the run's own --set values; if it changed since, resuming needs `force`. A run still
    running in a live process on this machine is not resumed (two processes would repeat
    each other's steps) unless `force` says that process is something else."""
    if not os.path.exists(db):
        raise SpecError(f"no run {run_id!r}: {db} does not exist (see `runner runs`)")
    store = CheckpointStore(db, secrets=env_secrets())
    state = store.load(run_id)
    if state["status"] == "finished":
        raise SpecError(f"run {state['run_id']} already finished; nothing to resume")
    owner = state.get("owner") or {}
    if (state["status"] == "running" and not force and owner.get("host") == socket.gethostname()
            and owner.get("pid") != os.getpid() and _alive(owner.get("pid"))):
        raise SpecError(f"run {state['run_id']} is still running in process {owner['pid']}; "
                        f"stop it first (resume with --force if that process is not this run)")
    spec = load_spec(state["spec_path"], state["overrides"])
    if spec.source.digest != state["spec_digest"] and not force:
        raise SpecError(f"{state['spec_path']} changed since run {state['run_id']} started; "
                        f"resume with --force to continue with the new spec")
    store.secrets |= spec.source.secrets
    session = state["session"] if state["session"] != spec.memory.session else None
    agent = make_agent(spec, session=session, checkpoints=store, **agent_options)
    return agent, state


async def aresume_run(run_id: str, **kw: Any) -> RunResult:
    """Continue an unfinished run from its last committed step; see prepare_resume."""
    agent, state = prepare_resume(run_id, **kw)
    try:
        return await agent.restore(state).execute()
    finally:
        await agent.memory.close()
        if agent.checkpoints is not None:
            agent.checkpoints.close()


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


def resume_run(run_id: str, **kw: Any) -> RunResult:
    """Synchronous form of aresume_run."""
    return asyncio.run(aresume_run(run_id, **kw))
