"""What an MCP server costs an agent: start time, per-call overhead, orphans after kill -9,
memory and import time, each next to the official `mcp` SDK used on its own.

    export LITELLM_LOCAL_MODEL_COST_MAP=True
    python3 bench/mcp_bench.py                    # about 2 minutes
    python3 bench/mcp_bench.py --calls 100 --runs 3 --skip orphans,memory

Servers: tests/mcp_servers/faulty.py (an SDK MCPServer; tool `add`) and the published
mcp-server-time (tool `get_current_time`), both over stdio. The SDK client is what
`mcp.Client(StdioServerParameters(...))` builds, with the server's stderr sent to /dev/null
(the runner reads it into a pipe of its own). Everything is written under a private
temporary folder (project roots with an empty pyproject.toml), removed at the end.

1. start: from `runner.Agent(spec)` to its tools listed (the servers start in the agent's
   constructor), against the SDK's client entered and `list_tools` answered; an agent with
   four faulty.py entries (started together) against one. Median of --runs, the cases taken
   in turn, after one unmeasured start of each (imports paid).
2. call: --calls sequential calls of the same tool, (a), (b) and (c) in turn, each on a server
   of its own: (a) SDK `Client.call_tool` in one event loop, (b) `runner.mcp_client.Connection
   .call` (the crossing to the host loop and back), (c) the runner tool path, `run_tool(tool,
   parse_arguments(tool, {...}), ToolContext(), 30)` on the tool an Agent built; (d) a whole
   ReAct step of an agent on the fake/script model whose replies call the tool --calls times
   (each with another input: the same one thrice is a detected loop), timed from one model
   call to the next, against the same agent calling the built-in calculator.
3. orphans: `python -m runner run agent.yaml q` calling faulty.py's `slow` on a server in
   grandchild mode, SIGKILLed mid-call; after 2 s, how many of guard, server and grandchild
   are alive (state not Z in /proc). The same for a plain SDK client process (no guard).
4. memory and imports: peak RSS (getrusage, and /proc VmHWM) of a fresh process holding one
   agent with one stdio server (after one call), against the same agent with the calculator;
   the import time of runner.mcp_client and mcp (timed fresh interpreters, -X importtime).

Timings depend on the machine and its load (the header prints the load average); no figure
is checked. Survivors of section 3 are killed by pid before the script ends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import yaml  # noqa: E402
from _table import table  # bench/_table.py (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
DEVNULL = open(os.devnull, "w")
FAULTY = str(ROOT / "tests" / "mcp_servers" / "faulty.py")
# the real script, not a pyenv shim (a shell script that would add its own start-up time)
_TIME_NEXT_TO_PYTHON = Path(sys.executable).with_name("mcp-server-time")
TIME_CMD = str(_TIME_NEXT_TO_PYTHON) if _TIME_NEXT_TO_PYTHON.exists() else (
    shutil.which("mcp-server-time") or "mcp-server-time")


class Server:
    """One server program as the runner and the SDK each start it, and one tool call."""

    def __init__(self, label: str, name: str, command: str, args: list[str], tool: str,
                 arguments: Callable[[int], dict[str, Any]]) -> None:
        self.label, self.name, self.command, self.args = label, name, command, args
        self.tool, self.arguments = tool, arguments

    def action(self, i: int) -> str:
        """The i-th ReAct action (inputs differ: the same input thrice is a detected loop)."""
        return f"{self.name}__{self.tool}[{json.dumps(self.arguments(i))}]"

    def entry(self, name: str | None = None) -> dict[str, Any]:
        return {"mcp": {"name": name or self.name, "command": self.command, "args": self.args}}

    def sdk_client(self) -> Any:
        """What `mcp.Client(StdioServerParameters(...))` builds, the server's stderr (warnings
        that would fill the table) sent to /dev/null instead of the bench's stderr."""
        from mcp import Client, StdioServerParameters
        from mcp.client.stdio import stdio_client

        params = StdioServerParameters(command=self.command, args=self.args)
        return Client(stdio_client(params, errlog=DEVNULL))


def _zones() -> list[str]:
    import zoneinfo

    return sorted(z for z in zoneinfo.available_timezones() if "/" in z
                  and not z.startswith(("posix/", "right/")))


