"""Many runs at once in one process: makespan against the ideal, and client CPU per step, for
the runner with its defaults, the runner lean, and a bare aiohttp loop making the same calls.

    python3 bench/concurrency.py                          # 100 and 1000 runs, 3 batches each
    python3 bench/concurrency.py --runs 10000 --repeat 1
    python3 bench/concurrency.py --runs 100 --latency-ms 50 --tool-calls 4 --style tools

The scripted OpenAI-compatible server (runner.testing.server) runs in its own process and
answers every request after `--latency-ms` (50 ms): per conversation, `--tool-calls` (4)
calculator calls, then the final answer, so a run is tool-calls + 1 model calls ("steps"),
and the ideal makespan is steps x latency (5 x 50 ms = 250 ms). It also reports what it saw:
the peak number of requests in flight at once, and its own CPU.

For each N a fresh client process builds agents/calculator.yaml pointed at the server
(`loop.style` from --style, the direct transport) once per configuration, and times batches
of N simultaneous runs (`asyncio.gather` of N `agent.run()`, one event loop, no threads):

* defaults: traces and checkpoints on, both written under a temporary directory;
* lean: `trace.enabled=false`, `checkpoint.enabled=false`;
* traces, checkpoints (only when --modes names them): one of the two on, the other off;
* bare: an aiohttp loop making the same calls (same messages, tools, parameters; the trivial
  tool in between), its connection pool unbounded: the floor for any client.

Each configuration is warmed up once (LiteLLM's lazy imports, the pool's connections), then
the configurations alternate, `--repeat` batches each, medians reported. A batch's makespan
is its wall time; CPU is time.process_time of the client process; "stall" is the longest
the event loop was late to wake a 10 ms timer during the batch; errors are runs that did not
finish with the scripted answer in exactly `steps` steps (or raised). After each defaults
batch the new trace files are counted and each must end with its `run_ended` event.

On 2 cores the server and the client share the machine: when `server CPU` is close to the
makespan, the server is what limits the batch, not the client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import table  # noqa: E402  (bench/_table.py)

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "agents" / "calculator.yaml"
MODES = ("defaults", "lean", "bare", "traces", "checkpoints")


# --------------------------------------------------------------------------- server


def serve(args: argparse.Namespace) -> None:
    """The scripted server with a fixed latency, counting requests in flight (`GET /stats`)."""
    from aiohttp import web

    from runner.testing.server import ScriptedOpenAIServer, tool_call_responder

    class Server(ScriptedOpenAIServer):
        in_flight = peak = served = 0

        def app(self) -> web.Application:
            app = super().app()
            app.router.add_get("/stats", self._stats)
            return app

        async def _stats(self, request: web.Request) -> web.Response:
            out = {"peak": self.peak, "served": self.served, "cpu_s": time.process_time()}
            if request.query.get("reset"):
                self.peak, self.served = self.in_flight, 0
            return web.json_response(out)

        async def _chat(self, request: web.Request) -> web.StreamResponse:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            try:
                return await super()._chat(request)
            finally:
                self.in_flight -= 1
                self.served += 1

        async def _start(self) -> None:  # the base's, with a backlog for thousands of connects
            self._stopping = False
            self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=2.0)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.host, self.port, backlog=8192)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    server = Server()
    server.record = False
    script = tool_call_responder(args.tool_calls)
    delay = args.latency_ms / 1000
    server.responder = lambda body: {**script(body), "delay": delay}
    server.start()
    print(server.url, flush=True)
    sys.stdin.read()  # until the driver closes our stdin
    server.stop()


# --------------------------------------------------------------------------- client


def _trivial_tool(expression: str) -> str:
    a, _, b = expression.partition("+")
    return str(int(a) + int(b))


class StallMonitor:
    """The longest the event loop was late to wake a 10 ms timer while running."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            self.worst = max(self.worst, time.perf_counter() - t - 0.01)

    def __enter__(self) -> StallMonitor:
        self._task = asyncio.get_running_loop().create_task(self._watch())
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._task is not None
        self._task.cancel()


async def _stats(session: Any, base: str, reset: bool = False) -> dict[str, Any]:
    async with session.get(f"{base}/stats", params={"reset": "1"} if reset else {}) as r:
        return await r.json()  # type: ignore[no-any-return]


