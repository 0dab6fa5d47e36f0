"""What the folder search backends (local, semantic, hybrid) cost to build, refresh and
query, and how well they find the answer to a paraphrased question.

    python3 bench/search_bench.py                       # knowledge/ and 10,000 generated docs
    python3 bench/search_bench.py --docs 2000 --semantic-docs 500 --backends local,hybrid
    python3 bench/search_bench.py --recall --verbose    # bench/recall_set.json

Two corpora, both under one temporary directory (nothing is written into the repo): the
repo's `knowledge/` (copied), and N generated Markdown documents (`--docs`; a fixed seed;
1-3 headings each, so about 2N passages; words drawn Zipf-like from a technical vocabulary
and a long tail of made-up names). Embedding costs tens of milliseconds a passage on one
core, so semantic and hybrid get a smaller generated corpus (`--semantic-docs`).

Each (backend, corpus) runs in a fresh worker process, so its peak RSS (ru_maxrss) is its
own. The worker loads the embedding model first (`embedder()`, timed alone), then times:
the first build, split into the text index (`LocalIndex.refresh`) and the embedding of
every passage (`SemanticIndex.refresh`, which includes a no-op text refresh); a no-op
refresh; a refresh after one file changed (its passages re-read and re-embedded); the first
query (semantic: reads the vectors into memory) and then the median and 95th percentile
of the others. The queries (`--queries`, 200) are half words drawn from the corpus and half
questions that wrap corpus words in words the corpus does not use. The search tool runs a
refresh before every query: add the no-op refresh to a query for the tool's cost.

--recall builds each backend's index of `knowledge/` in this process and asks the
questions of bench/recall_set.json (worded unlike the files), each with the file and the
passage heading that answer it; it reports recall@1, recall@5, MRR@5 and file-level
recall@5, and with --verbose every question whose passage was not first.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
KNOWLEDGE = ROOT / "knowledge"
RECALL_SET = Path(__file__).resolve().parent / "recall_set.json"
BACKENDS = ("local", "semantic", "hybrid")
K = 5
SEED = 1729

NOUNS = """agent answer archive backend batch branch budget buffer cache channel checkpoint
client cluster column commit config connection container context counter cursor dashboard
database deadline deployment directory document endpoint event export field file filter
folder format gateway graph handler header host index input instance job key label layer
limit log loop message metric migration model module network node object option output
package page parser partition passage path payload pipeline plugin policy pool port prompt
provider proxy query queue quota record region registry replica report request resource
response result retry role route rule run runtime schema secret server service session
shard signal snapshot socket source spec stage state status step storage stream summary
table task template tenant thread timeout token tool trace transaction trigger user value
variable vector version volume webhook window worker workflow workspace""".split()
VERBS = """accept add allow archive block build cache call cancel change check clean collect
commit compare compress configure connect convert copy count create debug decode define
delete deploy detect disable download drop enable encode encrypt expire export extend fail
fetch filter find flush format generate handle hide import index inspect install limit
list load lock log merge migrate monitor move open parse pause pin poll publish pull push
queue read rebuild record reduce refresh register reject reload remove rename render repair
replace replay report request reset resolve restart restore resume retry return rotate
route run save scale scan schedule search send serve share skip sort split start stop
store stream submit sync tag test throttle trace track transform trigger trim unlock update
upgrade upload validate verify wait watch write""".split()
ADJECTIVES = """active async automatic available broken cached clean cold compact concurrent
corrupt current custom default deferred dirty disabled durable dynamic empty encrypted
expired external failed fast full global hidden idle immutable incremental initial
internal invalid large late local locked long manual missing nested new offline old
optional orphaned parallel partial pending persistent primary private public quick
readonly recent redundant remote required secondary secure shared short silent slow
small stale static strict temporary transient unknown unused upstream valid verbose
warm""".split()
SYLLABLES = """ka lo ri ven tor mi sa del or an ex qu is zu bre fal gon hel jor kin lum mar
nor pel rax sil tam ul vor wen yx zel dra fen gri hal""".split()
FILLER = """fix problem setup properly trouble somehow exactly weird annoying suddenly
anymore instead tweak figure issue""".split()
SENTENCES = (
    "The {a} {n} {v3} the {n} before the {n} is {a}.",
    "When {x} {v3} a {n}, the {n} stays {a} until the next {n}.",
    "To {v} the {n}, set `{x}.{n}` to {num} in the {n} {n}.",
    "Each {n} has a {a} {n} and a {n} of {num} {ns}.",
    "If the {n} fails, {x} will {v} the {a} {n} again after {num} seconds.",
    "A {a} {n} cannot {v} {ns} that {x} marks as {a}.",
    "Use `{x} {v} --{n}` to {v} every {a} {n} in the {n}.",
    "{X} {v3} {ns} in batches of {num}, so a {a} {n} does not {v} the {n}.",
)
HEADINGS = (
    "How do I {v} the {a} {n}?",
    "Why does {x} {v} my {n}?",
    "{A} {ns} and {ns}",
    "When the {n} is {a}",
    "Configuring {x} {ns}",
)
QUESTIONS = (
    "how can I get the {w} to {w} properly",
    "what should I do when {w} suddenly stops working",
    "is there a way to tweak {w} without touching the {w}",
    "why does my {w} keep failing with {w}",
    "where do I figure out the {w} setup for {w}",
    "the {w} is acting weird after {w}, how do I fix it",
)
_WORD = re.compile(r"[a-z]{4,}")


# --------------------------------------------------------------------------- the corpus


def _plural(word: str) -> str:
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    return word + ("es" if word.endswith(("s", "x", "ch", "sh")) else "s")


class Vocabulary:
    """Words drawn Zipf-like from shuffled lists (the first most often), with made-up names."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        names = {"".join(rng.choices(SYLLABLES, k=rng.randint(2, 3))) for _ in range(4000)}
        # shuffled, so that how often a word comes is not its place in the alphabet
        self.lists = {key: rng.sample(words, len(words)) for key, words in (
            ("n", NOUNS), ("v", VERBS), ("a", ADJECTIVES), ("x", sorted(names)))}
        self.weights = {key: _zipf(len(words)) for key, words in self.lists.items()}

    def word(self, kind: str) -> str:
        return self.rng.choices(self.lists[kind], cum_weights=self.weights[kind])[0]

    def fill(self, template: str) -> str:
        """`template` with each {n}, {ns}, {v}, {v3}, {a}, {A}, {x}, {X}, {num} drawn anew."""
        forms: dict[str, Callable[[], str]] = {
            "n": lambda: self.word("n"), "ns": lambda: _plural(self.word("n")),
            "v": lambda: self.word("v"), "v3": lambda: _plural(self.word("v")),
            "a": lambda: self.word("a"), "A": lambda: self.word("a").capitalize(),
            "x": lambda: self.word("x"), "X": lambda: self.word("x").capitalize(),
            "num": lambda: str(self.rng.choice((2, 3, 5, 10, 30, 64, 100, 1000)))}
        text = re.sub(r"\{(\w+)\}", lambda m: forms[m.group(1)](), template)
        return re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", text)


