"""End-to-end: `runner run` and `runner chat` as subprocesses, LiteLLM calling the scripted
OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ROOT, run_cli, sub_agent_project

CALC = str(ROOT / "agents" / "calculator.yaml")


def _wire(server) -> list[str]:
    return ["--set", "model.id=openai/scripted", "--set", f"model.api_base={server.url}"]


def test_run_prints_answer_on_stdout_and_steps_on_stderr(server) -> None:
    server.script("Thought: multiply them\nAction: calculator[17*23]",
                  "Thought: I know it\nFinal Answer: 391")
    proc = run_cli("run", CALC, "What is 17 times 23?", *_wire(server))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "391\n"
    assert "Thought: multiply them" in proc.stderr
    assert "Action: calculator[17*23]" in proc.stderr
    assert "Observation: 391" in proc.stderr
    assert "finished" in proc.stderr
    # the second request carries the real observation in the scratchpad
    assert "Observation: 391\nThought:" in server.requests[1]["messages"][-1]["content"]
    assert server.requests[0]["stop"] == ["\nObservation:", "\nQuestion:"]


def test_run_json_result(server) -> None:
    server.script({"content": "Thought: add\nAction: calculator[2+2]",
                   "usage": {"prompt_tokens": 100, "completion_tokens": 7}},
                  {"content": "Final Answer: 4", "usage": {"prompt_tokens": 120, "completion_tokens": 3}})
    proc = run_cli("run", CALC, "2+2?", "--json", *_wire(server))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["answer"] == "4" and result["status"] == "finished"
    assert result["model"] == "openai/scripted"
    assert result["usage"] == {"prompt_tokens": 220, "completion_tokens": 10, "total_tokens": 230}
    first = result["steps"][0]
    assert (first["thought"], first["action"], first["input"], first["observation"]) == \
        ("add", "calculator", "2+2", "4")
    assert first["model_s"] > 0 and first["tool_s"] >= 0
    assert "cost_usd" in result
    assert proc.stderr == ""  # --json keeps stderr quiet


def test_model_flag_and_set_override(server) -> None:
    server.script("Final Answer: ok")
    proc = run_cli("run", CALC, "q", "--model", "openai/other-model", "--set",
                   f"model.api_base={server.url}", "--set", "model.max_tokens=33",
                   "--set", "model.temperature=0.5")
    assert proc.returncode == 0, proc.stderr
    req = server.requests[0]
    assert req["model"] == "other-model"
    assert req["max_tokens"] == 33 and req["temperature"] == 0.5


def test_native_tool_calls_and_streaming(server) -> None:
    server.script({"tool_calls": [{"name": "calculator", "arguments": {"expression": "17*23"}},
                                  {"name": "calculator", "arguments": {"expression": "2**10"}}]},
                  "The answers are 391 and 1024.")
    proc = run_cli("run", CALC, "two sums", "--json", "--set", "loop.style=tools",
                   "--set", "model.stream=true", *_wire(server))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["answer"] == "The answers are 391 and 1024."
    assert [(s["action"], s["observation"]) for s in result["steps"][:2]] == \
        [("calculator", "391"), ("calculator", "1024")]
    first, second = server.requests
    assert first["stream"] is True
    assert first["tools"][0]["function"]["name"] == "calculator"
    assert "expression" in first["tools"][0]["function"]["parameters"]["properties"]
    tool_msgs = [m for m in second["messages"] if m["role"] == "tool"]
    assert [m["content"] for m in tool_msgs] == ["391", "1024"]


def test_max_iterations_exit_code_and_partial_transcript(server) -> None:
    server.default = "Thought: keep going\nAction: calculator[1+1]"
    proc = run_cli("run", CALC, "loop forever", "--json", "--set", "loop.max_iterations=2",
                   *_wire(server))
    assert proc.returncode == 3
    result = json.loads(proc.stdout)
    assert result["status"] == "max_iterations"
    assert result["incomplete"] is True
    assert len(result["steps"]) == 2 and result["answer"] == "keep going"
    assert "2 of 2" in result["error"]


def test_model_failure_exit_code_and_message(server) -> None:
    server.script({"status": 400, "body": json.dumps({"error": {"message": "bad model"}})})
    proc = run_cli("run", CALC, "q", *_wire(server), "--set", "model.retries=0")
    assert proc.returncode == 1
    assert "bad model" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(server.requests) == 1  # a 400 is not retried


def test_api_key_env_is_required_and_never_printed(server, tmp_path: Path) -> None:
    spec = tmp_path / "a.yaml"
    spec.write_text("version: 1\nmodel: {id: openai/scripted, api_key_env: MY_PROVIDER_KEY}\n"
                    "memory: {backend: none}\n")
    proc = run_cli("run", str(spec), "q", "--set", f"model.api_base={server.url}",
                   env={"MY_PROVIDER_KEY": ""})
    assert proc.returncode == 1
    assert "MY_PROVIDER_KEY is not set" in proc.stderr
    server.script({"status": 401, "body": json.dumps({"error": {"message": "bad key"}})})
    canary = "sk-canary-5f2b9c1e7d"
    proc = run_cli("run", str(spec), "q", "--set", f"model.api_base={server.url}",
                   env={"MY_PROVIDER_KEY": canary})
    assert proc.returncode == 1
    assert "MY_PROVIDER_KEY" in proc.stderr
    assert canary not in proc.stderr + proc.stdout


def test_session_memory_persists_across_runs(server, tmp_path: Path) -> None:
    server.script("Final Answer: Nice to meet you, Ada.", "Final Answer: Your name is Ada.")
    first = run_cli("run", CALC, "My name is Ada.", "--session", "s1", *_wire(server), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    second = run_cli("run", CALC, "What is my name?", "--session", "s1", *_wire(server),
                     cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    prompt = server.requests[1]["messages"][-1]["content"]
    assert "User: My name is Ada." in prompt
    assert "Assistant: Nice to meet you, Ada." in prompt
    assert (tmp_path / ".runner" / "memory.db").exists()
    # another session does not see it
    server.script("Final Answer: I do not know.")
    run_cli("run", CALC, "What is my name?", "--session", "s2", *_wire(server), cwd=tmp_path)
    assert "My name is Ada." not in server.requests[2]["messages"][-1]["content"]


def test_chat_repl_continues_a_session(server, tmp_path: Path) -> None:
    server.script("Final Answer: Hello Grace.", "Final Answer: 42")
    proc = run_cli("chat", CALC, "--session", "team", *_wire(server), cwd=tmp_path,
                   input="I am Grace\nWhat is 6*7?\n/exit\n")
    assert proc.returncode == 0, proc.stderr
    assert "calculator> Hello Grace." in proc.stdout
    assert "calculator> 42" in proc.stdout
    server.script("Final Answer: You are Grace.")
    proc = run_cli("chat", CALC, "--session", "team", *_wire(server), cwd=tmp_path,
                   input="Who am I?\n")
    assert "continuing session 'team': 4 earlier messages" in proc.stderr
    assert "User: I am Grace" in server.requests[-1]["messages"][-1]["content"]
    assert "calculator> You are Grace." in proc.stdout


def test_chain_with_output_schema(server, tmp_path: Path) -> None:
    spec = tmp_path / "extract.yaml"
    spec.write_text("""version: 1