ZONES = _zones()
SERVERS = [
    Server("faulty.py", "f", sys.executable, [FAULTY], "add", lambda i: {"a": i, "b": 1}),
    Server("mcp-server-time", "t", TIME_CMD, ["--local-timezone", "UTC"], "get_current_time",
           lambda i: {"timezone": ZONES[i % len(ZONES)]}),
]


# --------------------------------------------------------------------------- helpers


def project(parent: Path, name: str) -> Path:
    """A private project root (an empty pyproject.toml) for specs and runs."""
    root = parent / name
    root.mkdir()
    (root / "pyproject.toml").write_text("")
    return root


def write_spec(root: Path, tools: list[Any], replies: list[str] | None = None,
               max_iterations: int = 8, trace: bool = False) -> Path:
    data = {"version": 1, "name": "mcpbench",
            "model": {"id": "fake/script", "options": {"replies": replies or ["Final Answer: ok"]}},
            "loop": {"style": "react", "max_iterations": max_iterations},
            "tools": tools, "memory": {"backend": "none"},
            "trace": {"enabled": trace}, "checkpoint": {"enabled": trace}}
    path = root / f"agent{len(list(root.glob('agent*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def build_agent(path: Path, **kw: Any) -> Any:
    import runner

    return runner.Agent(runner.load_spec(path), checkpoints=False, **kw)


def close_agent(agent: Any) -> None:
    asyncio.run(agent.close())


def stats_ms(samples: list[float]) -> dict[str, float]:
    """Mean, p50, p95 and min of samples in seconds, in ms."""
    ms = sorted(s * 1000 for s in samples)
    p95 = statistics.quantiles(ms, n=100)[94] if len(ms) > 1 else ms[0]
    return {"mean": statistics.fmean(ms), "p50": statistics.median(ms), "p95": p95,
            "min": ms[0]}


# --------------------------------------------------------------------------- 1. start


def start_runner(path: Path) -> float:
    """Seconds from Agent construction to its tools listed (the constructor waits for them)."""
    t0 = time.perf_counter()
    agent = build_agent(path)
    elapsed = time.perf_counter() - t0
    close_agent(agent)
    return elapsed


def start_sdk(server: Server) -> float:
    async def once() -> float:
        t0 = time.perf_counter()
        async with server.sdk_client() as client:
            listed = await client.list_tools()
            elapsed = time.perf_counter() - t0
        assert any(t.name == server.tool for t in listed.tools)
        return elapsed

    return asyncio.run(once())


def bench_start(tmp: Path, runs: int) -> None:
    root = project(tmp, "start")
    calculator = write_spec(root, ["calculator"])
    four = write_spec(root, [SERVERS[0].entry(f"f{i}") for i in range(4)])
    cases: dict[str, Callable[[], float]] = {"calculator": partial(start_runner, calculator),
                                             "four": partial(start_runner, four)}
    for server in SERVERS:
        cases[f"{server.name} runner"] = partial(start_runner, write_spec(root, [server.entry()]))
        cases[f"{server.name} sdk"] = partial(start_sdk, server)
    for start in cases.values():  # imports paid, files cached
        start()
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(runs):  # in turn, so that the load of the moment hits every case alike
        for key, start in cases.items():
            samples[key].append(start())
    ms = {k: statistics.median(v) * 1000 for k, v in samples.items()}
    rows = [["runner Agent(spec), calculator only", "0", f"{ms['calculator']:.0f}", ""]]
    for server in SERVERS:
        r, s = ms[f"{server.name} runner"], ms[f"{server.name} sdk"]
        rows.append([f"{server.label}: runner Agent(spec), 1 server", "1", f"{r:.0f}",
                     f"runner - SDK: {r - s:+.0f}"])
        rows.append([f"{server.label}: SDK Client enter + list_tools", "1", f"{s:.0f}", ""])
    rows.append(["faulty.py: runner Agent(spec), 4 entries", "4", f"{ms['four']:.0f}",
                 f"4 / 1 server: {ms['four'] / ms['f runner']:.2f}x"])
    print(f"1. Start: construction to tools listed, median of {runs} taken in turn, after one "
          f"unmeasured each (ms)")
    table(["case", "servers", "median ms", ""], rows)


# --------------------------------------------------------------------------- 2. calls


