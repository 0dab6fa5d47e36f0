"""Tools against hostile input: calculator arguments that would make CPython compute for
minutes in C (holding the GIL, so no timeout or signal could stop it), sync tools that hold the
GIL run in a separate process that is killed at their timeout, and tool arguments nested deep
enough to overflow recursive code.

Hangs are guarded by subprocess timeouts and deadlines that make a hang fail; nothing here
asserts how fast anything is."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import runner

from conftest import run_cli, tools_plugin, wait_for
from runner.default_plugins.calculator import MAX_EXPONENT, MAX_NDIGITS, MAX_RESULT_BITS
from runner.parsing import TOO_DEEP
from runner.tools import MAX_ARGUMENT_DEPTH

# ------------------------------------------------------------------------------ test tools

PIDS = "HOSTILE_TOOLS_PIDFILE"
TIMEOUT_S = 6
"""Tool timeout for the stuck tools: longer than a Python process takes to start under load,
so the tool is running (holding the GIL) when its timeout fires."""


def _note_pid() -> None:
    """Append this process's pid to the file the test named (the tool runs elsewhere)."""
    with open(os.environ[PIDS], "a") as f:
        f.write(f"{os.getpid()}\n")


@runner.tool(isolation="process")
def hog(seconds: float) -> str:
    """Holds the GIL in C without end (sum over an endless C iterator never yields it)."""
    _note_pid()
    return str(sum(itertools.repeat(1)))


@runner.tool(isolation="process")
def spin(seconds: float) -> str:
    """A Python busy loop in a separate process."""
    _note_pid()
    while True:
        pass


@runner.tool(isolation="process")
def crash(how: str) -> str:
    """Dies without a result."""
    if how == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    os._exit(3)


