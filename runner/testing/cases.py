"""Agent tests (`runner test`): YAML cases, each an input and what is expected of the run (the
answer, the tools called, the number of steps, the status), replayed from a recording or run
on the live model. The format is documented in docs/testing.md:

    agent: ../calculator.yaml                  # relative to this file
    recording: recordings/calculator.jsonl     # the default: recordings/NAME.jsonl
    cases:
      - name: multiplies
        input: What is 17 times 23?
        expect:
          answer: {contains: "391"}
          tools: [calculator]
          steps: {max: 3}
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError

from ..agent import Agent
from ..console import StderrPrinter
from ..errors import (EXIT_FAILED, EXIT_OK, EXIT_SPEC, ReplayMismatch, RunnerError, SpecError,
                      SpecErrors)
from ..memory import BufferMemory
from ..redact import Redactor, env_secrets, printable, redact_text
from ..resolve import Resolved, resolve
from ..result import RunResult, as_text
from ..spec import (Mark, SpecSource, StrictModel, find_root, is_test_file, load_spec, load_yaml,
                    pydantic_errors, read_text, shown_path, valid_regex)
from ..spec.load import output_path_problems
from .recording import Recorder, Replayer

__all__ = ["AgentTests", "Case", "Expect", "AnswerCheck", "ToolsCheck", "StepsCheck",
           "LoadedTests", "load_test_file", "find_test_files", "check", "run_tests"]

Status = Literal[
    "finished", "max_iterations", "max_parse_errors", "loop_detected", "budget_tokens",
    "budget_cost_usd", "budget_wall_s", "budget_tool_calls", "model_error", "model_timeout",
    "model_auth_error", "model_rate_limited", "model_provider_error", "output_error",
    "template_error", "checkpoint_error", "interrupted", "error"]


# --------------------------------------------------------------------------- the format



def _texts(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _override(item: str) -> str:
    key, sep, _ = item.partition("=")
    if not sep or not key:
        raise ValueError(f"{item!r}: expected KEY.PATH=VALUE, e.g. model.temperature=0")
    return item


class AnswerCheck(StrictModel):
    """What the final answer must be like; every check given must hold."""

    equals: Any = None
    """The whole answer, surrounding whitespace ignored; for a structured answer
    (output.schema) the JSON value. `answer: "391"` is short for `answer: {equals: "391"}`."""
    contains: Annotated[list[str], BeforeValidator(_texts)] = []
    """A text (or a list of texts) the answer must contain, case as given."""
    not_contains: Annotated[list[str], BeforeValidator(_texts)] = []
    """A text (or a list of texts) the answer must not contain."""
    matches: Annotated[str, AfterValidator(valid_regex)] | None = None
    """A regular expression found somewhere in the answer (`(?i)` ignores case, `^...$`
    anchors it to the whole answer)."""


class ToolsCheck(StrictModel):
    """The tools the agent called, by the names the model sees (a sub-agent's own calls are
    not counted; the sub-agent itself is, by its name)."""

    exactly: list[str] | None = None
    """Every call, in order: `tools: [calculator]` is short for this; `tools: []`: none."""
    includes: list[str] = []
    """Tools each called at least once, in any order."""
    excludes: list[str] = []
    """Tools never called."""


class StepsCheck(StrictModel):
    """How many steps the run took (one per tool call or final answer, as `runner run
    --json` lists them)."""

    exactly: int | None = Field(None, ge=0)
    """This many steps: `steps: 2` is short for this."""
    min: int | None = Field(None, ge=0)
    """At least this many."""
    max: int | None = Field(None, ge=0)
    """At most this many."""


def _answer(value: Any) -> Any:
    return value if value is None or isinstance(value, dict) else {"equals": value}


def _tools(value: Any) -> Any:
    if isinstance(value, list):
        return {"exactly": value}
    if value is not None and not isinstance(value, dict):
        raise ValueError("a list of tool names ([calculator]) or a mapping "
                         "({includes: [...], excludes: [...]})")
    return value


def _steps(value: Any) -> Any:
    return {"exactly": value} if isinstance(value, int) and not isinstance(value, bool) else value


class Expect(StrictModel):
    """What the run must come to; anything left out is not checked (the status is)."""

    status: Status = "finished"
    """How the run ended: `finished`, or the failure expected (`max_iterations`,
    `budget_tokens`, `loop_detected`, `output_error`, ...)."""
    answer: Annotated[AnswerCheck | None, BeforeValidator(_answer)] = None
    """The final answer (of a failed run: its partial answer): a value it must equal, or a
    mapping of checks: equals, contains, not_contains, matches."""
    tools: Annotated[ToolsCheck | None, BeforeValidator(_tools)] = None
    """The tools called: a list (every call, in order), or {includes: [...], excludes: [...]}."""
    steps: Annotated[StepsCheck | None, BeforeValidator(_steps)] = None
    """The number of steps: a number, or {min: N, max: N}."""


class Case(StrictModel):
    """One run of the agent and what is expected of it."""

    name: str = Field(min_length=1)
    """Names the case in the report (`FILE::NAME`); unique in its file."""
    input: str | dict[str, Any]
    """The question; a chain takes a mapping of its named inputs."""
    expect: Expect = Expect()
    """What the run must come to (default: it finishes)."""


class AgentTests(StrictModel):
    """A test file (`*.test.yaml`): one agent and its cases."""

    agent: str
    """The spec under test, relative to this file."""
    recording: str | None = None
    """The recording the cases replay (and `--record` rewrites), relative to this file;
    default `recordings/NAME.jsonl`, NAME being this file's name without `.test.yaml`."""
    overrides: list[Annotated[str, AfterValidator(_override)]] = Field([], alias="set")
    """`--set` values applied to the spec for these cases (`model.temperature=0`); the
    command line's come after them."""
    cases: list[Case] = Field(min_length=1)
    """The cases, run one after another, each in a fresh conversation."""