def calls_abc(server: Server, n: int, warmup: int, root: Path) -> dict[str, list[float]]:
    """Seconds per call of (a) the SDK, (b) a Connection and (c) the runner tool path, each on
    a server of its own, called in turn (a, b, c, a, ...) so that drift hits all three."""
    from runner.mcp_client import Connection, ServerConfig
    from runner.tools import ToolContext, parse_arguments, run_tool

    conn = Connection(ServerConfig(server.name, server.command, list(server.args),
                                   cwd=str(root)))
    agent = None
    try:
        conn.start().result(60)
        agent = build_agent(write_spec(root, [server.entry()]))
        tool = agent.tools[f"{server.name}__{server.tool}"]

        async def main() -> dict[str, list[float]]:
            async with server.sdk_client() as client:
                async def sdk(i: int) -> None:
                    result = await client.call_tool(server.tool, server.arguments(i))
                    assert not result.is_error, result

                async def connection(i: int) -> None:
                    result = await conn.call(server.tool, server.arguments(i))
                    assert not result.is_error, result

                async def runner_tool(i: int) -> None:
                    await run_tool(tool, parse_arguments(tool, server.arguments(i)),
                                   ToolContext(), 30)

                calls = {"a": sdk, "b": connection, "c": runner_tool}
                samples: dict[str, list[float]] = {k: [] for k in calls}
                for i in range(warmup + n):
                    for key, call in calls.items():
                        t0 = time.perf_counter()
                        await call(i)
                        if i >= warmup:
                            samples[key].append(time.perf_counter() - t0)
                return samples

        return asyncio.run(main())
    finally:
        if agent is not None:
            close_agent(agent)
        future = conn.close()
        if future is not None:
            future.result(30)


def agent_steps(root: Path, entry: Any, action: Callable[[int], str], n: int) -> list[float]:
    """Seconds between consecutive model calls of a run whose replies call `action(i)` for i
    below n: a step is the model's (scripted) reply, its parsing, the tool call and the
    bookkeeping."""
    from runner import events as ev

    replies = [f"Thought: call it\nAction: {action(i)}" for i in range(n)]
    replies.append("Final Answer: done")
    starts: list[float] = []

    def sink(event: Any) -> None:
        if isinstance(event, ev.ModelStarted):
            starts.append(time.perf_counter())

    agent = build_agent(write_spec(root, [entry], replies, max_iterations=n + 1), sinks=[sink])
    try:
        result = asyncio.run(agent.run("go"))
    finally:
        close_agent(agent)
    assert result.status == "finished" and result.answer == "done", (result.status,
                                                                      result.error)
    assert not any(s.error for s in result.steps), [s.observation for s in result.steps][:3]
    return [b - a for a, b in zip(starts, starts[1:])]


def bench_calls(tmp: Path, n: int, warmup: int) -> None:
    root = project(tmp, "calls")
    rows: list[list[str]] = []

    def row(label: str, s: dict[str, float], base: dict[str, float] | None, what: str) -> None:
        over = [f"{s[k] - base[k]:+.3f}" for k in ("mean", "p50")] if base else ["", ""]
        rows.append([label, *(f"{s[k]:.3f}" for k in ("mean", "p50", "p95", "min")), *over,
                     what])

    calc = stats_ms(agent_steps(root, "calculator", lambda i: f"calculator[{i}+1]", n))
    for server in SERVERS:
        a, b, c = (stats_ms(v) for v in calls_abc(server, n, warmup, root).values())
        d = stats_ms(agent_steps(root, server.entry(), server.action, n))
        tool = f"{server.label} {server.tool}"
        row(f"{tool}: (a) SDK Client.call_tool", a, None, "")
        row(f"{tool}: (b) runner Connection.call", b, a, "b-a")
        row(f"{tool}: (c) runner run_tool(parse_arguments)", c, a, "c-a")
        row(f"{tool}: (d) agent step calling it", d, calc, "d - calculator step")
    row("calculator: agent step calling it", calc, None, "")
    print(f"2. Per call: {n} sequential calls of each of (a), (b), (c) in turn, after {warmup} "
          f"warm-up rounds (ms); (d): one ReAct run of {n} tool steps on fake/script")
    table(["case", "mean", "p50", "p95", "min", "+mean", "+p50", "against"], rows)


# --------------------------------------------------------------------------- 3. orphans


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:][:1] not in (b"Z", b"X")


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return int(stat[stat.rfind(b")") + 2:].split()[1])