def _zipf(n: int) -> list[float]:
    """Cumulative weights 1/rank**0.8 for n words (a word's share of text falls slower than
    1/rank in a vocabulary this small)."""
    total, out = 0.0, []
    for rank in range(1, n + 1):
        total += rank ** -0.8
        out.append(total)
    return out


def _section(vocab: Vocabulary) -> str:
    """One to three paragraphs of two to four sentences."""
    rng = vocab.rng

    def paragraph() -> str:
        return " ".join(vocab.fill(rng.choice(SENTENCES)) for _ in range(rng.randint(2, 4)))

    return "\n\n".join(paragraph() for _ in range(rng.randint(1, 3)))


def _document(vocab: Vocabulary) -> str:
    """A title and a section, then up to two more headed sections."""
    title = f"# {vocab.word('x').capitalize()} {vocab.word('n')} guide"
    parts = [title, _section(vocab)]
    for _ in range(vocab.rng.randint(0, 2)):
        parts += ["## " + vocab.fill(vocab.rng.choice(HEADINGS)), _section(vocab)]
    return "\n\n".join(parts) + "\n"


def generate(folder: Path, docs: int) -> Path:
    """`docs` Markdown files in folders of 100, the same for the same count."""
    vocab = Vocabulary(random.Random(SEED))
    for i in range(docs):
        path = folder / f"{i // 100:03d}" / f"doc-{i:05d}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_document(vocab), encoding="utf-8")
    return folder


