"""A real Ray cluster on this machine for tests and benchmarks of `runner batch --engine ray`:
a head without CPUs (it schedules nothing) and `workers` nodes of one CPU each on 127.0.0.1.

    from runner.testing.ray_cluster import LocalCluster

    cluster = LocalCluster(workers=2)
    try:
        subprocess.run([... "runner", "batch", ..., "--engine", "ray"],
                       env={**cluster.env, "RAY_ADDRESS": cluster.address})
    finally:
        cluster.stop()

Each node is a `ray start --block` in a session of its own, so `stop` ends exactly the
processes of those sessions (`ray stop` would end every Ray process on the machine). The
nodes and their drivers share a token of their own (`auth`: Ray 2.5x asks every process of a
cluster for the same one). Imports nothing of Ray: it runs the `ray` command.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["LocalCluster", "session_processes"]

START_S = 180.0
"""How long a node may take to say it is up (a loaded 2-core machine is slow)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalCluster:
    """A head and `workers` one-CPU nodes, started now (see the module)."""

    def __init__(self, workers: int = 2, env: dict[str, str] | None = None) -> None:
        ray = shutil.which("ray")
        if ray is None:
            raise RuntimeError("the `ray` command is not installed (pip install ray)")
        self.ray = ray
        self.tmp = Path(tempfile.mkdtemp(prefix="rb", dir="/tmp"))  # Ray's socket paths are short
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                     "RAY_USAGE_STATS_ENABLED": "0"}
        """What a driver of this cluster needs in its environment."""
        self.env = {**os.environ, **(env or {}), **self.auth}
        """The environment the nodes run with, and so their actors (`env` added to this
        process's): a driver's too, if it likes."""
        self.nodes: list[subprocess.Popen[bytes]] = []
        try:
            self._node("head", "--head", f"--port={self.port}", "--num-cpus=0",
                       "--include-dashboard=false")
            for n in range(workers):  # one at a time: a node gives up if it starts slowly
                self._node(f"worker{n}", f"--address={self.address}", "--num-cpus=1")
        except BaseException:
            self.stop()
            raise

    def _node(self, name: str, *args: str) -> None:
        """Start a node and wait for it; Ray gives a node 30 s to register, which a loaded
        machine can miss, so one that gave up is started again, once."""
        for attempt in (1, 2):
            log = self.tmp / f"{name}-{attempt}.log"
            with open(log, "wb") as f:
                node = subprocess.Popen(
                    [self.ray, "start", "--block", "--disable-usage-stats",
                     f"--temp-dir={self.tmp}", "--node-ip-address=127.0.0.1", *args],
                    env=self.env, stdout=f, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True)
            self.nodes.append(node)
            deadline = time.monotonic() + START_S
            while (node.poll() is None and b"Ray runtime started" not in log.read_bytes()
                   and time.monotonic() < deadline):
                time.sleep(0.1)
            if node.poll() is None and b"Ray runtime started" in log.read_bytes():
                return
            _signal_group(node.pid, signal.SIGKILL)  # what it left of itself
        raise RuntimeError(f"ray node {name} did not start:\n"
                           + log.read_text(errors="replace")[-3000:])

    def processes(self) -> list[int]:
        """The live processes of the cluster's sessions (zombies left out)."""
        return session_processes({node.pid for node in self.nodes})

    def stop(self, grace_s: float = 5.0) -> list[int]:
        """End every process of the cluster (SIGTERM, then SIGKILL after `grace_s`); the ones
        that had to be killed."""
        for node in self.nodes:
            _signal_group(node.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.1)
        stubborn = self.processes()
        for pid in stubborn:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for node in self.nodes:
            try:
                node.wait(5)
            except subprocess.TimeoutExpired:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)
        return stubborn


def session_processes(sessions: set[int]) -> list[int]:
    """The live processes (zombies left out) whose session id is one of `sessions`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) in sessions and fields[0] not in (b"Z", b"X"):
                found.append(int(entry))
    return found


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass
