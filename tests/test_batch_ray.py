"""`runner batch --engine ray` on a real local Ray cluster: a head (no CPU: it schedules
nothing) and two worker nodes of one CPU each, started by the tests (`ray start`) and
stopped at the end, every process of theirs and none other. Results stream back to the one
results file, one line per input; a worker killed with SIGKILL mid-batch has its inputs
finished elsewhere, resumed from checkpoints shared through Redis, with no duplicate, no
loss, and no finished run run again (the scripted server counts model calls per input); a
SIGTERM stops the batch and a rerun finishes it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import RedisServer, wait_for
from runner.testing import ScriptedOpenAIServer
from runner.testing.ray_cluster import LocalCluster, session_processes
from test_batch import Steps, lines_in, results, scripted_spec, tasks, write_inputs

pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """A head and two one-CPU workers for all the tests here; not one of its processes
    outlives them."""
    c = LocalCluster(workers=2, env={"OPENAI_API_KEY": "sk-test-not-a-real-key"})
    try:
        yield c
    finally:
        c.stop()
        assert c.processes() == []


class Batch:
    """`runner batch --engine ray` in its own process (the cluster from $RAY_ADDRESS), its
    stderr read as it comes (the driver names its workers' processes there)."""

    def __init__(self, cluster: LocalCluster, spec: Path, inputs: Path, out: Path,
                 *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runner", "batch", str(spec), str(inputs), "--out",
             str(out), "--engine", "ray", *args], cwd=spec.parent, text=True,
            env={**cluster.env, "RAY_ADDRESS": cluster.address}, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        self.err: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def workers(self) -> list[int]:
        """The actors' process ids, once the driver has named them."""
        line = next((x for x in self.err if "workers, up to" in x), None)
        return [int(p) for p in re.findall(r"pid (\d+) on", line)] if line else []

    def wait(self, timeout: float = 300) -> int:
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(30)
        self._reader.join(30)
        return code


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


def test_a_batch_on_two_ray_workers_writes_every_result_once(
        tmp_path: Path, server: ScriptedOpenAIServer, cluster: LocalCluster) -> None:
    spec = scripted_spec(tmp_path, server)
    server.responder = steps = Steps(steps=2, delay=0.02)
    inputs = write_inputs(tmp_path / "in.jsonl", tasks(40))
    batch = Batch(cluster, spec, inputs, tmp_path / "out.jsonl", "-c", "5")
    assert batch.wait() == 0, batch.stderr
    lines = results(tmp_path / "out.jsonl")
    assert sorted(x["id"] for x in lines) == sorted(f"q{i}" for i in range(40))
    assert all(x["status"] == "finished" and x["answer"] == f"answer-{x['id']}" for x in lines)
    assert steps.calls == {f"q{i}": 2 for i in range(40)}
    assert "finished" in batch.stderr and "runs/s" in batch.stderr
    workers = batch.workers()
    assert len(set(workers)) == 2, batch.stderr  # one actor per worker CPU, none on the head
    wait_for(lambda: not any(alive(pid) for pid in workers), 60, "the actors to end")


def test_a_worker_killed_mid_batch_loses_and_repeats_nothing(
        tmp_path: Path, server: ScriptedOpenAIServer, cluster: LocalCluster,
        redis_server: RedisServer) -> None:
    n, per_actor = 30, 4
    spec = scripted_spec(tmp_path, server, checkpoint={"backend": "redis",
                                                       "url": redis_server.url(3)})
    server.responder = steps = Steps(steps=3, delay=0.1)
    inputs = write_inputs(tmp_path / "in.jsonl", tasks(n))
    out = tmp_path / "out.jsonl"
    batch = Batch(cluster, spec, inputs, out, "-c", str(per_actor))

    def mid_batch() -> bool:  # some runs done, and one without a line past its first step
        done = {x["id"] for x in lines_in(out)}
        return bool(batch.workers()) and len(done) >= 4 and any(
            c >= 2 for i, c in steps.calls.items() if i not in done)

    wait_for(mid_batch, 180, "a batch mid-run on Ray")
    before = {x["id"] for x in lines_in(out)}
    calls_before = Counter(steps.calls)
    victim = batch.workers()[0]
    assert victim in cluster.processes()  # an actor of this cluster, no one else's
    os.kill(victim, signal.SIGKILL)
    assert batch.wait() == 0, batch.stderr
    assert f"Ray worker pid {victim} on " in batch.stderr and "died" in batch.stderr
    ids = [x["id"] for x in results(out)]
    assert len(ids) == len(set(ids)) == n  # no duplicate, no loss
    assert all(x["status"] == "finished" for x in results(out))
    for i in before:  # finished before the kill: never run again
        assert steps.calls[i] == 3, i
    # a run cut short resumed from its checkpoint in Redis: at most the call in flight on
    # the killed worker is made again, so at most `per_actor` extra calls in all
    assert all(steps.calls[i] <= 4 for i in ids), steps.calls
    assert sum(steps.calls[i] - 3 for i in ids) <= per_actor, steps.calls
    resumed = [i for i in ids if calls_before[i] >= 2 and i not in before]
    assert resumed


def test_sigterm_stops_a_ray_batch_and_a_rerun_finishes_it(
        tmp_path: Path, server: ScriptedOpenAIServer, cluster: LocalCluster) -> None:
    spec = scripted_spec(tmp_path, server)
    server.responder = steps = Steps(steps=3, delay=0.2)
    inputs = write_inputs(tmp_path / "in.jsonl", tasks(20))
    out = tmp_path / "out.jsonl"
    batch = Batch(cluster, spec, inputs, out, "-c", "3")
    wait_for(lambda: batch.workers() and sum(steps.calls.values()) >= 8, 180,
             "runs past their first step")
    batch.proc.send_signal(signal.SIGTERM)
    assert batch.wait() == 143, batch.stderr
    assert "not run (SIGTERM)" in batch.stderr
    stopped = {x["id"] for x in lines_in(out)}
    assert len(stopped) < 20 and all(x["status"] == "finished" for x in lines_in(out))
    calls_before = Counter(steps.calls)

    again = Batch(cluster, spec, inputs, out, "-c", "3")
    assert again.wait() == 0, again.stderr
    assert sorted(x["id"] for x in results(out)) == sorted(f"q{i}" for i in range(20))
    for i in stopped:
        assert steps.calls[i] == 3, i  # done: not asked again
    for i in calls_before:  # stopped at a step boundary, checkpointed: resumed, not redone
        assert steps.calls[i] <= 4, (i, calls_before[i], steps.calls[i])


def test_without_an_address_a_local_cluster_runs_the_batch_and_stops_after(
        tmp_path: Path, cluster: LocalCluster) -> None:
    """Not the cluster `ray start` left running here (the fixture's): one of its own, whose
    processes all end with the batch."""
    from test_batch import project

    spec = project(tmp_path, {"model": {"id": "fake/echo"}})
    inputs = write_inputs(tmp_path / "in.jsonl", tasks(6))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    proc = subprocess.Popen([sys.executable, "-m", "runner", "batch", str(spec), str(inputs),
                             "--out", "out.jsonl", "--engine", "ray", "-c", "2"],
                            cwd=tmp_path, env={**env, "RAY_USAGE_STATS_ENABLED": "0"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "on Ray (a local cluster)" in err
    assert sorted(x["id"] for x in results(tmp_path / "out.jsonl")) == sorted(
        f"q{i}" for i in range(6))
    workers = [int(p) for p in re.findall(r"pid (\d+) on", err)]
    assert workers and not set(workers) & set(cluster.processes())

    def left() -> list[int]:  # the local cluster's processes: in the batch's session
        return session_processes({proc.pid})

    wait_for(lambda: not left(), 60, "the local cluster to stop")
