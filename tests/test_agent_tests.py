"""`runner test`: YAML agent test files, run against a recording (no model), the scripted
server (live) or the embedded model; the report, the exit codes, bad test files, and
`runner validate` over test files."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, run_cli
from runner.testing.cases import Expect, check, load_test_file, run_tests
from runner.errors import SpecError
from runner.result import RunResult, Step

SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed$")

AGENT = ("name: calc\nmodel: {id: openai/gpt-4o, backoff_s: 0}\nmemory: {backend: none}\n"
         "loop: {style: react}\nprompt: {instructions: Use the calculator.}\n"
         "tools: [calculator]\n")


def _wire(server: Any) -> list[str]:
    return ["--set", "model.id=openai/scripted", "--set", f"model.api_base={server.url}"]


def _project(tmp_path: Path, tests: str, agent: str = AGENT) -> Path:
    """agents/calc.yaml and agents/tests/calc.test.yaml; returns the tests folder."""
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "agents" / "tests").mkdir(parents=True)
    (tmp_path / "agents" / "calc.yaml").write_text(agent)
    (tmp_path / "agents" / "tests" / "calc.test.yaml").write_text(tests)
    return tmp_path / "agents" / "tests"


TWO_CASES = """\
agent: ../calc.yaml
recording: recordings/calc.jsonl
cases:
  - name: multiplies
    input: What is 6 times 7?
    expect:
      answer: {contains: "42"}
      tools: [calculator]
      steps: {max: 3}
  - name: adds
    input: What is 2 plus 2?
    expect:
      answer: "4"
      tools: {includes: [calculator]}
      steps: 2