def wait_for_call(state: Path, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    """Until the server logs the `slow` call (its grandchild was started before it spoke)."""
    log = state / "calls.log"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (state / "grandchild.pid").exists() and log.exists() and "slow" in log.read_text():
            return
        if proc.poll() is not None:
            raise SystemExit(f"the client exited ({proc.returncode}) before the slow call")
        time.sleep(0.05)
    raise SystemExit(f"no slow call within {timeout_s:g}s")


def kill_and_count(proc: subprocess.Popen[bytes], tree: dict[str, int]) -> list[str]:
    """SIGKILL the client, wait 2 s, name the members of `tree` still alive, then kill those."""
    before = [name for name, pid in tree.items() if not alive(pid)]
    if before:
        raise SystemExit(f"not running before the kill: {', '.join(before)}")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    time.sleep(2)
    survivors = [name for name, pid in tree.items() if alive(pid)]
    for name in survivors:  # leave nothing behind: these are the bench's own processes
        try:
            os.kill(tree[name], signal.SIGKILL)
        except ProcessLookupError:
            pass
    return survivors


SDK_CLIENT = """
import asyncio, sys
from mcp import Client, StdioServerParameters

async def main():
    params = StdioServerParameters(command=sys.executable, args=sys.argv[1:])
    async with Client(params) as client:
        await client.call_tool("slow", {"seconds": 60})

asyncio.run(main())
"""


def orphans_runner(tmp: Path) -> tuple[list[str], int]:
    root = project(tmp, "orphans-runner")
    state = root / "state"
    state.mkdir()
    spec = write_spec(root, [{"mcp": {"name": "f", "command": sys.executable, "args": [
        FAULTY, "--mode", "grandchild", "--state", str(state)]}}],
        ["Thought: wait\nAction: f__slow[60]", "Final Answer: done"], trace=True)
    proc = subprocess.Popen([sys.executable, "-m", "runner", "run", spec.name, "q"], cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return kill_mid_call(proc, state, guarded=True)


def kill_mid_call(proc: subprocess.Popen[bytes], state: Path,
                  guarded: bool) -> tuple[list[str], int]:
    """SIGKILL `proc` once its server is in the middle of a call; what of the tree survives
    (the guard too when `guarded`)."""
    try:
        wait_for_call(state, proc)
        server = int((state / "server.pid").read_text())
        tree = {"guard": parent_of(server)} if guarded else {}
        tree.update(server=server, grandchild=int((state / "grandchild.pid").read_text()))
        return kill_and_count(proc, tree), len(tree)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def orphans_sdk(tmp: Path) -> tuple[list[str], int]:
    root = project(tmp, "orphans-sdk")
    state = root / "state"
    state.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", SDK_CLIENT, FAULTY, "--mode", "grandchild",
                             "--state", str(state)], cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return kill_mid_call(proc, state, guarded=False)


def bench_orphans(tmp: Path) -> None:
    rows = []
    for label, check in (("python -m runner run (guard, server, grandchild)", orphans_runner),
                         ("plain SDK client (server, grandchild)", orphans_sdk)):
        survivors, total = check(tmp)
        rows.append([label, str(total), str(len(survivors)), ", ".join(survivors) or "-"])
    print("3. kill -9 of the client in the middle of a call: processes alive 2 s later")
    table(["client", "tree", "alive", "which"], rows)


# --------------------------------------------------------------------------- 4. memory


def vm_hwm_kb(pid: int | str) -> int:
    """Peak RSS of one process image (the kernel's VmHWM; it starts afresh at exec)."""
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1))  # type: ignore[union-attr]


