"""`runner batch --engine ray` on a real Ray cluster started here: a head and two worker
nodes (`ray start`, one CPU each), the agents on the scripted OpenAI-compatible server."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import wait_for
from runner.testing import ScriptedOpenAIServer

_BESIDE = Path(sys.executable).with_name("ray")  # the ray of this environment first
RAY = str(_BESIDE) if _BESIDE.exists() else (shutil.which("ray") or "ray")
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(16)}
"""Every process of the cluster, and each driver, shares one token (Ray 2.5x requires one)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # Ray's socket paths must stay short
    port = _free_port()
    env = {**os.environ, **RAY_ENV, "OPENAI_API_KEY": "sk-test",
           "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    common = ["--num-cpus=1", "--disable-usage-stats", "--node-ip-address=127.0.0.1"]
    try:
        subprocess.run([RAY, "start", "--head", f"--port={port}", "--include-dashboard=false",
                        f"--temp-dir={temp}", *common], env=env, check=True,
                       capture_output=True, timeout=180)
        for _ in range(2):
            subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}", *common], env=env,
                           check=True, capture_output=True, timeout=180)
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=180)
        shutil.rmtree(temp, ignore_errors=True)


def project(folder: Path, server: ScriptedOpenAIServer, n: int) -> tuple[Path, Path]:
    (folder / "pyproject.toml").write_text("")
    spec = {"version": 1, "name": "echo", "description": "Answers with its input.",
            "model": {"id": "openai/scripted", "api_base": server.url},
            "loop": {"style": "react"}, "memory": {"backend": "none"}}
    (folder / "echo.yaml").write_text(yaml.safe_dump(spec))
    (folder / "in.jsonl").write_text("".join(
        json.dumps({"id": f"q{i}", "input": f"item {i}"}) + "\n" for i in range(n)))
    return folder / "echo.yaml", folder / "in.jsonl"


def answering(server: ScriptedOpenAIServer, delay: float) -> Counter[str]:
    """Answer each run with its input after `delay`; count the calls per input."""
    calls: Counter[str] = Counter()
    lock = threading.Lock()

    def respond(body: dict[str, Any]) -> Any:
        item = json.dumps(body["messages"]).split("Question: ")[-1].split("\\n")[0]
        with lock:
            calls[item] += 1
        return {"delay": delay, "content": f"Final Answer: {item}"}

    server.responder = respond
    return calls


def lines(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def batch(spec: Path, inputs: Path, out: Path, address: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "runner", "batch", str(spec), str(inputs),
                             "--out", str(out), "--engine", "ray", "--address", address,
                             "--concurrency", "4"], cwd=spec.parent, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **RAY_ENV})


def test_a_batch_runs_on_the_cluster_one_line_per_input(
        cluster: str, tmp_path: Path, server: ScriptedOpenAIServer) -> None:
    spec, inputs = project(tmp_path, server, 30)
    calls = answering(server, 0.05)
    proc = batch(spec, inputs, tmp_path / "out.jsonl", cluster)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    done = lines(tmp_path / "out.jsonl")
    assert sorted(d["id"] for d in done) == sorted(f"q{i}" for i in range(30))
    assert all(d["status"] == "finished" and d["answer"] == f"item {d['id'][1:]}"
               for d in done)
    assert set(calls.values()) == {1}  # every input ran once
    assert "finished" in err and "30" in err  # the summary


def test_a_worker_killed_mid_batch_loses_nothing_and_duplicates_nothing(
        cluster: str, tmp_path: Path, server: ScriptedOpenAIServer) -> None:
    spec, inputs = project(tmp_path, server, 40)
    calls = answering(server, 0.3)
    out = tmp_path / "out.jsonl"
    proc = batch(spec, inputs, out, cluster)
    try:
        wait_for(lambda: out.exists() and len(lines(out)) >= 6, 240, "the first results")
        actors = subprocess.run(["pgrep", "-f", "ray::Worker"], capture_output=True,
                                text=True).stdout.split()
        assert actors, "no actor process found"
        os.kill(int(actors[0]), signal.SIGKILL)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    done = lines(out)
    assert sorted(d["id"] for d in done) == sorted(f"q{i}" for i in range(40))  # once each
    assert all(d["status"] == "finished" for d in done)
    # only the runs in flight on the killed actor were asked again
    assert sum(n - 1 for n in calls.values()) <= 8, calls
