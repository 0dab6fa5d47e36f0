"""How late do deadlines fire? Each case makes the scripted server stall a run (a request
that is never answered, or a reply trickled slower than the deadline allows) and times the
run against the deadline that should end it: model.timeout_s or budget.wall_s.

    python bench/fault_deadlines.py                  # 5 repetitions, 1 s deadlines
    python bench/fault_deadlines.py --reps 10 --deadline 0.5
    python bench/fault_deadlines.py --no-cold        # skip the fresh-process cases

Both transports (direct, litellm) run every case after a warm-up call, so LiteLLM's lazy
imports are not counted; the "cold" cases then time the first run of a fresh process (the
way `runner run` meets a hanging server), where `import litellm` happens inside the run,
and the same with litellm imported before the run starts, which isolates that cost.

Prints one row per case (elapsed min / median / max, worst overshoot = elapsed - deadline)
and, last, the longest overshoot of all. Not a timed test: run it by hand.
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

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_MODE", "PRODUCTION")
os.environ.setdefault("OPENAI_API_KEY", "sk-bench-not-a-real-key")

import yaml  # noqa: E402

import runner  # noqa: E402
from runner.testing import ScriptedOpenAIServer  # noqa: E402

LONG = "Final Answer: " + "x" * 400


def cases(d: float) -> list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any], str]]:
    """(name, server item, model settings, budget, expected status); deadline = d."""
    return [
        ("hang, model.timeout_s", {"hang": True},
         {"timeout_s": d, "retries": 0}, {}, "model_timeout"),
        ("hang, budget.wall_s (timeout 30)", {"hang": True},
         {"timeout_s": 30, "retries": 0}, {"wall_s": d}, "budget_wall_s"),
        ("hang, budget.wall_s across retries", {"hang": True},
         {"timeout_s": d / 3, "retries": 10, "backoff_s": 0.05}, {"wall_s": d}, "budget_wall_s"),
        ("trickled stream, model.timeout_s", {"trickle": d / 4, "content": LONG},
         {"timeout_s": d, "retries": 0, "stream": True}, {}, "model_timeout"),
        ("trickled stream, budget.wall_s", {"trickle": d / 4, "content": LONG},
         {"timeout_s": 30, "retries": 0, "stream": True}, {"wall_s": d}, "budget_wall_s"),
        ("trickled body, model.timeout_s", {"trickle": d / 20, "content": LONG},
         {"timeout_s": d, "retries": 0}, {}, "model_timeout"),
        ("trickled body, budget.wall_s", {"trickle": d / 20, "content": LONG},
         {"timeout_s": 30, "retries": 0}, {"wall_s": d}, "budget_wall_s"),
    ]


def write_spec(directory: Path, url: str, model: dict[str, Any], budget: dict[str, Any]) -> Path:
    data: dict[str, Any] = {"version": 1, "name": "deadlines",
                            "model": {"id": "openai/scripted", "api_base": url, **model},
                            "loop": {"style": "react"}, "memory": {"backend": "none"}}
    if budget:
        data["budget"] = budget
    path = directory / "deadlines.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_once(path: Path) -> tuple[float, str]:
    agent = runner.Agent(runner.load_spec(path, []), checkpoints=False)
    started = time.monotonic()
    result = asyncio.run(agent.run("q"))
    return time.monotonic() - started, result.status


def set_transport(name: str) -> None:
    os.environ["RUNNER_TRANSPORT"] = "litellm" if name == "litellm" else "auto"


def child(args: argparse.Namespace) -> None:
    """One cold run in this fresh process: print its elapsed time and status as JSON."""
    set_transport(args.transport)
    if args.pre_import:
        from runner.models.litellm import import_litellm

        import_litellm()
    server = ScriptedOpenAIServer().start()
    server.record = False
    server.default = {"hang": True}
    with tempfile.TemporaryDirectory() as tmp:
        path = write_spec(Path(tmp), server.url, {"timeout_s": args.deadline, "retries": 0}, {})
        elapsed, status = run_once(path)
    server.stop()
    print(json.dumps({"elapsed": elapsed, "status": status}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--deadline", type=float, default=1.0, help="seconds (default 1)")
    parser.add_argument("--transports", default="direct,litellm")
    parser.add_argument("--no-cold", dest="cold", action="store_false")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--transport", default="direct", help=argparse.SUPPRESS)
    parser.add_argument("--pre-import", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    d = args.deadline
    server = ScriptedOpenAIServer().start()
    server.record = False
    rows: list[tuple[str, str, float, list[float], str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for transport in args.transports.split(","):
            set_transport(transport)
            for stream in (False, True):  # warm-up: LiteLLM's lazy imports, the session
                server.script("Final Answer: warm")
                run_once(write_spec(Path(tmp), server.url, {"stream": stream}, {}))
            for name, item, model, budget, expected in cases(d):
                path = write_spec(Path(tmp), server.url, model, budget)
                times, statuses = [], set()
                for _ in range(args.reps):
                    server.reset()
                    server.record = False
                    server.default = item
                    elapsed, status = run_once(path)
                    times.append(elapsed)
                    statuses.add(status)
                got = ",".join(sorted(statuses))
                rows.append((name, transport, d, times, got, expected))
    server.stop()

    if args.cold:
        for pre, label in ((False, "cold first call: hang, timeout_s"),
                           (True, "cold, litellm imported before the run")):
            for transport in args.transports.split(","):
                times, statuses = [], set()
                for _ in range(max(1, min(args.reps, 3))):
                    proc = subprocess.run([sys.executable, __file__, "--child", "--transport",
                                           transport, "--deadline", str(d),
                                           *(["--pre-import"] if pre else [])],
                                          capture_output=True, text=True, timeout=120)
                    out = json.loads(proc.stdout.strip().splitlines()[-1])
                    times.append(out["elapsed"])
                    statuses.add(out["status"])
                rows.append((label, transport, d, times, ",".join(sorted(statuses)),
                             "model_timeout"))

    print(f"{'case':<42}{'transport':<10}{'deadline':>9}{'min':>8}{'median':>8}{'max':>8}"
          f"{'overshoot':>11}  status")
    worst: tuple[float, str] = (float("-inf"), "")
    for name, transport, deadline, times, got, expected in rows:
        over = max(times) - deadline
        flag = "" if got == expected else f"  (expected {expected})"
        print(f"{name:<42}{transport:<10}{deadline:>8.2f}s{min(times):>7.3f}s"
              f"{statistics.median(times):>7.3f}s{max(times):>7.3f}s{over * 1000:>9.0f}ms  "
              f"{got}{flag}")
        if over > worst[0]:
            worst = (over, f"{name} [{transport}]")
    warm = [max(t) - dl for n, _, dl, t, _, _ in rows if not n.startswith("cold")]
    print(f"\nlongest overshoot, warm: {max(warm) * 1000:.0f} ms; "
          f"overall: {worst[0] * 1000:.0f} ms ({worst[1]}); "
          f"{args.reps} repetitions, deadline {d:g}s, {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
