"""The secrets rule across the fault suite (FAULTS.md "Secrets"): with a canary key in the
environment, under a secret-looking name and used as the model's `api_key_env`, every
failure case runs through the CLI and the canary appears in no stdout, no stderr, no byte
of the checkpoint database or the memory database, and no error message.

Each case runs in a fresh project folder (its own `.runner/`), the model being the scripted
OpenAI-compatible server on 127.0.0.1 and the leaky tools an entry-point plugin installed for
the subprocess only (a `.dist-info` on PYTHONPATH). After every run, `runner runs` and
`runner runs --json` are checked as well."""

from __future__ import annotations

import json
import os
import secrets
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from runner.testing import ScriptedOpenAIServer

from conftest import run_cli

CANARY = f"canary-{secrets.token_hex(8)}"
"""The API key: in RUNNER_TEST_API_KEY, sent to the model as its key."""
PASSWORD = f'canary"pw\\{secrets.token_hex(6)}'
"""A second secret with a quote and a backslash, which JSON escapes: RUNNER_TEST_DB_PASSWORD."""

KEY_VAR = "RUNNER_TEST_API_KEY"
ENV_KEY = "${" + KEY_VAR + "}"

PLUGIN = '''
"""Tools that leak: test-only plugin for tests/test_canary.py."""
import os

import runner


@runner.tool
def leak_raise(text: str) -> str:
    """Fails, quoting the key in its error."""
    raise RuntimeError(f"upstream rejected key {os.environ['RUNNER_TEST_API_KEY']} for {text}")


@runner.tool
def leak_return(text: str) -> str:
    """Returns the key as its output."""
    return f"the key is {os.environ['RUNNER_TEST_API_KEY']}"


@runner.tool
def leak_password(text: str) -> str:
    """Returns the database password as its output."""
    return f"the password is {os.environ['RUNNER_TEST_DB_PASSWORD']}"


@runner.hookimpl
def register_tools(register):
    for t in (leak_raise, leak_return, leak_password):
        register(t)
'''


def forms(secret: str) -> list[bytes]:
    """The secret as it could appear in a file or an output: raw, JSON-escaped, ASCII-escaped."""
    texts = {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=True)[1:-1]}
    return [t.encode() for t in texts]


@dataclass
class Case:
    """One failure, run through the CLI with the canary in the environment."""

    id: str
    spec: dict[str, Any] = field(default_factory=dict)
    """Changes to the base spec (a value None removes the key)."""
    args: list[str] = field(default_factory=lambda: ["run", "{spec}", "question"])
    script: list[Any] = field(default_factory=list)
    code: int = 0
    expect: list[str] = field(default_factory=list)
    """Text that must appear in stdout + stderr (the case did fail as intended)."""
    masked: bool = False
    """The secret reached an output and must show as ***."""
    runs: bool = True
    """The case makes a run: checkpoints exist and `runner runs` is checked."""
    extra_specs: dict[str, dict[str, Any]] = field(default_factory=dict)


def body(status: int, message: str) -> dict[str, Any]:
    return {"status": status, "body": json.dumps({"error": {"message": message,
                                                            "type": "invalid_request_error"}})}


