"""Client cost per step of a tool-calling run: the runner next to a bare loop on the same path.

    python3 bench/step_overhead.py                 # defaults: 7 runs, 20 tool calls, both styles
    python3 bench/step_overhead.py --runs 15 --styles tools --transports direct

A scripted OpenAI-compatible server (`python -m runner.testing --tool-calls N`) runs in its own
process with zero delay, so its CPU is not counted. Each conversation is N native calls to the
calculator and then a final answer: N + 1 model calls, and a "step" here is one model call
(with N = 20: 21 steps, 20 of them followed by a tool call).

For each transport (`direct`: LiteLLM's translation over the runner's aiohttp session;
`litellm`: `litellm.acompletion`, forced with RUNNER_TRANSPORT=litellm, on the plain-httpx
route the runner sets up; `litellm-sdk`, not run by default: the same on LiteLLM's default
openai-SDK route) a fresh worker process:

* imports LiteLLM and reports the import time (the runner's lazy import, gc paused);
* runs the calculator agent (agents/calculator.yaml pointed at the server, loop.style=tools,
  and loop.style=react for the text ReAct style) through `runner.Agent(spec).run()`;
* runs a bare loop that makes the same calls on the same call path: same model parameters,
  same tools schema, the same messages growing the same way (for ReAct: the same prompt,
  re-sent with each step's reply and observation appended), with a trivial `a+b` tool call in
  between and nothing else (no events, budgets, parsing, validation, templates or cost);
* warms both up (first calls pay LiteLLM's lazy imports), then alternates runner and bare
  runs and reports the median per-step wall time and CPU time (time.process_time, every thread
  of the client process).

A last row shows a bare aiohttp loop without LiteLLM: the floor for any client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "agents" / "calculator.yaml"
# name -> environment of the worker
TRANSPORTS = {
    "direct": {"RUNNER_TRANSPORT": "auto"},
    # litellm.acompletion on the route the runner sets (EXPERIMENTAL_OPENAI_BASE_LLM_HTTP_HANDLER)
    "litellm": {"RUNNER_TRANSPORT": "litellm"},
    # litellm.acompletion on LiteLLM's default OpenAI route (the openai SDK)
    "litellm-sdk": {"RUNNER_TRANSPORT": "litellm", "RUNNER_LITELLM_OPENAI_SDK": "1"},
}


# --------------------------------------------------------------------------- worker


def _trivial_tool(expression: str) -> str:
    a, _, b = expression.partition("+")
    return str(int(a) + int(b))


async def _timed(make_run: Any, steps: int) -> tuple[float, float]:
    """One run: (wall ms, CPU ms) per step."""
    w0, c0 = time.perf_counter(), time.process_time()
    n = await make_run()
    w1, c1 = time.perf_counter(), time.process_time()
    assert n == steps, f"expected {steps} model calls, got {n}"
    return (w1 - w0) / steps * 1000, (c1 - c0) / steps * 1000


async def _measure(make_run: Any, steps: int, runs: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        await _timed(make_run, steps)
    walls, cpus = zip(*[await _timed(make_run, steps) for _ in range(runs)])
    return {"wall_ms": statistics.median(walls), "cpu_ms": statistics.median(cpus)}


async def _worker_style(args: argparse.Namespace, style: str) -> dict[str, Any]:
    import runner
    from runner.loop import STOP
    from runner.models.direct import DirectTransport
    from runner.models.litellm import import_litellm

    litellm = import_litellm()
    spec = runner.load_spec(SPEC, overrides=[
        "model.id=openai/scripted", f"model.api_base={args.url}", f"loop.style={style}",
        f"loop.max_iterations={args.tool_calls + 1}"])
    agent = runner.Agent(spec)
    model = agent.models[0]
    ms = spec.model
    steps = args.tool_calls + 1

    async def run_agent() -> int:
        result = await agent.run("go")
        assert result.status == "finished" and result.answer == "done", (result.status,
                                                                          result.error)
        return len(result.steps)

    # the bare loop's call: what a hand-written loop on the same path would send
    key = os.environ.get("OPENAI_API_KEY", "none")
    params: dict[str, Any] = {"max_tokens": ms.max_tokens, "timeout": ms.timeout_s,
                              "temperature": ms.temperature, "api_key": key}
    direct = DirectTransport.for_model(ms) if model.transport == "direct" else None
    if direct is not None:
        async def call(messages: list[dict[str, Any]], **kw: Any) -> Any:
            return await direct.acompletion(messages, **params, **kw)
    else:
        async def call(messages: list[dict[str, Any]], **kw: Any) -> Any:
            return await litellm.acompletion(model=ms.id, messages=messages, api_base=ms.api_base,
                                             **params, **kw)

    probe = agent.start("go")
    if style == "tools":
        tools = [t.schema() for t in agent.tools.values()]
        first = probe._native_messages([])

        async def run_bare() -> int:
            messages = [dict(m) for m in first]
            calls = 0
            while True:
                resp = await call(messages, tools=tools)
                calls += 1
                msg = resp.choices[0].message
                if not msg.tool_calls:
                    assert msg.content == "done"
                    return calls
                messages.append({"role": "assistant", "content": msg.content, "tool_calls": [
                    {"id": tc.id, "type": "function", "function": {
                        "name": tc.function.name, "arguments": tc.function.arguments}}
                    for tc in msg.tool_calls]})
                for tc in msg.tool_calls:
                    expr = json.loads(tc.function.arguments)["expression"]
                    messages.append({"role": "tool", "tool_call_id": tc.id,
                                     "content": _trivial_tool(expr)})
    else:
        base = agent.prompt("go", [], steps=[], native_tools=False)
        assert base.endswith("Thought:")
        head = base[:-len("Thought:")]
        action = re.compile(r"Action:\s*calculator\[(.*)\]")

        async def run_bare() -> int:
            scratch, calls = "", 0
            while True:
                resp = await call([{"role": "user", "content": head + scratch + "Thought:"}],
                                  stop=STOP)
                calls += 1
                text = resp.choices[0].message.content or ""
                m = action.search(text)
                if m is None:
                    assert "Final Answer: done" in text
                    return calls
                scratch += f"{text}\nObservation: {_trivial_tool(m.group(1))}\n"

    # warm up both (the first run pays LiteLLM's lazy imports), then alternate runs so that
    # drift hits both alike
    started = time.perf_counter()
    await _timed(run_agent, steps)
    first_run_s = time.perf_counter() - started
    for _ in range(args.warmup - 1):
        await _timed(run_agent, steps)
    for _ in range(args.warmup):
        await _timed(run_bare, steps)
    r_walls, r_cpus, b_walls, b_cpus = [], [], [], []
    for _ in range(args.runs):
        w, c = await _timed(run_agent, steps)
        r_walls.append(w)
        r_cpus.append(c)
        w, c = await _timed(run_bare, steps)
        b_walls.append(w)
        b_cpus.append(c)
    med = statistics.median
    return {"style": style, "transport": model.transport, "steps": steps,
            "first_run_s": first_run_s,
            "runner": {"wall_ms": med(r_walls), "cpu_ms": med(r_cpus)},
            "bare": {"wall_ms": med(b_walls), "cpu_ms": med(b_cpus)}}


async def _aiohttp_floor(args: argparse.Namespace) -> dict[str, Any]:
    """A bare aiohttp loop with the same messages and tools, no LiteLLM at all."""
    import aiohttp

    import runner

    spec = runner.load_spec(SPEC, overrides=[
        "model.id=openai/scripted", f"model.api_base={args.url}", "loop.style=tools"])
    agent = runner.Agent(spec)
    tools = [t.schema() for t in agent.tools.values()]
    first = agent.start("go")._native_messages([])
    steps = args.tool_calls + 1
    async with aiohttp.ClientSession() as session:
        async def run_bare() -> int:
            messages = [dict(m) for m in first]
            calls = 0
            while True:
                body = {"model": "scripted", "messages": messages, "tools": tools,
                        "max_tokens": 96, "temperature": 0.0}
                async with session.post(f"{args.url}/chat/completions", data=json.dumps(body),
                                        headers={"Content-Type": "application/json",
                                                 "Authorization": "Bearer none"}) as r:
                    reply = json.loads(await r.read())
                calls += 1
                msg = reply["choices"][0]["message"]
                if not msg.get("tool_calls"):
                    return calls
                messages.append({"role": "assistant", "tool_calls": msg["tool_calls"]})
                for tc in msg["tool_calls"]:
                    expr = json.loads(tc["function"]["arguments"])["expression"]
                    messages.append({"role": "tool", "tool_call_id": tc["id"],
                                     "content": _trivial_tool(expr)})

        return {"style": "tools", "transport": "aiohttp (no LiteLLM)", "steps": steps,
                "bare": await _measure(run_bare, steps, args.runs, args.warmup)}


def worker(args: argparse.Namespace) -> None:
    os.environ.setdefault("OPENAI_API_KEY", "none")
    import runner.models.litellm

    t0 = time.perf_counter()
    runner.models.litellm.import_litellm()
    import_s = time.perf_counter() - t0

    async def main() -> list[dict[str, Any]]:
        if args.floor:
            return [await _aiohttp_floor(args)]
        return [await _worker_style(args, style) for style in args.styles]

    rows = asyncio.run(main())
    print(json.dumps({"import_s": import_s, "rows": rows}))


# --------------------------------------------------------------------------- driver


@contextlib.contextmanager
def scripted_server(tool_calls: int) -> Iterator[str]:
    """The scripted server in its own process for the block; yields its base URL."""
    proc = subprocess.Popen([sys.executable, "-m", "runner.testing", "--port", "0",
                             "--tool-calls", str(tool_calls)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http"):
            raise SystemExit(f"the scripted server did not start: {url!r}")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def bench_parser(doc: str, runs: int, warmup: int) -> argparse.ArgumentParser:
    """The options every overhead benchmark takes (and the hidden ones of its worker)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=runs, help="measured runs per row (median)")
    parser.add_argument("--warmup", type=int, default=warmup, help="unmeasured runs first (>= 1)")
    parser.add_argument("--tool-calls", type=int, default=20,
                        help="tool calls per conversation (steps = this + 1)")
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON too")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    return parser