"""


def _script_two(server: Any, second_answer: str = "4") -> None:
    server.script("Thought: multiply\nAction: calculator[6*7]", "Final Answer: 42",
                  "Thought: add\nAction: calculator[2+2]", f"Final Answer: {second_answer}")


# --------------------------------------------------------------------------- the shipped example

def test_the_shipped_example_replays_without_a_model(tmp_path: Path) -> None:
    # -X importtime names every module the process imports: the recording must answer
    # everything, so neither llama.cpp (the spec's embedded model) nor LiteLLM is loaded
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "runner", "test",
                           str(ROOT / "agents" / "tests")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    passed = SUMMARY.match(lines[-1])
    assert passed and passed.group(2) == "0", proc.stdout
    assert int(passed.group(1)) == len([l for l in lines if l.startswith("PASS ")]) >= 2
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert "runner.testing.recording" in imported  # the listing works
    assert not {m for m in imported if m.split(".")[0] in ("llama_cpp", "litellm")}
    assert not [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]


@pytest.mark.embedded
def test_the_shipped_example_passes_on_the_embedded_model(tmp_path: Path) -> None:
    proc = run_cli("test", str(ROOT / "agents" / "tests"), "--live", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == "3 passed, 0 failed"


# --------------------------------------------------------------------------- the report

def test_failing_expectations_print_expected_and_got(server, tmp_path: Path) -> None:
    folder = _project(tmp_path, TWO_CASES)
    _script_two(server, second_answer="5")
    # a wrong answer as the model gives it (the loop's answer check would ask again)
    proc = run_cli("test", str(folder), "--live", *_wire(server), "--set",
                   "loop.check_answer=false", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        "PASS agents/tests/calc.test.yaml::multiplies",
        "FAIL agents/tests/calc.test.yaml::adds: answer: expected '4', got '5'",
        "1 passed, 1 failed"]


def test_every_unmet_expectation_is_listed(server, tmp_path: Path) -> None:
    folder = _project(tmp_path, TWO_CASES.replace("steps: 2", "steps: 1"))
    server.script("Thought: multiply\nAction: calculator[6*7]", "Final Answer: 42",
                  "Final Answer: 5")
    proc = run_cli("test", str(folder), "--live", *_wire(server), cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[1] == (
        "FAIL agents/tests/calc.test.yaml::adds: answer: expected '4', got '5'; tools: "
        "expected calculator to be called, got []")
    server.script("Thought: multiply\nAction: calculator[6*7]",
                  "Thought: again\nAction: calculator[6*7]", "Final Answer: 42",
                  "Thought: add\nAction: calculator[2+2]", "Final Answer: 4")
    folder.joinpath("calc.test.yaml").write_text(TWO_CASES.replace("steps: {max: 3}",
                                                                   "steps: {max: 2}"))
    proc = run_cli("test", str(folder), "--live", *_wire(server), cwd=tmp_path)
    assert proc.stdout.splitlines()[0] == (
        "FAIL agents/tests/calc.test.yaml::multiplies: tools: expected [calculator], got "
        "[calculator, calculator]; steps: expected at most 2, got 3")


def test_a_missing_recording_runs_live_and_says_so(server, tmp_path: Path) -> None:
    folder = _project(tmp_path, TWO_CASES)
    _script_two(server)
    proc = run_cli("test", str(folder), *_wire(server), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == "2 passed, 0 failed"
    assert ("agents/tests/calc.test.yaml: no recording at agents/tests/recordings/calc.jsonl, "
            "so its cases run on the live model (openai/scripted)") in proc.stderr
    assert not (folder / "recordings").exists()


# --------------------------------------------------------------------------- record, replay

def test_record_then_replay(server, tmp_path: Path) -> None:
    folder = _project(tmp_path, TWO_CASES)
    _script_two(server)
    proc = run_cli("test", str(folder), "--record", *_wire(server), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rec = folder / "recordings" / "calc.jsonl"
    kinds = [json.loads(line)["kind"] for line in rec.read_text().splitlines()]
    assert kinds == ["recording", "agent", "exchange", "exchange", "exchange", "exchange"]

    server.reset()  # replay: the recorded model, with no key and nothing listening, is not called
    nowhere = ["--set", "model.id=openai/scripted", "--set", "model.api_base=http://127.0.0.1:9/v1"]
    proc = run_cli("test", str(folder), *nowhere, cwd=tmp_path, env={"OPENAI_API_KEY": ""})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == "2 passed, 0 failed"
    assert server.requests == [] and proc.stderr == ""

    # a changed prompt: each case fails with where its request differs
    proc = run_cli("test", str(folder), "--set", "prompt.instructions=Use a calculator.",
                   *nowhere, cwd=tmp_path)
    assert proc.returncode == 1
    first = proc.stdout.splitlines()[0]
    assert first.startswith(
        "FAIL agents/tests/calc.test.yaml::multiplies: replay_mismatch: call 1 of agent 'calc' "
        "is not in the recording agents/tests/recordings/calc.jsonl; against the closest "
        "recorded request (line 3), message 1 (user) differs at character 5: recorded "
        "'Use the calculator.")
    assert "now 'Use a calculator." in first
    assert "line 5" in proc.stdout.splitlines()[1]  # the adds case's own request
    assert proc.stdout.splitlines()[-1] == "0 passed, 2 failed"

    # another model: the recorded replies cannot stand for it, whatever the prompt
    proc = run_cli("test", str(folder), "-m", "openai/gpt-4o", cwd=tmp_path)
    assert proc.returncode == 1 and proc.stdout.splitlines()[-1] == "0 passed, 2 failed"
    assert ("replay_mismatch: agent 'calc' was recorded in agents/tests/recordings/calc.jsonl "
            'with model "openai/scripted"; this run has model "openai/gpt-4o"') in proc.stdout

    # --record rewrites the recording from scratch
    server.script("Thought: multiply\nAction: calculator[6*7]", "Final Answer: 42",
                  "Final Answer: 4")
    proc = run_cli("test", str(folder), "--record", *_wire(server), cwd=tmp_path)
    assert proc.returncode == 1  # the adds case no longer calls the calculator
    kinds = [json.loads(line)["kind"] for line in rec.read_text().splitlines()]
    assert kinds == ["recording", "agent", "exchange", "exchange", "exchange"]


def test_cases_do_not_share_a_conversation(server, scripted: list[str], tmp_path: Path,
                                           monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    agent = AGENT.replace("memory: {backend: none}", "memory: {backend: buffer}").replace(
        "tools: [calculator]", "tools: [calculator, agent: helper.yaml]")
    folder = _project(tmp_path, "agent: ../calc.yaml\ncases:\n"
                                "  - {name: one, input: remember apples}\n"
                                "  - {name: two, input: what did I say?}\n", agent)
    # a sub-agent whose spec keeps its memory in a database: a test neither reads nor writes it
    (tmp_path / "agents" / "helper.yaml").write_text(
        f"name: helper\nmodel: {{id: openai/scripted, api_base: '{server.url}'}}\n"
        "memory: {backend: sqlite, path: helper.db}\nloop: {style: react}\n")
    for word in ("apples", "nothing"):
        server.script(f"Thought: ask\nAction: helper[{word}]", f"Final Answer: noted {word}",
                      f"Final Answer: {word}")
    assert run_tests([folder], live=True, overrides=scripted) == 0
    assert not list(tmp_path.rglob("helper.db"))
    second_case = server.requests[3:]
    assert len(second_case) == 3
    for request in second_case:
        prompt = request["messages"][0]["content"]
        assert "apples" not in prompt and "Earlier in this conversation" not in prompt


def test_an_expected_failure_status_passes(server, scripted: list[str], tmp_path: Path,
                                          capsys: Any, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    folder = _project(tmp_path, "agent: ../calc.yaml\nset: [loop.max_iterations=1]\ncases:\n"
                                "  - name: runs out\n    input: sum?\n    expect:\n"
                                "      status: max_iterations\n      tools: [calculator]\n")
    server.script("Thought: add\nAction: calculator[1+1]")
    assert run_tests([folder], live=True, overrides=scripted) == 0
    assert capsys.readouterr().out.splitlines() == [
        "PASS agents/tests/calc.test.yaml::runs out", "1 passed, 0 failed"]
    server.script("Final Answer: 2")
    assert run_tests([folder], live=True, overrides=scripted) == 1
    assert "status: expected max_iterations, got finished" in capsys.readouterr().out


# --------------------------------------------------------------------------- bad test files

@pytest.mark.parametrize("tests, error", [
    ("agent: ../calc.yaml\ncases:\n  - name: a\n    input: q\n    expect:\n      answr: x\n",
     "calc.test.yaml:6:7: cases[0].expect.answr: unknown key 'answr' (did you mean 'answer'?)"),
    ("agent: ../calc.yaml\ncases:\n  - name: a\n    input: q\n    expect:\n      steps: three\n",
     "calc.test.yaml:6:7: cases[0].expect.steps: should be a mapping"),
    ("agent: ../calc.yaml\ncases:\n  - name: a\n    input: 5\n",
     "calc.test.yaml:4:5: cases[0].input: should be a valid string or should be a mapping"),
    ("agent: ../calc.yaml\ncases:\n  - name: a\n    input: q\n    expect: {status: done}\n",
     "calc.test.yaml:5:14: cases[0].expect.status: must be 'finished', 'max_iterations'"),
    ("agent: ../calc.yaml\ncases:\n  - name: a\n    input: q\n    expect:\n"
     "      answer: {matches: '(unclosed'}\n",
     "calc.test.yaml:6:16: cases[0].expect.answer.matches: invalid regular expression"),
    ("agent: ../calc.yaml\ncases:\n  - name: a\n    input: q\n    expect:\n"
     "      tools: calculator\n",
     "calc.test.yaml:6:7: cases[0].expect.tools: a list of tool names ([calculator]) or a "
     "mapping ({includes: [...], excludes: [...]})"),
    ("agent: ../calc.yaml\ncases: []\n",
     "calc.test.yaml:2:1: cases: should have at least 1 item after validation, not 0"),
    ("agent: ../calc.yaml\ncases:\n  - {name: a, input: q}\n  - {name: a, input: r}\n",
     "calc.test.yaml:4:6: cases[1].name: duplicate case name 'a' (also cases[0])"),
    ("agent: ../nope.yaml\ncases:\n  - {name: a, input: q}\n",
     "calc.test.yaml:1:1: agent: no such spec '../nope.yaml' (looked for /"),
    ("agent: ../calc.yaml\nset: [loop.max_iterations=lots]\ncases:\n  - {name: a, input: q}\n",
     "calc.test.yaml:2:1: set: loop.max_iterations: should be a valid integer"),
    ("agent: ../calc.yaml\nset: [nonsense]\ncases:\n  - {name: a, input: q}\n",
     "calc.test.yaml:2:7: set[0]: 'nonsense': expected KEY.PATH=VALUE"),
    ("- just a list\n", "calc.test.yaml:1:1: a test file is a mapping with `agent:` and `cases:`"),
])
def test_a_bad_test_file_is_located_and_exits_2(tmp_path: Path, tests: str, error: str) -> None:
    folder = _project(tmp_path, tests)
    proc = run_cli("test", str(folder), cwd=folder)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""  # nothing ran
    assert proc.stderr.startswith(error), proc.stderr


def test_a_bad_spec_under_test_is_reported_at_the_spec(tmp_path: Path) -> None:
    folder = _project(tmp_path, TWO_CASES, AGENT.replace("name: calc", "name: calc\nnmae: x"))
    with pytest.raises(SpecError, match=r"agents/calc.yaml:2:1: nmae: unknown key 'nmae'"):
        load_test_file(folder / "calc.test.yaml")


def test_a_bad_command_line_set_is_not_blamed_on_the_file(tmp_path: Path) -> None:
    folder = _project(tmp_path, TWO_CASES.replace("recording:", "set: [loop.max_iterations=2]"
                                                               "\nrecording:"))
    with pytest.raises(SpecError) as caught:
        load_test_file(folder / "calc.test.yaml", ["loop.max_iterations=many"])
    assert caught.value.render().startswith("--set: loop.max_iterations:")


def test_a_malformed_recording_exits_2(tmp_path: Path) -> None:
    folder = _project(tmp_path, TWO_CASES)
    (folder / "recordings").mkdir()
    (folder / "recordings" / "calc.jsonl").write_text('{"kind": "recording", "version": 1}\n{')
    proc = run_cli("test", str(folder), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("agents/tests/recordings/calc.jsonl:2:2: not JSON")


def test_no_test_files_exits_2(tmp_path: Path) -> None:
    proc = run_cli("test", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"no test files (*.test.yaml) under {tmp_path}"


# --------------------------------------------------------------------------- runner validate

def test_validate_checks_test_files(tmp_path: Path) -> None:
    folder = _project(tmp_path, TWO_CASES)
    (folder / "recordings").mkdir()
    (folder / "recordings" / "calc.jsonl").write_text("not read by validate")
    proc = run_cli("validate", str(tmp_path / "agents"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr.strip() == "2 specs checked, 0 problems"

    (folder / "calc.test.yaml").write_text(TWO_CASES.replace("input: What is 2",
                                                             "inptu: What is 2"))
    proc = run_cli("validate", str(tmp_path / "agents"), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout.splitlines() == [
        "agents/tests/calc.test.yaml:10:5: cases[1].input: missing required key",
        "agents/tests/calc.test.yaml:11:5: cases[1].inptu: unknown key 'inptu' (did you mean "
        "'input'?)"]


def test_validate_reports_a_broken_spec_once(tmp_path: Path) -> None:
    _project(tmp_path, TWO_CASES, AGENT.replace("name: calc", "name: calc\nnmae: x"))
    proc = run_cli("validate", str(tmp_path / "agents"), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout.splitlines() == ["agents/calc.yaml:2:1: nmae: unknown key 'nmae' (did "
                                        "you mean 'name'?)"]


def test_the_repository_agents_validate() -> None:
    proc = run_cli("validate", "agents/", cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- check()

def _result(answer: Any = "42", status: str = "finished", tools: tuple[str, ...] = ()) -> RunResult:
    r = RunResult("r1", "calc", "m", "q", answer=answer, status=status)
    r.steps = [Step(i + 1, action=t) for i, t in enumerate(tools)] + [Step(len(tools) + 1)]
    return r


@pytest.mark.parametrize("expect, result, reasons", [
    ({"answer": 42}, _result(" 42\n"), []),
    ({"answer": {"equals": {"total": 3}}}, _result({"total": 3}), []),
    ({"answer": {"equals": {"total": 3}}}, _result({"total": 4}),
     ["answer: expected {'total': 3}, got {'total': 4}"]),
    ({"answer": {"contains": ["4", "2"], "not_contains": "error"}}, _result("42"), []),
    ({"answer": {"not_contains": ["4"]}}, _result("42"),
     ["answer: expected not to contain '4', got '42'"]),
    ({"answer": {"matches": "(?i)^forty"}}, _result("Forty-two"), []),
    ({"answer": {"matches": "^4$"}}, _result("42"), ["answer: expected to match /^4$/, got '42'"]),
    ({"answer": {"contains": "x"}}, _result(None, "max_iterations"),
     ["status: expected finished, got max_iterations",
      "answer: expected to contain 'x', got ''"]),
    ({"tools": []}, _result(tools=("calculator",)), ["tools: expected [], got [calculator]"]),
    ({"tools": {"includes": ["a", "b"], "excludes": ["c"]}}, _result(tools=("b", "c", "a")),
     ["tools: expected c not to be called, got [b, c, a]"]),
    ({"steps": {"min": 3}}, _result(tools=("a",)), ["steps: expected at least 3, got 2"]),
    ({"steps": 2, "status": "finished"}, _result(tools=("a",)), []),
])
def test_check(expect: dict[str, Any], result: RunResult, reasons: list[str]) -> None:
    assert check(Expect.model_validate(expect), result) == reasons


# --------------------------------------------------------------------------- confinement

@pytest.mark.parametrize("key,value", [
    ("recording", "{outside}/profile"),            # an absolute path out of the project
    ("recording", "../../../outside/profile"),     # climbing out
    ("recording", "recordings/link.jsonl"),        # a symlink in the repository leading out
    ("agent", "{outside}/calc.yaml"),
    ("agent", "../../../outside/calc.yaml"),
])
def test_a_test_file_cannot_name_a_path_out_of_the_project(server, tmp_path: Path, key: str,
                                                            value: str) -> None:
    project = tmp_path / "project"
    project.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    profile = outside / "profile"
    profile.write_text("export PATH=/usr/bin\n")
    (outside / "calc.yaml").write_text(AGENT)
    folder = _project(project, TWO_CASES)
    (folder / "recordings").mkdir()
    (folder / "recordings" / "link.jsonl").symlink_to(profile)
    line = {"recording": "recording: recordings/calc.jsonl", "agent": "agent: ../calc.yaml"}[key]
    text = TWO_CASES.replace(line, f"{key}: {value.format(outside=outside)}")
    (folder / "calc.test.yaml").write_text(text)

    proc = run_cli("validate", str(project / "agents"), cwd=project)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"calc.test.yaml:{2 if key == 'recording' else 1}:1: {key}: path " in proc.stdout
    assert "escapes the project root" in proc.stdout

    _script_two(server)
    proc = run_cli("test", str(folder), "--record", *_wire(server), cwd=project)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "escapes the project root" in proc.stderr
    assert profile.read_text() == "export PATH=/usr/bin\n" and server.requests == []


def test_a_test_files_set_cannot_send_output_out_of_the_project(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    folder = _project(project, TWO_CASES.replace(
        "recording:", f"set: [trace.path={tmp_path / 'elsewhere'}]\nrecording:"))
    with pytest.raises(SpecError) as caught:
        load_test_file(folder / "calc.test.yaml")
    assert caught.value.render().startswith("project/agents/tests/calc.test.yaml:2:1: set: "
                                            "trace.path: path ")  # shown from the cwd
    assert "outside the project root" in str(caught.value)
