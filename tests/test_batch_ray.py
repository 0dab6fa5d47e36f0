"""`runner batch --engine ray` on a real local Ray cluster: a head (no CPU: it schedules
nothing) and two worker nodes of one CPU each, started by the tests (`ray start`) and
stopped at the end. Results stream back to the one results file, one line per input; a
worker killed with SIGKILL mid-batch has its inputs finished elsewhere, resumed from
checkpoints shared through Redis, with no duplicate, no loss, and no finished run run
again (the scripted server counts model calls per input)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import RedisServer, wait_for
from runner.testing import ScriptedOpenAIServer
from test_batch import Steps, lines_in, results, scripted_spec, tasks, write_inputs

pytest.importorskip("ray")
RAY = shutil.which("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """The address of a head and two one-CPU workers; every Ray process stopped after."""
    assert RAY, "the ray command is not installed"
    tmp = tempfile.mkdtemp(prefix="rb", dir="/tmp")  # Ray's socket paths must stay short
    port = _free_port()
    # a token of its own, given to every node and to this process (the driver)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "RAY_USAGE_STATS_ENABLED": "0"}
    saved = {k: os.environ.get(k) for k in auth}
    os.environ.update(auth)
    env = {**os.environ, "OPENAI_API_KEY": "sk-test-not-a-real-key"}
    common = ["--disable-usage-stats", f"--temp-dir={tmp}", "--node-ip-address=127.0.0.1"]

    def ray(*args: str) -> None:
        subprocess.run([RAY, *args], env=env, check=True, timeout=120,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    try:
        ray("start", "--head", f"--port={port}", "--num-cpus=0", "--include-dashboard=false",
            *common)
        for _ in range(2):
            ray("start", f"--address=127.0.0.1:{port}", "--num-cpus=1", *common)
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, timeout=120,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(tmp, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_a_batch_on_two_ray_workers_writes_every_result_once(
        tmp_path: Path, server: ScriptedOpenAIServer, cluster: str) -> None:
    from runner.serve import batch_ray
    from runner.serve.batch import batch_main

    spec = scripted_spec(tmp_path, server)
    server.responder = steps = Steps(steps=2, delay=0.02)
    inputs = write_inputs(tmp_path / "in.jsonl", tasks(40))
    pids: list[int] = []
    batch_ray.ON_WORKERS.append(pids.extend)
    try:
        code = batch_main(str(spec), str(inputs), str(tmp_path / "out.jsonl"),
                          concurrency=5, engine="ray", address=cluster, quiet=True)
    finally:
        batch_ray.ON_WORKERS.remove(pids.extend)
    assert code == 0
    lines = results(tmp_path / "out.jsonl")
    assert sorted(x["id"] for x in lines) == sorted(f"q{i}" for i in range(40))
    assert all(x["status"] == "finished" and x["answer"] == f"answer-{x['id']}" for x in lines)
    assert steps.calls == {f"q{i}": 2 for i in range(40)}
    assert len(set(pids)) == 2 and os.getpid() not in pids  # one actor per worker CPU


def test_a_worker_killed_mid_batch_loses_and_repeats_nothing(
        tmp_path: Path, server: ScriptedOpenAIServer, cluster: str,
        redis_server: RedisServer) -> None:
    from runner.serve import batch_ray
    from runner.serve.batch import batch_main

    n, per_actor = 30, 4
    spec = scripted_spec(tmp_path, server, checkpoint={"backend": "redis",
                                                       "url": redis_server.url(3)})
    server.responder = steps = Steps(steps=3, delay=0.1)
    inputs = write_inputs(tmp_path / "in.jsonl", tasks(n))
    out = tmp_path / "out.jsonl"
    pids: list[int] = []
    seen: dict[str, Any] = {}

    def killer() -> None:
        def mid_batch() -> bool:
            done = {x["id"] for x in lines_in(out)}
            return bool(pids) and len(done) >= 4 and any(
                c >= 2 for i, c in steps.calls.items() if i not in done)

        wait_for(mid_batch, 120, "a batch mid-run on Ray")
        seen["lines"] = {x["id"] for x in lines_in(out)}
        seen["calls"] = Counter(steps.calls)
        os.kill(pids[0], signal.SIGKILL)

    batch_ray.ON_WORKERS.append(pids.extend)
    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        code = batch_main(str(spec), str(inputs), str(out), concurrency=per_actor,
                          engine="ray", address=cluster, quiet=True)
    finally:
        batch_ray.ON_WORKERS.remove(pids.extend)
    thread.join(30)
    assert "lines" in seen, "the worker was never killed"
    assert code == 0
    ids = [x["id"] for x in results(out)]
    assert len(ids) == len(set(ids)) == n  # no duplicate, no loss
    assert all(x["status"] == "finished" for x in results(out))
    for i in seen["lines"]:  # finished before the kill: never run again
        assert steps.calls[i] == 3, i
    # a run cut short resumed from its checkpoint in Redis: at most the call in flight on
    # the killed worker is made again, so at most `per_actor` extra calls in all
    assert all(steps.calls[i] <= 4 for i in ids), steps.calls
    assert sum(steps.calls[i] - 3 for i in ids) <= per_actor, steps.calls
    resumed = [i for i in ids if seen["calls"][i] >= 2 and i not in seen["lines"]]
    assert resumed and all(steps.calls[i] <= 4 for i in resumed)