def run_benchmark_worker(script: str, args: argparse.Namespace, url: str, extra: list[str],
                         env: dict[str, str] | None = None, what: str = "worker"
                         ) -> dict[str, Any]:
    """Run `script --worker` against the server at `url` in a clean environment (no key, no
    transport or OpenTelemetry settings from ours) and return the JSON it prints last."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k not in (
        "RUNNER_TRANSPORT", "RUNNER_LITELLM_OPENAI_SDK", "EXPERIMENTAL_OPENAI_BASE_LLM_HTTP_HANDLER")}
    clean.update({"OPENAI_API_KEY": "none", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                  "LITELLM_MODE": "PRODUCTION", **(env or {})})
    cmd = [sys.executable, str(Path(script).resolve()), "--worker", "--url", url, "--runs",
           str(args.runs), "--warmup", str(args.warmup), "--tool-calls", str(args.tool_calls),
           *extra]
    with tempfile.TemporaryDirectory(prefix="runner-bench-") as scratch:  # the runs' .runner/
        Path(scratch, "pyproject.toml").write_text("")
        out = subprocess.run(cmd, cwd=scratch, env=clean, capture_output=True, text=True,
                             timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"{what} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_worker(args: argparse.Namespace, url: str, transport: str | None) -> dict[str, Any]:
    extra = ["--styles", ",".join(args.styles), *([] if transport else ["--floor"])]
    return run_benchmark_worker(__file__, args, url, extra, TRANSPORTS[transport] if transport
                                else None, f"worker ({transport or 'floor'})")


def main() -> None:
    parser = bench_parser(__doc__, runs=7, warmup=2)
    parser.add_argument("--styles", default="tools,react", help="tools, react, or both")
    parser.add_argument("--transports", default="direct,litellm",
                        help="comma-separated: direct, litellm, litellm-sdk")
    parser.add_argument("--floor", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.styles = [s for s in args.styles.split(",") if s]
    args.warmup = max(1, args.warmup)
    if args.worker:
        worker(args)
        return
    transports = [t for t in args.transports.split(",") if t]
    for t in transports:
        if t not in TRANSPORTS:
            parser.error(f"unknown transport {t!r}; use {', '.join(TRANSPORTS)}")

    with scripted_server(args.tool_calls) as url:
        results = {t: run_worker(args, url, t) for t in transports}
        floor = run_worker(args, url, None)

    steps = args.tool_calls + 1
    print(f"{steps} steps per run ({args.tool_calls} native tool calls + final answer; ReAct: "
          f"{args.tool_calls} text actions + final answer), median of {args.runs} runs after "
          f"{args.warmup} warm-up runs; server in its own process, zero delay.")
    print("Per step (one model call and what follows it), client process only:\n")
    head = (f"{'style':6} {'transport':22} {'runner wall':>11} {'bare wall':>10} {'ratio':>6} "
            f"{'runner CPU':>11} {'bare CPU':>9} {'ratio':>6} {'overhead CPU':>12}")
    print(head)
    print("-" * len(head))
    for t, res in results.items():
        for row in res["rows"]:
            r, b = row["runner"], row["bare"]
            label = t if row["transport"] == t.split("-")[0] else f"{t} (got {row['transport']})"
            print(f"{row['style']:6} {label:22} {r['wall_ms']:9.2f}ms {b['wall_ms']:8.2f}ms "
                  f"{r['wall_ms'] / b['wall_ms']:6.2f} {r['cpu_ms']:9.2f}ms {b['cpu_ms']:7.2f}ms "
                  f"{r['cpu_ms'] / b['cpu_ms']:6.2f} {r['cpu_ms'] - b['cpu_ms']:10.2f}ms")
    for row in floor["rows"]:
        b = row["bare"]
        print(f"{row['style']:6} {row['transport']:22} {'':>11} {b['wall_ms']:8.2f}ms {'':>6} "
              f"{'':>11} {b['cpu_ms']:7.2f}ms")
    print("\nNot in the figures above:")
    print("  import litellm (runner.models.litellm.import_litellm, gc paused): " + ", ".join(
        f"{res['import_s']:.2f}s ({t} worker)" for t, res in results.items()))
    print("  first run of the agent, with LiteLLM's lazy imports: " + ", ".join(
        f"{row['first_run_s']:.2f}s ({t}, {row['style']})" for t, res in results.items()
        for row in res["rows"]))
    if args.json:
        print(json.dumps({"results": results, "floor": floor}, indent=1))


if __name__ == "__main__":
    main()