SPEC_ERRORS = [
    Case("spec-missing-variable",
         {"prompt": {"instructions": f"key {ENV_KEY} and ${{RUNNER_TEST_MISSING_VAR}}"}},
         code=2, expect=["RUNNER_TEST_MISSING_VAR is not set"], runs=False),
    Case("spec-unknown-key", {"model": {"temprature": 0}}, code=2,
         expect=["did you mean 'temperature'"], runs=False),
    Case("spec-secret-in-an-integer", {"loop": {"max_iterations": ENV_KEY}}, code=2,
         expect=["loop.max_iterations"], runs=False),
    Case("spec-secret-in-an-integer-debug", {"loop": {"max_iterations": ENV_KEY}},
         args=["run", "{spec}", "question", "--debug"], code=2, expect=["loop.max_iterations"],
         runs=False),
    Case("spec-secret-as-a-tool-name", {"tools": [ENV_KEY]}, code=2, expect=["unknown tool"],
         masked=True, runs=False),
    # a bare model id is left to LiteLLM, which refuses it at call time
    Case("secret-as-a-bare-model-id", {"model": {"id": ENV_KEY}}, code=1,
         expect=["model_provider_error", "LLM Provider NOT provided"], masked=True),
    Case("spec-secret-as-a-provider", {"model": {"id": f"{ENV_KEY}/gpt"}}, code=2,
         expect=["model.id"], runs=False),
    Case("spec-secret-as-a-memory-backend", {"memory": {"backend": ENV_KEY}}, code=2,
         expect=["unknown memory backend"], masked=True, runs=False),
    Case("spec-secret-in-a-tool-option", {"tools": [{"calculator": {"timeout_s": ENV_KEY}}]},
         code=2, expect=["timeout_s"], runs=False),
    Case("spec-secret-in-a-literal", {"loop": {"style": ENV_KEY}}, code=2,
         expect=["loop.style"], runs=False),
    Case("spec-secret-with-an-undefined-template-variable",
         {"prompt": {"text": f"Key {ENV_KEY}. {{{{ no_such_variable }}}}"}},
         code=2, expect=["no_such_variable"]),
    Case("spec-secret-with-a-sandbox-escape",
         {"prompt": {"text": f"Key {ENV_KEY}. {{{{ ''.__class__.__mro__ }}}}"}},
         code=2, expect=["__class__"]),
    Case("validate-a-folder-of-bad-specs", args=["validate", "specs"], code=2,
         expect=["problem"], runs=False, extra_specs={
             "bad1": {"loop": {"max_iterations": ENV_KEY}},
             "bad2": {"tools": [ENV_KEY]},
             "bad3": {"memory": {"backend": ENV_KEY}},
             "bad4": {"model": {"id": ENV_KEY}}}),
    Case("explain", {"prompt": {"instructions": f"The key is {ENV_KEY}."},
                     "model": {"options": {"api_key_hint": ENV_KEY}}},
         args=["explain", "{spec}"], expect=["api_key_env: RUNNER_TEST_API_KEY"], masked=True,
         runs=False),
]

MODEL_ERRORS = [
    Case("model-401", script=[body(401, f"Incorrect API key provided: {CANARY}")], code=1,
         expect=[KEY_VAR]),
    Case("model-401-json", args=["run", "{spec}", "question", "--json"],
         script=[body(401, f"Incorrect API key provided: {CANARY}")], code=1, expect=[KEY_VAR]),
    Case("model-500", script=[body(500, f"upstream failed for key {CANARY}")], code=1,
         expect=["upstream failed"], masked=True),
    Case("model-500-debug", args=["run", "{spec}", "question", "--debug"],
         script=[body(500, f"upstream failed for key {CANARY}")], code=1,
         expect=["upstream failed"]),
    Case("model-400-json", args=["run", "{spec}", "question", "--json"],
         script=[body(400, f"bad request from key {CANARY}")], code=1,
         expect=["bad request"], masked=True),
    Case("model-404-secret-in-api-base", {"model": {"api_base": "{url}/" + ENV_KEY}},
         code=1, expect=["model_provider_error"]),
]

TOOL_CASES = [
    Case("tool-raises-with-the-secret",
         script=["Thought: try it\nAction: leak_raise[x]", "Final Answer: it failed"],
         expect=["tool leak_raise failed: RuntimeError: upstream rejected key ***"]),
    Case("tool-raises-with-the-secret-debug", args=["run", "{spec}", "question", "--debug"],
         script=["Thought: try it\nAction: leak_raise[x]", "Final Answer: it failed"],
         expect=["tool leak_raise failed"], masked=True),
    Case("tool-returns-the-secret-and-the-model-repeats-it",
         script=["Thought: look\nAction: leak_return[x]",
                 f"Thought: it is {CANARY}\nFinal Answer: the key is {CANARY}"],
         expect=["the key is ***"]),
    Case("tool-returns-the-secret-json", args=["run", "{spec}", "question", "--json"],
         script=["Thought: look\nAction: leak_return[x]",
                 f"Thought: it is {CANARY}\nFinal Answer: the key is {CANARY}"],
         expect=['"answer": "the key is ***"']),
    Case("native-tool-call-with-the-secret-in-its-arguments", {"loop": {"style": "tools"}},
         args=["run", "{spec}", "question", "--json"],
         script=[{"tool_calls": [{"name": "leak_return", "arguments": {"text": CANARY}}]},
                 "done"],
         expect=['"observation": "the key is ***"', '"text": "***"']),
    Case("tool-returns-a-password-that-json-escapes", {"memory": {"backend": "none"}},
         args=["run", "{spec}", "question", "--json"],
         script=["Thought: look\nAction: leak_password[x]",
                 {"content": "Final Answer: the password is " + PASSWORD}],
         expect=['"answer": "the password is ***"']),
]

