"""`runner batch SPEC INPUTS --out RESULTS`: one run of SPEC per line of INPUTS, in this
process (a bounded pool of runs on one event loop) or on Ray (`serve/batch_ray.py`).

INPUTS is JSON lines: `{"id": "q1", "input": "..."}`, `{"id": ..., "inputs": {...}}` for a
chain's named inputs, or a bare JSON string (its line number is its id); other keys are
ignored. A malformed line, or one whose id an earlier line has, is reported with its line
number and skipped. RESULTS gets one line per input as its run ends (`result_line`: the
`runner run --json` result with the input's id), appended and flushed one by one, fsynced
every second and at the end.

Resuming is rerunning the same command. Each input's run id is derived from the spec, the
results file and the input's id (`run_id_for`), so a run that a crash or a signal cut short
continues from its last checkpoint, and one that finished but whose line was never written
gets its line from its checkpoint, without running again. An input with a result line is
done, except a line whose status a later try can get past (`RETRIED`): that line is dropped
and the run resumed. A run stopped by a signal gets no line. A lock file beside RESULTS
keeps a second batch off it.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..agent import Agent
from ..api import make_agent
from ..budget import Clock
from ..checkpoints import RESUMABLE_STATUSES
from ..errors import EXIT_FAILED, EXIT_OK, RunnerError, SpecError
from ..loop import Run
from ..redact import printable, redact_value
from ..resolve import Resolved, resolve
from ..models import Usage
from ..result import RunResult, Step, to_json
from ..spec import AgentSpec, load_spec
from .agents import takes_named_inputs

__all__ = ["Job", "Plan", "Results", "RateLimit", "Tally", "batch_main", "plan_inputs", "jobs",
           "run_id_for", "run_job", "result_line", "parse_rate", "run_local", "RETRIED",
           "batch_agent"]

RETRIED = frozenset({*RESUMABLE_STATUSES, "busy", "internal_error"})
"""Statuses of a result line that a rerun does not count as done: the line is dropped and
the run resumed from its checkpoint (a timeout or rate limit a later try may get past;
`busy`: another process was running it; `internal_error`: a bug of the runner's, not the
input's fault; `interrupted`: a batch writes no such line, but one is not done either)."""
AGAIN = frozenset({"running", *RESUMABLE_STATUSES})
"""Checkpoint statuses of a run that is continued rather than reported from its state."""
SHOWN_PROBLEMS = 100
"""Problems of INPUTS printed one by one; past that, only counted."""
FSYNC_S = 1.0


# ---------------------------------------------------------------------- the inputs


@dataclass
class Job:
    """One input to run."""

    line: int
    id: str
    value: Any
    run_id: str

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "id": self.id, "value": self.value, "run_id": self.run_id}


@dataclass
class Plan:
    """What a first read of INPUTS found: the lines to run, the ones already done, problems."""

    inputs: Path
    runnable: bytearray = field(default_factory=bytearray)
    """By line number: 1 if the line is to run now."""
    pending: int = 0
    done: int = 0
    """Valid inputs whose result line is already in RESULTS."""
    done_failed: int = 0
    """... of which did not finish."""
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0

    def problem(self, line: int, reason: str) -> None:
        self.problem_count += 1
        if len(self.problems) < SHOWN_PROBLEMS:
            self.problems.append(f"{self.inputs}:{line}: {reason}; skipped")


def run_id_for(spec_path: Path, out_path: Path, input_id: str) -> str:
    """The run id of an input: the same on every rerun of the same command, another for
    another results file (two models compared on one inputs file do not share runs)."""
    key = f"{spec_path.resolve()}\0{out_path.resolve()}\0{input_id}".encode()
    return hashlib.sha256(key).hexdigest()[:16]


