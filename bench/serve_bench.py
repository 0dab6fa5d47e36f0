"""What `runner serve` adds to a run: latency per request over a direct `Agent.run` of the
same agent (p50/p99), and requests per second at many concurrent clients.

    python3 bench/serve_bench.py                      # 300 sequential, 2000 at 100 clients
    python3 bench/serve_bench.py --requests 500 --clients 10,100 --total 3000

The agent answers on the `fake/echo` model (no model time: what is measured is the runner
and the server), with its defaults on: a trace file and a checkpoint per run, in a scratch
project. The server is a real `runner serve` process on 127.0.0.1; the client (aiohttp, in
this process) shares the machine's cores with it, so the throughput is a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import table  # noqa: E402

SPEC = """version: 1
name: echoer
description: Repeats the question back.
model: {id: fake/echo}
memory: {backend: none}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


async def direct(project: Path, n: int) -> list[float]:
    from runner import Agent, load_spec

    os.chdir(project)
    async with Agent(load_spec(project / "agents" / "echoer.yaml")) as agent:
        for _ in range(20):
            await agent.run("warm up")
        times = []
        for i in range(n):
            t = time.perf_counter()
            result = await agent.run(f"question {i}")
            times.append(time.perf_counter() - t)
            assert result.ok, result.error
    return times


async def sequential(url: str, n: int, path: str, body: dict) -> list[float]:
    async with aiohttp.ClientSession(url) as http:
        async def post() -> None:
            async with http.post(path, json=body) as r:
                r.raise_for_status()
                await r.read()

        for _ in range(20):
            await post()
        times = []
        for _ in range(n):
            t = time.perf_counter()
            await post()
            times.append(time.perf_counter() - t)
    return times


async def concurrent(url: str, clients: int, total: int) -> tuple[float, int]:
    """Seconds for `total` requests from `clients` clients at once, and how many failed."""
    failed = 0
    queue = iter(range(total))
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(url, connector=connector) as http:
        async def client() -> None:
            nonlocal failed
            for i in queue:
                async with http.post("/v1/agents/echoer/runs", json={"input": f"q{i}"}) as r:
                    body = await r.json()
                failed += r.status != 200 or body["status"] != "finished"

        t = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return time.perf_counter() - t, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="sequential requests")
    parser.add_argument("--clients", default="100", help="concurrent clients (comma list)")
    parser.add_argument("--total", type=int, default=2000, help="requests per client count")
    args = parser.parse_args()

    project = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    (project / "pyproject.toml").write_text("")
    (project / "agents").mkdir()
    (project / "agents" / "echoer.yaml").write_text(SPEC)

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "runner", "serve", "agents", "--port",
                               str(port), "--max-runs", "1000"], cwd=project,
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        base = asyncio.run(direct(project, args.requests))
        runs = asyncio.run(sequential(url, args.requests, "/v1/agents/echoer/runs",
                                      {"input": "question"}))
        chat = asyncio.run(sequential(url, args.requests, "/v1/chat/completions", {
            "model": "echoer", "messages": [{"role": "user", "content": "question"}]}))
        rows = [["direct Agent.run", f"{pct(base, .5):.2f}", f"{pct(base, .99):.2f}", "", ""]]
        for name, times in (("POST /v1/agents/echoer/runs", runs),
                            ("POST /v1/chat/completions", chat)):
            rows.append([name, f"{pct(times, .5):.2f}", f"{pct(times, .99):.2f}",
                         f"+{pct(times, .5) - pct(base, .5):.2f}",
                         f"+{pct(times, .99) - pct(base, .99):.2f}"])
        print(f"{args.requests} sequential requests, one client (ms)")
        table(["path", "p50", "p99", "added p50", "added p99"], rows)
        print()
        rows = []
        for clients in (int(c) for c in args.clients.split(",")):
            wall, failed = asyncio.run(concurrent(url, clients, args.total))
            rows.append([str(clients), str(args.total), f"{wall:.2f}",
                         f"{args.total / wall:.0f}", str(failed)])
        print("throughput, POST /v1/agents/echoer/runs")
        table(["clients", "requests", "wall s", "requests/s", "failed"], rows)
        print(f"(median of direct runs: {statistics.median(base) * 1000:.2f} ms)")
    finally:
        server.terminate()
        server.wait(60)


if __name__ == "__main__":
    main()