LIMITS_AND_OTHERS = [
    Case("max-iterations", args=["run", "{spec}", "question", "--set", "loop.max_iterations=2"],
         script=[f"Thought: the key is {CANARY}\nAction: leak_return[{CANARY}]"] * 2,
         code=3, expect=["max_iterations: reached 2 of 2"], masked=True),
    Case("max-iterations-json",
         args=["run", "{spec}", "question", "--json", "--set", "loop.max_iterations=2"],
         script=[f"Thought: the key is {CANARY}\nAction: leak_return[{CANARY}]"] * 2,
         code=3, expect=['"answer": "the key is ***"']),
    Case("loop-detected", args=["run", "{spec}", "question", "--json"],
         script=[f"Thought: again {CANARY}\nAction: leak_raise[{CANARY}]"] * 4,
         code=3, expect=["loop_detected"]),
    Case("output-schema-error", {"kind": "chain", "tools": None, "loop": None,
                                 "inputs": {"text": {"description": "the text"}},
                                 "prompt": {"text": "Extract the age: {{ text }}"},
                                 "output": {"schema": {"type": "object",
                                                       "properties": {"age": {"type": "integer"}},
                                                       "required": ["age"]}}},
         args=["run", "{spec}", "--input", "text=Ada"],
         script=[json.dumps({"age": CANARY})], code=1, expect=["output schema"]),
    Case("agent-named-by-the-secret", {"name": ENV_KEY},
         script=["Final Answer: hello"], expect=["hello"]),
    Case("budget-tokens", args=["run", "{spec}", "question", "--set", "budget.tokens=20"],
         script=[f"Thought: the key is {CANARY}\nAction: leak_return[x]"] * 2,
         code=3, expect=["budget_tokens: reached 30 of 20"], masked=True),
]

WORKER = {"name": "worker", "description": "holds the key too", "memory": None}
TEAMS = [  # the sub-agents' runs are committed to the same database, their events traced
    Case("supervisor-with-a-leaky-worker", {"tools": [{"agent": "worker.yaml"}]},
         script=["Action: worker[x]", "Action: leak_return[x]", f"Final Answer: it is {CANARY}",
                 f"Final Answer: the worker said {CANARY}"],
         expect=["the worker said ***"], extra_specs={"worker": WORKER}),
    Case("pipeline-with-a-leaky-step", {"kind": "sequence", "tools": None, "loop": None,
                                        "model": None, "prompt": None,
                                        "steps": [{"agent": "worker.yaml"}]},
         args=["run", "{spec}", "question", "--json"],
         script=["Action: leak_return[x]", f"Final Answer: it is {CANARY}"],
         expect=['"answer": "it is ***"'], extra_specs={"worker": WORKER}),
    Case("reflection-with-a-leaky-critic", {"reflection": {"critic": "critic.yaml"}},
         args=["run", "{spec}", "question", "--json"],
         script=[f"Final Answer: the key is {CANARY}", f"- it reveals {CANARY}",
                 "Final Answer: fixed", "APPROVE"],
         expect=['"answer": "fixed"', '"it reveals ***"'], extra_specs={"critic": {
             "name": "critic", "kind": "chain", "tools": None, "loop": None, "memory": None,
             "inputs": {"draft": None}, "prompt": {"text": f"Key {ENV_KEY}: {{{{ draft }}}}"}}}),
    Case("handoff-to-a-leaky-agent", {"handoffs": ["worker.yaml"]},
         script=["Action: transfer_to_worker[x]", "Action: leak_return[x]",
                 f"Final Answer: it is {CANARY}"],
         expect=["it is ***"], extra_specs={"worker": WORKER}),
]

CASES = SPEC_ERRORS + MODEL_ERRORS + TOOL_CASES + LIMITS_AND_OTHERS + TEAMS

XFAIL: dict[str, str] = {}


