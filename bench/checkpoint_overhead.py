"""What checkpointing costs per step, and whether that cost stays flat as a run grows: the
same tool-calling run with `checkpoint.enabled: true` and `false`, against the scripted server
in its own process, at several run lengths.

    python bench/checkpoint_overhead.py                       # 20, 150 and 500 steps
    python bench/checkpoint_overhead.py --lengths 20 --runs 31
    PYTHONPATH=/tmp/old python /tmp/old/bench/checkpoint_overhead.py   # another checkout

The scripted OpenAI-compatible server (`python -m runner.testing --tool-calls N`) runs in its
own process with zero delay, so its CPU is not counted. A conversation of L steps is L - 1
native calls to the calculator and then a final answer (a step is a model call). For each
length a fresh worker process

* runs that conversation through `runner.Agent(spec).run()` (the direct transport) in three
  configurations: checkpoints off; on (a commit when the run starts, after every step but
  the last, and at the end: L + 1 commits); on with the calculator marked
  `idempotent: false` (one more commit before each tool call: 2L), and counts them;
* warms each up, then alternates them and reports the median per-step wall time and CPU time
  (time.process_time, every thread of the worker) and the difference from "off";
* times one checkpoint alone, `store.save(run_state(run))`, after every step of real runs
  (checkpoints off, the store driven by hand): the median CPU of the first ten saves and of
  the last ten, which is what says whether a save costs more as the run grows;
* reports the state's size at the end and the database's size (with its WAL) after the runs.

The checkpoint database lives in a temporary directory on the same file system as the
system's temp dir (`--dir` to choose another: a slow disk shows in the wall-clock figures,
since each commit is an fsync-free WAL append, `synchronous=NORMAL`).
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

SPEC = """\
version: 1
name: bench-checkpoints
model: {{id: openai/scripted, api_base: "{url}", temperature: 0, max_tokens: 96, retries: 0}}
loop: {{style: tools, max_iterations: {steps}}}
tools:
  - calculator: {{idempotent: {idempotent}}}