# --------------------------------------------------------------------------- loading

@dataclass
class LoadedTests:
    """A test file read and checked, with the spec it tests."""

    path: Path
    shown: str
    tests: AgentTests
    resolved: Resolved
    """The agent under test, checked against the installed plugins."""
    recording: Path

    @property
    def spec(self) -> Any:
        return self.resolved.spec


def load_test_file(path: str | os.PathLike[str], overrides: Iterable[str] = ()) -> LoadedTests:
    """Read and check a test file and load its agent with the file's `set` then `overrides`;
    raise SpecError naming file, line and key."""
    path = Path(path)
    shown = shown_path(path)
    marks: dict[tuple[Any, ...], Mark] = {}
    data = load_yaml(read_text(path, shown), shown, marks)
    if not isinstance(data, dict):
        raise SpecError("a test file is a mapping with `agent:` and `cases:`", path=shown,
                        line=1, col=1)
    # confined like a spec's paths: a test file in a pull request must not make `--record`
    # rewrite a file outside the project, nor run a spec from outside it
    src = SpecSource(path.resolve(), find_root(path.resolve()), marks)
    try:
        tests = AgentTests.model_validate(data)
    except ValidationError as exc:
        raise SpecErrors(pydantic_errors(exc, src, AgentTests, data=data)) from None
    seen: dict[str, int] = {}
    for i, case in enumerate(tests.cases):
        if case.name in seen:
            raise src.error(("cases", i, "name"), f"duplicate case name {case.name!r} "
                                                  f"(also cases[{seen[case.name]}])")
        seen[case.name] = i
    agent = src.resolve(tests.agent, ("agent",))
    if not agent.is_file():
        raise src.error(("agent",), f"no such spec {tests.agent!r} (looked for {shown_path(agent)})")
    spec = _load_agent(src, agent, tests.overrides, list(overrides))
    stem = path.name.removesuffix(".yml").removesuffix(".yaml").removesuffix(".test")
    recording = src.resolve(tests.recording or f"recordings/{stem}.jsonl", ("recording",))
    return LoadedTests(path, shown, tests, spec, recording)


