"""`runner batch --engine ray`: the same batch on a Ray cluster (`--address`, else
$RAY_ADDRESS, else a local one started for the batch). The only module that imports Ray.

A pool of async actors, one per CPU of the cluster, each building the Agent once and
running up to `concurrency` runs on its own event loop. The driver (this process) reads the
inputs, hands each to the least loaded actor, takes each result as it arrives (`ray.wait`)
and writes its line to RESULTS, once per id. When an actor dies, its unfinished inputs go to
the others (and a replacement actor is started): each resumes from its checkpoint if the
checkpoints are shared (SQLite on one machine, Redis across machines), taken from the dead
worker with `force`, and a run that had already finished reports from its checkpoint
without running again.

The actors need the spec at the same path and the provider keys in their own environment
(a node's, or `runtime_env`); the driver passes on only `RUNNER_*` and `LITELLM_*`.
"""

from __future__ import annotations

import os
import signal
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import RunnerError
from ..spec import AgentSpec
from .batch import Job, RateLimit, Results, Tally, _error_line, batch_agent, run_job

__all__ = ["run_ray", "ON_WORKERS"]

ON_WORKERS: list[Callable[[list[int]], None]] = []
"""Told the process ids of the first actors once they are up (tests, benchmarks)."""
WAIT_S = 0.2


class Worker:
    """One actor: the Agent, built once, and the runs in flight on its event loop."""

    def __init__(self, spec_path: str, overrides: list[str], cwd: str,
                 env: dict[str, str]) -> None:
        os.environ.update(env)
        if os.path.isdir(cwd):  # on the driver's machine: the same .runner/ (checkpoints)
            os.chdir(cwd)
        from ..resolve import resolve
        from ..spec import load_spec

        self.agent = batch_agent(resolve(load_spec(spec_path, overrides)))
        self.runs: set[Any] = set()
        self.stopping: int | None = None

    def pid(self) -> int:
        return os.getpid()

    async def run(self, job: dict[str, Any], force: bool) -> dict[str, Any] | None:
        def started(run: Any) -> None:
            mine.append(run)
            self.runs.add(run)
            if self.stopping is not None:
                run.request_stop(self.stopping)

        mine: list[Any] = []
        try:
            return await run_job(self.agent, Job(**job), force=force, started=started)
        finally:
            self.runs.difference_update(mine)

    async def stop(self, signum: int) -> None:
        self.stopping = signum
        for run in list(self.runs):
            run.request_stop(signum)

    async def close(self) -> None:
        await self.agent.close()


