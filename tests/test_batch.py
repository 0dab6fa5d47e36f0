"""`runner batch SPEC INPUTS --out RESULTS`, in one process: a result line for every input,
malformed and duplicate lines reported by line number, chains, failures that stop nothing,
resuming after kill -9 and after SIGTERM without running anything twice, the concurrency
and the rate asked for, the lock against a second batch, the summary and the exit codes.

Real `python -m runner batch` processes against the scripted OpenAI-compatible server
(through LiteLLM), or `fake/` models; the rate limit on a FakeClock."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import run_cli, wait_for
from runner.testing import FakeClock, ScriptedOpenAIServer
from runner.testing.server import REACT_MARK

TASK = re.compile(r"task-(\w+)")


def project(folder: Path, body: dict[str, Any], name: str = "agent") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text("")
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "name": name, "memory": {"backend": "none"},
                                    **body}, sort_keys=False))
    return path


def scripted_spec(folder: Path, server: ScriptedOpenAIServer, **extra: Any) -> Path:
    return project(folder, {"model": {"id": "openai/scripted", "api_base": server.url,
                                      "retries": 0},
                            "loop": {"style": "react"}, "tools": ["calculator"], **extra})


def write_inputs(path: Path, lines: list[Any]) -> Path:
    """One line per item: a str as it is, anything else as JSON."""
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n"
                            for x in lines))
    return path


def tasks(n: int) -> list[dict[str, str]]:
    return [{"id": f"q{i}", "input": f"task-q{i}"} for i in range(n)]


def results(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class Steps:
    """A responder: `steps` model calls per input (calculator calls, then an answer), each
    call counted per input id (the `task-ID` in the prompt); `delay` seconds per reply;
    inputs in `fail` get an HTTP 400."""

    def __init__(self, steps: int = 1, delay: float = 0.0, fail: tuple[str, ...] = ()) -> None:
        self.steps, self.delay, self.fail = steps, delay, fail
        self.calls: Counter[str] = Counter()
        self.lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> Any:
        text = "".join(str(m.get("content") or "") for m in body["messages"])
        ident = TASK.findall(text)[-1]
        with self.lock:
            self.calls[ident] += 1
        if ident in self.fail:
            return {"status": 400, "body": json.dumps({"error": {"message": "bad input"}})}
        done = text.count(REACT_MARK)
        reply = (f"{REACT_MARK} {done + 1}\nAction: calculator[{done}+1]"
                 if done < self.steps - 1 else f"Final Answer: answer-{ident}")
        return {"content": reply, **({"delay": self.delay} if self.delay else {})}


def start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OPENAI_API_KEY": "sk-test-not-a-real-key"})


def lines_in(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.endswith("}")]


# ---------------------------------------------------------------------- inputs and results


def test_every_input_gets_one_result_line_and_a_summary(tmp_path: Path,
                                                        server: ScriptedOpenAIServer) -> None:
    spec = scripted_spec(tmp_path, server)
    server.responder = Steps(steps=2)
    inputs = write_inputs(tmp_path / "in.jsonl", tasks(6))
    proc = run_cli("batch", str(spec), str(inputs), "--out", "out.jsonl", "-c", "3",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = results(tmp_path / "out.jsonl")
    assert sorted(x["id"] for x in lines) == [f"q{i}" for i in range(6)]
    for x in lines:
        assert x["status"] == "finished" and x["answer"] == f"answer-{x['id']}"
        assert x["step_count"] == 2 and x["usage"]["total_tokens"] == 30 and x["error"] is None
        assert re.fullmatch(r"[0-9a-f]{16}", x["run_id"])
    assert server.responder.calls == {f"q{i}": 2 for i in range(6)}
    summary = proc.stderr
    for word in ("finished", "tokens", "180", "cost", "wall", "runs/s"):
        assert word in summary, summary
    assert proc.stdout == ""  # the results go to --out, the summary to stderr

    again = run_cli("batch", str(spec), str(inputs), "--out", "out.jsonl", cwd=tmp_path)
    assert again.returncode == 0 and "done before" in again.stderr
    assert len(results(tmp_path / "out.jsonl")) == 6
    assert sum(server.responder.calls.values()) == 12  # nothing ran again


def test_a_result_line_is_the_run_json_result_with_the_id(tmp_path: Path,
                                                         server: ScriptedOpenAIServer) -> None:
    """The same serializer as `runner run --json`, less the conversation and the steps."""
    spec = scripted_spec(tmp_path, server)
    server.responder = Steps(steps=2)
    inputs = write_inputs(tmp_path / "in.jsonl", [{"id": "q0", "input": "task-q0"}])
    assert run_cli("batch", str(spec), str(inputs), "--out", "out.jsonl",
                   cwd=tmp_path).returncode == 0
    line = results(tmp_path / "out.jsonl")[0]
    single = run_cli("run", str(spec), "task-q0", "--json", cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    alone = json.loads(single.stdout)
    assert set(line) == {"id", "step_count"} | set(alone) - {"messages", "steps"}
    assert line["step_count"] == len(alone["steps"]) == 2
    for key in ("agent", "model", "input", "answer", "status", "usage", "error", "incomplete"):
        assert line[key] == alone[key], key


def test_a_terminal_gets_a_progress_bar_with_rate_and_eta(tmp_path: Path) -> None:
    import pty

    spec = project(tmp_path, {"model": {"id": "fake/echo"}})
    inputs = write_inputs(tmp_path / "in.jsonl", tasks(30))
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "runner", "batch", str(spec), str(inputs),
                             "--out", "out.jsonl", "-c", "1", "--rate", "1200/min"],
                            cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=slave, env={**os.environ, "TERM": "xterm", "COLUMNS": "120"})
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the process closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert proc.wait(120) == 0
    text = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", seen).decode(errors="replace")
    assert re.search(r"runs .*\d+/30", text), text  # the bar: done of total
    assert "ETA" in text and re.search(r"\d+\.\d/s", text), text  # rate and ETA
    assert "runs/s" in text  # then the summary
    assert len(results(tmp_path / "out.jsonl")) == 30


def test_malformed_and_duplicate_lines_are_reported_by_line_and_skipped(tmp_path: Path) -> None:
    spec = project(tmp_path, {"model": {"id": "fake/echo"}})
    inputs = write_inputs(tmp_path / "in.jsonl", [
        {"id": "a", "input": "first"},      # 1
        json.dumps("a bare string"),      # 2: its line number is its id
        "{not json",                        # 3
        {"id": "a", "input": "again"},      # 4: duplicate id
        {"id": 7, "input": "int id"},       # 5
        "",                                 # 6: blank, ignored
        {"input": "no id"},                 # 7
        [1, 2],                             # 8
        {"id": "b", "inputs": {"x": 1}},    # 9: an agent takes input, not inputs
        {"id": "c"},                        # 10
        {"id": "2", "input": "clash"},      # 11: the bare string's id
        {"id": "d", "input": "last", "expected": "extra keys are ignored"},  # 12
    ])
    proc = run_cli("batch", str(spec), str(inputs), "--out", "out.jsonl", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr  # some lines were skipped
    err = proc.stderr
    for number, why in [(3, "not JSON"), (4, "duplicate id 'a' (first on line 1)"),
                        (7, "no id"), (8, "a JSON list"),
                        (9, "id 'b': agent takes one \"input\", not named \"inputs\""),
                        (10, "id 'c': no \"input\""),
                        (11, "duplicate id '2' (first on line 2)")]:
        assert f"in.jsonl:{number}: {why}" in err, (number, err)
    answers = {x["id"]: x["answer"] for x in results(tmp_path / "out.jsonl")}
    assert answers == {"a": "first", "2": "a bare string", "7": "int id", "d": "last"}
    assert "skipped lines" in err and "7" in err


def test_a_chain_takes_named_inputs(tmp_path: Path) -> None:
    spec = project(tmp_path, {"kind": "chain", "model": {"id": "fake/echo"},
                              "inputs": {"topic": None, "tone": {"default": "calm"}},
                              "prompt": {"text": "Question: {{ topic }} in a {{ tone }} tone"}},
                   name="poem")
    inputs = write_inputs(tmp_path / "in.jsonl", [
        {"id": "p1", "inputs": {"topic": "rain", "tone": "sad"}},
        {"id": "p2", "inputs": {"topic": "sun"}},
        {"id": "p3", "input": "snow"},           # one required input: given directly
        json.dumps("wind"),                      # ... or as a bare string
        {"id": "p5", "inputs": {"colour": "red"}},
    ])
    proc = run_cli("batch", str(spec), str(inputs), "--out", "out.jsonl", cwd=tmp_path)
    assert proc.returncode == 1
    assert "in.jsonl:5: id 'p5': unknown input 'colour'" in proc.stderr
    answers = {x["id"]: x["answer"] for x in results(tmp_path / "out.jsonl")}
    assert answers == {"p1": "Final Answer: rain in a sad tone",  # a chain keeps the whole
                       "p2": "Final Answer: sun in a calm tone",   # reply (fake/echo's)
                       "p3": "Final Answer: snow in a calm tone",
                       "4": "Final Answer: wind in a calm tone"}


def test_one_failing_input_does_not_stop_the_others(tmp_path: Path,
                                                    server: ScriptedOpenAIServer) -> None:
    spec = scripted_spec(tmp_path, server)
    server.responder = Steps(fail=("q2",))
    inputs = write_inputs(tmp_path / "in.jsonl", tasks(5))
    proc = run_cli("batch", str(spec), str(inputs), "--out", "out.jsonl", "-c", "2",
                   cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    status = {x["id"]: x["status"] for x in results(tmp_path / "out.jsonl")}
    assert status.pop("q2") not in ("finished", "interrupted")
    assert status == {f"q{i}": "finished" for i in (0, 1, 3, 4)}
    failed = next(x for x in results(tmp_path / "out.jsonl") if x["id"] == "q2")
    assert failed["error"] and failed["incomplete"] and failed["answer"] is None

    # a rerun counts a failed line as done: nothing runs, still exit 1
    again = run_cli("batch", str(spec), str(inputs), "--out", "out.jsonl", cwd=tmp_path)
    assert again.returncode == 1 and len(results(tmp_path / "out.jsonl")) == 5
    assert server.responder.calls["q2"] == 1


# ---------------------------------------------------------------------- resuming


def test_a_batch_killed_mid_run_resumes_and_runs_nothing_twice(
        tmp_path: Path, server: ScriptedOpenAIServer) -> None:
    spec = scripted_spec(tmp_path, server)
    first = Steps(steps=3, delay=0.1)
    server.responder = first
    inputs = write_inputs(tmp_path / "in.jsonl", tasks(12))
    out = tmp_path / "out.jsonl"
    proc = start(["batch", str(spec), str(inputs), "--out", str(out), "-c", "3"], tmp_path)

    def mid_run() -> bool:  # some runs done, and one without a line past its first step
        done = {x["id"] for x in lines_in(out)}
        return len(done) >= 3 and any(n >= 2 for i, n in first.calls.items() if i not in done)

    wait_for(mid_run, 120, "a batch mid-run")
    proc.kill()
    proc.wait(30)
    before = {x["id"] for x in lines_in(out)}
    calls_before = Counter(first.calls)
    midway = [i for i, n in calls_before.items() if i not in before and n >= 2]
    assert before and midway

    second = Steps(steps=3)
    server.responder = second
    again = run_cli("batch", str(spec), str(inputs), "--out", str(out), "-c", "3",
                    cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    ids = [x["id"] for x in results(out)]
    assert sorted(ids) == sorted(f"q{i}" for i in range(12))  # none missing, none twice
    assert all(x["status"] == "finished" for x in results(out))
    for i in before:
        assert second.calls[i] == 0, i  # a finished run never ran again
    for i in midway:  # resumed from its checkpoint: the steps committed are not repeated
        assert second.calls[i] < 3, (i, calls_before[i], second.calls[i])
    for i in ids:  # at most the call in flight at the kill is made again
        assert calls_before[i] + second.calls[i] <= 4, i
    assert sum(calls_before[i] + second.calls[i] - 3 for i in ids) <= 3


def test_a_finished_run_whose_line_was_lost_gets_it_from_its_checkpoint(tmp_path: Path,
        server: ScriptedOpenAIServer) -> None:
    """The crash window between a run's last checkpoint and its line: no model call again."""
    spec = scripted_spec(tmp_path, server)
    server.responder = Steps()
    inputs = write_inputs(tmp_path / "in.jsonl", tasks(3))
    out = tmp_path / "out.jsonl"
    assert run_cli("batch", str(spec), str(inputs), "--out", str(out),
                   cwd=tmp_path).returncode == 0
    kept = [x for x in results(out) if x["id"] != "q1"]
    lost = next(x for x in results(out) if x["id"] == "q1")
    out.write_text("".join(json.dumps(x) + "\n" for x in kept) + json.dumps(lost)[:25])
    proc = run_cli("batch", str(spec), str(inputs), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "out.jsonl:3: dropped a torn last line" in proc.stderr
    restored = next(x for x in results(out) if x["id"] == "q1")
    assert restored["run_id"] == lost["run_id"] and restored["answer"] == "answer-q1"
    assert restored["usage"] == lost["usage"]
    assert sorted(x["id"] for x in results(out)) == ["q0", "q1", "q2"]
    assert server.responder.calls == {"q0": 1, "q1": 1, "q2": 1}


def test_sigterm_stops_the_batch_and_a_rerun_resumes_the_runs_it_stopped(
        tmp_path: Path, server: ScriptedOpenAIServer) -> None:
    spec = scripted_spec(tmp_path, server)
    first = Steps(steps=3, delay=0.2)
    server.responder = first
    inputs = write_inputs(tmp_path / "in.jsonl", tasks(6))
    out = tmp_path / "out.jsonl"
    proc = start(["batch", str(spec), str(inputs), "--out", str(out), "-c", "2"], tmp_path)
    wait_for(lambda: sum(first.calls.values()) >= 3, 120, "runs past their first step")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "not run (SIGTERM)" in err
    stopped = {x["id"] for x in lines_in(out)}
    assert all(x["status"] != "interrupted" for x in lines_in(out))  # not done: no line
    calls_before = Counter(first.calls)

    second = Steps(steps=3)
    server.responder = second
    again = run_cli("batch", str(spec), str(inputs), "--out", str(out), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert sorted(x["id"] for x in results(out)) == [f"q{i}" for i in range(6)]
    for i in stopped:
        assert second.calls[i] == 0
    started = [i for i in calls_before if i not in stopped]
    assert started
    for i in started:  # resumed: the committed steps are not asked for again
        assert calls_before[i] + second.calls[i] <= 4


def test_a_line_a_retry_may_get_past_is_retried_by_a_rerun(tmp_path: Path,
                                                          server: ScriptedOpenAIServer) -> None:
    spec = scripted_spec(tmp_path, server)
    steps = Steps()

    def limited(body: dict[str, Any]) -> Any:
        if "task-q1" in json.dumps(body):
            return {"status": 429, "body": json.dumps({"error": {"message": "slow down"}})}
        return steps(body)

    server.responder = limited
    inputs = write_inputs(tmp_path / "in.jsonl", tasks(3))
    out = tmp_path / "out.jsonl"
    proc = run_cli("batch", str(spec), str(inputs), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 1
    assert {x["id"]: x["status"] for x in results(out)}["q1"] == "model_rate_limited"
    server.responder = steps
    again = run_cli("batch", str(spec), str(inputs), "--out", str(out), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "dropped; those runs resume" in again.stderr
    status = {x["id"]: x["status"] for x in results(out)}
    assert status == {"q0": "finished", "q1": "finished", "q2": "finished"}
    assert len(results(out)) == 3
    assert steps.calls == {"q0": 1, "q1": 1, "q2": 1}


# ---------------------------------------------------------------------- pacing


class GateServer(ScriptedOpenAIServer):
    """The scripted server holding every request until `k` are in flight at once (then
    letting all through, and every later one): a batch that never reaches `k` runs at once
    waits out the hang guard and fails the test, one that passes `k` shows in `most`."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k, self.now, self.most = k, 0, 0
        self.open: asyncio.Event | None = None

    async def _chat(self, request: Any) -> Any:  # on the server's one event loop: no lock
        self.open = self.open or asyncio.Event()
        self.now += 1
        self.most = max(self.most, self.now)
        if self.now >= self.k:
            self.open.set()
        try:
            await asyncio.wait_for(self.open.wait(), 120)  # a hang guard, not a timing
            return await super()._chat(request)
        finally:
            self.now -= 1


def test_the_concurrency_asked_for_is_reached_and_never_passed(tmp_path: Path) -> None:
    gate = GateServer(5).start()
    try:
        gate.responder = lambda body: {"content": "Final Answer: ok", "delay": 0.05}
        spec = scripted_spec(tmp_path, gate)
        inputs = write_inputs(tmp_path / "in.jsonl", tasks(15))
        proc = run_cli("batch", str(spec), str(inputs), "--out", "out.jsonl", "-c", "5",
                       cwd=tmp_path)
    finally:
        gate.stop()
    assert proc.returncode == 0, proc.stderr
    assert gate.open is not None and gate.open.is_set()  # 5 were in flight at once
    assert gate.most == 5  # and never more
    assert len(results(tmp_path / "out.jsonl")) == 15


def test_the_rate_spaces_starts_so_no_minute_holds_more(tmp_path: Path) -> None:
    from runner.serve.batch import RateLimit, batch_main, parse_rate

    assert parse_rate("120/min") == 120 and parse_rate("2/s") == 120
    assert parse_rate("600/h") == 10 and parse_rate("30") == 30
    for bad in ("fast", "0/min", "5/day"):
        with pytest.raises(Exception, match="--rate"):
            parse_rate(bad)

    clock = FakeClock()  # 25 takers at once, as 25 workers would be
    limit = RateLimit(10, clock)
    starts = [clock.now + limit.delay() for _ in range(25)]
    assert all(abs(b - a - 6.0) < 1e-9 for a, b in zip(starts, starts[1:]))
    assert max(sum(1 for t in starts if s <= t < s + 60) for s in starts) == 10

    spec = project(tmp_path, {"model": {"id": "fake/echo"}})
    inputs = write_inputs(tmp_path / "in.jsonl", tasks(5))
    clock = FakeClock()
    code = batch_main(str(spec), str(inputs), str(tmp_path / "out.jsonl"), concurrency=1,
                      rate="30/min", clock=clock, quiet=True)
    assert code == 0
    assert clock.sleeps == [2.0] * 4  # the first starts at once, then one every 2 s
    assert len(results(tmp_path / "out.jsonl")) == 5


# ---------------------------------------------------------------------- the process


def test_sigint_abandons_the_model_calls_in_flight_and_exits_130(
        tmp_path: Path, server: ScriptedOpenAIServer) -> None:
    spec = scripted_spec(tmp_path, server)
    server.responder = lambda body: {"hang": True}
    inputs = write_inputs(tmp_path / "in.jsonl", tasks(4))
    out = tmp_path / "out.jsonl"
    proc = start(["batch", str(spec), str(inputs), "--out", str(out), "-c", "2"], tmp_path)
    wait_for(lambda: len(server.requests) >= 2, 120, "two runs waiting on the model")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "not run (SIGINT)" in err and "4" in err
    assert lines_in(out) == []  # the two stopped runs are not done, the others never began
    assert len(server.requests) == 2


def test_a_second_batch_on_the_same_results_file_is_refused(
        tmp_path: Path, server: ScriptedOpenAIServer) -> None:
    spec = scripted_spec(tmp_path, server)
    server.responder = lambda body: {"hang": True}
    inputs = write_inputs(tmp_path / "in.jsonl", tasks(2))
    out = tmp_path / "out.jsonl"
    first = start(["batch", str(spec), str(inputs), "--out", str(out)], tmp_path)
    try:
        wait_for(lambda: len(server.requests) >= 1, 120, "the first batch running")
        second = run_cli("batch", str(spec), str(inputs), "--out", str(out), cwd=tmp_path)
        assert second.returncode == 2
        assert f"another runner batch is writing it (process {first.pid}" in second.stderr
    finally:
        first.kill()
        first.wait(30)
    # the lock dies with its process: the file can be written again
    lock = os.open(tmp_path / "out.jsonl.lock", os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(lock)


def test_exit_code_2_for_a_bad_spec_a_bad_rate_or_unreadable_inputs(tmp_path: Path) -> None:
    from runner.errors import SpecError
    from runner.serve.batch import plan_inputs

    good = project(tmp_path, {"model": {"id": "fake/echo"}})
    bad = project(tmp_path, {"model": {"id": "fake/echo"}, "tools": ["serch"]}, name="bad")
    inputs = write_inputs(tmp_path / "in.jsonl", tasks(1))
    proc = run_cli("batch", str(bad), str(inputs), "--out", "out.jsonl", cwd=tmp_path)
    assert proc.returncode == 2 and "serch" in proc.stderr
    assert not (tmp_path / "out.jsonl").exists()
    proc = run_cli("batch", str(good), str(inputs), "--out", "out.jsonl", "--rate", "lots",
                   cwd=tmp_path)
    assert proc.returncode == 2 and "--rate 'lots'" in proc.stderr
    from runner.spec import load_spec

    with pytest.raises(SpecError, match="cannot read the inputs"):
        plan_inputs(load_spec(good), tmp_path, {})


def test_results_mask_secrets(tmp_path: Path) -> None:
    spec = project(tmp_path, {"model": {"id": "fake/echo"}})
    inputs = write_inputs(tmp_path / "in.jsonl", [{"id": "s", "input": "key sk-live-123456789"}])
    proc = run_cli("batch", str(spec), str(inputs), "--out", "out.jsonl", cwd=tmp_path,
                   env={"MY_API_KEY": "sk-live-123456789"})
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "out.jsonl").read_text()
    assert "sk-live-123456789" not in text and "***" in text


def test_a_bug_in_a_ray_worker_is_that_inputs_line_with_secrets_masked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The actor class itself, without Ray: an exception escaping a run becomes the input's
    `internal_error` line, masked with the worker's own secrets (the driver may not know
    them), and the worker goes on."""
    from runner.serve import batch_ray

    spec = project(tmp_path, {"model": {"id": "fake/echo"}})
    secret = "sk-live-worker-only-987654"
    monkeypatch.setenv("WORKER_API_KEY", secret)  # in the worker's environment only
    worker = batch_ray.BatchWorker(str(spec), [], str(tmp_path), {})
    job = {"id": "q1", "line": 1, "value": "hello", "run_id": "r" * 16}

    def broken(*args: Any, **kw: Any) -> Any:  # a bug of ours, where a run is started
        raise RuntimeError(f"cannot reach {secret}")

    real = worker.agent.start
    monkeypatch.setattr(worker.agent, "start", broken)
    line = asyncio.run(worker.run(job, False))
    assert line is not None and line["status"] == "internal_error" and line["id"] == "q1"
    assert secret not in json.dumps(line) and "RuntimeError: cannot reach" in line["error"]
    monkeypatch.setattr(worker.agent, "start", real)
    ok = asyncio.run(worker.run({**job, "run_id": "s" * 16}, False))
    assert ok is not None and ok["status"] == "finished"
    asyncio.run(worker.close())