def _parse(spec: AgentSpec, number: int, raw: bytes) -> tuple[str, Any] | str | None:
    """(id, run input) of one line, a reason it is malformed, or None for a blank line."""
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return "not UTF-8 text"
    if not text:
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return f"not JSON ({exc})" if not isinstance(exc, RecursionError) else "nested too deep"
    named = takes_named_inputs(spec)
    if isinstance(data, str):
        data = {"id": str(number), "input": data}
    if not isinstance(data, dict):
        return (f"a JSON {type(data).__name__}; a line is {{\"id\": ..., \"input\": ...}} or "
                f"a JSON string")
    ident = data.get("id")
    if isinstance(ident, int) and not isinstance(ident, bool):
        ident = str(ident)
    if not isinstance(ident, str) or not ident:
        return "no id: give \"id\" as a non-empty string or an integer"
    if "input" in data and "inputs" in data:
        return f"id {ident!r}: give input or inputs, not both"
    if "inputs" in data:
        if not named:
            return f"id {ident!r}: {spec.name} takes one \"input\", not named \"inputs\""
        value = data["inputs"]
        if not isinstance(value, dict):
            return f"id {ident!r}: inputs must be an object of named inputs"
    elif "input" in data:
        value = data["input"]
    else:
        return f"id {ident!r}: no \"input\"" + (" (or \"inputs\")" if named else "")
    if named:
        from ..chain import bind_inputs

        try:
            bind_inputs(spec, value)
        except SpecError as exc:
            return f"id {ident!r}: {exc.reason}"
    return ident, value


def plan_inputs(spec: AgentSpec, inputs: Path, done: dict[str, str]) -> Plan:
    """Read INPUTS once, check every line, and mark those to run (`done`: id -> status of
    the result lines already written)."""
    plan = Plan(inputs)
    first: dict[str, int] = {}
    runnable = plan.runnable
    try:
        with open(inputs, "rb") as f:
            for number, raw in enumerate(f, 1):
                runnable.append(0)
                parsed = _parse(spec, number, raw)
                if parsed is None:
                    continue
                if isinstance(parsed, str):
                    plan.problem(number, parsed)
                    continue
                ident = parsed[0]
                if ident in first:
                    plan.problem(number, f"duplicate id {ident!r} (first on line "
                                         f"{first[ident]})")
                    continue
                first[ident] = number
                if ident in done:
                    plan.done += 1
                    plan.done_failed += done[ident] != "finished"
                    continue
                runnable[-1] = 1
                plan.pending += 1
    except OSError as exc:
        raise SpecError(f"{inputs}: cannot read the inputs ({exc.strerror or exc})") from None
    runnable.insert(0, 0)  # line numbers count from 1
    return plan


def jobs(spec: AgentSpec, plan: Plan, out: Path) -> Iterator[Job]:
    """The inputs to run, read again from INPUTS one at a time (none held in memory)."""
    spec_path = spec.source.path
    with open(plan.inputs, "rb") as f:
        for number, raw in enumerate(f, 1):
            if number < len(plan.runnable) and plan.runnable[number]:
                parsed = _parse(spec, number, raw)
                if isinstance(parsed, tuple):  # the file changed since: skip what is not
                    yield Job(number, parsed[0], parsed[1], run_id_for(spec_path, out,
                                                                       parsed[0]))


# ---------------------------------------------------------------------- the results file


