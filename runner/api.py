"""The Python API that mirrors the command line: run an agent, resume a run, validate specs,
and the signal policy of a run driven from a terminal."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .agent import Agent
from .checkpoints import RESUMABLE_STATUSES, CheckpointStore, is_remote, release, store_at
from .errors import RunFailed, RunnerError, SpecError, SpecErrors
from .loop import Run
from .memory import SQLiteMemory
from .redact import Redactor, env_secrets
from .resolve import Resolved, resolve
from .result import RunResult
from .spec import AgentSpec, is_test_file, load_spec

__all__ = ["run_agent", "arun_agent", "make_agent", "session_memory", "prepare_resume",
           "resume_run", "aresume_run", "validate_paths", "drive", "resume_hint",
           "load_and_resolve", "model_tap"]


def load_and_resolve(path: str | os.PathLike[str], overrides: Iterable[str] = ()) -> Resolved:
    """A spec file loaded and checked against the installed plugins (a `Resolved`)."""
    return resolve(load_spec(path, overrides))


def make_agent(spec: AgentSpec | str | os.PathLike[str], *, overrides: Iterable[str] = (),
               session: str | None = None, sinks: list[Any] | None = None,
               **agent_options: Any) -> Agent:
    """An Agent for a spec or a spec file. Naming a session asks for memory that outlives the
    process: a spec whose memory is `buffer` or `none` then uses SQLite in .runner/memory.db,
    so a later run of the same session continues the conversation."""
    if isinstance(spec, (str, os.PathLike)):
        spec = load_spec(spec, overrides)
    memory = session_memory(spec) if session is not None else None
    return Agent(spec, session=session, memory=memory, sinks=sinks, **agent_options)


def session_memory(spec: AgentSpec | Resolved) -> SQLiteMemory | None:
    """Where a named session of `spec` is kept when its own backend would not outlive the
    process (`buffer`, `none`): .runner/memory.db; None: the spec's backend keeps it."""
    backend = spec.memory.backend if isinstance(spec, AgentSpec) else spec.spec.memory.backend
    if backend in ("buffer", "none"):
        return SQLiteMemory(".runner/memory.db")  # opened on first use: nothing to close yet
    return None


async def arun_agent(spec: AgentSpec | str | os.PathLike[str], input: Any, *,
                     overrides: Iterable[str] = (), session: str | None = None,
                     raise_on_error: bool = False, sinks: list[Any] | None = None) -> RunResult:
    """Run an agent once and return its RunResult (or raise RunFailed with it)."""
    async with make_agent(spec, overrides=overrides, session=session, sinks=sinks) as agent:
        result = await agent.run(input)
    if raise_on_error and not result.ok:
        raise RunFailed(result)
    return result


def run_agent(spec: AgentSpec | str | os.PathLike[str], input: Any, **kw: Any) -> RunResult:
    """Synchronous form of arun_agent."""
    return asyncio.run(arun_agent(spec, input, **kw))


def prepare_resume(run_id: str, *, db: str | os.PathLike[str] = ".runner/runs.db",
                   force: bool = False, **agent_options: Any) -> tuple[Agent, dict[str, Any]]:
    """The agent and last committed state of an unfinished run, claimed for this process.
    The spec is reloaded with the run's own --set values; if it changed since, resuming
    needs `force`. A run still running (or being resumed) in a live process on this machine
    is not resumed (two processes would repeat each other's steps) unless `force` says that
    process is something else; of two resumes started together, one gets the run."""
    if not is_remote(str(db)) and not os.path.exists(db):
        raise SpecError(f"no run {run_id!r}: {db} does not exist (see `runner runs`)")
    store = store_at(str(db), secrets=env_secrets())
    try:
        return _resumable(store, run_id, force, agent_options)
    except BaseException:
        store.close()  # the agent owns it once it exists; until then, this does
        raise