def _load_agent(src: SpecSource, agent: Path, own: list[str], given: list[str]) -> Resolved:
    """The spec under test; a bad entry of the file's `set` is reported at that key."""
    try:
        resolved = resolve(load_spec(agent, [*own, *given]))
    except SpecError as exc:
        if not _from_overrides(exc) or not own:
            raise
        try:
            resolve(load_spec(agent, own))
        except SpecError as mine:
            if _from_overrides(mine):
                errors = getattr(mine, "errors", [mine])
                raise src.error(("set",), "; ".join(
                    f"{e.key}: {e.reason}" if e.key else e.reason for e in errors)) from None
        raise  # the command line's --set is at fault
    # the command line's --set may send output anywhere; a test file's `set:` is not the user's
    mine = [e for e in output_path_problems(load_spec(agent, own), confine_set=True)
            if e.path == "--set"] if own else []
    if mine:
        raise src.error(("set",), "; ".join(f"{e.key}: {e.reason}" for e in mine))
    return resolved


def _from_overrides(exc: SpecError) -> bool:
    return any(e.path == "--set" for e in getattr(exc, "errors", [exc]))


def find_test_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The test files under `paths` (folders searched recursively, dot-folders skipped); a
    file named explicitly is taken whatever its name."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(sorted(q for q in p.rglob("*") if is_test_file(q) and q.is_file()
                                and not any(part.startswith(".")
                                            for part in q.relative_to(p).parts)))
        else:
            found.append(p)
    return found


# --------------------------------------------------------------------------- checking