kind: chain
name: extract
inputs: {text: {description: the text}}
prompt: {text: "Extract the person from: {{ text }}"}
output:
  schema:
    type: object
    required: [name, age]
    properties: {name: {type: string}, age: {type: integer}}
memory: {backend: none}
""")
    server.script('Here you go:\n```json\n{"name": "Ada", "age": 36}\n```')
    proc = run_cli("run", str(spec), "--input", "text=Ada is 36 {{ 7*7 }}", "--json", *_wire(server))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["answer"] == {"name": "Ada", "age": 36}
    assert server.requests[0]["messages"][0]["content"] == \
        "Extract the person from: Ada is 36 {{ 7*7 }}"
    server.script('{"name": "Ada", "age": "thirty-six"}')
    proc = run_cli("run", str(spec), "--input", "text=Ada", *_wire(server))
    assert proc.returncode == 1
    assert "does not fit the output schema at age" in proc.stderr
    proc = run_cli("run", str(spec), "--input", "nope=1", *_wire(server))
    assert proc.returncode == 2 and "unknown input 'nope'" in proc.stderr


def test_sub_agent_as_a_tool(server, tmp_path: Path) -> None:
    # --set applies to the spec named on the command line; a sub-agent is its own spec
    boss = sub_agent_project(tmp_path, server)
    proc = run_cli("run", str(boss), "cats", "--json", *_wire(server))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["steps"][0]["observation"] == "Cats nap in the sun."
    assert result["answer"] == "The writer says: Cats nap in the sun."
    assert "Question: a line about cats" in server.requests[1]["messages"][-1]["content"]
    # the parent's usage counts its own calls; the budget covers both
    assert result["usage"]["prompt_tokens"] == 20


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["validate", "--help"]])
def test_help(args: list[str]) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 0 and "Usage:" in proc.stdout