def _trace_check(folder: Path, before: set[str]) -> tuple[int, int]:
    """(new trace files, how many of them do not end with their run_ended event)."""
    new = [p for p in folder.glob("*.jsonl") if p.name not in before]
    bad = 0
    for p in new:
        with open(p, "rb") as f:
            f.seek(max(0, p.stat().st_size - 65536))
            last = f.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
        try:
            if json.loads(last).get("kind") != "run_ended":
                bad += 1
        except ValueError:
            bad += 1
    return len(new), bad


async def client(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    import runner

    base_url = args.url
    root = args.url.rsplit("/v1", 1)[0]
    steps = args.tool_calls + 1
    work = Path(args.dir)
    traces, db = work / "traces", work / "runs.db"
    common = ["model.id=openai/scripted", f"model.api_base={base_url}",
              f"loop.style={args.style}", f"loop.max_iterations={steps}"]
    specs = {
        "defaults": runner.load_spec(SPEC, overrides=[
            *common, f"trace.path={traces}", f"checkpoint.path={db}"]),
        "lean": runner.load_spec(SPEC, overrides=[
            *common, "trace.enabled=false", "checkpoint.enabled=false"]),
        "traces": runner.load_spec(SPEC, overrides=[
            *common, f"trace.path={traces}", "checkpoint.enabled=false"]),
        "checkpoints": runner.load_spec(SPEC, overrides=[
            *common, "trace.enabled=false", f"checkpoint.path={db}"]),
    }
    agents = {m: runner.Agent(s) for m, s in specs.items()}
    probe = agents["lean"]
    if probe.models[0].transport != "direct":  # type: ignore[attr-defined]
        raise SystemExit("the calculator agent did not get the direct transport")

    async def one_run(agent: Any) -> str | None:
        try:
            r = await agent.run("go")
        except Exception as exc:  # noqa: BLE001 - counted, shown once
            return f"{type(exc).__name__}: {exc}"
        if r.status != "finished" or r.answer != "done" or len(r.steps) != steps:
            return f"{r.status} after {len(r.steps)} steps: {r.error}"
        return None

    # the bare loop: the same calls, nothing else
    tools = probe.tool_schemas
    first = probe.start("go")._native_messages([])
    react_head = probe.prompt("go", [], steps=[], native_tools=False)[:-len("Thought:")]
    ms = specs["lean"].model
    headers = {"Content-Type": "application/json", "Authorization": "Bearer no-key"}
    from runner.loop import STOP

    bare_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def post(body: dict[str, Any]) -> dict[str, Any]:
        async with bare_session.post(f"{base_url}/chat/completions", data=json.dumps(body),
                                     headers=headers) as r:
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}")
            return json.loads(await r.read())  # type: ignore[no-any-return]

    async def bare_run() -> str | None:
        params = {"model": "scripted", "max_tokens": ms.max_tokens,
                  "temperature": ms.temperature}
        calls = 0
        try:
            if args.style == "tools":
                messages = [dict(m) for m in first]
                while True:
                    msg = (await post({**params, "messages": messages, "tools": tools}))[
                        "choices"][0]["message"]
                    calls += 1
                    if not msg.get("tool_calls"):
                        break
                    messages.append({"role": "assistant", "content": msg.get("content"),
                                     "tool_calls": msg["tool_calls"]})
                    for tc in msg["tool_calls"]:
                        expr = json.loads(tc["function"]["arguments"])["expression"]
                        messages.append({"role": "tool", "tool_call_id": tc["id"],
                                         "content": _trivial_tool(expr)})
            else:
                scratch = ""
                while True:
                    text = (await post({**params, "stop": STOP, "messages": [
                        {"role": "user", "content": react_head + scratch + "Thought:"}]}))[
                        "choices"][0]["message"]["content"] or ""
                    calls += 1
                    if "Action: calculator[" not in text:
                        break
                    expr = text.rsplit("calculator[", 1)[1].split("]", 1)[0]
                    scratch += f"{text}\nObservation: {_trivial_tool(expr)}\n"
        except Exception as exc:  # noqa: BLE001
            return f"{type(exc).__name__}: {exc}"
        return None if calls == steps else f"{calls} calls"

    makers = {m: (lambda a=a: one_run(a)) for m, a in agents.items()}
    makers["bare"] = bare_run

    async def batch(mode: str, n: int, stats_session: Any) -> dict[str, Any]:
        before = {p.name for p in traces.glob("*.jsonl")} if mode == "defaults" else set()
        s0 = await _stats(stats_session, root, reset=True)
        make = makers[mode]
        with StallMonitor() as stall:
            w0, c0 = time.perf_counter(), time.process_time()
            outcomes = await asyncio.gather(*(make() for _ in range(n)))
            w1, c1 = time.perf_counter(), time.process_time()
        s1 = await _stats(stats_session, root)
        errors = [o for o in outcomes if o is not None]
        row = {"mode": mode, "n": n, "wall_s": w1 - w0, "cpu_s": c1 - c0,
               "server_cpu_s": s1["cpu_s"] - s0["cpu_s"], "peak": s1["peak"],
               "requests": s1["served"], "stall_s": stall.worst, "errors": len(errors),
               "error": errors[0] if errors else None}
        if mode == "defaults":
            row["traces"], row["bad_traces"] = _trace_check(traces, before)
        return row

    async def profiled(mode: str, n: int, stats_session: Any) -> str:
        import cProfile
        import io
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        await batch(mode, n, stats_session)
        prof.disable()
        if args.profile_file:
            prof.dump_stats(f"{args.profile_file}.{mode}.{n}.pstats")
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.profile_top)
        return out.getvalue()

    modes = [m for m in MODES if m in args.modes]
    rows: list[dict[str, Any]] = []
    profiles: dict[str, str] = {}
    try:
        async with aiohttp.ClientSession() as stats_session:
            for mode in modes:  # warm-up: lazy imports, the pools' connections
                await batch(mode, args.n, stats_session)
            for _ in range(args.repeat):
                for mode in modes:
                    rows.append(await batch(mode, args.n, stats_session))
            for mode in args.profile:
                profiles[mode] = await profiled(mode, args.n, stats_session)
    finally:
        await bare_session.close()
        for agent in agents.values():
            await agent.close()
    return {"n": args.n, "steps": steps, "rows": rows, "profiles": profiles}


