"""What conversation memory costs: per-operation latency of each backend, and what summary
memory does to a long session's prompt and to a run's time.

    export LITELLM_LOCAL_MODEL_COST_MAP=True
    python3 bench/memory_bench.py                 # about 10 seconds
    python3 bench/memory_bench.py --appends 500 --loads 100 --sizes 10,1000

Everything is written under a private temporary folder (a project root with an empty
pyproject.toml, the current directory while agents run), removed at the end; the
redis-server it starts (on a free port, `--save "" --appendonly no`) is stopped at the end.

1. backends: `buffer` (BufferMemory on a store of its own), `sqlite` (SQLiteMemory, a file in
   the temporary folder) and `redis` (RedisMemory on the local server), each in one asyncio
   loop of its own. For each size N, a fresh session is filled with N messages (one append),
   then timed: `load` of the whole session and `load(window=20)` (--loads times; --big-loads
   at 10,000 messages and more), then `append` of one turn (a user and an assistant message
   of about 200 characters) --appends times, so the session grows from N to N + 2 x appends.
   A few unmeasured operations on another session come first (connection, imports).
2. summary prompt: an agent on `fake/script` (ReAct, sqlite memory, session `s`) over a
   session seeded with 200 turns (400 messages of 40-80 words of varied text), asked one
   question (a) without `summarize` and (b) with `summarize: {after_tokens: 3000}` (the fake
   model's first reply, about 100 words, becomes the summary; the second is the answer). The
   prompt is the messages of the agent's own model call (`model.calls`): its characters,
   `runner.summary.estimate_tokens` of them and characters / 4, and the run's
   usage.prompt_tokens as the fake model reports it (len // 4 per call, the summary call's
   included). One unmeasured run first pays the imports.
3. reused summary: the time from `agent.start(...)` to the answer of a run whose stored summary
   still covers the old turns (each run on a fresh file holding the 400 messages and the
   summary record run (b) stored, so nothing new has grown old), against the same run without
   `summarize`, and a run that writes its summary (nothing stored yet); median and p95 of
   --runs, the cases taken in turn. Agents are built outside the timing (the fake model's
   script is used up by one run); checkpoints and the trace file are on, as by default.

Timings depend on the machine and its load (the header prints the load average); no figure
is checked. A run that fails, or a summary that is not reused where it should be, ends the
script with the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import yaml  # noqa: E402
from _table import table  # bench/_table.py (the script's folder is on sys.path)

SUMMARY = (
    "The user, Maria, is planning a two-week trip to Portugal in late May with her partner "
    "Tom and a budget of about 3,000 euros. They chose Lisbon for five nights, then Porto for "
    "four, then the Douro valley; Tom prefers trains to driving. The assistant suggested the "
    "Alfa Pendular train, a port tasting in Vila Nova de Gaia and a day in Sintra. Maria is "
    "vegetarian and wants quiet hotels near the centre. Separately they debugged a Python "
    "script that parses bank CSV exports: the date column needed dayfirst parsing. Open "
    "questions: whether to rent a car for the Douro, and travel insurance for Tom's camera.")

# --------------------------------------------------------------------------- text


_WORDS = {
    "who": ["I", "my sister", "our team", "the landlord", "my manager", "Tom", "the client",
            "my neighbour", "the new intern", "we"],
    "verb": ["need to plan", "want to compare", "keep forgetting", "tried to fix",
             "are thinking about", "have to finish", "would like to understand",
             "were asked to review", "can't decide on", "just started"],
    "thing": ["the trip to Lisbon", "the quarterly budget", "a vegetarian lasagne",
              "the Python script that parses CSV files", "a birthday present for Anna",
              "the train times to Porto", "our home insurance", "the garden fence",
              "a talk about databases", "the marathon training plan", "the flat's heating",
              "a Spanish course", "the car's brakes", "the wedding guest list"],
    "when": ["before Friday", "next month", "by the end of May", "this weekend",
             "after the holidays", "tomorrow morning", "in about three weeks", "tonight"],
    "detail": ["it should cost less than {n} euros", "there are {n} people involved",
               "the last attempt took {n} hours", "we have {n} days left",
               "the deadline moved by {n} days", "the file has {n} thousand rows",
               "it needs to fit in {n} square metres", "about {n} percent is already done"],
    "ask": ["What would you do first?", "Is that realistic?", "Can you suggest an order?",
            "What am I missing?", "Which option is cheaper?", "How long should it take?",
            "Could you explain why?", "Should I ask someone for help?"],
    "advice": ["Start with the part that blocks everything else", "Write down the fixed costs "
               "first", "Book the cheapest refundable option now", "Split it into three small "
               "steps", "Check the official timetable before paying", "Ask for a second quote",
               "Keep a short list and decide by the weekend", "Test it on a small sample"],
    "reason": ["because prices rise closer to the date", "since the rest depends on it",
               "so that nothing is lost if plans change", "because the error is easier to see "
               "that way", "as most people underestimate this part", "so you can compare like "
               "with like"],
}


def _pick(rng: random.Random, key: str) -> str:
    return rng.choice(_WORDS[key]).replace("{n}", str(rng.randint(2, 90)))


def _sentences(rng: random.Random, words: tuple[int, int], sentence: Any) -> str:
    """Sentences from `sentence()` until the text has a length within `words`, cut there."""
    out: list[str] = []
    target = rng.randint(*words)
    while len(out) < target:
        out += sentence().split()
    return " ".join(out[:target])


def user_text(rng: random.Random, words: tuple[int, int]) -> str:
    """A user message of varied sentences."""
    return _sentences(rng, words, lambda: (
        f"{_pick(rng, 'who')} {_pick(rng, 'verb')} {_pick(rng, 'thing')} "
        f"{_pick(rng, 'when')}, and {_pick(rng, 'detail')}. {_pick(rng, 'ask')}"))


def assistant_text(rng: random.Random, words: tuple[int, int]) -> str:
    """An assistant reply of varied advice."""
    return _sentences(rng, words, lambda: (
        f"{_pick(rng, 'advice')} {_pick(rng, 'reason')}. For {_pick(rng, 'thing')}, "
        f"note that {_pick(rng, 'detail')}, so plan it {_pick(rng, 'when')}."))


def turns(count: int, words: tuple[int, int], seed: int) -> list[dict[str, str]]:
    """`count` turns (2 x count messages) of generated conversation."""
    rng = random.Random(seed)
    return [m for _ in range(count) for m in (
        {"role": "user", "content": user_text(rng, words)},
        {"role": "assistant", "content": assistant_text(rng, words)})]


def turn_of_chars(rng: random.Random, chars: int = 200) -> list[dict[str, str]]:
    """One turn whose two messages are `chars` characters each."""
    return [{"role": "user", "content": user_text(rng, (60, 60))[:chars]},
            {"role": "assistant", "content": assistant_text(rng, (60, 60))[:chars]}]


# --------------------------------------------------------------------------- helpers


def stats_ms(samples: list[float]) -> tuple[float, float]:
    """Median and p95 of samples in seconds, in ms."""
    ms = sorted(s * 1000 for s in samples)
    p95 = statistics.quantiles(ms, n=100)[94] if len(ms) > 1 else ms[0]
    return statistics.median(ms), p95


class RedisServer:
    """A redis-server of our own on a free port, its files in `folder`; `stop()` ends it."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(folder), "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"redis-server exited with {self.proc.returncode}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit("redis-server did not start within 30 s")
            time.sleep(0.05)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