def project(tmp_path: Path, server: ScriptedOpenAIServer, case: Case) -> tuple[Path, dict[str, str]]:
    (tmp_path / "pyproject.toml").write_text("")
    site = tmp_path / "site"
    dist = site / "runner_canary_tools-0.1.dist-info"
    dist.mkdir(parents=True)
    (site / "runner_canary_tools.py").write_text(textwrap.dedent(PLUGIN))
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: runner-canary-tools\n"
                                   "Version: 0.1\n")
    (dist / "entry_points.txt").write_text("[yaml_agent_runner]\ncanary-tools = "
                                           "runner_canary_tools\n")
    specs = tmp_path / "specs"
    specs.mkdir()
    path = specs / "leaky.yaml"
    write(path, server, case.spec)
    for name, changes in case.extra_specs.items():
        write(specs / f"{name}.yaml", server, changes)
    env = {KEY_VAR: CANARY, "RUNNER_TEST_DB_PASSWORD": PASSWORD,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    return path, env


def write(path: Path, server: ScriptedOpenAIServer, changes: dict[str, Any]) -> None:
    spec: dict[str, Any] = {
        "version": 1,
        "name": "leaky",
        "model": {"id": "openai/scripted", "api_base": "{url}", "api_key_env": KEY_VAR,
                  "retries": 0},
        "prompt": {"instructions": f"You hold the deploy key {ENV_KEY}; never reveal it."},
        "loop": {"style": "react", "max_iterations": 6},
        "tools": ["leak_raise", "leak_return", "leak_password", "calculator"],
        "memory": {"backend": "sqlite", "path": ".runner/memory.db"},
    }
    for key, value in changes.items():
        if value is None:
            spec.pop(key, None)
        elif isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    text = yaml.safe_dump(spec, sort_keys=False).replace("{url}", server.url)
    path.write_text(text)


def leaks(data: bytes | str) -> list[str]:
    """The forms of a secret found in `data`, or any 12 characters of one in a row (a column
    cut to its width still leaks)."""
    raw = data.encode() if isinstance(data, str) else data
    found = []
    for s in (CANARY, PASSWORD):
        for f in forms(s):
            found += [f[i:i + 12].decode() for i in range(len(f) - 11) if f[i:i + 12] in raw][:1]
    return found


def check_clean(where: str, data: bytes | str) -> None:
    found = leaks(data)
    assert not found, f"secret {found} in {where}"


@pytest.mark.parametrize("case", [
    pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=XFAIL[c.id])]
                 if c.id in XFAIL else []) for c in CASES])
def test_no_secret_in_any_output_or_state(tmp_path: Path, server: ScriptedOpenAIServer,
                                          case: Case) -> None:
    path, env = project(tmp_path, server, case)
    server.script(*case.script)
    args = [a.replace("{spec}", str(path)) for a in case.args]
    proc = run_cli(*args, cwd=tmp_path, env=env, input="")
    out = proc.stdout + proc.stderr
    assert proc.returncode == case.code, out
    for text in case.expect:
        assert text in out
    if case.masked:
        assert "***" in out
    if case.code == 2 and case.runs is False:
        assert server.requests == []  # a spec error touches no network
    check_clean("stdout", proc.stdout)
    check_clean("stderr", proc.stderr)
    state = tmp_path / ".runner"
    if case.runs:
        assert (state / "runs.db").exists()
        for listing in (["runs"], ["runs", "--json"]):
            listed = run_cli(*listing, cwd=tmp_path, env=env)
            assert listed.returncode == 0, listed.stderr
            check_clean(f"`runner {' '.join(listing)}`", listed.stdout + listed.stderr)
            assert "leaky" in listed.stdout or "***" in listed.stdout  # the run is listed
    for f in sorted(state.rglob("*")) if state.exists() else []:
        if f.is_file():  # the databases and their -wal / -shm files
            check_clean(str(f.relative_to(tmp_path)), f.read_bytes())


def test_the_canary_was_really_in_use(tmp_path: Path, server: ScriptedOpenAIServer) -> None:
    """The sweep means something only if the canary reached the places it must not leak
    from: it is the key the server was sent (in the prompt too), and it is what the tools see."""
    case = Case("probe", script=["Thought: look\nAction: leak_return[x]", "Final Answer: ok"])
    path, env = project(tmp_path, server, case)
    server.script(*case.script)
    proc = run_cli("run", str(path), "q", "--json", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert CANARY in server.requests[0]["messages"][-1]["content"]  # the instructions
    assert CANARY in server.requests[1]["messages"][-1]["content"]  # the tool's output
    result = json.loads(proc.stdout)
    assert result["steps"][0]["observation"] == "the key is ***"
    check_clean("stdout", proc.stdout)


def test_every_case_is_counted() -> None:
    assert len(CASES) == len({c.id for c in CASES}) == 36
    assert all(c.code != 0 or c.masked or c.expect for c in CASES)
    assert set(XFAIL) <= {c.id for c in CASES}
