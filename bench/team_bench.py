"""What one delegation to a sub-agent costs: a boss that calls a worker through its
`- agent: worker.yaml` tool, against the worker run directly.

    python3 bench/team_bench.py                     # N = 200 rounds per repeat, 5 repeats
    python3 bench/team_bench.py --n 500 --repeats 9

Everything runs in this process on the scripted `fake/script` model (no network, no server):

* worker: one reply, `Final Answer: done`;
* boss + agent tool: `Action: worker[task]`, then `Final Answer: ok`; the worker runs
  through `runner.delegation.delegate` (the parent's budget, its trace, its checkpoint
  store);
* boss + calculator: the same boss with `- calculator` instead, doing `Action:
  calculator[1+1]`: what the boss costs around one plain tool call. The calculator is a sync
  tool, so its call also pays a hop to a worker thread and back, which the (async) agent
  tool does not;
* boss + async no-op: the same boss with `- noop`, an async tool with the agent tool's
  signature (`input`, a ToolContext) that returns "done", registered by an inline plugin:
  the baseline on the agent tool's own call path.

So the overhead per delegation = t(boss + agent tool) - t(boss + baseline tool) - t(worker
direct): what a delegation adds over running the worker yourself, given against each
baseline.

Each repeat builds the four agents afresh (not timed; the build is shown apart), warms each
up, then times N rounds of one run of each, interleaved in an order that rotates every round
(so drift and leftovers of the previous run hit every row alike), and takes the median and
the mean run; a figure is the median over the repeats, wall time (time.perf_counter) and CPU
time (time.process_time). The fake model plays its replies in order, once per model object,
so each spec holds enough replies for the warm-up and the N runs of one repeat.

Two configurations: traces and checkpoints at their defaults (on), and both off (`trace:
{enabled: false}`, `checkpoint: {enabled: false}`). The specs, traces and checkpoint database
live in a temporary project folder (an empty pyproject.toml), which is the current directory
while the benchmark runs.
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
from typing import Annotated, Any

from pydantic import Field

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
from _table import table  # noqa: E402

from runner import ToolContext  # noqa: E402

CONFIGS = {  # name -> what the specs add
    "traces + checkpoints on (defaults)": "",
    "traces + checkpoints off": "trace: {enabled: false}\ncheckpoint: {enabled: false}\n",
}
ROWS = ("worker direct", "boss + calculator", "boss + async no-op", "boss + agent tool")
BASELINES = ("boss + async no-op", "boss + calculator")


async def noop(input: Annotated[str, Field(description="the task")], context: ToolContext) -> str:
    """Does nothing, at once."""
    return "done"


class NoopPlugin:
    """Registers `noop` the way a third-party package would."""

    import runner as _runner

    @_runner.hookimpl
    def register_tools(self, register: Any) -> None:
        from runner import tool

        register(tool(noop, name="noop"))

SPEC = """\
version: 1
name: {name}
description: {description}
model: {{id: fake/script, options: {{replies: {replies}}}}}
loop: {{style: react, max_iterations: 4}}
memory: {{backend: none}}
{tools}{extra}"""


def _write_specs(folder: Path, extra: str, replies: int) -> dict[str, Path]:
    """The three specs of one configuration in `folder`, each with replies for `replies` runs."""
    folder.mkdir()
    specs = {
        "worker direct": ("worker", "Does the task.", ["Final Answer: done"], ""),
        "boss + calculator": ("boss", "Hands out work.",
                              ["Thought: x\nAction: calculator[1+1]", "Final Answer: ok"],
                              "tools:\n  - calculator\n"),
        "boss + async no-op": ("boss", "Hands out work.",
                               ["Thought: x\nAction: noop[task]", "Final Answer: ok"],
                               "tools:\n  - noop\n"),
        "boss + agent tool": ("boss", "Hands out work.",
                              ["Thought: x\nAction: worker[task]", "Final Answer: ok"],
                              "tools:\n  - agent: worker.yaml\n"),
    }
    paths = {}
    for n, (row, (name, description, script, tools)) in enumerate(specs.items()):
        path = folder / ("worker.yaml" if row == "worker direct" else f"boss{n}.yaml")
        path.write_text(SPEC.format(name=name, description=description, tools=tools, extra=extra,
                                    replies=json.dumps(script * replies)))
        paths[row] = path
    return paths


def _check(row: str, result: Any) -> None:
    want = ("done", 1, None) if row == "worker direct" else (
        "ok", 2, "2" if row == "boss + calculator" else "done")
    got = (result.answer, len(result.steps), result.steps[0].observation if want[2] else None)
    if result.status != "finished" or got != want:
        raise SystemExit(f"{row}: unexpected run {result.status} {got} (wanted {want}): "
                         f"{result.error}")


async def _timed(row: str, agent: Any) -> tuple[float, float]:
    """One run of `agent`, checked: (wall ms, CPU ms)."""
    w0, c0 = time.perf_counter(), time.process_time()
    result = await agent.run("task")
    w1, c1 = time.perf_counter(), time.process_time()
    _check(row, result)
    return (w1 - w0) * 1000, (c1 - c0) * 1000


async def _repeat(paths: dict[str, Path], n: int, warmup: int) -> dict[str, dict[str, float]]:
    """Build the agents, warm them up, then time N rounds of one run of each (in an order that
    rotates, so that drift and the previous run's leftovers hit every row alike); per row,
    the median and the mean per run."""
    import runner

    agents, built = {}, {}
    for row, path in paths.items():
        w0 = time.perf_counter()
        agents[row] = runner.Agent(runner.load_spec(path))
        built[row] = (time.perf_counter() - w0) * 1000
    try:
        for row, agent in agents.items():
            for _ in range(warmup):
                await _timed(row, agent)
        times: dict[str, tuple[list[float], list[float]]] = {row: ([], []) for row in ROWS}
        for i in range(n):
            for row in ROWS[i % len(ROWS):] + ROWS[:i % len(ROWS)]:
                wall, cpu = await _timed(row, agents[row])
                times[row][0].append(wall)
                times[row][1].append(cpu)
        return {row: {"wall": statistics.median(w), "cpu": statistics.median(c),
                      "wall_mean": statistics.fmean(w), "cpu_mean": statistics.fmean(c),
                      "build_wall": built[row]} for row, (w, c) in times.items()}
    finally:
        for agent in agents.values():
            await agent.close()


def _overhead(f: dict[str, dict[str, float]], key: str, baseline: str) -> float:
    return f["boss + agent tool"][key] - f[baseline][key] - f["worker direct"][key]


def _child(f: dict[str, dict[str, float]], baseline: str) -> float:
    return f["boss + agent tool"]["wall"] - f[baseline]["wall"]


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200,
                        help="timed rounds (one run of each row) per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="repeats (the median is shown)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs first, per repeat")
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON too")
    args = parser.parse_args()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    here = os.getcwd()
    import runner

    runner.register_plugin(NoopPlugin())
    raw: dict[str, list[dict[str, dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="team_bench-") as tmp:
        project = Path(tmp)
        (project / "pyproject.toml").write_text("")
        os.chdir(project)  # .runner/ (traces, runs.db) lands here
        try:
            for c, (config, extra) in enumerate(CONFIGS.items()):
                paths = _write_specs(project / f"config{c}", extra, args.warmup + args.n)
                raw[config] = [asyncio.run(_repeat(paths, args.n, args.warmup))
                               for _ in range(args.repeats)]
            traces = len(list((project / ".runner" / "traces").glob("*.jsonl")))
            db = sum(p.stat().st_size for p in (project / ".runner").glob("runs.db*"))
        finally:
            os.chdir(here)

    med = statistics.median
    print(f"{args.n} rounds (one run of each row, interleaved) per repeat after {args.warmup} "
          f"warm-up runs each; median of {args.repeats} repeats; fake/script model in process, "
          f"ReAct; wall = time.perf_counter, CPU = time.process_time.")
    print("Per run, ms (per repeat: the median run, and the mean run):\n")
    rows = []
    for config, reps in raw.items():
        for row in ROWS:
            rows.append([f"{config}: {row}", *(f"{med(r[row][k] for r in reps):.3f}" for k in (
                "wall", "cpu", "wall_mean", "cpu_mean")),
                f"{med(r[row]['build_wall'] for r in reps):.2f}"])
    table(["configuration: run", "wall", "CPU", "mean wall", "mean CPU", "Agent() build (untimed)"],
          rows)
    print("Overhead per delegation = boss + agent tool - boss + baseline tool - worker direct, "
          "ms (median of the repeats' differences, [min, max]); 'child in boss' = boss + agent "
          "tool - boss + baseline (median runs), to set beside worker direct:\n")
    rows = []
    for config, reps in raw.items():
        for baseline in BASELINES:
            rows.append([f"{config}, baseline {baseline.split(' + ')[1]}",
                         *(_spread([_overhead(r, k, baseline) for r in reps]) for k in (
                             "wall", "cpu", "wall_mean", "cpu_mean")),
                         f"{med(_child(r, baseline) for r in reps):.3f}",
                         f"{med(r['worker direct']['wall'] for r in reps):.3f}"])
    table(["configuration, baseline", "wall", "CPU", "mean wall", "mean CPU",
           "child in boss (wall)", "worker direct (wall)"], rows)
    print(f"Written in the run: {traces} trace files, checkpoint database {db / 1024:.0f} KiB "
          f"(with its WAL).")
    if args.json:
        print(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