def make_queries(folder: Path, n: int) -> list[str]:
    """Half one to three words of the corpus (as frequent as in it), half questions that
    wrap corpus words in words it does not use."""
    from runner.search_local import STOPWORDS

    rng = random.Random(SEED)
    words = [w for f in sorted(folder.rglob("*.md"))
             for w in _WORD.findall(f.read_text(encoding="utf-8").lower()) if w not in STOPWORDS]
    keywords = [" ".join(rng.choices(words, k=rng.randint(1, 3))) for _ in range(n // 2)]
    questions = [re.sub(r"\{w\}", lambda _: rng.choice(words), rng.choice(QUESTIONS))
                 for _ in range(n - n // 2)]
    mixed = keywords + questions
    rng.shuffle(mixed)
    return mixed


# --------------------------------------------------------------------------- the worker


def open_index(backend: str, folder: Path, db: Path) -> Any:
    if backend == "local":
        from runner.search_local import LocalIndex

        return LocalIndex(folder, db)
    from runner.search_semantic import HybridIndex, SemanticIndex

    return (SemanticIndex if backend == "semantic" else HybridIndex)(folder, db)


def text_index(index: Any) -> Any:
    """The LocalIndex under any backend's index."""
    return getattr(getattr(index, "semantic", index), "local", index)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def index_bytes(db: Path) -> int:
    """The database with its -wal and -shm files."""
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))


def changed_refresh(index: Any, folder: Path) -> tuple[float, Any]:
    """A refresh after one paragraph was added to one file (put back afterwards)."""
    files = sorted(folder.rglob("*.md"))
    path = files[len(files) // 2]
    before = path.read_text(encoding="utf-8")
    path.write_text(before + "\nOne more paragraph, added to see what a change costs.\n",
                    encoding="utf-8")
    try:
        return timed(index.refresh)
    finally:
        path.write_text(before, encoding="utf-8")


def worker(args: argparse.Namespace) -> None:
    """Measure one backend on one folder; print the figures as one JSON line."""
    folder, db = Path(args.folder), Path(args.db)
    queries = json.loads(Path(args.queries_file).read_text(encoding="utf-8"))
    row: dict[str, Any] = {}
    if args.worker != "local":
        from runner.search_semantic import embedder

        row["model_load_s"] = timed(embedder)[0]
    index = open_index(args.worker, folder, db)
    row["text_s"] = timed(text_index(index).refresh)[0]
    if args.worker != "local":
        row["embed_s"], row["embedded"] = timed(index.refresh)
    row["noop_s"] = timed(index.refresh)[0]
    row["changed_s"], changed = changed_refresh(index, folder)
    if args.worker != "local":
        row["reembedded"] = changed
    row["first_query_s"] = timed(lambda: index.search(queries[0], K))[0]
    latencies = [timed(lambda: index.search(q, K))[0] for q in queries[1:]]
    row["p50_s"] = statistics.median(latencies)
    row["p95_s"] = statistics.quantiles(latencies, n=20)[-1]
    row["passages"] = index.count()
    row["index_bytes"] = index_bytes(db)
    row["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(row))


# --------------------------------------------------------------------------- the driver


def run_worker(backend: str, folder: Path, db: Path, queries: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", backend, "--folder", str(folder),
           "--db", str(db), "--queries-file", str(queries)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=7200)
    if out.returncode != 0:
        raise SystemExit(f"worker ({backend}, {folder.name}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def corpora(tmp: Path, args: argparse.Namespace, backends: list[str]) -> dict[str, list[Path]]:
    """Backend -> the folders it is measured on (knowledge/ copied, then generated docs)."""
    knowledge = Path(shutil.copytree(KNOWLEDGE, tmp / "knowledge"))
    sizes = {b: args.docs if b == "local" else args.semantic_docs for b in backends}
    generated = {n: generate(tmp / f"docs-{n}", n) for n in sorted(set(sizes.values()))}
    return {b: [knowledge, generated[sizes[b]]] for b in backends}


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def print_table(rows: list[dict[str, Any]], queries: int) -> None:
    print(f"Per backend and corpus, each in a fresh process (peak RSS is that process's); "
          f"k={K}; {queries} queries per corpus (first, then p50/p95 of the rest).")
    print("Times in ms except the build (s). embed/s: passages embedded per second.\n")
    head = (f"{'backend':8} {'corpus':24} {'passages':>8} {'load s':>6} {'text s':>7} "
            f"{'embed s':>8} {'embed/s':>7} {'no-op':>7} {'changed':>8} {'index MB':>8} "
            f"{'1st q':>7} {'p50':>6} {'p95':>6} {'RSS MB':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        embed = r.get("embed_s")
        rate = f"{r['embedded'] / embed:7.0f}" if embed else f"{'-':>7}"
        load = f"{r['model_load_s']:6.2f}" if "model_load_s" in r else f"{'-':>6}"
        embed_s = f"{embed:8.1f}" if embed is not None else f"{'-':>8}"
        print(f"{r['backend']:8} {r['corpus']:24} {r['passages']:8d} {load} {r['text_s']:7.2f} "
              f"{embed_s} {rate} {ms(r['noop_s']):>7} {ms(r['changed_s']):>8} "
              f"{r['index_bytes'] / 1e6:8.1f} {ms(r['first_query_s']):>7} {ms(r['p50_s']):>6} "
              f"{ms(r['p95_s']):>6} {r['rss_mb']:6.0f}")
    changed = [f"{r['backend']}/{r['corpus']}: {r['reembedded']}" for r in rows
               if "reembedded" in r]
    if changed:
        print("\nPassages re-embedded by the one-file change: " + ", ".join(changed))
    rates = [r["embedded"] / r["embed_s"] for r in rows if r["generated"] and r.get("embed_s")]
    local = [r["passages"] for r in rows if r["generated"] and r["backend"] == "local"]
    if rates and local:
        rate = statistics.mean(rates)
        print(f"At {rate:.0f} passages/s, embedding the {local[0]:,} passages of local's "
              f"generated corpus would take {local[0] / rate / 60:.1f} min.")


def bench(args: argparse.Namespace, backends: list[str]) -> None:
    rows = []
    with tempfile.TemporaryDirectory(prefix="search-bench-") as name:
        tmp = Path(name)
        plan = corpora(tmp, args, backends)
        queries: dict[Path, Path] = {}
        for backend, folders in plan.items():
            for folder in folders:
                if folder not in queries:
                    queries[folder] = tmp / f"queries-{folder.name}.json"
                    queries[folder].write_text(json.dumps(make_queries(folder, args.queries)))
                label = f"{folder.name} ({sum(1 for _ in folder.rglob('*.md'))} files)"
                print(f"measuring {backend} on {label} …", file=sys.stderr, flush=True)
                db = tmp / "db" / f"{backend}-{folder.name}.db"
                rows.append({"backend": backend, "corpus": label,
                             "generated": folder.name != "knowledge",
                             **run_worker(backend, folder, db, queries[folder])})
    print_table(rows, args.queries)
    if args.json:
        print(json.dumps(rows, indent=1))


# --------------------------------------------------------------------------- recall


def check_headings(index: Any, expected: list[dict[str, str]]) -> None:
    """Stop when an expected (file, heading) is not a passage of the index."""
    db = text_index(index).connect()
    try:
        known = set(db.execute("SELECT c.path, p.heading FROM chunks c "
                               "JOIN passages p ON p.rowid = c.id"))
    finally:
        db.close()
    missing = [e for e in expected if (e["path"], e["heading"]) not in known]
    if missing:
        raise SystemExit(f"{RECALL_SET.name}: no such passage in knowledge/: {missing}")


def score(index: Any, questions: list[dict[str, Any]]) -> tuple[dict[str, float], list[str]]:
    """recall@1, recall@K, MRR@K and file recall@K over the questions; the misses."""
    totals = {"recall@1": 0.0, f"recall@{K}": 0.0, f"MRR@{K}": 0.0, f"file recall@{K}": 0.0}
    misses = []
    for q in questions:
        want = (q["expect"]["path"], q["expect"]["heading"])
        hits = index.search(q["query"], K)
        found = [(h.path, h.heading) for h in hits]
        rank = found.index(want) + 1 if want in found else 0
        totals["recall@1"] += rank == 1
        totals[f"recall@{K}"] += rank > 0
        totals[f"MRR@{K}"] += 1 / rank if rank else 0.0
        totals[f"file recall@{K}"] += want[0] in {p for p, _ in found}
        if rank != 1:
            first = f"{found[0][0]} # {found[0][1]}" if found else "nothing"
            misses.append(f"  {q['query']!r}\n    expected {want[0]} # {want[1]} "
                          f"(rank {rank or f'>{K}'})\n    first    {first}")
    return {name: value / len(questions) for name, value in totals.items()}, misses


def recall(args: argparse.Namespace, backends: list[str]) -> None:
    questions = json.loads(RECALL_SET.read_text(encoding="utf-8"))["questions"]
    results = {}
    with tempfile.TemporaryDirectory(prefix="search-recall-") as name:
        folder = Path(shutil.copytree(KNOWLEDGE, Path(name) / "knowledge"))
        for backend in backends:
            index = open_index(backend, folder, Path(name) / f"{backend}.db")
            index.refresh()
            check_headings(index, [q["expect"] for q in questions])
            results[backend] = score(index, questions)
    print(f"{len(questions)} paraphrased questions ({RECALL_SET.relative_to(ROOT)}) over "
          f"knowledge/, k={K}:\n")
    names = list(next(iter(results.values()))[0])
    head = f"{'backend':8} " + " ".join(f"{n:>15}" for n in names)
    print(head)
    print("-" * len(head))
    for backend, (metrics, _) in results.items():
        print(f"{backend:8} " + " ".join(f"{metrics[n]:15.2f}" for n in names))
    if args.verbose:
        for backend, (_, misses) in results.items():
            print(f"\n{backend}: {len(misses)} not first")
            print("\n".join(misses))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=10_000,
                        help="generated documents for the local backend")
    parser.add_argument("--semantic-docs", type=int, default=2000,
                        help="generated documents for semantic and hybrid (embedding is slow)")
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help="comma-separated: " + ", ".join(BACKENDS))
    parser.add_argument("--queries", type=int, default=200, help="queries per corpus")
    parser.add_argument("--recall", action="store_true", help="recall on bench/recall_set.json")
    parser.add_argument("--verbose", action="store_true", help="--recall: list the misses")
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON too")
    parser.add_argument("--worker", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--queries-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    backends = [b for b in args.backends.split(",") if b]
    for b in backends:
        if b not in BACKENDS:
            parser.error(f"unknown backend {b!r}; use {', '.join(BACKENDS)}")
    (recall if args.recall else bench)(args, backends)


if __name__ == "__main__":
    main()