# --------------------------------------------------------------------------- driver


def _median_rows(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        mine = [r for r in rows if r["mode"] == mode]
        if not mine:
            continue
        med = {k: statistics.median(r[k] for r in mine) for k in (
            "wall_s", "cpu_s", "server_cpu_s", "peak", "stall_s", "requests")}
        med["errors"] = sum(r["errors"] for r in mine)
        med["error"] = next((r["error"] for r in mine if r["error"]), None)
        med["batches"] = len(mine)
        if mode == "defaults":
            med["traces"] = min(r["traces"] for r in mine)
            med["bad_traces"] = sum(r["bad_traces"] for r in mine)
        out[mode] = med
    return out


def _client_process(args: argparse.Namespace, env: dict[str, str], url: str, n: int,
                    modes: list[str]) -> dict[str, Any]:
    """One client process running batches of `n` runs of `modes`; its JSON, and the lines
    it wrote on stderr (a runner's warnings, such as tracing that stopped)."""
    with tempfile.TemporaryDirectory(prefix="runner-concurrency-", dir=args.dir) as work:
        Path(work, "pyproject.toml").write_text("")  # the client's cwd: a scratch dir
        cmd = [sys.executable, str(Path(__file__).resolve()), "--client", "--url", url,
               "--n", str(n), "--dir", work, "--repeat", str(args.repeat),
               "--tool-calls", str(args.tool_calls), "--style", args.style,
               "--modes", ",".join(modes), "--profile-top", str(args.profile_top),
               "--profile", ",".join(m for m in args.profile if m in modes)]
        if args.profile_file:
            cmd += ["--profile-file", str(Path(args.profile_file).resolve())]
        out = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True,
                             timeout=7200)
    if out.returncode != 0:
        raise SystemExit(f"client (N={n}, {','.join(modes)}) failed:\n{out.stderr[-4000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["stderr"] = [f"{','.join(modes)}: {line}" for line in dict.fromkeys(
        out.stderr.splitlines())][:10]
    return res  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="100,1000",
                        help="simultaneous runs per batch, a comma list (e.g. 100,1000,10000)")
    parser.add_argument("--repeat", type=int, default=3, help="measured batches per mode")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="server delay per call")
    parser.add_argument("--tool-calls", type=int, default=4,
                        help="tool calls per run (steps = this + 1)")
    parser.add_argument("--style", choices=("tools", "react"), default="tools")
    parser.add_argument("--modes", default="defaults,lean,bare",
                        help="of defaults, lean, bare, and for a breakdown traces (traces on, "
                             "checkpoints off) and checkpoints (the other way round)")
    parser.add_argument("--profile", default="",
                        help="after the batches, one more batch of these modes under cProfile")
    parser.add_argument("--profile-top", type=int, default=30)
    parser.add_argument("--profile-file", default="",
                        help="also dump each profile to PREFIX.MODE.N.pstats (for pstats)")
    parser.add_argument("--dir", help="where traces and checkpoints go (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON too")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.modes = [m for m in args.modes.split(",") if m]
    args.profile = [m for m in args.profile.split(",") if m]
    for m in (*args.modes, *args.profile):
        if m not in MODES:
            parser.error(f"unknown mode {m!r}; use {', '.join(MODES)}")
    if args.serve:
        serve(args)
        return
    if args.client:
        print(json.dumps(asyncio.run(client(args))))
        return

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k not in (
        "RUNNER_TRANSPORT", "RUNNER_LITELLM_OPENAI_SDK")},
        "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MODE": "PRODUCTION"}
    env.pop("OPENAI_API_KEY", None)
    server = subprocess.Popen([sys.executable, __file__, "--serve", "--tool-calls",
                               str(args.tool_calls), "--latency-ms", str(args.latency_ms)],
                              cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    results = []
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        if not url.startswith("http"):
            raise SystemExit(f"the scripted server did not start: {url!r}")
        # the runner's two configurations alternate in one client process; the bare loop
        # gets its own, so that its idle connections never count against the runner's files
        groups = [[m for m in args.modes if m != "bare"], [m for m in args.modes if m == "bare"]]
        for n in [int(x) for x in args.runs.split(",") if x]:
            merged: dict[str, Any] = {"n": n, "rows": [], "profiles": {}, "stderr": []}
            for modes in filter(None, groups):
                res = _client_process(args, env, url, n, modes)
                merged["rows"] += res["rows"]
                merged["profiles"].update(res["profiles"])
                merged["stderr"] += res["stderr"]
            results.append(merged)
    finally:
        if server.stdin is not None:
            server.stdin.close()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()

    steps = args.tool_calls + 1
    ideal = steps * args.latency_ms / 1000
    print(f"{args.style} style, {steps} steps per run ({args.tool_calls} tool calls + final "
          f"answer), {args.latency_ms:g} ms per model call: ideal makespan {ideal * 1000:.0f} ms."
          f"\nMedians of {args.repeat} batch(es) per mode after one warm-up batch; server in "
          f"its own process. load average before: {os.getloadavg()[0]:.2f}\n")
    head = ["mode", "runs", "makespan", "x ideal", "client CPU", "CPU/step", "server CPU",
            "stall", "peak in flight", "requests", "errors"]
    rows, deltas = [], []
    for res in results:
        n = res["n"]
        med = _median_rows(res["rows"])
        for mode, m in med.items():
            rows.append([mode, f"{n:,}", f"{m['wall_s'] * 1000:.0f} ms",
                         f"{m['wall_s'] / ideal:.2f}x", f"{m['cpu_s']:.2f} s",
                         f"{m['cpu_s'] / (n * steps) * 1000:.3f} ms",
                         f"{m['server_cpu_s']:.2f} s", f"{m['stall_s'] * 1000:.0f} ms",
                         f"{m['peak']:,.0f}", f"{m['requests']:,.0f}", str(m["errors"])])
        if "defaults" in med and "lean" in med:
            per = {mode: [r["cpu_s"] / (n * steps) * 1000 for r in res["rows"]
                          if r["mode"] == mode] for mode in ("defaults", "lean")}
            pairs = [d - le for d, le in zip(per["defaults"], per["lean"])]
            deltas.append([f"{n:,}", f"{statistics.median(per['defaults']):.3f} ms",
                           f"{statistics.median(per['lean']):.3f} ms",
                           f"{statistics.median(pairs):+.3f} ms",
                           f"{min(pairs):+.3f} .. {max(pairs):+.3f} ms"])
    if rows:
        table(head, rows)
    if deltas:
        print("Traces and checkpoints: client CPU per step, defaults minus lean (target: "
              "+0.100 ms at most), median of the batch pairs:\n")
        table(["runs", "defaults", "lean", "defaults - lean", "range"], deltas)
    for res in results:
        med = _median_rows(res["rows"])
        for mode, m in med.items():
            if m["error"]:
                print(f"N={res['n']:,} {mode}: {m['errors']} failed runs; first: {m['error']}")
        d = med.get("defaults")
        if d is not None:
            print(f"N={res['n']:,} defaults: {d['traces']:,} new trace files per batch (fewest), "
                  f"{d['bad_traces']} not ending with run_ended")
        for line in res["stderr"]:
            print(f"N={res['n']:,} client stderr: {line}")
        for mode, text in res["profiles"].items():
            print(f"\n--- cProfile, N={res['n']:,}, {mode} (one batch, by own time) ---\n{text}")
    if args.json:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