class Odd(Exception):
    """An exception that pickles but cannot be rebuilt from its pickle."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}/{b}")


@runner.tool(isolation="process")
def where(text: str) -> str:
    """Says which process ran it, and fails on request."""
    if text == "fail":
        raise ValueError("asked to fail")
    if text == "odd":
        raise Odd(1, 2)
    return f"{text} from {os.getpid()}"


@runner.tool
def echo(text: str) -> str:
    """Returns the text it is given."""
    return text


@runner.tool
def keep(data: Any) -> str:
    """Accepts any JSON value."""
    return "kept"


@pytest.fixture(autouse=True)
def hostile_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    pidfile = tmp_path / "pids.txt"
    monkeypatch.setenv(PIDS, str(pidfile))
    with tools_plugin(hog, spin, crash, where, echo, keep):
        yield pidfile


def write_spec(tmp_path: Path, replies: list[Any], tools: list[Any], **sections: Any) -> Path:
    data: dict[str, Any] = {
        "name": "hostile", "model": {"id": "fake/script", "options": {"replies": replies}},
        "loop": {"style": "react", "max_iterations": 10}, "tools": tools,
        "memory": {"backend": "none"}, "trace": {"enabled": False},
        "checkpoint": {"enabled": False}}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    (tmp_path / "pyproject.toml").touch()  # the project root: nothing is written outside
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie counts as gone), from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def pids_in(pidfile: Path) -> list[int]:
    return [int(line) for line in pidfile.read_text().split()] if pidfile.exists() else []


# ------------------------------------------------------------------------------ calculator

BOUNDED = {
    "round(1, -10**8)": f"between -{MAX_NDIGITS} and {MAX_NDIGITS}",
    "round(1.5, 10**9)": f"between -{MAX_NDIGITS} and {MAX_NDIGITS}",
    "round(7, 10**100)": f"between -{MAX_NDIGITS} and {MAX_NDIGITS}",
    "round(10**400, -(10**8))": f"between -{MAX_NDIGITS} and {MAX_NDIGITS}",
    "round(2.5, 0.5)": "whole number",
    "10**10**8": f"exponents are limited to {MAX_EXPONENT}",
    "10**(10**8)": f"exponents are limited to {MAX_EXPONENT}",
    "(10**8)**(10**8)": f"exponents are limited to {MAX_EXPONENT}",
    "2**-10**9": f"exponents are limited to {MAX_EXPONENT}",
    "(2**5000)**30": f"results to {MAX_RESULT_BITS} bits",
    "((7**3500)**10) * ((7**3500)**10)": f"limited to {MAX_RESULT_BITS} bits",
    "2<<10**9": f"shifts are limited to {MAX_RESULT_BITS} bits",
    "(2**10) << 99995": f"results are limited to {MAX_RESULT_BITS} bits",
    "(2**9000) << 99000": f"results are limited to {MAX_RESULT_BITS} bits",
    "1 >> 10**18": f"shifts are limited to {MAX_RESULT_BITS} bits",
    "factorial(10**7)": "not defined",
    "comb(10**9, 10**5)": "not defined",
    "pow(10, 10**8, 7)": "not defined",
    "int('9' * 10**6)": "only numbers",
    "not 1": "only numbers",
}

PROBE = textwrap.dedent("""
    import json, sys
    from runner.default_plugins.calculator import evaluate, format_number
    out = {}
    for expression in json.loads(sys.stdin.read()):
        try:
            out[expression] = "value: " + format_number(evaluate(expression))
        except ValueError as exc:
            out[expression] = "refused: " + str(exc)
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def probed() -> dict[str, str]:
    """Every expression evaluated in one child process: a computation stuck in C (which no
    in-process timeout can stop) fails the test at the subprocess timeout instead of hanging."""
    done = subprocess.run([sys.executable, "-c", PROBE], input=json.dumps(list(BOUNDED)),
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("expression", BOUNDED, ids=list(BOUNDED))
def test_the_calculator_refuses_arguments_that_cost_minutes_in_c(
        probed: dict[str, str], expression: str) -> None:
    outcome = probed[expression]
    assert outcome.startswith("refused: "), outcome
    assert BOUNDED[expression] in outcome


def test_a_hostile_round_is_an_observation_and_the_run_goes_on(tmp_path: Path) -> None:
    """Through `runner run` in a child process: before the bound, round(1, -10**8) froze the
    process in C past the tool's 2 s timeout (the subprocess timeout is the hang guard)."""
    replies = ["Action: calculator[round(1, -10**8)]", "Action: calculator[round(1234, -2)]",
               "Final Answer: 1200"]
    spec = write_spec(tmp_path, replies, ["calculator"])
    done = run_cli("run", str(spec), "round it", "--json", cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "finished" and result["answer"] == "1200"
    first, second = result["steps"][:2]
    assert first["error"] and first["observation"] == (
        f"tool calculator failed: ValueError: round's digits must be between -{MAX_NDIGITS} "
        f"and {MAX_NDIGITS} (got -100000000)")
    assert second["observation"] == "1200"


# ------------------------------------------------------------------- process-isolated tools


@pytest.mark.parametrize("tool", ["hog", "spin"])
def test_a_tool_holding_the_gil_in_its_process_times_out_and_is_killed(
        tmp_path: Path, hostile_tools: Path, tool: str) -> None:
    """`hog` holds the GIL in C: in a thread it would stall the event loop, so the timeout
    could never fire. In its own process it is killed at the timeout and the run goes on."""
    replies = [f"Action: {tool}[1]", "Action: echo[after]", "Final Answer: survived"]
    spec = write_spec(tmp_path, replies, [tool, "echo"], loop={"tool_timeout_s": TIMEOUT_S})
    result = runner.run_agent(spec, "hold the gil")
    assert result.status == "finished", result.error
    assert result.answer == "survived"
    assert result.steps[0].error
    assert result.steps[0].observation.endswith(f"tool {tool} timed out after {TIMEOUT_S}s")
    assert result.steps[1].observation == "after"
    (pid,) = pids_in(hostile_tools)
    assert pid != os.getpid()
    wait_for(lambda: not alive(pid), 30, "the tool's process to be gone")


def test_an_isolated_tool_returns_its_result_and_raises_its_errors(tmp_path: Path) -> None:
    replies = ["Action: where[hello]", "Action: where[fail]", "Action: where[odd]",
               "Final Answer: done"]
    spec = write_spec(tmp_path, replies, ["where"])
    result = runner.run_agent(spec, "where")
    assert result.status == "finished", result.error
    text, pid = result.steps[0].observation.rsplit(" from ", 1)
    assert text == "hello" and int(pid) != os.getpid()
    assert result.steps[1].error and result.steps[2].error
    assert result.steps[1].observation == "tool where failed: ValueError: asked to fail"
    assert result.steps[2].observation == "tool where failed: Odd: 1/2"


@pytest.mark.parametrize("how,says", [("exit", "exited with code 3"),
                                      ("segv", "killed by SIGSEGV")])
def test_an_isolated_tool_whose_process_dies_is_an_error_observation(
        tmp_path: Path, how: str, says: str) -> None:
    replies = [f"Action: crash[{how}]", "Final Answer: done"]
    spec = write_spec(tmp_path, replies, ["crash"])
    result = runner.run_agent(spec, "crash")
    assert result.status == "finished", result.error
    step = result.steps[0]
    assert step.error
    assert step.observation == f"tool crash failed: its process ended without a result ({says})"


def test_the_spec_can_isolate_any_sync_tool(tmp_path: Path) -> None:
    """`isolation: process` on a tools entry: the calculator, with a hard backstop."""
    replies = ["Action: calculator[17*23]", "Final Answer: 391"]
    spec = write_spec(tmp_path, replies, [{"calculator": {"isolation": "process"}}])
    agent = runner.Agent(runner.load_spec(spec))
    assert agent.tools["calculator"].isolation == "process"
    result = runner.run_agent(spec, "multiply")
    assert result.status == "finished", result.error
    assert result.steps[0].observation == "391" and not result.steps[0].error


def test_a_tool_that_cannot_be_sent_to_a_process_is_an_error_observation(
        tmp_path: Path) -> None:
    def local(text: str) -> str:
        """Defined in a function: a fresh process cannot import it."""
        return text

    closure = runner.tool(local, isolation="process")
    replies = ["Action: local[x]", "Final Answer: done"]
    with tools_plugin(closure):
        result = runner.run_agent(write_spec(tmp_path, replies, ["local"]), "local")
    assert result.status == "finished", result.error
    assert result.steps[0].error
    assert result.steps[0].observation.startswith(
        "tool local failed: it cannot run in a separate process")


PLUGIN = textwrap.dedent('''
    import os

    import runner


    @runner.tool(isolation="process")
    def stuck(text: str) -> str:
        """Holds the GIL in C without end."""
        import itertools
        with open(os.environ["HOSTILE_TOOLS_PIDFILE"], "a") as f:
            f.write(f"{os.getpid()}\\n")
        return str(sum(itertools.repeat(1)))


    @runner.hookimpl
    def register_tools(register):
        register(stuck)
''')


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `stuck` tool as an installed plugin (an entry point on PYTHONPATH)."""
    site = tmp_path_factory.mktemp("hostile-site")
    (site / "runner_hostile_tools.py").write_text(PLUGIN)
    info = site / "runner_hostile_tools-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: runner-hostile-tools\n"
                                   "Version: 0.1\n")
    (info / "entry_points.txt").write_text("[yaml_agent_runner]\nhostile = runner_hostile_tools\n")
    return site


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)],
                         ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_a_run_whose_tool_is_stuck_in_its_process(
        tmp_path: Path, plugin_site: Path, hostile_tools: Path, sig: int, code: int) -> None:
    """The event loop stays free while the tool holds the GIL in its own process: the signal
    is handled, the step ends at the tool's timeout, the tool's process is killed."""
    replies = ["Action: stuck[x]", "Final Answer: never"]
    spec = write_spec(tmp_path, replies, ["stuck"], loop={"tool_timeout_s": TIMEOUT_S},
                      checkpoint={"enabled": True})
    err = tmp_path / "stderr.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(plugin_site), os.environ.get("PYTHONPATH")]))}
    with open(err, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "runner", "run", str(spec), "stuck"],
                                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=f, env=env)
    try:
        (pid,) = wait_for(lambda: pids_in(hostile_tools), 60, "the tool's process")
        proc.send_signal(sig)
        assert proc.wait(60) == code, err.read_text()
    finally:
        proc.kill()
        proc.wait()
    stderr = err.read_text()
    name = signal.Signals(sig).name
    assert f"interrupted: stopped by {name}" in stderr, stderr
    assert "Traceback" not in stderr
    wait_for(lambda: not alive(pid), 30, "the tool's process to be gone")


def test_a_runner_killed_outright_leaves_no_tool_process_behind(
        tmp_path: Path, plugin_site: Path, hostile_tools: Path) -> None:
    """SIGKILL gives the runner no chance to clean up: the kernel ends the tool's process."""
    spec = write_spec(tmp_path, ["Action: stuck[x]", "Final Answer: never"], ["stuck"],
                      loop={"tool_timeout_s": 600})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(plugin_site), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "runner", "run", str(spec), "stuck"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    try:
        (pid,) = wait_for(lambda: pids_in(hostile_tools), 60, "the tool's process")
    finally:
        proc.kill()
        proc.wait()
    wait_for(lambda: not alive(pid), 30, "the tool's process to be gone")


# ---------------------------------------------------------------------------- deep arguments

DEEP = "[" * 500 + "]" * 500


@pytest.mark.parametrize("tool,payload", [
    ("echo", '{"text":' + DEEP + '}'),
    ("keep", '{"data":' + DEEP + '}'),
    ("echo", '{"text":' + "[" * 5000 + "]" * 5000 + '}'),
    ("keep", '{"data":' + '{"a":' * 300 + '1' + '}' * 300 + '}'),
], ids=["500-str", "500-any", "5000", "objects"])
def test_deeply_nested_text_arguments_are_an_observation(tmp_path: Path, tool: str,
                                                         payload: str) -> None:
    replies = [f"Action: {tool}\nAction Input: {payload}", "Final Answer: done"]
    spec = write_spec(tmp_path, replies, [tool], trace={"enabled": True},
                      checkpoint={"enabled": True})
    result = runner.run_agent(spec, "deep")
    assert result.status == "finished", result.error
    assert result.steps[0].error
    assert result.steps[0].observation == (
        f"tool {tool} failed: {TOO_DEEP}")


def test_arguments_at_the_depth_bound_are_accepted(tmp_path: Path) -> None:
    inner = MAX_ARGUMENT_DEPTH - 1  # the object itself is one level
    payload = '{"data":' + "[" * inner + "]" * inner + '}'
    replies = [f"Action: keep\nAction Input: {payload}", "Final Answer: done"]
    result = runner.run_agent(write_spec(tmp_path, replies, ["keep"]), "deep")
    assert result.steps[0].observation == "kept", result.steps[0].observation


def test_deeply_nested_native_arguments_are_an_observation(tmp_path: Path) -> None:
    """A native call whose arguments are 500 levels deep: the run ends normally and its
    result, trace and checkpoint stay serialisable."""
    replies = [{"tool_calls": [{"name": "keep", "arguments": '{"data":' + DEEP + '}'}]},
               "done"]
    spec = write_spec(tmp_path, replies, ["echo", "keep"], loop={"style": "tools"},
                      model={"options": {"replies": replies, "native_tools": True}},
                      trace={"enabled": True}, checkpoint={"enabled": True})
    result = runner.run_agent(spec, "deep native")
    assert result.status == "finished", result.error
    assert result.steps[0].error
    assert f"{MAX_ARGUMENT_DEPTH} levels" in result.steps[0].observation
    assert json.loads(json.dumps(result.to_dict()))["status"] == "finished"


def test_act_never_hands_deep_arguments_to_the_event_sinks(tmp_path: Path) -> None:
    """Arguments already decoded (by a model adapter, or read back from a checkpoint) reach
    act() as data: the events, the redactor and the trace's JSON get a shallow copy as text,
    and the tool is not run."""
    from runner.acting import StepContext, ToolLedger, act
    from runner.budget import Budget
    from runner.parsing import Action
    from runner.redact import Redactor
    from runner.result import Step, to_json
    from runner.spec import BudgetSpec, LoopSpec

    redactor = Redactor(secrets={"s3cret"}, keys={"password"})
    written: list[str] = []
    deep: Any = []
    for _ in range(500):
        deep = [deep]
    ctx = StepContext("run-1", {"keep": keep}, LoopSpec(), Budget(BudgetSpec()), tmp_path, 0,
                      ToolLedger(), lambda e: written.append(to_json(redactor.value(e.to_dict()))),
                      lambda e: None, None)
    step = Step(index=1)
    asyncio.run(act(ctx, Action("keep", {"data": deep}), step, []))
    assert step.error
    assert step.observation == f"tool keep failed: {TOO_DEEP}"
    assert isinstance(step.input, str) and step.input.startswith('{"data": [[')
    assert len(written) == 2  # action_taken, observed