class Results:
    """RESULTS: locked for this batch, read for what is done, appended one line at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self._lock: int | None = None
        self._fd: int | None = None
        self._synced = time.monotonic()
        self.notes: list[str] = []
        """What opening found and did (a torn line dropped, lines retried)."""
        self.written: set[str] = set()

    def open(self) -> dict[str, str]:
        """Take the lock, read the done ids (id -> status), drop a torn last line and the
        lines to retry, and open for appending."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip()
            os.close(fd)
            raise SpecError(f"{self.path}: another runner batch is writing it (process "
                            f"{holder or '?'}, lock {self.lock_path})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock = fd
        done = self._read()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return done

    def _read(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        done: dict[str, str] = {}
        retry: set[int] = set()
        good_end = 0
        with open(self.path, "rb") as f:
            for number, raw in enumerate(f, 1):
                if not raw.endswith(b"\n"):  # a crash mid-write: the line is not a result
                    self.notes.append(f"{self.path}:{number}: dropped a torn last line")
                    break
                good_end += len(raw)
                try:
                    line = json.loads(raw)
                    ident, status = line["id"], line["status"]
                except (ValueError, KeyError, TypeError):
                    self.notes.append(f"{self.path}:{number}: not a result line; ignored")
                    continue
                if status in RETRIED:
                    retry.add(number)
                else:
                    done[str(ident)] = str(status)
        if good_end != self.path.stat().st_size:
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
                os.fsync(f.fileno())
        if retry:
            self._drop(retry)
            self.notes.append(f"{self.path}: {len(retry)} result line(s) with a status a "
                              f"retry may get past ({', '.join(sorted(RETRIED))}) dropped; "
                              f"those runs resume")
        return done

    def _drop(self, numbers: set[int]) -> None:
        """Rewrite RESULTS without these lines (a new file renamed over it: never torn)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(self.path, "rb") as src, open(tmp, "wb") as dst:
            for number, raw in enumerate(src, 1):
                if number not in numbers:
                    dst.write(raw)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, self.path)

    def write(self, line: dict[str, Any]) -> bool:
        """Append one result line (once per id: False if it was already written)."""
        assert self._fd is not None
        if line["id"] in self.written:
            return False
        data = (to_json(line) + "\n").encode()
        while data:  # one write for a line of ordinary size: a crash tears only the last
            data = data[os.write(self._fd, data):]
        self.written.add(line["id"])
        now = time.monotonic()
        if now - self._synced >= FSYNC_S:
            os.fsync(self._fd)
            self._synced = now
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
        if self._lock is not None:
            os.close(self._lock)  # releases the lock; the file stays (removing it races)
            self._lock = None


# ---------------------------------------------------------------------- one run


LEFT_OUT = ("messages", "steps")
"""Keys of `runner run --json` a result line leaves out (the trace and checkpoint have them;
`step_count` says how many steps there were)."""


def result_line(job: Job, r: RunResult, secrets: set[str]) -> dict[str, Any]:
    """What RESULTS holds for a run: the input's id, then what `runner run --json` prints
    for it (the same serializer, secrets masked) but the conversation and the steps."""
    d = r.to_dict()
    d["step_count"] = len(d["steps"])
    for key in LEFT_OUT:
        del d[key]
    return redact_value({"id": job.id, **d}, secrets)


def _state_result(agent: Agent, state: dict[str, Any]) -> RunResult:
    """The result of a run that ended before a crash kept its line from RESULTS, rebuilt
    from its last checkpoint (its duration is not kept there)."""
    usage = state["run_usage"]
    return RunResult(state["run_id"], state["agent"], agent.spec.model.id, state["input"],
                     answer=state.get("answer"), status=state["status"],
                     steps=[Step(**s) for s in state["steps"]],
                     usage=Usage(usage["prompt_tokens"], usage["completion_tokens"]),
                     cost_usd=usage.get("cost_usd"), error=state.get("error"),
                     incomplete=state["status"] != "finished",
                     review=state.get("review", []))


def _error_line(job: Job, status: str, error: str, secrets: set[str],
                agent: Agent | None = None) -> dict[str, Any]:
    """The line of an input whose run could not be started or ended in a bug of ours."""
    spec = agent.spec if agent is not None else None
    r = RunResult(job.run_id, spec.name if spec else "", spec.model.id if spec else "",
                  job.value, status=status, error=error, incomplete=True)
    return {**result_line(job, r, secrets), "duration_s": None}


async def run_job(agent: Agent, job: Job, *, force: bool = False,
                  started: Callable[[Run], None] | None = None) -> dict[str, Any] | None:
    """Run one input (resuming its run if a checkpoint has it) and return its result line;
    None if a stop request interrupted it (it is not done). Never raises for the input's
    own failure, nor for a bug of ours (an `internal_error` line, masked with the agent's
    secrets wherever it runs): that is its line. `force`: take the run from whoever the
    checkpoint says has it (Ray: the driver knows that worker died)."""
    store, secrets = agent.checkpoints, agent.secrets
    try:
        state = store.load(job.run_id) if store is not None and store.has(job.run_id) else None
        if state is not None and state["status"] not in AGAIN:  # it ended; its line was lost
            return {**result_line(job, _state_result(agent, state), secrets),
                    "duration_s": None}
        if state is not None:
            assert store is not None
            try:
                claimed = store.claim(job.run_id, force)
            except SpecError as exc:  # a live process has it (`runner resume`, say)
                return _error_line(job, "busy", str(exc), secrets, agent)
            run = agent.restore(claimed)
        else:
            run = agent.start(job.value, run_id=job.run_id)
        if started is not None:
            started(run)
        result = await run.execute()
    except RunnerError as exc:  # its checkpoint unreadable, or the run claimed elsewhere
        return _error_line(job, getattr(exc, "status", "error"), str(exc), secrets,
                           agent)
    except Exception as exc:  # a bug of ours must not stop the other inputs: this one's line
        return _error_line(job, "internal_error", f"{type(exc).__name__}: {exc}", secrets,
                           agent)
    if result.status == "interrupted" and run.stopping is not None:
        return None
    return result_line(job, result, secrets)


# ---------------------------------------------------------------------- pacing and counting


def parse_rate(rate: str | None) -> float | None:
    """Runs per minute from `--rate`: `N/min` (or `N/s`, `N/h`; a bare N is per minute)."""
    if rate is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|sec|m|min|h|hour))?\s*", rate)
    per = {"s": 60.0, "sec": 60.0, "m": 1.0, "min": 1.0, "h": 1 / 60, "hour": 1 / 60}
    if not m or float(m[1]) <= 0:
        raise SpecError(f"--rate {rate!r}: give runs a minute, like 100/min (or 5/s, 600/h)")
    return float(m[1]) * per[m[2] or "min"]


class RateLimit:
    """Starts spaced evenly at `per_minute` (a token bucket of one token): no 60 s window
    holds more than `per_minute` starts. Each caller reserves the next free slot."""

    def __init__(self, per_minute: float, clock: Clock | None = None) -> None:
        self.interval = 60.0 / per_minute
        self.clock = clock or Clock()
        self._next: float | None = None

    def delay(self) -> float:
        """Reserve the next start; how long until it."""
        now = self.clock.monotonic()
        at = now if self._next is None or self._next <= now else self._next
        self._next = at + self.interval
        return at - now

    async def take(self) -> None:
        wait = self.delay()
        if wait > 0:
            await self.clock.sleep(wait)


@dataclass
class Tally:
    """What this batch did: counts by status, tokens, cost, wall time."""

    plan: Plan
    statuses: Counter[str] = field(default_factory=Counter)
    tokens: int = 0
    cost: float | None = None
    started: float = field(default_factory=time.monotonic)
    stopped: str | None = None
    progress: Any = None

    def add(self, line: dict[str, Any]) -> None:
        self.statuses[line["status"]] += 1
        self.tokens += line["usage"]["total_tokens"]
        if line["cost_usd"] is not None:
            self.cost = (self.cost or 0.0) + line["cost_usd"]
        if self.progress is not None:
            self.progress.advance(line["status"] != "finished")

    def note(self, text: str) -> None:
        """A line for the person watching, on stderr (above the progress bar, if any)."""
        if self.progress is not None:
            self.progress.bar.console.print(printable(text), markup=False, highlight=False)
        else:
            print(printable(text), file=sys.stderr, flush=True)

    @property
    def ended(self) -> int:
        return sum(self.statuses.values())

    def exit_code(self, signum: int | None) -> int:
        """130/143 after a signal; 0 if every line of INPUTS ran and finished; else 1."""
        if signum is not None:
            return 128 + signum
        plan = self.plan
        failed = plan.problem_count + plan.done_failed + self.ended - self.statuses["finished"]
        unfinished = plan.pending - self.ended
        return EXIT_FAILED if failed or unfinished else EXIT_OK

    def summary(self) -> list[tuple[str, str]]:
        wall = time.monotonic() - self.started
        rows = [(status, str(n)) for status, n in sorted(self.statuses.items(),
                                                         key=lambda kv: -kv[1])]
        left = self.plan.pending - self.ended
        if left:
            rows.append(("not run" + (f" ({self.stopped})" if self.stopped else ""), str(left)))
        if self.plan.done:
            rows.append(("done before", str(self.plan.done)))
        if self.plan.problem_count:
            rows.append(("skipped lines", str(self.plan.problem_count)))
        rows += [("tokens", f"{self.tokens:,}"),
                 ("cost", "-" if self.cost is None else f"${self.cost:.4f}"),
                 ("wall", f"{wall:.1f} s"),
                 ("runs/s", f"{self.ended / wall:.1f}" if wall > 0 else "-")]
        return rows


class Progress:
    """A progress bar with rate and ETA on stderr (a terminal only)."""

    def __init__(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.failed = 0
        self.bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                       TextColumn("ETA"), TimeRemainingColumn(),
                       console=Console(file=sys.stderr), transient=True)
        self.task = self.bar.add_task("runs", total=total, rate="")
        self.bar.start()

    def advance(self, failed: bool) -> None:
        self.failed += failed
        task = self.bar.tasks[0]
        speed = task.speed
        self.bar.update(self.task, advance=1,
                        description=f"runs ({self.failed} failed)" if self.failed else "runs",
                        rate=f"{speed:.1f}/s" if speed else "")

    def close(self) -> None:
        self.bar.stop()


def print_summary(tally: Tally) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="runner batch", show_header=False, title_justify="left")
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    for name, value in tally.summary():
        table.add_row(name, value)
    Console(file=sys.stderr, width=60).print(table)


# ---------------------------------------------------------------------- the local engine


async def run_local(agent: Agent, todo: Iterator[Job], results: Results, tally: Tally,
                    concurrency: int, limit: RateLimit | None = None) -> int | None:
    """Run every job, `concurrency` at a time, writing each line as its run ends; the signal
    that stopped the batch, or None. The first SIGINT or SIGTERM starts nothing new and
    stops the runs in flight at a step boundary (checkpointed); a second SIGINT exits."""
    loop = asyncio.get_running_loop()
    running: set[Run] = set()
    waiting: set[asyncio.Task[Any]] = set()
    stop: list[int] = []

    def on_signal(signum: int) -> None:
        if stop and signum == signal.SIGINT:
            from ..console import exit_now

            results.close()
            exit_now(130)
        stop.append(signum)
        tally.stopped = signal.Signals(signum).name
        for run in list(running):
            run.request_stop(signum)
        for task in list(waiting):  # waiting for the rate limit: nothing started, end now
            task.cancel()

    async def worker() -> None:
        me = asyncio.current_task()
        assert me is not None
        for job in todo:  # one iterator shared by every worker: each job taken once
            if stop:
                return
            if limit is not None:
                waiting.add(me)
                try:
                    await limit.take()
                except asyncio.CancelledError:
                    return
                finally:
                    waiting.discard(me)
                if stop:
                    return
            run_of: list[Run] = []

            def started(run: Run) -> None:
                run_of.append(run)
                running.add(run)
                if stop:
                    run.request_stop(stop[0])

            try:
                line = await run_job(agent, job, started=started)
            finally:
                running.difference_update(run_of)
            if line is not None and results.write(line):
                tally.add(line)

    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        workers = max(1, min(concurrency, tally.plan.pending))
        await asyncio.gather(*(worker() for _ in range(workers)))
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    return stop[0] if stop else None


def batch_agent(spec: AgentSpec | Resolved) -> Agent:
    """The one Agent of a batch: runs share its models and tools, never a conversation (each
    run is its own, whatever the spec's memory.session)."""
    return make_agent(spec if isinstance(spec, Resolved) else resolve(spec), run_sessions=True)


def batch_main(spec: str, inputs: str, out: str, *, concurrency: int = 16,
               rate: str | None = None, engine: str = "local", address: str | None = None,
               overrides: list[str] | None = None, quiet: bool = False,
               clock: Clock | None = None) -> int:
    """`runner batch`: the exit code (0 every input finished, 1 some failed or were skipped,
    130/143 stopped by a signal); a bad spec, inputs file or option raises a SpecError."""
    per_minute = parse_rate(rate)
    loaded = load_spec(spec, list(overrides or ()))
    resolved = resolve(loaded)  # a bad spec fails before the results file is touched
    out_path = Path(out)
    results = Results(out_path)
    done = results.open()
    try:
        for note in results.notes:
            print(printable(note), file=sys.stderr)
        plan = plan_inputs(loaded, Path(inputs), done)
        for problem in plan.problems:
            print(printable(problem), file=sys.stderr)
        if plan.problem_count > len(plan.problems):
            print(f"... and {plan.problem_count - len(plan.problems)} more problems in "
                  f"{inputs}", file=sys.stderr)
        tally = Tally(plan)
        todo = jobs(loaded, plan, out_path)
        limit = RateLimit(per_minute, clock) if per_minute else None
        if plan.pending and not quiet and sys.stderr.isatty():
            tally.progress = Progress(plan.pending)
        try:
            if not plan.pending:
                signum = None
            elif engine == "ray":
                from .batch_ray import run_ray

                signum = run_ray(loaded, list(overrides or ()), todo, results, tally,
                                 concurrency, limit, address, quiet)
            else:
                signum = asyncio.run(_local(resolved, todo, results, tally, concurrency,
                                            limit))
        finally:
            if tally.progress is not None:
                tally.progress.close()
    finally:
        results.close()
    print_summary(tally)
    return tally.exit_code(signum)


async def _local(resolved: Resolved, todo: Iterator[Job], results: Results, tally: Tally,
                 concurrency: int, limit: RateLimit | None) -> int | None:
    async with batch_agent(resolved) as agent:
        return await run_local(agent, todo, results, tally, concurrency, limit)