def _resumable(store: CheckpointStore, run_id: str, force: bool,
               agent_options: dict[str, Any]) -> tuple[Agent, dict[str, Any]]:
    state = store.load(run_id)
    run_id = state["run_id"]
    if state["status"] == "finished":
        raise SpecError(f"run {run_id} already finished; nothing to resume")
    spec = load_spec(state["spec_path"], state["overrides"])
    if spec.source.digest != state["spec_digest"] and not force:
        raise SpecError(f"{state['spec_path']} changed since run {run_id} started; "
                        f"resume with --force to continue with the new spec")
    store.secrets |= spec.source.secrets
    resolved = resolve(spec)  # before the claim: a missing plugin leaves the run as it was
    before, state = state, store.claim(run_id, force)
    try:
        session = state["session"] if state["session"] != spec.memory.session else None
        agent = make_agent(resolved, session=session, checkpoints=store, **agent_options)
    except BaseException:
        release(run_id)
        with contextlib.suppress(RunnerError):  # give the run back as it was
            store.save({**state, "status": before["status"], "owner": before.get("owner")})
        raise
    return agent, state


async def aresume_run(run_id: str, **kw: Any) -> RunResult:
    """Continue an unfinished run from its last committed step; see prepare_resume."""
    agent, state = prepare_resume(run_id, **kw)
    async with agent:
        return await agent.restore(state).execute()


def resume_run(run_id: str, **kw: Any) -> RunResult:
    """Synchronous form of aresume_run."""
    return asyncio.run(aresume_run(run_id, **kw))


def validate_paths(paths: Iterable[str | os.PathLike[str]]) -> tuple[int, list[SpecError]]:
    """Validate every spec file under `paths` against the installed plugins; return how many
    were read and the problems.

    Agent test files (`*.test.yaml`) are checked as test files, with the spec they test. In a
    folder, files and folders whose names start with a dot are skipped.
    """
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(q for q in p.rglob("*") if q.suffix in (".yaml", ".yml")
                                and q.is_file()
                                and not any(part.startswith(".")
                                            for part in q.relative_to(p).parts)))
        else:
            files.append(p)
    problems: dict[str, SpecError] = {}  # a spec's problem found again through its test file
    for f in files:
        try:
            if is_test_file(f):
                from .testing.cases import load_test_file

                load_test_file(f)
            else:
                load_and_resolve(f)
        except SpecErrors as exc:
            problems.update((e.render(), e) for e in exc.errors)
        except SpecError as exc:
            problems[exc.render()] = exc
    return len(files), list(problems.values())


def drive(agent: Agent, start: Callable[[], Run],
          on_stop: Callable[[Run, int], None] | None = None) -> RunResult:
    """Run to the end with the terminal's signal policy: the first SIGINT or SIGTERM stops the
    run at a step boundary (state saved, exit 130 or 143 after); a second SIGINT exits at
    once (`exit_now(130)`). `on_stop(run, signum)` hears of the first. The agent is closed
    at the end."""

    async def main() -> RunResult:
        async with agent:
            return await _with_signals(start())

    async def _with_signals(run: Run) -> RunResult:
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            if run.stopping and signum == signal.SIGINT:
                from .console import exit_now

                exit_now(130)
            if on_stop is not None:
                on_stop(run, signum)
            run.request_stop(signum)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            return await run.execute()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    return asyncio.run(main())


def model_tap(spec: AgentSpec, secrets: set[str], record: str | None,
              replay: str | None) -> Any:
    """The recorder (`--record FILE`) or replayer (`--replay FILE`) that stands between a run
    and its models, or None."""
    if not (record or replay):
        return None
    from .testing.recording import Recorder, Replayer

    redactor = Redactor.for_trace(spec.trace, secrets)
    return Recorder(record, redactor) if record else Replayer(replay, redactor)


def resume_hint(agent: Agent, result: RunResult) -> str | None:
    """The command that continues a run that stopped for a reason a resume can get past,
    if its checkpoint was ever written (a location that could never be written has none)."""
    store = agent.checkpoints
    if store is None or result.status not in RESUMABLE_STATUSES or not store.has(result.run_id):
        return None
    db = "" if str(store.path) == ".runner/runs.db" else f" --db {store.path}"
    return f"resume with: runner resume {result.run_id}{db}"
