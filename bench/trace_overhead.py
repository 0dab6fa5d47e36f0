"""What tracing costs per step, and how big a trace is: the same tool-calling run with
`trace.enabled: true` and `false` (checkpoints off in both), against the scripted server in
its own process.

    python bench/trace_overhead.py                    # 20 tool calls + answer, 11 runs
    python bench/trace_overhead.py --runs 21 --styles tools --profile

The scripted OpenAI-compatible server (`python -m runner.testing --tool-calls N`) runs in its
own process with zero delay, so its CPU is not counted. A conversation is N calls to the
calculator and then a final answer: N + 1 steps (model calls), in the native tool-calling
style and in text ReAct. A fresh worker process

* runs that conversation through `runner.Agent(spec).run()` (the direct transport) with
  tracing off and on, for each style; warms each up, then alternates them and reports the
  median per-step wall time and CPU time (time.process_time, every thread of the worker)
  and the difference;
* reports the size of one run's trace file, and what it would be if every model call stored
  its full `messages` instead of a delta against the previous call (the events as
  `read_trace` restores them, one JSON line each);
* times the TraceWriter alone, fed the events of one real run (redaction, the message delta,
  JSON, a write and a flush per event);
* with --profile, runs the traced configuration under cProfile and lists where the time in
  the trace writer goes.

The API key is a realistic one (the redactor masks it in everything it writes); trace files
go to a temporary directory (`--dir` to choose another).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-bench-not-a-real-key-0123456789abcdef"

SPEC = """\
version: 1
name: bench-traces
model: {{id: openai/scripted, api_base: "{url}", temperature: 0, max_tokens: 96, retries: 0}}
loop: {{style: {style}, max_iterations: {steps}}}
tools: [calculator]
memory: {{backend: none}}
checkpoint: {{enabled: false}}
trace: {{enabled: {enabled}, path: "{traces}"}}
"""


# --------------------------------------------------------------------------- worker


async def _timed(agent: Any, steps: int) -> tuple[float, float, str]:
    """One run: (wall ms, CPU ms) per step, and the run's id."""
    w0, c0 = time.perf_counter(), time.process_time()
    result = await agent.run("go")
    w1, c1 = time.perf_counter(), time.process_time()
    assert result.status == "finished" and len(result.steps) == steps, (result.status,
                                                                        result.error)
    return (w1 - w0) / steps * 1000, (c1 - c0) / steps * 1000, result.run_id


def _sizes(path: Path) -> dict[str, int]:
    """The trace file's size, and the size it would have with full messages in every call."""
    from runner.trace.reader import read_trace

    events = read_trace(path)
    full = sum(len((json.dumps(e, ensure_ascii=False, default=str) + "\n").encode())
               for e in events)
    calls = [e for e in events if e["kind"] in ("model_started", "model_called")
             and isinstance(e.get("messages"), list)]  # where read_trace restored them
    return {"bytes": path.stat().st_size, "full_bytes": full, "events": len(events),
            "last_messages": len(calls[-1]["messages"]) if calls else 0,
            "last_prompt_bytes": len(json.dumps(calls[-1]["messages"], ensure_ascii=False)
                                     .encode()) if calls else 0}


def _writer_cost(spec: Any, folder: Path, repeat: int) -> dict[str, float]:
    """TraceWriter alone, fed the events of one real run: time per step."""
    import runner
    from runner.trace.writer import TraceWriter

    events: list[Any] = []
    agent = runner.Agent(spec, sinks=[events.append])
    agent.sinks = [events.append]  # only the list: the spec's own trace writer is left out
    result = asyncio.run(agent.run("go"))
    steps = len(result.steps)
    writer = TraceWriter(spec.trace.model_copy(update={"path": str(folder)}), agent.secrets)
    walls, cpus = [], []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        for e in events:
            writer(e)
        walls.append((time.perf_counter() - w0) / steps * 1000)
        cpus.append((time.process_time() - c0) / steps * 1000)
    return {"wall_ms": statistics.median(walls), "cpu_ms": statistics.median(cpus),
            "events": len(events)}