def run_ray(spec: AgentSpec, overrides: list[str], todo: Iterator[Job], results: Results,
            tally: Tally, concurrency: int, limit: RateLimit | None,
            address: str | None) -> int | None:
    """Run every job on the cluster; the signal that stopped the batch, or None."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    target = address or os.environ.get("RAY_ADDRESS") or None
    env = {k: v for k, v in os.environ.items() if k.startswith(("RUNNER_", "LITELLM_"))}
    env.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    env.setdefault("LITELLM_MODE", "PRODUCTION")
    options: dict[str, Any] = {} if target else {"include_dashboard": False}
    ray.init(address=target, log_to_driver=False, configure_logging=False, **options)
    stop: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _: stop.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        pool = _Pool(ray, spec, overrides, env, concurrency)
        return _drive(ray, pool, todo, results, tally, concurrency, limit, stop,
                      (RayActorError,), RayTaskError)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        ray.shutdown()


class _Pool:
    """The actors, their load, and replacements for the ones that die."""

    def __init__(self, ray: Any, spec: AgentSpec, overrides: list[str], env: dict[str, str],
                 concurrency: int) -> None:
        self.ray = ray
        self.remote = ray.remote(num_cpus=1, max_restarts=0,
                                 max_concurrency=concurrency + 4)(Worker)
        self.args = (str(spec.source.path.resolve()), overrides, os.getcwd(), env)
        size = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.actors: dict[int, Any] = {}
        self.load: dict[int, int] = {}
        self._next = 0
        self.replacements = size
        for _ in range(size):
            self.add()
        try:
            pids = ray.get([a.pid.remote() for a in self.actors.values()])
        except Exception as exc:  # the agent could not be built on the workers
            self.close()
            raise RunnerError(f"the Ray workers could not build the agent: "
                              f"{_cause(exc)}") from None
        for hook in ON_WORKERS:
            hook(pids)

    def add(self) -> None:
        self.actors[self._next] = self.remote.remote(*self.args)
        self.load[self._next] = 0
        self._next += 1

    def died(self, key: int) -> None:
        """Forget an actor that died (killed, in case it is only unreachable); replace it."""
        actor = self.actors.pop(key, None)
        if actor is None:
            return
        self.load.pop(key, None)
        try:
            self.ray.kill(actor, no_restart=True)
        except Exception:
            pass  # already gone
        if self.replacements > 0:
            self.replacements -= 1
            self.add()

    def free(self, concurrency: int) -> int | None:
        """The least loaded actor with room for another run, or None."""
        key = min(self.load, key=self.load.__getitem__, default=None)
        return key if key is not None and self.load[key] < concurrency else None

    def stop(self, signum: int) -> None:
        for actor in self.actors.values():
            actor.stop.remote(signum)

    def close(self) -> None:
        refs = [a.close.remote() for a in self.actors.values()]
        try:
            self.ray.wait(refs, num_returns=len(refs), timeout=30)
        except Exception:
            pass
        for actor in self.actors.values():
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:
                pass
        self.actors.clear()


def _cause(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    return str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__


def _drive(ray: Any, pool: _Pool, todo: Iterator[Job], results: Results, tally: Tally,
           concurrency: int, limit: RateLimit | None, stop: list[int],
           died: tuple[type[BaseException], ...], failed: type[BaseException]) -> int | None:
    inflight: dict[Any, tuple[int, Job, bool]] = {}
    again: deque[Job] = deque()
    forced: set[str] = set()
    held: tuple[Job, float] | None = None  # the next job, waiting for the rate limit
    told = False
    exhausted = False
    try:
        while True:
            if stop and not told:
                pool.stop(stop[0])
                tally.stopped = signal.Signals(stop[0]).name
                told = True
            while not stop:
                key = pool.free(concurrency)
                if key is None:
                    break
                if held is None:
                    job = again.popleft() if again else next(todo, None)
                    if job is None:
                        exhausted = True
                        break
                    held = (job, time.monotonic() + (limit.delay() if limit else 0.0))
                job, at = held
                if time.monotonic() < at:
                    break
                held = None
                ref = pool.actors[key].run.remote(job.to_dict(), job.id in forced)
                inflight[ref] = (key, job, job.id in forced)
                pool.load[key] += 1
            if not inflight:
                if stop or (exhausted and not again and held is None) or not pool.actors:
                    break
                time.sleep(max(0.0, min(WAIT_S, held[1] - time.monotonic())) if held
                           else WAIT_S)
                continue
            timeout = WAIT_S if held is None else max(0.0, min(WAIT_S,
                                                               held[1] - time.monotonic()))
            ready, rest = ray.wait(list(inflight), num_returns=1, timeout=timeout)
            if ready and rest:
                more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
                ready += more
            for ref in ready:
                key, job, _ = inflight.pop(ref)
                if key in pool.load:
                    pool.load[key] -= 1
                try:
                    line = ray.get(ref)
                except died:
                    pool.died(key)
                    again.append(job)  # resumes elsewhere, from its checkpoint
                    forced.add(job.id)
                    continue
                except failed as exc:  # a bug of ours, in the actor: this input's line
                    line = _error_line(job, "error", _cause(exc), set())
                if line is not None and results.write(line):
                    tally.add(line)
    finally:
        pool.close()
    return stop[0] if stop else None
