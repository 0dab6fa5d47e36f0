"""How often the shipped examples answer right on the embedded model: the labelled set in
bench/answer_set.json (arithmetic of the kinds people ask on day one: percentages, powers,
subtraction in words, multi-step expressions, division into shares, word problems,
decimals), run through agents/calculator.yaml and agents/researcher.yaml on
`local/gemma-3-270m`, and the share each answers right, by kind, with the median run time.

    python3 bench/answer_quality.py                      # both agents, the whole set
    python3 bench/answer_quality.py --agents calculator --kinds percent,power
    python3 bench/answer_quality.py --show wrong         # each wrong answer, with its steps
    python3 bench/answer_quality.py --set other.json --json

A run is right when its final answer states the expected number: the last number in the
answer that is not already in the question equals it (within 1e-6, relative), or, when the
answer holds no new number, one of its numbers does (for "Divide 81 by 9": "9"). Thousands
separators, currency signs and percent signs are read as part of a number ("1,064",
"$2.40", "30%"); ordinals ("4th") are not numbers. A run that does not finish is wrong.

Each agent is built once (runner.Agent on the shipped spec, its defaults on: traces and
checkpoints go to a scratch folder) and runs the questions one after another, in order,
after one warm-up run (the model's load is not counted). Time is wall time per run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import table  # noqa: E402  (bench/_table.py)

ROOT = Path(__file__).resolve().parent.parent
AGENTS = {"calculator": ROOT / "agents" / "calculator.yaml",
          "researcher": ROOT / "agents" / "researcher.yaml"}
SET = Path(__file__).resolve().parent / "answer_set.json"

_NUMBER = re.compile(r"(?<![\w.])[-−]?\$?(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?![\w])")
"""A number as people write it: 12, -3, 1,064, 2.40, $5; not the 4 of "4th" nor a word's
digits."""


def numbers(text: str) -> list[float]:
    """The numbers of a text, in order."""
    found = []
    for m in _NUMBER.finditer(text.replace("%", " ")):
        whole, frac = m.group(1).replace(",", ""), m.group(2) or ""
        value = float(whole + frac)
        found.append(-value if m.group(0).lstrip("$").startswith(("-", "−")) else value)
    return found


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def graded(question: str, answer: str | None, expected: float) -> bool:
    """Whether `answer` states `expected` (see the module)."""
    if not answer:
        return False
    given = numbers(answer)
    asked = numbers(question) + [float(d) for d in  # and the 4 of "the 4th power"
                                 re.findall(r"(\d+)(?:st|nd|rd|th)\b", question)]
    new = [n for n in given if not any(_same(n, q) for q in asked)]
    if new:
        return _same(new[-1], expected)
    return any(_same(n, expected) for n in given)


async def run_set(name: str, questions: list[dict[str, Any]], show: str,
                  overrides: list[str]) -> list[dict[str, Any]]:
    import runner

    agent = runner.Agent(runner.load_spec(AGENTS[name], overrides))
    rows = []
    async with agent:
        await agent.run("What is 1 plus 1?")  # the model's load, not counted
        for item in questions:
            t = time.perf_counter()
            r = await agent.run(item["question"])
            wall = time.perf_counter() - t
            ok = r.status == "finished" and graded(item["question"], str(r.answer or ""),
                                                   float(item["answer"]))
            rows.append({"agent": name, "kind": item["kind"], "question": item["question"],
                         "expected": item["answer"], "answer": r.answer, "status": r.status,
                         "right": ok, "wall_s": wall, "steps": len(r.steps)})
            if show == "all" or (show == "wrong" and not ok):
                steps = "; ".join(f"{s.action}[{s.input}] -> {s.observation}" if s.action
                                  else (s.thought or "") for s in r.steps)
                mark = "right" if ok else "WRONG"
                print(f"{mark:5}  {name}: {item['question']}  expected {item['answer']}, "
                      f"got {r.answer!r} ({r.status}; {steps})", file=sys.stderr)
    return rows


def report(rows: list[dict[str, Any]]) -> None:
    by_agent: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_agent[row["agent"]].append(row)
    kinds = list(dict.fromkeys(row["kind"] for row in rows))
    out = []
    for name, mine in by_agent.items():
        right = sum(r["right"] for r in mine)
        walls = sorted(r["wall_s"] for r in mine)
        cells = []
        for kind in kinds:
            k = [r for r in mine if r["kind"] == kind]
            cells.append(f"{sum(r['right'] for r in k)}/{len(k)}" if k else "")
        out.append([name, f"{right}/{len(mine)}", f"{right / len(mine):.0%}", *cells,
                    f"{statistics.median(walls):.2f}",
                    f"{walls[min(len(walls) - 1, int(0.9 * len(walls)))]:.2f}"])
    table(["agent", "right", "share", *kinds, "median s", "p90 s"], out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", default=",".join(AGENTS), help="calculator, researcher")
    parser.add_argument("--set", default=str(SET), help="the labelled questions (JSON)")
    parser.add_argument("--kinds", default="", help="only these kinds (a comma list)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N questions")
    parser.add_argument("--show", choices=("none", "wrong", "all"), default="none",
                        help="print each wrong (or every) answer on stderr")
    parser.add_argument("--json", action="store_true", help="print every run as JSON too")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="a spec setting for both agents, as runner run --set takes it "
                             "(model.options.grammar=off)")
    args = parser.parse_args()
    questions = json.loads(Path(args.set).read_text())
    if args.kinds:
        wanted = set(args.kinds.split(","))
        questions = [q for q in questions if q["kind"] in wanted]
    if args.limit:
        questions = questions[:args.limit]
    names = [n for n in args.agents.split(",") if n]
    for n in names:
        if n not in AGENTS:
            parser.error(f"unknown agent {n!r}; use {', '.join(AGENTS)}")
    os.environ.pop("RUNNER_MODEL", None)  # the shipped default: the embedded model
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="answer-quality-") as scratch:
        Path(scratch, "pyproject.toml").write_text("")
        os.chdir(scratch)  # the runs' .runner/ (traces, checkpoints) lands here
        for name in names:
            rows += asyncio.run(run_set(name, questions, args.show, args.override))
    print(f"{len(questions)} questions from {args.set}, on the embedded model "
          f"(local/gemma-3-270m), one run at a time"
          + "".join(f", {o}" for o in args.override))
    report(rows)
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
