"""`runner serve FOLDER`: the runs API and the OpenAI-compatible API, served by a real
`runner serve` process and called with httpx and the official `openai` SDK; the agents run
on `fake/` models or on the scripted OpenAI-compatible server through LiteLLM."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from conftest import FAKE_AGENTS, wait_for, write_agents
from runner.testing import ScriptedOpenAIServer

FAKE = {k: v for k, v in FAKE_AGENTS.items() if k != "broken"}


def scripted_specs(server: ScriptedOpenAIServer) -> dict[str, Any]:
    model = {"id": "openai/scripted", "api_base": server.url}
    return {
        "calc": {"description": "Arithmetic on the scripted model.", "model": model,
                 "loop": {"style": "react"}, "tools": ["calculator"]},
        "chatty": {"description": "Talks, and remembers a session.", "model": model,
                   "loop": {"style": "react"},
                   # a server ignores the spec's session: it would be every caller's
                   "memory": {"backend": "sqlite", "session": "everyone"}},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """A `runner serve` process on a free port of 127.0.0.1."""

    def __init__(self, folder: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.project = folder.parent
        full_env = {**{k: v for k, v in os.environ.items() if k != "RUNNER_SERVE_TOKEN"},
                    "OPENAI_API_KEY": "sk-test-not-a-real-key", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runner", "serve", str(folder), "--port", str(self.port),
             *args], cwd=folder.parent, env=full_env, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)

        def up() -> bool:
            assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr \
                else ""
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(up, 120, "runner serve")
        self.http = httpx.Client(base_url=self.url, timeout=120)

    def sdk(self, api_key: str = "anything") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0,
                             timeout=120)

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory,
           openai_server: ScriptedOpenAIServer) -> Iterator[Served]:
    folder = write_agents(tmp_path_factory.mktemp("serve") / "agents",
                          {**FAKE, **scripted_specs(openai_server)})
    s = Served(folder)
    yield s
    s.stop()


def events_of(response: httpx.Response) -> Iterator[tuple[str, Any]]:
    """(event, data) of a server-sent event stream, as the lines arrive."""
    kind = None
    for line in response.iter_lines():
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
            yield kind or "message", data if data == "[DONE]" else json.loads(data)
            kind = None


def prompts(server: ScriptedOpenAIServer) -> list[str]:
    return ["\n".join(str(m.get("content")) for m in r["messages"]) for r in server.requests]


# ---------------------------------------------------------------------- the runs API


def test_agents_are_listed_with_their_descriptions_and_input_schemas(served: Served) -> None:
    listed = {a["name"]: a for a in served.http.get("/v1/agents").json()["data"]}
    assert set(listed) == {*FAKE, "calc", "chatty"}
    assert listed["adder"]["description"] == "Adds with the calculator."
    assert listed["adder"]["input_schema"]["required"] == ["input"]
    assert listed["poem"]["input_schema"]["required"] == ["topic"]
    assert set(listed["poem"]["input_schema"]["properties"]) == {"topic", "tone"}
    assert listed["counted"]["output_schema"]["required"] == ["count"]


def test_a_run_returns_its_result_and_can_be_fetched_again(served: Served) -> None:
    response = served.http.post("/v1/agents/adder/runs", json={"input": "2+3?"})
    assert response.status_code == 200
    result = response.json()
    assert result["status"] == "finished" and result["answer"] == "5"
    assert [s["action"] for s in result["steps"]] == ["calculator", None]
    assert response.headers["location"] == f"/v1/runs/{result['run_id']}"
    fetched = served.http.get(response.headers["location"]).json()
    assert fetched["status"] == "finished" and fetched["result"]["answer"] == "5"
    # each run is checkpointed and traced in the served project, as `runner run` does
    db = sqlite3.connect(served.project / ".runner" / "runs.db")
    assert db.execute("SELECT status FROM runs WHERE run_id = ?",
                      (result["run_id"],)).fetchone() == ("finished",)
    assert (served.project / ".runner" / "traces" / f"{result['run_id']}.jsonl").exists()


def test_a_chain_takes_named_inputs_and_a_structured_answer_stays_structured(
        served: Served) -> None:
    poem = served.http.post("/v1/agents/poem/runs", json={"inputs": {"topic": "rain"}}).json()
    assert poem["status"] == "finished" and poem["answer"].endswith("rain in a calm tone")
    counted = served.http.post("/v1/agents/counted/runs", json={"input": "how many?"}).json()
    assert counted["answer"] == {"count": 3}


def test_a_stream_sends_each_event_as_it_happens_then_the_result(
        served: Served, server: ScriptedOpenAIServer) -> None:
    # the second model call hangs: what the stream sends before it cannot be sent at the end
    server.script("Thought: add\nAction: calculator[2+3]", {"hang": True})
    with served.http.stream("POST", "/v1/agents/calc/runs",
                            json={"input": "2+3?", "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        kinds, stream = [], events_of(response)
        for kind, data in stream:
            kinds.append(kind)
            if kind == "observation":
                assert data["text"] == "5"
                break
        run_id = response.headers["location"].rsplit("/", 1)[1]
        status = served.http.get(f"/v1/runs/{run_id}").json()
        assert status["status"] == "running", (status, len(server.requests))
        assert kinds[0] == "run_started" and "model_called" in kinds
        cancelled = served.http.post(f"/v1/runs/{run_id}/cancel").json()
        assert cancelled["status"] == "interrupted"
        rest = list(stream)
    assert [k for k, _ in rest][-2:] == ["run_ended", "result"]
    assert rest[-1][1]["status"] == "interrupted" and rest[-1][1]["run_id"] == run_id


def test_a_cancelled_run_is_checkpointed_and_resumable(served: Served,
                                                       server: ScriptedOpenAIServer) -> None:
    server.script({"hang": True})
    started = served.http.post("/v1/agents/calc/runs", json={"input": "2+3?", "wait": False})
    assert started.status_code == 202 and started.json()["status"] == "queued"  # no slot yet
    run_id = started.json()["id"]
    wait_for(lambda: server.requests, 60, "the model call")
    assert served.http.post(f"/v1/runs/{run_id}/cancel").json()["status"] == "interrupted"
    server.script("Final Answer: 5")
    resumed = subprocess.run([sys.executable, "-m", "runner", "resume", run_id, "--json"],
                             cwd=served.project, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "OPENAI_API_KEY": "sk-test"})
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["answer"] == "5"


def test_bad_requests_get_a_4xx_with_a_json_error(served: Served) -> None:
    http = served.http
    cases = [
        (http.post("/v1/agents/adder/runs", content=b"{not json"), 400, "not JSON"),
        (http.post("/v1/agents/adder/runs", json=["a"]), 400, "JSON object"),
        (http.post("/v1/agents/adder/runs", json={"inpt": "x"}), 400, "unknown field 'inpt'"),
        (http.post("/v1/agents/adder/runs", json={}), 400, "input"),
        (http.post("/v1/agents/adder/runs", json={"input": 3}), 400, "not of type 'string'"),
        (http.post("/v1/agents/poem/runs", json={"inputs": {"tone": "x"}}), 400, "'topic'"),
        (http.post("/v1/agents/adder/runs", json={"input": "x", "stream": "yes"}), 400,
         "stream must be a bool"),
        (http.post("/v1/agents/adder/runs", json={"input": "x", "session": "a b"}), 400,
         "session"),
        (http.post("/v1/agents/nobody/runs", json={"input": "x"}), 404, "no agent named"),
        (http.get("/v1/runs/0123456789ab"), 404, "no run"),
        (http.get("/v1/nowhere"), 404, "Not Found"),
        (http.get("/v1/chat/completions"), 405, "Method Not Allowed"),
    ]
    for response, status, words in cases:
        assert response.status_code == status, response.text
        assert words in response.json()["error"]["message"], response.text


def test_sessions_are_kept_per_session_and_never_reach_another(
        served: Served, server: ScriptedOpenAIServer) -> None:
    server.responder = lambda body: "Final Answer: noted"
    http = served.http
    http.post("/v1/agents/chatty/runs", json={"input": "My name is Ann.", "session": "s-ann"})
    http.post("/v1/agents/chatty/runs", json={"input": "My name is Bob."},
              headers={"X-Session-Id": "s-bob"})
    http.post("/v1/agents/chatty/runs", json={"input": "My name is Zed."})  # no session
    http.post("/v1/agents/chatty/runs", json={"input": "Anyone there?"})
    http.post("/v1/agents/chatty/runs", json={"input": "What is my name?",
                                              "session": "s-ann"})
    ann, bob, zed, nobody, again = prompts(server)
    assert "Ann" not in bob and "Bob" not in ann
    assert not any(name in nobody for name in ("Ann", "Bob", "Zed"))
    assert "My name is Ann." in again and "Bob" not in again and "Zed" not in again


def test_a_run_with_a_budget_cap_stops_at_the_cap(tmp_path: Path,
                                                  server: ScriptedOpenAIServer) -> None:
    folder = write_agents(tmp_path / "agents", scripted_specs(server))
    s = Served(folder, "--max-run-tokens", "20")
    try:
        server.responder = lambda body: {"content": "Thought: add\nAction: calculator[1+1]",
                                         "usage": {"prompt_tokens": 15, "completion_tokens": 5}}
        result = s.http.post("/v1/agents/calc/runs", json={"input": "1+1?"}).json()
        assert result["status"] == "budget_tokens", result
        assert result["usage"]["total_tokens"] <= 40 and len(server.requests) == 1
    finally:
        s.stop()


def test_requests_over_the_size_or_run_caps_are_refused(tmp_path: Path,
                                                         server: ScriptedOpenAIServer) -> None:
    folder = write_agents(tmp_path / "agents", scripted_specs(server))
    s = Served(folder, "--max-runs", "1", "--max-request-bytes", "2048")
    try:
        big = s.http.post("/v1/agents/calc/runs", json={"input": "x" * 5000})
        assert big.status_code == 413 and "2048 bytes" in big.json()["error"]["message"]
        server.responder = lambda body: {"hang": True}
        first = s.http.post("/v1/agents/calc/runs", json={"input": "a", "wait": False})
        second = s.http.post("/v1/agents/calc/runs", json={"input": "b", "wait": False})
        third = s.http.post("/v1/agents/calc/runs", json={"input": "c", "wait": False})
        assert (first.status_code, second.status_code, third.status_code) == (202, 202, 429)
        assert third.json()["error"]["type"] == "rate_limit_error"
        wait_for(lambda: server.requests, 60, "the first run's model call")
        assert len(server.requests) == 1  # the second waits for a slot: one run at a time
        assert second.json()["status"] == "queued"
        assert s.http.get(f"/v1/runs/{second.json()['id']}").json()["status"] == "queued"
    finally:
        s.stop()


# ---------------------------------------------------------------------- the OpenAI API


def test_the_openai_sdk_lists_the_agents_as_models(served: Served) -> None:
    client = served.sdk()
    assert {m.id for m in client.models.list()} == {*FAKE, "calc", "chatty"}
    assert client.models.retrieve("adder").owned_by == "yaml-agent-runner"


def test_the_openai_sdk_gets_a_chat_completion_from_an_agent(
        served: Served, server: ScriptedOpenAIServer) -> None:
    server.script("Thought: add\nAction: calculator[17*23]", "Final Answer: 391")
    client = served.sdk()
    reply = client.chat.completions.create(model="calc", messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 4 times 4?"},
        {"role": "assistant", "content": "16."},
        {"role": "user", "content": [{"type": "text", "text": "And 17 times 23?"}]}],
        temperature=0.3)
    assert reply.choices[0].message.content == "391"
    assert reply.choices[0].finish_reason == "stop" and reply.model == "calc"
    assert reply.usage.total_tokens == 30
    first = prompts(server)[0]  # the conversation so far reaches the agent before the question
    assert first.index("What is 4 times 4?") < first.index("16.") < first.index("17 times 23")


def test_the_openai_sdk_streams_a_chat_completion(served: Served) -> None:
    client = served.sdk()
    chunks = list(client.chat.completions.create(
        model="echoer", messages=[{"role": "user", "content": "hello there"}], stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "hello there"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_the_openai_sdk_sees_errors_as_its_own_exceptions(served: Served,
                                                          server: ScriptedOpenAIServer) -> None:
    client = served.sdk()
    with pytest.raises(openai.NotFoundError, match="no agent named 'gpt-4o'"):
        client.chat.completions.create(model="gpt-4o",
                                       messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="last message must be the user"):
        client.chat.completions.create(model="echoer",
                                       messages=[{"role": "assistant", "content": "hi"}])
    server.responder = lambda body: "no action and no answer"
    with pytest.raises(openai.APIStatusError, match="max_parse_errors") as failed:
        client.chat.completions.create(model="calc",
                                       messages=[{"role": "user", "content": "2+2?"}])
    assert failed.value.status_code == 502


# ---------------------------------------------------------------------- tokens


def test_beyond_loopback_a_token_is_required(tmp_path: Path) -> None:
    folder = write_agents(tmp_path / "agents", {"echoer": FAKE["echoer"]})
    env = {k: v for k, v in os.environ.items() if k != "RUNNER_SERVE_TOKEN"}
    refused = subprocess.run([sys.executable, "-m", "runner", "serve", str(folder), "--host",
                              "0.0.0.0", "--port", str(free_port())], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "RUNNER_SERVE_TOKEN" in refused.stderr


def test_with_tokens_each_caller_has_its_own_runs_and_sessions(
        tmp_path: Path, server: ScriptedOpenAIServer) -> None:
    folder = write_agents(tmp_path / "agents", {"echoer": FAKE["echoer"],
                                                **scripted_specs(server)})
    s = Served(folder, env={"RUNNER_SERVE_TOKEN": "tok-ann,tok-bob"})
    try:
        bare = s.http.post("/v1/agents/echoer/runs", json={"input": "hi"})
        assert bare.status_code == 401 and bare.json()["error"]["type"] == \
            "authentication_error"
        with pytest.raises(openai.AuthenticationError):
            s.sdk("tok-eve").models.list()
        assert s.sdk("tok-ann").chat.completions.create(
            model="echoer", messages=[{"role": "user", "content": "hi"}]
        ).choices[0].message.content == "hi"

        ann, bob = ({"Authorization": f"Bearer tok-{n}"} for n in ("ann", "bob"))
        server.responder = lambda body: "Final Answer: noted"
        run = s.http.post("/v1/agents/chatty/runs", headers=ann,
                          json={"input": "My name is Ann.", "session": "main"}).json()
        s.http.post("/v1/agents/chatty/runs", headers=bob,
                    json={"input": "Who was here?", "session": "main"})
        assert "Ann" not in prompts(server)[1]  # the same session name, another caller
        assert s.http.get(f"/v1/runs/{run['run_id']}", headers=bob).status_code == 404
        assert s.http.get(f"/v1/runs/{run['run_id']}", headers=ann).json()["status"] == \
            "finished"
    finally:
        s.stop()


# ---------------------------------------------------------------------- shutting down


def test_sigterm_lets_runs_finish_within_the_grace_and_checkpoints_the_rest(
        tmp_path: Path, server: ScriptedOpenAIServer) -> None:
    folder = write_agents(tmp_path / "agents", scripted_specs(server))
    s = Served(folder, "--grace", "3")
    try:
        def respond(body: dict[str, Any]) -> Any:
            text = json.dumps(body["messages"])
            return {"delay": 1.0, "content": "Final Answer: quick"} if "quick" in text \
                else {"hang": True}

        server.responder = respond
        results: dict[str, Any] = {}

        def call(name: str) -> None:
            results[name] = s.http.post("/v1/agents/calc/runs", json={"input": name}).json()

        threads = [threading.Thread(target=call, args=(n,)) for n in ("quick", "slow")]
        for t in threads:
            t.start()
        wait_for(lambda: len(server.requests) == 2, 60, "both model calls")
        s.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(120)
        assert results["quick"]["status"] == "finished" and results["quick"]["answer"] == \
            "quick"
        assert results["slow"]["status"] == "interrupted"
        assert s.proc.wait(120) == -signal.SIGTERM  # uvicorn ends as the signal asked, once drained
        db = sqlite3.connect(s.project / ".runner" / "runs.db")
        assert db.execute("SELECT status FROM runs WHERE run_id = ?",
                          (results["slow"]["run_id"],)).fetchone() == ("interrupted",)
    finally:
        s.stop()


# ---------------------------------------------------------------------- the shipped examples


@pytest.mark.embedded
def test_the_shipped_examples_are_served_and_answer_on_the_embedded_model(
        tmp_path: Path) -> None:
    import shutil

    from conftest import ROOT

    for part in ("agents", "prompts", "knowledge", "plugins"):
        shutil.copytree(ROOT / part, tmp_path / part)
    (tmp_path / "pyproject.toml").write_text("")
    s = Served(tmp_path / "agents")
    try:
        ids = {m.id for m in s.sdk().models.list()}
        # a base with a description is an agent too; a name taken is served by its path
        assert {"calculator", "reviewed", "researcher", "team/researcher", "triage"} <= ids
        assert "base" not in ids
        reply = s.sdk().chat.completions.create(
            model="calculator", messages=[{"role": "user", "content": "What is 17 times 23?"}])
        assert reply.choices[0].message.content == "391"
        team = s.http.get("/v1/agents").json()["data"]
        assert any(a["name"] == "team/researcher" for a in team)
        run = s.http.post("/v1/agents/team/researcher/runs",
                          json={"input": "Where is the trace of a run kept?"}).json()
        assert run["agent"] == "researcher" and run["status"] in ("finished", "max_iterations")
    finally:
        s.stop()


def test_a_sub_agents_session_is_kept_per_caller_session(
        tmp_path: Path, server: ScriptedOpenAIServer) -> None:
    """A worker whose spec names a session (`notes`) remembers within each session of the
    runs that delegate to it, never across them: one caller's notes never reach another's."""
    import re

    def respond(body: dict[str, Any]) -> str:
        text = "\n".join(str(m.get("content")) for m in body["messages"])
        if body["model"] == "worker":
            return "Final Answer: noted"
        question = re.findall(r"Question: (.*)", text)[-1]
        if "Observation:" in text.rsplit("Question:", 1)[1]:  # the worker answered
            return "Final Answer: done"
        return f"Thought: pass it on\nAction: notes[{question}]"

    server.responder = respond
    folder = tmp_path / "agents"
    folder.mkdir()
    (tmp_path / "pyproject.toml").write_text("")
    (folder / "desk.yaml").write_text(
        "version: 1\nname: desk\ndescription: Passes things on.\nmemory: {backend: none}\n"
        f"loop: {{style: react}}\nmodel: {{id: openai/boss, api_base: '{server.url}'}}\n"
        "tools:\n  - agent: team/notes.yaml\n")
    (folder / "team").mkdir()
    (folder / "team" / "notes.yaml").write_text(
        "version: 1\nname: notes\ndescription: Keeps notes.\n"
        "memory: {backend: sqlite, session: shared}\nloop: {style: react}\n"
        f"model: {{id: openai/worker, api_base: '{server.url}'}}\n")
    s = Served(folder)
    try:
        for session, text in (("s-ann", "My name is Ann."), ("s-bob", "What is my name?"),
                              ("s-ann", "What is my name?")):
            r = s.http.post("/v1/agents/desk/runs", json={"input": text, "session": session})
            assert r.status_code == 200 and r.json()["answer"] == "done", r.text
    finally:
        s.stop()
    worker = ["\n".join(str(m.get("content")) for m in r["messages"])
              for r in server.requests if r["model"] == "worker"]
    assert len(worker) == 3
    assert "My name is Ann." not in worker[1]  # Bob's session: not Ann's notes
    assert "My name is Ann." in worker[2].split("What is my name?")[0]  # Ann's: hers