# --------------------------------------------------------------------------- 1. backends


def make_memory(backend: str, folder: Path, redis_url: str | None) -> Any:
    from runner.memory import BufferMemory, SQLiteMemory
    from runner.memory_redis import RedisMemory, RedisOptions

    if backend == "buffer":
        return BufferMemory(store={})
    if backend == "sqlite":
        return SQLiteMemory(folder / "bench-memory.db")
    assert redis_url is not None
    return RedisMemory(RedisOptions(url=redis_url, prefix="bench:memory:"))


async def bench_backend(backend: str, folder: Path, redis_url: str | None,
                        args: argparse.Namespace) -> list[list[str]]:
    memory = make_memory(backend, folder, redis_url)
    rng = random.Random(7)
    rows: list[list[str]] = []
    try:
        for _ in range(20):  # connection, imports, the table's creation
            await memory.append("warmup", turn_of_chars(rng))
            await memory.load("warmup")
        for size in args.sizes:
            session = f"n{size}"
            filler = [m for _ in range(size // 2) for m in turn_of_chars(rng)]
            await memory.append(session, filler)
            if len(await memory.load(session)) != size:
                raise SystemExit(f"{backend}: the session does not hold {size} messages")
            loads = args.big_loads if size >= 10_000 else args.loads
            for label, window in (("load (all)", None), ("load (window=20)", 20)):
                samples = []
                for _ in range(loads):
                    t0 = time.perf_counter()
                    await memory.load(session, window)
                    samples.append(time.perf_counter() - t0)
                med, p95 = stats_ms(samples)
                rows.append([backend, f"{size:,}", label, str(loads), f"{med:.4f}",
                             f"{p95:.4f}"])
            batch = [turn_of_chars(rng) for _ in range(args.appends)]
            samples = []
            for turn in batch:
                t0 = time.perf_counter()
                await memory.append(session, turn)
                samples.append(time.perf_counter() - t0)
            med, p95 = stats_ms(samples)
            rows.append([backend, f"{size:,}", "append (1 turn)", str(args.appends),
                         f"{med:.4f}", f"{p95:.4f}"])
    finally:
        await memory.close()
    return rows


def section_backends(folder: Path, redis_url: str, args: argparse.Namespace) -> None:
    rows: list[list[str]] = []
    for backend in args.backends:
        rows += asyncio.run(bench_backend(backend, folder / backend, redis_url, args))
    print("1. Memory operations, per call (appends grow the session from N by 2 messages each; "
          "messages ~200 characters)\n")
    table(["backend", "N msgs", "operation", "reps", "median ms", "p95 ms"], rows)


# --------------------------------------------------------------------------- 2. and 3. agents


class Project:
    """Spec files and memory databases of the agent runs, in the project root `root`."""

    def __init__(self, root: Path, history: list[dict[str, str]]) -> None:
        self.root, self.history, self.count = root, history, 0

    def spec(self, replies: list[str], summarize: dict[str, Any] | None,
             db: Path, **extra: Any) -> Path:
        memory: dict[str, Any] = {"backend": "sqlite", "path": str(db), "session": "s",
                                  **extra}
        if summarize is not None:
            memory["summarize"] = summarize
        self.count += 1
        path = self.root / f"agent{self.count}.yaml"
        path.write_text(yaml.safe_dump({
            "version": 1, "name": "talker",
            "model": {"id": "fake/script", "options": {"replies": replies}},
            "loop": {"style": "react"}, "memory": memory}, sort_keys=False))
        return path

    async def fresh_db(self, summary_record: list[dict[str, str]] | None = None) -> Path:
        """A new database holding the seeded history (and a stored summary, if given)."""
        from runner.memory import SQLiteMemory
        from runner.summary import SUMMARY_SUFFIX

        self.count += 1
        db = self.root / f"memory{self.count}.db"
        store = SQLiteMemory(db)
        try:
            await store.append("s", self.history)
            if summary_record:
                await store.append("s" + SUMMARY_SUFFIX, summary_record)
        finally:
            await store.close()
        return db


async def timed_run(spec_path: Path, question: str) -> tuple[Any, Any, list[Any], float]:
    """(result, the fake model, events, seconds from start to the answer) of one run."""
    import runner

    events: list[Any] = []
    async with runner.Agent(runner.load_spec(spec_path)) as agent:
        t0 = time.perf_counter()
        result = await agent.start(question).execute(listener=events.append)
        elapsed = time.perf_counter() - t0
        if not result.ok or result.answer != "ok":
            raise SystemExit(f"{spec_path.name}: the run failed: {result.status} {result.error}")
        return result, agent.models[0], events, elapsed


def summarized(events: list[Any]) -> Any:
    from runner import events as ev

    found = [e for e in events if isinstance(e, ev.MemorySummarized)]
    return found[0] if found else None


async def section_agents(root: Path, args: argparse.Namespace) -> None:
    from runner.memory import SQLiteMemory
    from runner.summary import SUMMARY_SUFFIX, estimate_tokens

    history = turns(200, (40, 80), seed=11)
    project = Project(root, history)
    question = "Given all that, what should I do first this week?"
    plain = ["Final Answer: ok"]
    with_summary = [SUMMARY, "Final Answer: ok"]
    summarize = {"after_tokens": 3000}

    await timed_run(project.spec(plain, None, await project.fresh_db()), question)  # imports

    rows: list[list[str]] = []
    record: list[dict[str, str]] = []
    for label, replies, summ in (("(a) without summary", plain, None),
                                 ("(b) summarize after 3000", with_summary, summarize)):
        db = await project.fresh_db()
        result, model, events, elapsed = await timed_run(project.spec(replies, summ, db),
                                                         question)
        prompt = model.calls[-1]
        chars = sum(len(str(m.get("content") or "")) for m in prompt)
        event = summarized(events)
        if summ is not None:
            if event is None or event.reused or event.error:
                raise SystemExit(f"{label}: no summary was written ({event})")
            if SUMMARY not in prompt[0]["content"]:
                raise SystemExit(f"{label}: the summary is not in the agent's prompt")
            store = SQLiteMemory(db)
            try:
                record = await store.load("s" + SUMMARY_SUFFIX)
            finally:
                await store.close()
        kept = "" if event is None else f"{len(history) - event.messages}"
        rows.append([label, str(len(model.calls)), kept or str(len(history)), f"{chars:,}",
                     f"{estimate_tokens(prompt):,}", f"{chars // 4:,}",
                     f"{result.usage.prompt_tokens:,}", f"{elapsed * 1000:.1f}"])
    words = [len(str(m["content"]).split()) for m in history]
    print(f"2. The prompt of one question after 200 seeded turns ({len(history)} messages, "
          f"{min(words)}-{max(words)} words each, "
          f"{sum(len(m['content']) for m in history):,} characters, estimate_tokens "
          f"{estimate_tokens(history):,}); fake/script, ReAct, sqlite\n")
    table(["case", "model calls", "msgs whole", "prompt chars", "estimate_tokens", "chars/4",
           "usage.prompt_tokens", "run ms"], rows)
    print("   prompt = the messages of the agent's own call; usage.prompt_tokens = the run's, "
          "the summary call included\n")

    samples: dict[str, list[float]] = {"without summary": [], "summary reused": [],
                                       "summary written": []}
    cases = [("without summary", plain, None, None),
             ("summary reused", plain, summarize, record),
             ("summary written", with_summary, summarize, None)]
    for _ in range(args.runs):
        for label, replies, summ, stored in cases:
            spec = project.spec(replies, summ, await project.fresh_db(stored))
            _, model, events, elapsed = await timed_run(spec, question)
            event = summarized(events)
            if summ is not None and (event is None or event.reused != (stored is not None)):
                raise SystemExit(f"{label}: expected reused={stored is not None}, got {event}")
            samples[label].append(elapsed)
    base = statistics.median(samples["without summary"])
    rows = []
    for label, s in samples.items():
        med, p95 = stats_ms(s)
        rows.append([label, str(len(s)), f"{med:.2f}", f"{p95:.2f}",
                     f"{med - base * 1000:+.2f}"])
    print(f"3. One question (one step) on the same 400-message session: from agent.start() to "
          f"the answer, {args.runs} runs of each, in turn\n")
    table(["case", "runs", "median ms", "p95 ms", "vs without ms"], rows)
    await section_recall(project, question, args)


async def section_recall(project: Any, question: str, args: argparse.Namespace) -> None:
    """4. What recall adds to a step: window 20 alone against window 20 with recall k 4, on
    the 200-turn session: the first run of a process (embedder load and every old turn
    embedded), a run whose turns are all in the vector cache, and a new question each time."""
    from runner.recall import CACHE

    plain = ["Final Answer: ok"]
    db = await project.fresh_db()
    window = {"window": 20}
    recall = {"window": 20, "recall": {"k": 4}}
    CACHE.unlink(missing_ok=True)
    first: list[list[str]] = []
    _, _, _, cold = await timed_run(project.spec(plain, None, db, **recall), question)
    first.append(["recall, first run (model loaded, 190 turns embedded)", "1",
                  f"{cold * 1000:.1f}", "-"])
    samples: dict[str, list[float]] = {"window 20": [], "window 20 + recall k 4": []}
    for i in range(args.runs):
        asked = f"{question} (variant {i})"  # a new question: its embedding is not cached
        for label, extra in (("window 20", window), ("window 20 + recall k 4", recall)):
            _, _, _, elapsed = await timed_run(project.spec(plain, None, db, **extra), asked)
            samples[label].append(elapsed)
    base = statistics.median(samples["window 20"])
    rows = first + [[label, str(len(v)), f"{stats_ms(v)[0]:.2f}",
                     f"{(statistics.median(v) - base) * 1000:+.2f}"]
                    for label, v in samples.items()]
    print(f"4. Recall on the same session (window 20, k 4; each run adds a turn): from "
          f"agent.start() to the answer, {args.runs} runs of each, in turn\n")
    table(["case", "runs", "median ms", "vs window ms"], rows)


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="buffer,sqlite,redis",
                        help="comma-separated: buffer, sqlite, redis")
    parser.add_argument("--sizes", default="10,1000,10000",
                        help="messages already in the session, comma-separated")
    parser.add_argument("--appends", type=int, default=200, help="timed appends per size")
    parser.add_argument("--loads", type=int, default=50, help="timed loads per size and kind")
    parser.add_argument("--big-loads", type=int, default=50,
                        help="timed loads at 10,000 messages and more")
    parser.add_argument("--runs", type=int, default=20, help="section 3: runs of each case")
    parser.add_argument("--skip", default="", help="comma-separated: backends, agents")
    args = parser.parse_args()
    args.backends = [b for b in args.backends.split(",") if b]
    for b in args.backends:
        if b not in ("buffer", "sqlite", "redis"):
            parser.error(f"unknown backend {b!r}; use buffer, sqlite, redis")
    args.sizes = [int(n) for n in args.sizes.split(",") if n]
    skip = set(args.skip.split(","))

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    folder = Path(tempfile.mkdtemp(prefix="memory-bench-"))
    server: RedisServer | None = None
    cwd = os.getcwd()
    started = time.perf_counter()
    try:
        if "backends" not in skip:
            if "redis" in args.backends:
                server = RedisServer(folder / "redis")
            section_backends(folder, server.url if server else "", args)
        if "agents" not in skip:
            root = folder / "project"
            root.mkdir()
            (root / "pyproject.toml").write_text("")
            os.chdir(root)  # checkpoints and traces go under root/.runner
            asyncio.run(section_agents(root, args))
    finally:
        os.chdir(cwd)
        if server is not None:
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    print(f"total {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