memory: {{backend: none}}
checkpoint: {{enabled: {enabled}, path: "{db}"}}
"""

CONFIGS = {  # name -> (checkpoint enabled, calculator idempotent)
    "off": (False, True),
    "on": (True, True),
    "on, idempotent: false": (True, False),
}


# --------------------------------------------------------------------------- worker


async def _timed(agent: Any, steps: int) -> tuple[float, float]:
    """One run: (wall ms, CPU ms) per step."""
    w0, c0 = time.perf_counter(), time.process_time()
    result = await agent.run("go")
    w1, c1 = time.perf_counter(), time.process_time()
    assert result.status == "finished" and len(result.steps) == steps, (result.status,
                                                                        result.error)
    return (w1 - w0) / steps * 1000, (c1 - c0) / steps * 1000


def _save_cost(spec: Any, db: Path, runs: int, secrets: set[str]) -> dict[str, Any]:
    """One checkpoint, `store.save(run_state(run))`, timed alone after every step of `runs`
    real runs (checkpoints off: this store is driven by hand, as Run.checkpoint drives it)."""
    import runner
    from runner import events as ev
    from runner.checkpoints import CheckpointStore, run_state

    store = CheckpointStore(db, secrets=secrets)  # redacting what the runs' store redacts
    timings: list[list[tuple[float, float]]] = []  # per run, per save: (wall ms, CPU ms)
    size = 0
    for _ in range(runs + 1):  # the first one warms up
        agent = runner.Agent(spec, checkpoints=False)
        run, times = agent.start("go"), []

        def save(event: Any, run: Any = run, times: list[tuple[float, float]] = times) -> None:
            if isinstance(event, ev.Observed):
                w0, c0 = time.perf_counter(), time.process_time()
                store.save(run_state(run))
                times.append(((time.perf_counter() - w0) * 1000,
                              (time.process_time() - c0) * 1000))

        agent.sinks.append(save)
        asyncio.run(run.execute())
        timings.append(times)
        size = len(json.dumps(run_state(run), ensure_ascii=False, default=str).encode())
    store.close()
    timings = timings[1:]
    window = min(10, len(timings[0]))
    first = [t for times in timings for t in times[:window]]
    last = [t for times in timings for t in times[-window:]]
    return {"saves": len(timings[0]), "window": window,
            "first_cpu_ms": statistics.median(c for _, c in first),
            "last_cpu_ms": statistics.median(c for _, c in last),
            "first_wall_ms": statistics.median(w for w, _ in first),
            "last_wall_ms": statistics.median(w for w, _ in last),
            "state_bytes_last": size}


def worker(args: argparse.Namespace) -> None:
    os.environ.setdefault("OPENAI_API_KEY", "none")
    import runner
    import runner.models.litellm

    runner.models.litellm.import_litellm()
    steps = args.tool_calls + 1
    base = Path(args.dir)
    agents = {}
    for name, (enabled, idempotent) in CONFIGS.items():
        path = base / f"{len(agents)}.yaml"
        path.write_text(SPEC.format(url=args.url, steps=steps, idempotent=str(idempotent).lower(),
                                    enabled=str(enabled).lower(), db=base / "runs.db"))
        agents[name] = runner.Agent(runner.load_spec(path))

    async def measure() -> dict[str, dict[str, float]]:
        for agent in agents.values():
            for _ in range(args.warmup):
                await _timed(agent, steps)
        figures: dict[str, tuple[list[float], list[float]]] = {n: ([], []) for n in agents}
        for _ in range(args.runs):  # alternate, so that drift hits every configuration alike
            for name, agent in agents.items():
                w, c = await _timed(agent, steps)
                figures[name][0].append(w)
                figures[name][1].append(c)
        return {n: {"wall_ms": statistics.median(w), "cpu_ms": statistics.median(c)}
                for n, (w, c) in figures.items()}

    commits: dict[str, int] = {}
    for name, agent in agents.items():  # count the commits of one run
        store = agent.checkpoints
        if store is None:
            commits[name] = 0
            continue
        save, counted = store.save, [0]

        def counting(state: dict[str, Any], _save: Any = save, _n: list[int] = counted) -> None:
            _n[0] += 1
            _save(state)

        store.save = counting  # type: ignore[method-assign]
        asyncio.run(agent.run("go"))
        store.save = save  # type: ignore[method-assign]
        commits[name] = counted[0]
    rows = asyncio.run(measure())
    secrets = agents["on"].checkpoints.secrets
    for agent in agents.values():
        if agent.checkpoints is not None:
            agent.checkpoints.close()
    db = base / "runs.db"
    db_bytes = sum(p.stat().st_size for p in base.glob("runs.db*"))
    import sqlite3

    with sqlite3.connect(db) as con:
        count = con.execute("SELECT count(*) FROM runs").fetchone()[0]
    save = _save_cost(agents["on"].spec, base / "save.db", args.save_runs, secrets)
    print(json.dumps({"steps": steps, "rows": rows, "commits": commits, "save": save,
                      "db_bytes": db_bytes, "db_runs": count}))


# --------------------------------------------------------------------------- driver


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from step_overhead import bench_parser, run_benchmark_worker, scripted_server

    parser = bench_parser(__doc__, runs=15, warmup=3)
    parser.add_argument("--lengths", default="20,150,500",
                        help="steps per run, comma-separated (each: a worker of its own)")
    parser.add_argument("--save-runs", type=int, default=5,
                        help="runs whose saves are timed one by one (median)")
    parser.add_argument("--dir", help="where the checkpoint database goes (default: a temp dir)")
    args = parser.parse_args()
    args.warmup = max(1, args.warmup)
    if args.worker:
        worker(args)
        return

    results = []
    for steps in (int(n) for n in args.lengths.split(",")):
        args.tool_calls = steps - 1
        with scripted_server(args.tool_calls) as url, \
                tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            results.append(run_benchmark_worker(__file__, args, url, [
                "--dir", tmp, "--save-runs", str(args.save_runs)]))
        _report(results[-1], args)
    if len(results) > 1:
        _summary(results)
    if args.json:
        print(json.dumps(results, indent=1))


def _report(res: dict[str, Any], args: argparse.Namespace) -> None:
    """One length's figures."""
    steps, rows, save, commits = res["steps"], res["rows"], res["save"], res["commits"]
    print(f"\n{steps} steps per run ({steps - 1} native tool calls + final answer), median of "
          f"{args.runs} runs after {args.warmup} warm-up runs; server in its own process, zero "
          f"delay. Per step, client process only:\n")
    head = (f"{'checkpoints':24} {'commits/run':>11} {'wall':>9} {'+wall':>8} {'CPU':>9} "
            f"{'+CPU':>8} {'+CPU per commit':>16}")
    print(head)
    print("-" * len(head))
    off = rows["off"]
    for name, r in rows.items():
        dw, dc = r["wall_ms"] - off["wall_ms"], r["cpu_ms"] - off["cpu_ms"]
        per_commit = (f"{dc * steps / commits[name]:14.3f}ms" if commits[name] else "")
        print(f"{name:24} {commits[name]:>11} {r['wall_ms']:7.2f}ms {dw:+6.2f}ms "
              f"{r['cpu_ms']:7.2f}ms {dc:+6.2f}ms {per_commit:>16}")
    print(f"\nstore.save(run_state(run)) alone after each of the {save['saves']} steps of "
          f"{args.save_runs} runs (median): the first {save['window']} saves "
          f"{save['first_cpu_ms']:.3f} ms CPU ({save['first_wall_ms']:.3f} ms wall), the last "
          f"{save['window']} {save['last_cpu_ms']:.3f} ms CPU ({save['last_wall_ms']:.3f} ms "
          f"wall). State at the end: {save['state_bytes_last']} bytes of JSON.")
    print(f"Database after the runs: {res['db_bytes'] / 1024:.0f} KiB with its WAL, "
          f"{res['db_runs']} runs, {res['db_bytes'] / max(1, res['db_runs']) / 1024:.1f} KiB "
          f"per run.")


def _summary(results: list[dict[str, Any]]) -> None:
    """Every length side by side: a cost that grows with the run shows as a growing column."""
    print("\nPer step, checkpoints on minus off (CPU ms), and one save alone (CPU ms):\n")
    head = (f"{'steps':>6} {'+CPU/step':>10} {'+CPU/step idem:false':>21} "
            f"{'save, first 10':>15} {'save, last 10':>14} {'state KiB':>10}")
    print(head)
    print("-" * len(head))
    for res in results:
        rows, save, off = res["rows"], res["save"], res["rows"]["off"]["cpu_ms"]
        print(f"{res['steps']:>6} {rows['on']['cpu_ms'] - off:>+10.3f} "
              f"{rows['on, idempotent: false']['cpu_ms'] - off:>+21.3f} "
              f"{save['first_cpu_ms']:>15.3f} {save['last_cpu_ms']:>14.3f} "
              f"{save['state_bytes_last'] / 1024:>10.1f}")


if __name__ == "__main__":
    main()