def rss_worker(kind: str, tmp: Path) -> None:
    """In a fresh process: build the agent, make one call, print peak RSS (and the server's)."""
    root = project(tmp, f"rss-{kind}")
    state = root / "state"
    state.mkdir()
    entry = "calculator" if kind == "none" else {"mcp": {
        "name": "f", "command": sys.executable, "args": [FAULTY, "--state", str(state)]}}
    action = "calculator[2+3]" if kind == "none" else 'f__add[{"a": 2, "b": 3}]'
    agent = build_agent(write_spec(root, [entry], [f"Thought: x\nAction: {action}",
                                                   "Final Answer: done"]))
    result = asyncio.run(agent.run("go"))
    assert result.status == "finished" and result.steps[0].observation == "5", result
    server = guard = 0
    if kind != "none":
        pid = int((state / "server.pid").read_text())
        server, guard = vm_hwm_kb(pid), vm_hwm_kb(parent_of(pid))
    close_agent(agent)
    print(json.dumps({"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "hwm_kb": vm_hwm_kb("self"), "server_kb": server, "guard_kb": guard}))


def run_rss_worker(kind: str, tmp: Path) -> dict[str, int]:
    out = subprocess.run([sys.executable, __file__, "--rss-worker", kind, "--tmp", str(tmp)],
                         capture_output=True, text=True, timeout=120, cwd=tmp)
    if out.returncode != 0:
        raise SystemExit(f"rss worker ({kind}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def import_seconds(code: str, runs: int) -> float:
    """Median wall time of a fresh interpreter running `code`."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def importtime(modules: list[str]) -> dict[str, int]:
    """Cumulative microseconds that -X importtime reports for each of `modules`."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-c",
                          "import " + ", ".join(modules)], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    found = {}
    for line in out.stderr.splitlines():
        parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
        if len(parts) == 3 and parts[2] in modules and parts[1].isdigit():
            found[parts[2]] = int(parts[1])
    return found


def measure_rss(tmp: Path) -> dict[str, dict[str, int]]:
    """Run first, while this process is small: a child's ru_maxrss starts from the RSS of the
    process that spawned it (Linux carries the peak over fork and exec)."""
    return {kind: run_rss_worker(kind, tmp) for kind in ("none", "mcp")}


def bench_memory(rss: dict[str, dict[str, int]], runs: int) -> None:
    base, held = rss["none"], rss["mcp"]

    def mb(kb: int) -> str:
        return f"{kb / 1024:.1f}"

    print("4a. Peak RSS of a fresh process: one agent, one run with one tool call (MB); "
          "getrusage ru_maxrss, and /proc VmHWM")
    table(["process", "ru_maxrss", "VmHWM", "server VmHWM", "guard VmHWM"], [
        ["agent with the calculator", mb(base["maxrss_kb"]), mb(base["hwm_kb"]), "-", "-"],
        ["agent with one stdio MCP server (faulty.py)", mb(held["maxrss_kb"]),
         mb(held["hwm_kb"]), mb(held["server_kb"]), mb(held["guard_kb"])],
        ["difference", f"{(held['maxrss_kb'] - base['maxrss_kb']) / 1024:+.1f}",
         f"{(held['hwm_kb'] - base['hwm_kb']) / 1024:+.1f}", "", ""]])

    floor = import_seconds("pass", runs)
    rows = []
    for code in ("import runner.mcp_client", "import mcp", "import runner.mcp_client, mcp"):
        t = import_seconds(code, runs)
        rows.append([code, f"{t * 1000:.0f}", f"{(t - floor) * 1000:.0f}"])
    rows.append(["(empty interpreter)", f"{floor * 1000:.0f}", ""])
    print(f"4b. Import time: fresh interpreter, median of {runs} (ms)")
    table(["python -c", "wall", "minus empty"], rows)
    cumulative = importtime(["runner.mcp_client", "mcp"])
    print("    -X importtime, cumulative: " + ", ".join(
        f"{m} {us / 1000:.1f} ms" for m, us in cumulative.items()))
    print("    (runner.mcp_client imports mcp when its first server starts)\n")


# --------------------------------------------------------------------------- driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="starts per row (median)")
    parser.add_argument("--calls", type=int, default=300, help="sequential calls per row")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured calls first")
    parser.add_argument("--skip", default="", help="comma-separated: start,calls,orphans,memory")
    parser.add_argument("--rss-worker", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_worker:
        rss_worker(args.rss_worker, Path(args.tmp))
        return
    if not 1 <= args.calls <= 999:
        parser.error("--calls must be 1..999 (an agent run takes at most 1000 steps)")
    skip = set(filter(None, args.skip.split(",")))
    started = time.perf_counter()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}; mcp-server-time: {TIME_CMD}\n")
    with tempfile.TemporaryDirectory(prefix="mcp-bench-") as name:
        tmp = Path(name)
        rss = measure_rss(tmp) if "memory" not in skip else {}
        if "start" not in skip:
            bench_start(tmp, args.runs)
        if "calls" not in skip:
            bench_calls(tmp, args.calls, args.warmup)
        if "orphans" not in skip:
            bench_orphans(tmp)
        if "memory" not in skip:
            bench_memory(rss, args.runs)
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
