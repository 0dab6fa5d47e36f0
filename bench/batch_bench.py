"""`runner batch` throughput: runs per second at each concurrency, in one process and on a
local Ray cluster (a head and two workers, one CPU each), against the scripted server
answering every call after a fixed model latency.

    python3 bench/batch_bench.py                           # local: concurrency 1/10/50/200
    python3 bench/batch_bench.py --concurrency 10,50 --latency 0.05 --repeat 3
    python3 bench/batch_bench.py --ray                     # also on Ray, two workers

Each run is one model call (a final answer) through LiteLLM, with the defaults on (a trace
file and a checkpoint per step). The server is its own process; the batch runs in this one
(warmed up first, so LiteLLM's import is not counted) or, with --ray, in the cluster's
workers. CPU is this process's (the driver's, with --ray). Medians of --repeat batches.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_MODE", "PRODUCTION")
os.environ.setdefault("OPENAI_API_KEY", "sk-bench-not-a-real-key")
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import table  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(latency: float) -> tuple[subprocess.Popen[str], str]:
    item = json.dumps({"content": "Final Answer: ok", "delay": latency})
    proc = subprocess.Popen([sys.executable, "-m", "runner.testing", "--default", item],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def project(folder: Path, url: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text("")
    spec = folder / "agent.yaml"
    spec.write_text("version: 1\nname: batched\nmemory: {backend: none}\n"
                    f"model: {{id: openai/scripted, api_base: '{url}', retries: 0}}\n")
    return spec


def inputs(folder: Path, n: int, tag: str) -> Path:
    path = folder / f"in-{tag}.jsonl"
    path.write_text("".join(json.dumps({"id": f"{tag}-{i}", "input": f"question {i}"}) + "\n"
                            for i in range(n)))
    return path


def one_batch(spec: Path, n: int, concurrency: int, tag: str, engine: str = "local",
              address: str | None = None) -> tuple[float, float, int]:
    """(runs/s, driver CPU ms per run, lines written) of one batch of n inputs."""
    from runner.serve.batch import batch_main

    folder = spec.parent
    src = inputs(folder, n, tag)
    out = folder / f"out-{tag}.jsonl"
    devnull = open(os.devnull, "w")
    saved, sys.stderr = sys.stderr, devnull  # the summary table
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        code = batch_main(str(spec), str(src), str(out), concurrency=concurrency,
                          engine=engine, address=address, quiet=True)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        sys.stderr = saved
        devnull.close()
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert code == 0 and len(lines) == n, (code, len(lines))
    return n / wall, cpu / n * 1000, len(lines)


def local(spec: Path, levels: list[int], latency: float, repeat: int) -> None:
    one_batch(spec, 20, 10, "warm")
    rows = []
    for c in levels:
        n = max(100, min(4000, c * 10))
        got = [one_batch(spec, n, c, f"c{c}-{r}") for r in range(repeat)]
        rate = statistics.median(g[0] for g in got)
        rows.append([str(c), str(n), f"{rate:.1f}", f"{min(c / latency, 1e9):.0f}",
                     f"{statistics.median(g[1] for g in got):.2f}"])
    print(f"local engine, one process, {latency * 1000:.0f} ms model latency")
    table(["concurrency", "runs", "runs/s", "ideal", "CPU ms/run"], rows)


class Cluster:
    """A local Ray cluster: a head and two workers of one CPU each (no dashboard)."""

    def __init__(self) -> None:
        import secrets

        # Ray 2.5x clusters take a token: every node and the driver (inheriting it) share one
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16),
                          RAY_USAGE_STATS_ENABLED="0")
        self.tmp = Path(tempfile.mkdtemp(prefix="rb", dir="/tmp"))
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        common = ["--num-cpus=1", "--disable-usage-stats", f"--temp-dir={self.tmp}"]
        self._ray(["start", "--head", f"--port={self.port}", "--include-dashboard=false",
                   "--node-ip-address=127.0.0.1", *common])
        for _ in range(2):
            self._ray(["start", f"--address={self.address}", "--node-ip-address=127.0.0.1",
                       *common])

    def _ray(self, args: list[str]) -> None:
        subprocess.run([shutil.which("ray") or "ray", *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        subprocess.run([shutil.which("ray") or "ray", "stop", "--force"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(self.tmp, ignore_errors=True)


def on_ray(spec: Path, levels: list[int], latency: float, repeat: int) -> None:
    cluster = Cluster()
    try:
        one_batch(spec, 20, 10, "ray-warm", "ray", cluster.address)
        rows = []
        for c in levels:
            n = max(200, min(4000, c * 20))
            got = [one_batch(spec, n, c, f"ray-c{c}-{r}", "ray", cluster.address)
                   for r in range(repeat)]
            rate = statistics.median(g[0] for g in got)
            rows.append([str(c), str(n), f"{rate:.1f}", f"{2 * c / latency:.0f}",
                         f"{statistics.median(g[1] for g in got):.2f}"])
        print(f"Ray engine, two workers (one CPU each), concurrency per worker, "
              f"{latency * 1000:.0f} ms model latency; each batch starts its actors (the "
              f"wall time includes it); CPU is the driver's")
        table(["concurrency", "runs", "runs/s", "ideal", "driver CPU ms/run"], rows)
    finally:
        cluster.stop()


def actor_pids() -> list[int]:
    """The live processes of the batch's actors (Ray titles them `ray::BatchWorker`)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if f.read().startswith(b"ray::BatchWorker"):
                        found.append(int(entry))
            except OSError:
                continue
    return sorted(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,10,50,200")
    parser.add_argument("--latency", type=float, default=0.05, help="model latency, s")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--ray", action="store_true", help="also on a local Ray cluster")
    parser.add_argument("--ray-only", action="store_true")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    server, url = start_server(args.latency)
    scratch = Path(tempfile.mkdtemp(prefix="batch-bench-"))
    cwd = os.getcwd()
    try:
        spec = project(scratch / "p", url)
        os.chdir(spec.parent)
        load = os.getloadavg()[0]
        print(f"load average before: {load:.2f} on {os.cpu_count()} cores\n")
        if not args.ray_only:
            local(spec, levels, args.latency, args.repeat)
        if args.ray or args.ray_only:
            on_ray(spec, levels, args.latency, args.repeat)
    finally:
        os.chdir(cwd)
        server.send_signal(signal.SIGINT)
        server.wait(10)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
