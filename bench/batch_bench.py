"""`runner batch` throughput: runs per second at each concurrency, in one process and on a
local Ray cluster (a head without CPUs and two workers of one CPU each), against the
scripted server answering every call after a fixed model latency; and a kill -9 of one Ray
worker in the middle of a batch, with what came of it.

    python3 bench/batch_bench.py                           # local: concurrency 1/10/50/200
    python3 bench/batch_bench.py --concurrency 10,50 --latency 0.05 --repeat 3
    python3 bench/batch_bench.py --ray                     # also on Ray, two workers
    python3 bench/batch_bench.py --ray-only --kill         # ... and kill -9 a worker

Each run is one model call (a final answer) through LiteLLM, with the defaults on (a trace
file and a checkpoint per step). The server is its own process; the batch runs in this one
(warmed up first, so LiteLLM's import is not counted) or, with --ray, in the cluster's
workers. CPU is this process's (the driver's, with --ray). Medians of --repeat batches.

--kill: `runner batch --engine ray` in a process of its own on 1000 inputs of two model
calls each (a calculator step, then the answer; SQLite checkpoints, shared by the workers
on this machine), one worker killed with SIGKILL once a quarter of the lines are written;
counted: lines, duplicates, losses, and the model calls made again (by input, from a
server in this process that counts them).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import shutil
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


class _Stderr:
    """Stands for stderr during a batch: drops what is written, notes when the Ray driver
    says its workers are up."""

    def __init__(self) -> None:
        self.up: float | None = None
        self._null = open(os.devnull, "w")  # for what asks for a file descriptor (Ray)

    def fileno(self) -> int:
        return self._null.fileno()

    def close(self) -> None:
        self._null.close()

    def write(self, text: str) -> int:
        if self.up is None and "workers, up to" in text:
            self.up = time.perf_counter()
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def one_batch(spec: Path, n: int, concurrency: int, tag: str, engine: str = "local",
              address: str | None = None) -> tuple[float, float, float]:
    """(runs/s, runs/s once the workers are up, driver CPU ms per run) of a batch of n
    inputs (the second is the first for the local engine)."""
    from runner.serve.batch import batch_main

    folder = spec.parent
    src = inputs(folder, n, tag)
    out = folder / f"out-{tag}.jsonl"
    saved, sys.stderr = sys.stderr, _Stderr()  # type: ignore[assignment]
    try:
        start, cpu = time.perf_counter(), time.process_time()
        code = batch_main(str(spec), str(src), str(out), concurrency=concurrency,
                          engine=engine, address=address, quiet=engine == "local")
        end, cpu = time.perf_counter(), time.process_time() - cpu
        up = sys.stderr.up or start  # type: ignore[attr-defined]
    finally:
        sys.stderr.close()
        sys.stderr = saved
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert code == 0 and len(lines) == n, (code, len(lines))
    return n / (end - start), n / (end - up), cpu / n * 1000


def local(spec: Path, levels: list[int], latency: float, repeat: int) -> None:
    one_batch(spec, 20, 10, "warm")
    rows = []
    for c in levels:
        n = max(100, min(4000, c * 10))
        got = [one_batch(spec, n, c, f"c{c}-{r}") for r in range(repeat)]
        rate = statistics.median(g[0] for g in got)
        rows.append([str(c), str(n), f"{rate:.1f}", f"{min(c / latency, 1e9):.0f}",
                     f"{statistics.median(g[2] for g in got):.2f}"])
    print(f"local engine, one process, {latency * 1000:.0f} ms model latency")
    table(["concurrency", "runs", "runs/s", "ideal", "CPU ms/run"], rows)


def on_ray(spec: Path, levels: list[int], latency: float, repeat: int, kill: bool) -> None:
    from runner.testing.ray_cluster import LocalCluster

    cluster = LocalCluster(workers=2)
    os.environ.update(cluster.auth)  # this process drives it
    try:
        if kill:
            kill_one(cluster.address, latency)
        if not levels:
            return
        one_batch(spec, 20, 10, "ray-warm", "ray", cluster.address)
        rows = []
        for c in levels:
            n = max(200, min(4000, c * 20))
            got = [one_batch(spec, n, c, f"ray-c{c}-{r}", "ray", cluster.address)
                   for r in range(repeat)]
            rows.append([str(c), str(n), f"{statistics.median(g[0] for g in got):.1f}",
                         f"{statistics.median(g[1] for g in got):.1f}",
                         f"{2 * c / latency:.0f}",
                         f"{statistics.median(g[2] for g in got):.2f}"])
        print(f"Ray engine, two workers (one CPU each), concurrency per worker, "
              f"{latency * 1000:.0f} ms model latency; runs/s over the whole batch (each "
              f"batch starts its actors) and from the moment its workers are up; CPU is the "
              f"driver's")
        table(["concurrency", "runs", "runs/s", "runs/s up", "ideal", "driver CPU ms/run"],
              rows)
    finally:
        cluster.stop()


def kill_one(address: str, latency: float, n: int = 1000, per_worker: int = 20) -> None:
    """kill -9 of one Ray worker a quarter of the way through a batch of `n` two-step runs;
    lines, duplicates, losses and repeated model calls."""
    import re
    import threading
    from collections import Counter

    from runner.testing import ScriptedOpenAIServer
    from runner.testing.server import REACT_MARK

    calls: Counter[str] = Counter()
    lock = threading.Lock()

    def respond(body: dict[str, object]) -> dict[str, object]:
        text = json.dumps(body["messages"])
        ident = re.findall(r"task-(\d+)", text)[-1]
        with lock:
            calls[ident] += 1
        reply = ("Final Answer: ok" if REACT_MARK in text
                 else f"{REACT_MARK}\nAction: calculator[1+1]")
        return {"content": reply, "delay": latency}

    server = ScriptedOpenAIServer().start()
    server.responder = respond
    folder = Path(tempfile.mkdtemp(prefix="batch-kill-"))
    try:
        (folder / "pyproject.toml").write_text("")
        (folder / "agent.yaml").write_text(
            "version: 1\nname: killed\nmemory: {backend: none}\nloop: {style: react}\n"
            f"tools: [calculator]\nmodel: {{id: openai/scripted, api_base: '{server.url}', "
            "retries: 0}\n")
        (folder / "in.jsonl").write_text("".join(
            json.dumps({"id": str(i), "input": f"task-{i}"}) + "\n" for i in range(n)))
        out = folder / "out.jsonl"
        wall = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "runner", "batch", "agent.yaml",
                                 "in.jsonl", "--out", str(out), "--engine", "ray", "-c",
                                 str(per_worker)], cwd=folder, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "RAY_ADDRESS": address})
        err: list[str] = []
        reader = threading.Thread(target=lambda: err.extend(proc.stderr or ()), daemon=True)
        reader.start()

        def lines() -> list[dict[str, object]]:
            text = out.read_text() if out.exists() else ""
            return [json.loads(x) for x in text.splitlines() if x.endswith("}")]

        pids: list[int] = []
        while proc.poll() is None and not (pids and len(lines()) >= n // 4):
            named = next((x for x in err if "workers, up to" in x), "")
            pids = [int(p) for p in re.findall(r"pid (\d+) on", named)]
            time.sleep(0.01)
        done_before = {str(x["id"]) for x in lines()}
        calls_before = Counter(calls)
        if proc.poll() is not None:
            reader.join(10)
            print(f"the batch ended (exit {proc.returncode}) before the kill:\n"
                  + "".join(err)[-3000:])
            return
        os.kill(pids[0], signal.SIGKILL)
        code = proc.wait(600)
        wall = time.perf_counter() - wall
        reader.join(10)
        ids = [str(x["id"]) for x in lines()]
        again = {i: c - 2 for i, c in calls.items() if c > 2}
        rerun = [i for i in done_before if calls[i] != calls_before[i]]
        print(f"kill -9 of one of two Ray workers (pid {pids[0]}) after {len(done_before)} "
              f"of {n} lines ({per_worker} runs in flight per worker, two model calls a run): "
              f"exit {code}; {len(ids)} lines, {len(ids) - len(set(ids))} duplicates, "
              f"{n - len(set(ids))} lost; {len(again)} inputs made {sum(again.values())} "
              f"model calls again (the calls in flight on the killed worker); finished "
              f"inputs run again: {len(rerun)}; {wall:.1f} s in all")
        print("".join(x for x in err if "died" in x or "replacement" in x).rstrip())
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,10,50,200")
    parser.add_argument("--latency", type=float, default=0.05, help="model latency, s")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--ray", action="store_true", help="also on a local Ray cluster")
    parser.add_argument("--ray-only", action="store_true")
    parser.add_argument("--kill", action="store_true", help="with --ray: kill -9 a worker")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",") if c]
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
            on_ray(spec, levels, args.latency, args.repeat, args.kill)
    finally:
        os.chdir(cwd)
        server.send_signal(signal.SIGINT)
        server.wait(10)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
