"""`runner batch --engine ray`: the same batch on a Ray cluster (`--address`, else
$RAY_ADDRESS, else a local one started for the batch and stopped after it). The only module
that imports Ray.

A pool of async actors, one per CPU of the cluster, each building the Agent once and
running up to `concurrency` runs on its own event loop. The driver (this process) reads the
inputs, hands each to the least loaded actor that is up, takes each result as it arrives
(`ray.wait`) and writes its line to RESULTS, once per id. When an actor dies, its unfinished
inputs go to the others (and a replacement actor is started): each resumes from its
checkpoint if the checkpoints are shared (SQLite on one machine, Redis across machines),
taken from the dead worker with `force`, and a run that had already finished reports from
its checkpoint without running again.

The actors need the spec at the same path and the provider keys in their own environment
(a node's, or `runtime_env`); the driver passes on only `RUNNER_*` and `LITELLM_*`.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from ..errors import RunnerError, SpecError
from ..redact import env_secrets
from ..spec import AgentSpec
from .batch import Job, RateLimit, Results, Tally, _error_line, batch_agent, run_job

__all__ = ["run_ray", "BatchWorker"]

WAIT_S = 0.2
"""How long the driver waits for a result before it looks at signals and the rate again."""
UP_S = 300.0
"""How long the driver waits for its first actors, or for a replacement when no other is
left."""


class BatchWorker:
    """One actor (its process is titled `ray::BatchWorker`): the Agent, built once, and the
    runs in flight on its event loop."""

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

    def hello(self) -> tuple[int, str]:
        """Its process id and host: the actor is up, its agent built."""
        return os.getpid(), socket.gethostname()

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
            tally: Tally, concurrency: int, limit: RateLimit | None, address: str | None,
            quiet: bool = False) -> int | None:
    """Run every job on the cluster; the signal that stopped the batch, or None."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    target = address or os.environ.get("RAY_ADDRESS") or None
    if target is None and "RAY_AUTH_MODE" not in os.environ:
        # a cluster of its own takes a token of its own (inherited by the processes it
        # starts), never the one in ~/.ray that other clusters of this user share
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    env = {k: v for k, v in os.environ.items() if k.startswith(("RUNNER_", "LITELLM_"))}
    env.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    env.setdefault("LITELLM_MODE", "PRODUCTION")
    try:  # "local": a new cluster, never the last one `ray start` left on this machine
        ray.init(address=target or "local", log_to_driver=False, configure_logging=False,
                 **({} if target else {"include_dashboard": False}))
    except Exception as exc:
        if target is None:
            raise RunnerError(f"--engine ray: could not start a local Ray cluster: "
                              f"{_cause(exc)}") from None
        raise SpecError(f"--engine ray: cannot join the Ray cluster at {target}: "
                        f"{_cause(exc)}") from None
    stop: list[int] = []

    def on_signal(signum: int, _: Any) -> None:
        if stop and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: leave now, the runs resume next time
        stop.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    pool: _Pool | None = None
    try:
        pool = _Pool(ray, spec, overrides, env, concurrency, RayActorError)
        if not quiet:
            tally.note(f"runner batch: on Ray ({target or 'a local cluster'}): "
                       f"{len(pool.up)} workers, up to {concurrency} runs each: " + ", ".join(
                           f"pid {pid} on {host}" for pid, host in pool.up.values()))
        return _drive(ray, pool, todo, results, tally, concurrency, limit, stop, quiet,
                      RayActorError, RayTaskError)
    except KeyboardInterrupt:
        tally.stopped = "SIGINT"
        if pool is not None:
            pool.kill()
        return signal.SIGINT
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if pool is not None:
            pool.close()
        ray.shutdown()


