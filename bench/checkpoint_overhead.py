"""What checkpointing costs per step: the same tool-calling run with `checkpoint.enabled: true`
and `false`, against the scripted server in its own process.

    python bench/checkpoint_overhead.py                 # 20 tool calls + answer, 15 runs
    python bench/checkpoint_overhead.py --runs 31 --tool-calls 50

The scripted OpenAI-compatible server (`python -m runner.testing --tool-calls N`) runs in its
own process with zero delay, so its CPU is not counted. A conversation is N native calls to
the calculator and then a final answer: N + 1 steps (model calls). A fresh worker process

* runs that conversation through `runner.Agent(spec).run()` (the direct transport) in three
  configurations: checkpoints off; on (a commit when the run starts, after every step but
  the last, and at the end: N + 2 commits); on with the calculator marked
  `idempotent: false` (one more commit before each tool call: 2N + 2), and counts them;
* warms each up, then alternates them and reports the median per-step wall time and CPU time
  (time.process_time, every thread of the worker) and the difference from "off";
* times `CheckpointStore.save()` alone on the states of a real run (one per step), and
  reports the state's size and the database's size (with its WAL) after the runs.

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


def _save_cost(spec: Any, db: Path, repeat: int, secrets: set[str]) -> dict[str, Any]:
    """CheckpointStore.save() alone, on the state after each step of a real run."""
    import runner
    from runner import events as ev
    from runner.checkpoints import CheckpointStore, run_state

    states: list[dict[str, Any]] = []
    agent = runner.Agent(spec, checkpoints=False)
    run = agent.start("go")
    agent.sinks.append(lambda e: states.append(run_state(run))
                       if isinstance(e, ev.Observed) else None)
    asyncio.run(run.execute())
    states.append(run_state(run))
    store = CheckpointStore(db, secrets=secrets)  # redacting what the runs' store redacts
    store.save(states[0])  # connection opened, table created
    walls, cpus = [], []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        for state in states:
            store.save(state)
        walls.append((time.perf_counter() - w0) / len(states) * 1000)
        cpus.append((time.process_time() - c0) / len(states) * 1000)
    store.close()
    sizes = [len(json.dumps(s, ensure_ascii=False, default=str).encode()) for s in states]
    return {"wall_ms": statistics.median(walls), "cpu_ms": statistics.median(cpus),
            "state_bytes_first": sizes[0], "state_bytes_last": sizes[-1],
            "state_bytes_mean": statistics.mean(sizes), "saves": len(states)}


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
    save = _save_cost(agents["on"].spec, base / "save.db", args.runs, secrets)
    print(json.dumps({"steps": steps, "rows": rows, "commits": commits, "save": save,
                      "db_bytes": db_bytes, "db_runs": count}))


# --------------------------------------------------------------------------- driver


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from step_overhead import bench_parser, run_benchmark_worker, scripted_server

    parser = bench_parser(__doc__, runs=15, warmup=3)
    parser.add_argument("--dir", help="where the checkpoint database goes (default: a temp dir)")
    args = parser.parse_args()
    args.warmup = max(1, args.warmup)
    if args.worker:
        worker(args)
        return

    with scripted_server(args.tool_calls) as url, tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        res = run_benchmark_worker(__file__, args, url, ["--dir", tmp])

    steps, rows, save = res["steps"], res["rows"], res["save"]
    n, commits = args.tool_calls, res["commits"]
    print(f"{steps} steps per run ({n} native tool calls + final answer), median of {args.runs} "
          f"runs after {args.warmup} warm-up runs; server in its own process, zero delay.")
    print("Per step, client process only:\n")
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
    print(f"\nCheckpointStore.save() alone, on the {save['saves']} states of one run "
          f"(median per save): {save['wall_ms']:.3f} ms wall, {save['cpu_ms']:.3f} ms CPU.")
    print(f"State size (JSON): {save['state_bytes_first']} bytes at the first step, "
          f"{save['state_bytes_last']} bytes at the end, {save['state_bytes_mean']:.0f} on "
          f"average; each commit rewrites the whole state, so a run's checkpoint cost grows "
          f"with its length squared.")
    print(f"Database after the runs: {res['db_bytes'] / 1024:.0f} KiB with its WAL, "
          f"{res['db_runs']} runs, {res['db_bytes'] / max(1, res['db_runs']) / 1024:.1f} KiB "
          f"per run.")
    if args.json:
        print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
