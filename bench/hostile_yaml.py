"""How long does refusing a hostile spec take? Each case is a file the spec reader must refuse
(or, for the last ones, read) with a SPEC error; the script loads it in-process and prints the
CPU time and the error, so the bound can be checked against any PyYAML and libyaml:

    python bench/hostile_yaml.py                 # 3 repetitions
    python bench/hostile_yaml.py --reps 10
    /tmp/venv/bin/python bench/hostile_yaml.py --yaml-only   # another PyYAML (and pydantic)

The YAML cases call `runner.spec._yaml.load` (so they need only PyYAML and pydantic); the
spec cases (`extends:` chain, sub-agent fan-out) write files to a temporary folder and call
`load_spec` and `resolve`. Prints one row per case (CPU min / max, then the message) and, last,
the slowest case. Not a timed test: the suite asserts what is refused and where, and this
measures how fast; run it by hand, with each PyYAML the dependency range allows.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml

from runner.errors import SpecError
from runner.spec import _yaml

N = 10_000
BILLION_LAUGHS = "".join(
    [f"l0: &l0 [{', '.join(['lol'] * 9)}]\n"]
    + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10)])

YAML_CASES: dict[str, str] = {
    "10,000-deep flow sequence": "a: " + "[" * N + "]" * N + "\n",
    "10,000-deep flow mapping": "a: " + "{a: " * N + "1" + "}" * N + "\n",
    "deep flow after %YAML 1.3": "%YAML 1.3\n---\na: " + "[" * N + "]" * N + "\n",
    "deep flow, never closed": "a: " + "[" * (N * 2) + "\n",
    "700-deep block mappings": "".join(" " * i + "k:\n" for i in range(700)),
    "10,000 compact sequences": "- " * N + "x\n",
    "billion laughs": BILLION_LAUGHS,
    "string alias bomb (262 KB)": 'a: &b "' + "x" * 200_000 + '"\nb: [' + ", ".join(["*b"] * 6000)
                                  + "]\n",
    "120,000 small values": "a: [" + "1," * 120_000 + "]\n",
}


def _yaml_case(text: str) -> Callable[[], str]:
    def run() -> str:
        _yaml.load(text, "bad.yaml", {})
        return "loaded"
    return run


def _extends_chain(folder: Path) -> Callable[[], str]:
    from runner.spec import load_spec

    for i in range(1500):
        (folder / f"e{i}.yaml").write_text(f"extends: e{i + 1}.yaml\n" if i < 1499 else "{}\n")

    def run() -> str:
        load_spec(folder / "e0.yaml", env={})
        return "loaded"
    return run


def _fan_out(folder: Path) -> Callable[[], str]:
    """Six small specs, each naming the next eight times (37,449 loads before the cap)."""
    from runner.resolve import resolve
    from runner.spec import load_spec

    for i in range(6):
        tools = "".join(f"  - agent: {{spec: f{i + 1}.yaml, name: t{j}}}\n" for j in range(8))
        (folder / f"f{i}.yaml").write_text(f"name: f{i}\nmodel: {{id: fake/x}}\n"
                                           + (f"tools:\n{tools}" if i < 5 else ""))

    def run() -> str:
        resolve(load_spec(folder / "f0.yaml", env={}))
        return "loaded"
    return run


def _time(fn: Callable[[], str], reps: int) -> tuple[float, float, str]:
    times, message = [], ""
    for _ in range(reps):
        start = time.process_time()
        try:
            message = fn()
        except SpecError as exc:
            message = exc.render().splitlines()[0]
        times.append(time.process_time() - start)
    return min(times), max(times), message


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--yaml-only", action="store_true",
                        help="only the YAML cases (for a venv with just PyYAML and pydantic)")
    args = parser.parse_args()
    print(f"PyYAML {yaml.__version__}, libyaml {'yes' if yaml.__with_libyaml__ else 'no'}, "
          f"Python {sys.version.split()[0]}")
    print(f"{'case':30} {'cpu min':>8} {'cpu max':>8}  message")
    worst = (0.0, "")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "pyproject.toml").write_text("")
        os.environ["RUNNER_ROOT"] = str(root)
        cases: dict[str, Callable[[], str]] = {k: _yaml_case(v) for k, v in YAML_CASES.items()}
        if not args.yaml_only:
            cases["1,500-file extends chain"] = _extends_chain(root)
            cases["sub-agent fan-out 8^5"] = _fan_out(root)
        for name, fn in cases.items():
            low, high, message = _time(fn, args.reps)
            worst = max(worst, (high, name))
            print(f"{name:30} {low:7.3f}s {high:7.3f}s  {message[:90]}", flush=True)
    print(f"slowest: {worst[1]}, {worst[0]:.3f} s of CPU")


if __name__ == "__main__":
    main()