def _profile(agent: Any, steps: int, runs: int, top: int) -> str:
    """cProfile of `runs` traced runs: the functions of the trace writer and the redactor."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(runs):
        asyncio.run(_timed(agent, steps))
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("cumulative").print_stats(r"traces\.py|redact\.py|events\.py|json", top)
    return out.getvalue()


def worker(args: argparse.Namespace) -> None:
    os.environ["OPENAI_API_KEY"] = KEY
    import runner
    import runner.models.litellm

    runner.models.litellm.import_litellm()
    steps = args.tool_calls + 1
    base = Path(args.dir)
    agents: dict[tuple[str, str], Any] = {}
    for style in args.styles:
        for name, enabled in (("off", "false"), ("on", "true")):
            path = base / f"{style}-{name}.yaml"
            path.write_text(SPEC.format(url=args.url, steps=steps, style=style, enabled=enabled,
                                        traces=base / f"traces-{style}"))
            agents[style, name] = runner.Agent(runner.load_spec(path))

    async def measure() -> dict[str, Any]:
        for agent in agents.values():
            for _ in range(args.warmup):
                await _timed(agent, steps)
        figures: dict[tuple[str, str], tuple[list[float], list[float]]] = {
            k: ([], []) for k in agents}
        last_run: dict[str, str] = {}
        for _ in range(args.runs):  # alternate, so that drift hits every configuration alike
            for key, agent in agents.items():
                w, c, run_id = await _timed(agent, steps)
                figures[key][0].append(w)
                figures[key][1].append(c)
                if key[1] == "on":
                    last_run[key[0]] = run_id
        rows = {f"{s}/{n}": {"wall_ms": statistics.median(w), "cpu_ms": statistics.median(c)}
                for (s, n), (w, c) in figures.items()}
        sizes = {s: _sizes(base / f"traces-{s}" / f"{rid}.jsonl") for s, rid in last_run.items()}
        return {"rows": rows, "sizes": sizes}

    res = asyncio.run(measure())
    res["steps"] = steps
    res["writer"] = {s: _writer_cost(agents[s, "on"].spec, base / f"alone-{s}", args.runs * 5)
                     for s in args.styles}
    if args.profile:
        res["profile"] = {s: _profile(agents[s, "on"], steps, args.runs, 25)
                          for s in args.styles}
    print(json.dumps(res))


# --------------------------------------------------------------------------- driver


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from step_overhead import bench_parser, run_benchmark_worker, scripted_server

    parser = bench_parser(__doc__, runs=11, warmup=3)
    parser.add_argument("--styles", default="tools,react", help="tools, react, or both")
    parser.add_argument("--dir", help="where the trace files go (default: a temp dir)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile the traced runs (cProfile) and show the trace writer")
    args = parser.parse_args()
    args.warmup = max(1, args.warmup)
    args.styles = [s for s in args.styles.split(",") if s]
    if args.worker:
        worker(args)
        return

    with scripted_server(args.tool_calls) as url, tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        extra = ["--dir", tmp, "--styles", ",".join(args.styles)]
        res = run_benchmark_worker(__file__, args, url,
                                   extra + (["--profile"] if args.profile else []))

    steps, rows, sizes = res["steps"], res["rows"], res["sizes"]
    print(f"{steps} steps per run ({args.tool_calls} calculator calls + final answer), median of "
          f"{args.runs} runs after {args.warmup} warm-up runs; server in its own process, zero "
          f"delay; checkpoints off.")
    print("Per step, client process only:\n")
    head = f"{'style':6} {'trace':6} {'wall':>9} {'+wall':>9} {'CPU':>9} {'+CPU':>9}"
    print(head)
    print("-" * len(head))
    for style in args.styles:
        off = rows[f"{style}/off"]
        for name in ("off", "on"):
            r = rows[f"{style}/{name}"]
            dw, dc = r["wall_ms"] - off["wall_ms"], r["cpu_ms"] - off["cpu_ms"]
            extra = (f"{dw:+7.3f}ms {r['cpu_ms']:7.3f}ms {dc:+7.3f}ms" if name == "on"
                     else f"{'':>9} {r['cpu_ms']:7.3f}ms {'':>9}")
            print(f"{style:6} {name:6} {r['wall_ms']:7.3f}ms {extra}")
    print(f"\nTrace of one {steps}-step run:")
    for style, s in sizes.items():
        saved = 1 - s["bytes"] / s["full_bytes"]
        print(f"  {style:6} {s['bytes']:>9,} bytes ({s['events']} events); with every call's "
              f"full messages: {s['full_bytes']:>9,} bytes — the delta saves {saved:.0%} "
              f"(last call: {s['last_messages']} messages, {s['last_prompt_bytes']:,} bytes)")
    print("\nTraceWriter alone, fed the events of one run (median per step):")
    for style, w in res["writer"].items():
        print(f"  {style:6} {w['wall_ms']:.3f} ms wall, {w['cpu_ms']:.3f} ms CPU "
              f"({w['events'] / steps:.1f} events per step)")
    for style, text in res.get("profile", {}).items():
        print(f"\ncProfile, {style} style, traced runs (cumulative):\n{text}")
    if args.json:
        print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