class _Pool:
    """The actors, which of them are up, their load, and replacements for the ones that
    die."""

    def __init__(self, ray: Any, spec: AgentSpec, overrides: list[str], env: dict[str, str],
                 concurrency: int, died: type[BaseException]) -> None:
        self.ray, self.died_error = ray, died
        self.remote = ray.remote(num_cpus=1, max_restarts=0,
                                 max_concurrency=concurrency + 4)(BatchWorker)
        self.args = (str(spec.source.path.resolve()), overrides, os.getcwd(), env)
        self.secrets = spec.source.secrets | env_secrets()
        """What the driver masks in a line it writes itself (the agent's are the actors')."""
        size = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.actors: dict[int, Any] = {}
        self.up: dict[int, tuple[int, str]] = {}
        """The actors that said hello: key -> (pid, host)."""
        self.starting: dict[Any, int] = {}
        """An actor's hello, not answered yet -> its key."""
        self.load: dict[int, int] = {}
        self._next = 0
        self.replacements = size
        for _ in range(size):
            self.add()
        try:  # every first actor up (its agent built) before any input is handed out
            hellos = ray.get(list(self.starting), timeout=UP_S)
        except Exception as exc:  # the agent could not be built on the workers
            self.kill()
            raise RunnerError(f"the Ray workers could not build the agent: "
                              f"{_cause(exc)}") from None
        for ref, hello in zip(list(self.starting), hellos):
            self.up[self.starting.pop(ref)] = tuple(hello)

    def add(self) -> None:
        actor = self.remote.remote(*self.args)
        self.actors[self._next] = actor
        self.load[self._next] = 0
        self.starting[actor.hello.remote()] = self._next
        self._next += 1

    def started(self, ref: Any) -> str | None:
        """Take an answered hello: the actor is up, or it died starting; what to say."""
        key = self.starting.pop(ref)
        try:
            pid, host = self.ray.get(ref)
        except Exception as exc:
            self.died(key)
            return f"a replacement Ray worker did not start: {_cause(exc)}"
        if key not in self.actors:
            return None
        self.up[key] = (pid, host)
        return f"replacement Ray worker up: pid {pid} on {host}"

    def died(self, key: int) -> str | None:
        """Forget an actor that died (killed, in case it is only unreachable) and start a
        replacement; what to say (None: it was already forgotten)."""
        actor = self.actors.pop(key, None)
        if actor is None:
            return None
        pid, host = self.up.pop(key, (None, None))
        self.load.pop(key, None)
        try:
            self.ray.kill(actor, no_restart=True)
        except Exception:
            pass  # already gone
        replaced = self.replacements > 0
        if replaced:
            self.replacements -= 1
            self.add()
        return (f"Ray worker pid {pid} on {host} died; its inputs go to the other workers"
                + ("; starting a replacement" if replaced else ""))

    def free(self, concurrency: int) -> int | None:
        """The least loaded actor that is up and has room for another run, or None."""
        key = min(self.up, key=self.load.__getitem__, default=None)
        return key if key is not None and self.load[key] < concurrency else None

    def stop(self, signum: int) -> None:
        for key in self.up:
            self.actors[key].stop.remote(signum)

    def kill(self) -> None:
        for actor in self.actors.values():
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:
                pass
        self.actors.clear()
        self.up.clear()

    def close(self) -> None:
        """Close each actor's agent (its tools' servers, its stores), then end the actors."""
        refs = [self.actors[key].close.remote() for key in self.up]
        try:
            self.ray.wait(refs, num_returns=len(refs), timeout=30)
        except Exception:
            pass
        self.kill()


def _cause(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    return str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__


def _drive(ray: Any, pool: _Pool, todo: Iterator[Job], results: Results, tally: Tally,
           concurrency: int, limit: RateLimit | None, stop: list[int], quiet: bool,
           died: type[BaseException], failed: type[BaseException]) -> int | None:
    inflight: dict[Any, tuple[int, Job]] = {}
    again: deque[Job] = deque()
    forced: set[str] = set()
    held: tuple[Job, float] | None = None  # the next job, waiting for the rate limit
    told = False
    exhausted = False
    alone_since: float | None = None  # no actor up: since when

    def say(text: str | None) -> None:
        if text and not quiet:
            tally.note(f"runner batch: {text}")

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
            inflight[ref] = (key, job)
            pool.load[key] += 1
        left = not (exhausted and not again and held is None)
        if not inflight and (stop or not left):
            break
        if not inflight and not pool.up:  # work left, no actor up: wait for a replacement
            if not pool.starting:
                say("no Ray worker left; the inputs not run resume next time")
                break
            alone_since = alone_since or time.monotonic()
            if time.monotonic() - alone_since > UP_S:
                say(f"no Ray worker came up in {UP_S:.0f} s; the inputs not run resume "
                    f"next time")
                break
        else:
            alone_since = None
        waiting = [*inflight, *pool.starting]
        timeout = WAIT_S  # a result frees a slot; a start due for the rate wakes it sooner
        if held is not None and pool.free(concurrency) is not None:
            timeout = max(0.0, min(WAIT_S, held[1] - time.monotonic()))
        if not waiting:
            time.sleep(timeout)
            continue
        ready, rest = ray.wait(waiting, num_returns=1, timeout=timeout)
        if ready and rest:
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            ready += more
        for ref in ready:
            if ref in pool.starting:
                say(pool.started(ref))
                continue
            key, job = inflight.pop(ref)
            if key in pool.load:
                pool.load[key] -= 1
            try:
                line = ray.get(ref)
            except died:
                say(pool.died(key))
                if not stop:
                    again.append(job)  # resumes elsewhere, from its checkpoint
                    forced.add(job.id)
                continue
            except failed as exc:  # the actor could not even answer: this input's line
                line = _error_line(job, "internal_error", _cause(exc), pool.secrets)
            if line is not None and results.write(line):
                tally.add(line)
    return stop[0] if stop else None