def _quote(value: Any, most: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= most else text[:most] + "..."


def _equal(answer: Any, expected: Any) -> bool:
    if isinstance(answer, str):  # `answer: 391` in YAML is a number; the answer is text
        want = expected if isinstance(expected, str) else as_text(expected)
        return answer.strip() == want.strip()
    return bool(answer == expected)


def _names(tools: list[str]) -> str:
    return f"[{', '.join(tools)}]"


def check(expect: Expect, result: RunResult) -> list[str]:
    """Each unmet expectation as `what: expected ..., got ...` (empty: the case passed)."""
    if isinstance(result.exception, ReplayMismatch):
        return [f"{result.status}: {result.error}"]  # nothing else about the run means anything
    reasons: list[str] = []
    if result.status != expect.status:
        error = f" ({' '.join(str(result.error).split())[:300]})" if result.error else ""
        reasons.append(f"status: expected {expect.status}, got {result.status}{error}")
    a = expect.answer
    if a is not None:
        answer = result.answer
        text = "" if answer is None else as_text(answer)
        if "equals" in a.model_fields_set and not _equal(answer, a.equals):
            reasons.append(f"answer: expected {_quote(a.equals)}, got {_quote(answer)}")
        for part in a.contains:
            if part not in text:
                reasons.append(f"answer: expected to contain {part!r}, got {_quote(text)}")
        for part in a.not_contains:
            if part in text:
                reasons.append(f"answer: expected not to contain {part!r}, got {_quote(text)}")
        if a.matches is not None and not re.search(a.matches, text):
            reasons.append(f"answer: expected to match /{a.matches}/, got {_quote(text)}")
    called = [s.action for s in result.steps if s.action]
    t = expect.tools
    if t is not None:
        if t.exactly is not None and called != t.exactly:
            reasons.append(f"tools: expected {_names(t.exactly)}, got {_names(called)}")
        for name in t.includes:
            if name not in called:
                reasons.append(f"tools: expected {name} to be called, got {_names(called)}")
        for name in t.excludes:
            if name in called:
                reasons.append(f"tools: expected {name} not to be called, got {_names(called)}")
    s, n = expect.steps, len(result.steps)
    if s is not None:
        if s.exactly is not None and n != s.exactly:
            reasons.append(f"steps: expected {s.exactly}, got {n}")
        if s.min is not None and n < s.min:
            reasons.append(f"steps: expected at least {s.min}, got {n}")
        if s.max is not None and n > s.max:
            reasons.append(f"steps: expected at most {s.max}, got {n}")
    return reasons


# --------------------------------------------------------------------------- running

@dataclass
class _Suite:
    loaded: LoadedTests
    tap: Any
    secrets: set[str]


def run_tests(paths: Iterable[str | os.PathLike[str]], *, record: bool = False,
              live: bool = False, overrides: Iterable[str] = (), verbose: bool = False) -> int:
    """Run every case under `paths`; print `PASS|FAIL FILE::CASE` per case and then
    `N passed, N failed` on stdout. Returns the exit code: 0 all passed, 1 some failed, 2 a
    test file (or its spec or recording) is wrong, and then nothing runs."""
    paths = list(paths)
    files = find_test_files(paths)
    if not files:
        _note(f"no test files (*.test.yaml) under {', '.join(map(str, paths))}")
        return EXIT_SPEC
    loaded: list[LoadedTests] = []
    problems: list[SpecError] = []
    for f in files:
        try:
            loaded.append(load_test_file(f, overrides))
        except SpecError as exc:
            problems.extend(getattr(exc, "errors", [exc]))
    suites: list[_Suite] = []
    if not problems:
        for t in loaded:
            try:
                suites.append(_suite(t, record, live))
            except SpecError as exc:
                problems.append(exc)
    if problems:
        for s in suites:
            if s.tap is not None:
                s.tap.close()
        for p in problems:
            _note(p.render())
        return EXIT_SPEC
    passed, failed = asyncio.run(_run_all(suites, verbose))
    print(f"{passed} passed, {failed} failed", flush=True)
    return EXIT_FAILED if failed else EXIT_OK


def _suite(t: LoadedTests, record: bool, live: bool) -> _Suite:
    """A test file with what stands between its agent and the model: a recorder, a
    replayer, or nothing (live)."""
    spec = t.spec
    secrets = spec.source.secrets | env_secrets()
    redactor = Redactor.for_trace(spec.trace, secrets)
    if record:
        return _Suite(t, Recorder(t.recording, redactor), secrets)
    if live:
        return _Suite(t, None, secrets)
    if t.recording.exists():
        return _Suite(t, Replayer(t.recording, redactor), secrets)
    _note(f"{t.shown}: no recording at {shown_path(t.recording)}, so its cases run on the live "
          f"model ({spec.model.id}); `runner test {t.shown} --record` writes one")
    return _Suite(t, None, secrets)


async def _run_all(suites: list[_Suite], verbose: bool) -> tuple[int, int]:
    passed = failed = 0
    for s in suites:
        try:
            for case in s.loaded.tests.cases:
                label = f"{s.loaded.shown}::{case.name}"
                if verbose:
                    _note(f"RUN {label}")
                reasons = await _run_case(s, case, verbose)
                if reasons:
                    failed += 1
                    # the reasons quote the model's answer: escaped, never obeyed
                    print(printable(redact_text(f"FAIL {label}: {'; '.join(reasons)}",
                                                s.secrets)), flush=True)
                else:
                    passed += 1
                    print(printable(f"PASS {label}"), flush=True)
        finally:
            if s.tap is not None:
                s.tap.close()
    return passed, failed


async def _run_case(s: _Suite, case: Case, verbose: bool) -> list[str]:
    """Run one case in a fresh conversation (no checkpoints) and check it."""
    if isinstance(s.tap, Replayer):
        s.tap.restart()
    sinks = [StderrPrinter(redact=lambda text: redact_text(text, s.secrets))] if verbose else []
    try:
        # every agent of the case, sub-agents included, starts an empty in-process memory
        async with Agent(s.loaded.resolved, memory_factory=lambda _: BufferMemory({}),
                         checkpoints=False, tap=s.tap, sinks=sinks) as agent:
            result = await agent.run(case.input)
    except RunnerError as exc:
        return [f"error: {exc}"]
    return check(case.expect, result)


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
