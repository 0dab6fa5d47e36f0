"""OpenTelemetry export: real runs (CLI subprocesses and the API) send their spans over OTLP/HTTP
to a local receiver that decodes the protobuf, and the tests read what it got."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import runner
import runner.trace.otel
from conftest import ROOT, run_cli, sub_agent_project
from otlp_receiver import OtlpReceiver, ReceivedSpan
from runner.errors import SpecError
from runner.redact import Redactor
from runner.spec import OtlpSpec
from runner.testing import FakeClock

CALC = str(ROOT / "agents" / "calculator.yaml")
QUESTION = "What is 2 plus 2?"
KEY = "sk-test-otel-5b1f0c9e7a"
"""The OPENAI_API_KEY of the API runs: a secret that must never reach a span."""

KNOWN_RUN = (
    {"content": "Thought: add them\nAction: calculator[2+2]",
     "usage": {"prompt_tokens": 100, "completion_tokens": 7}},
    {"content": "Thought: done\nFinal Answer: 4",
     "usage": {"prompt_tokens": 120, "completion_tokens": 3}})
"""Two steps, one tool call: 1 run + 2 steps + 2 chat + 1 execute_tool = 6 spans."""


@pytest.fixture(scope="module")
def collector() -> Any:
    with OtlpReceiver() as rx:
        yield rx


@pytest.fixture
def rx(collector: OtlpReceiver) -> OtlpReceiver:
    """The receiver, emptied for this test."""
    runner.trace.otel.flush()  # nothing from an earlier test arrives late
    collector.clear()
    return collector


@pytest.fixture
def api_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """API runs in a scratch directory, with a provider key and no OTEL_* settings."""
    for key in [k for k in os.environ if k.startswith("OTEL_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _wire(server: Any, *more: str) -> list[str]:
    return ["--set", "model.id=openai/scripted", "--set", f"model.api_base={server.url}",
            *[arg for m in more for arg in ("--set", m)]]


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Any:
    clean = {k: "" for k in os.environ if k.startswith("OTEL_")}  # the runner ignores empty ones
    return run_cli(*args, cwd=cwd, env={**clean, **(env or {})})


def _by_name(spans: list[ReceivedSpan]) -> dict[str, list[ReceivedSpan]]:
    out: dict[str, list[ReceivedSpan]] = {}
    for s in sorted(spans, key=lambda s: s.start_ns):
        out.setdefault(s.name, []).append(s)
    return out


def _assert_tree(spans: list[ReceivedSpan]) -> ReceivedSpan:
    """One trace, one root, every parent present, every child within its parent's time."""
    assert len({s.trace_id for s in spans}) == 1
    ids = {s.span_id: s for s in spans}
    roots = [s for s in spans if not s.parent_span_id]
    assert len(roots) == 1
    for s in spans:
        assert s.start_ns <= s.end_ns
        if s.parent_span_id:
            parent = ids[s.parent_span_id]
            assert parent.start_ns <= s.start_ns and s.end_ns <= parent.end_ns, s.name
    return roots[0]


def _all_values(spans: list[ReceivedSpan]) -> str:
    """Every attribute and event value of the spans, as one text to search."""
    return json.dumps([[s.attributes, s.events, s.status_message] for s in spans], default=str)


def test_known_run_from_the_cli_exports_six_spans(server: Any, rx: OtlpReceiver,
                                                  tmp_path: Path) -> None:
    server.script(*KNOWN_RUN)
    proc = _cli("run", CALC, QUESTION, *_wire(server, f"trace.otlp.endpoint={rx.url}"),
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "4\n"
    # the CLI flushed before its os._exit: everything is here once the process is gone
    spans = rx.spans
    assert sorted(s.name for s in spans) == sorted([
        "invoke_agent calculator", "step 1", "step 2", "chat scripted", "chat scripted",
        "execute_tool calculator"])
    root = _assert_tree(spans)
    named = _by_name(spans)
    step1, step2 = named["step 1"][0], named["step 2"][0]
    chat1, chat2 = named["chat scripted"]
    tool = named["execute_tool calculator"][0]
    assert root.name == "invoke_agent calculator" and root.kind == "internal"
    assert step1.parent_span_id == step2.parent_span_id == root.span_id
    assert (chat1.parent_span_id, chat2.parent_span_id) == (step1.span_id, step2.span_id)
    assert tool.parent_span_id == step1.span_id
    assert chat1.kind == "client" and tool.kind == "internal"
    assert chat1.end_ns <= tool.start_ns  # the tool ran after the reply that asked for it

    assert {k: root.attributes[k] for k in (
        "gen_ai.operation.name", "gen_ai.agent.name", "gen_ai.provider.name",
        "gen_ai.request.model", "runner.status", "runner.steps", "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens")} == {
        "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "calculator",
        "gen_ai.provider.name": "openai", "gen_ai.request.model": "scripted",
        "runner.status": "finished", "runner.steps": 2, "gen_ai.usage.input_tokens": 220,
        "gen_ai.usage.output_tokens": 10}
    assert len(root.attributes["runner.run_id"]) == 12 and root.status == "unset"
    for chat, (prompt, completion) in ((chat1, (100, 7)), (chat2, (120, 3))):
        assert chat.attributes["gen_ai.operation.name"] == "chat"
        assert chat.attributes["gen_ai.usage.input_tokens"] == prompt
        assert chat.attributes["gen_ai.usage.output_tokens"] == completion
        assert chat.attributes["gen_ai.response.model"] == "scripted"
        assert chat.attributes["gen_ai.response.finish_reasons"] == ["stop"]
        assert chat.attributes["gen_ai.request.temperature"] == 0.0
        assert chat.attributes["gen_ai.request.max_tokens"] == 96
        assert chat.attributes["runner.attempts"] == 1
    assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
    assert tool.attributes["gen_ai.tool.name"] == "calculator"
    assert tool.status == "unset"
    assert step1.attributes["runner.step"] == 1
    assert root.resource["service.name"] == "yaml-agent-runner"
    assert {s.scope for s in spans} == {"yaml-agent-runner"}
    # content is off by default: no prompt, reply, question or tool input in any span
    text = _all_values(spans)
    assert "gen_ai.input.messages" not in text and "gen_ai.tool.call.arguments" not in text
    assert "2 plus 2" not in text and "2+2" not in text and "add them" not in text


def test_endpoint_headers_and_service_from_standard_variables(server: Any, rx: OtlpReceiver,
                                                              tmp_path: Path) -> None:
    server.script(*KNOWN_RUN)
    proc = _cli("run", CALC, QUESTION, *_wire(server), cwd=tmp_path, env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": rx.url + "/",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=acme",
        "OTEL_SERVICE_NAME": "calc-service",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test"})
    assert proc.returncode == 0, proc.stderr
    assert len(rx.spans) == 6
    assert rx.spans[0].resource["service.name"] == "calc-service"
    assert rx.spans[0].resource["deployment.environment"] == "test"
    assert {r["headers"].get("x-tenant") for r in rx.requests} == {"acme"}


def test_traces_endpoint_variable_wins_and_is_used_as_is(server: Any, rx: OtlpReceiver,
                                                         api_env: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    dead = _closed_port()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{dead}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", rx.url + "/v1/traces")
    server.script(*KNOWN_RUN)
    result = runner.run_agent(CALC, QUESTION, overrides=["model.id=openai/scripted",
                                                         f"model.api_base={server.url}"])
    assert result.status == "finished"
    runner.trace.otel.flush()
    assert len(rx.spans) == 6


def test_spec_headers_service_name_and_full_url(server: Any, rx: OtlpReceiver, api_env: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    spec = api_env / "calc.yaml"
    spec.write_text(Path(CALC).read_text().replace("memory:", textwrap.dedent(f"""\
        trace:
          otlp:
            endpoint: {rx.url}/v1/traces
            headers: {{authorization: "Bearer ${{OTLP_TOKEN}}"}}
            service_name: calc-from-spec
        memory:""")))
    monkeypatch.setenv("OTLP_TOKEN", "otlp-token-1234")
    server.script(*KNOWN_RUN)
    result = runner.run_agent(spec, QUESTION, overrides=["model.id=openai/scripted",
                                                         f"model.api_base={server.url}"])
    assert result.status == "finished"
    runner.trace.otel.flush()
    assert len(rx.spans) == 6  # a URL already ending in /v1/traces is used as it is
    assert rx.requests[0]["headers"]["authorization"] == "Bearer otlp-token-1234"
    assert rx.spans[0].resource["service.name"] == "calc-from-spec"


def test_native_parallel_tool_calls_via_the_api(server: Any, rx: OtlpReceiver,
                                                api_env: Path) -> None:
    server.script({"tool_calls": [
        {"id": "call_a", "name": "calculator", "arguments": {"expression": "17*23"}},
        {"id": "call_b", "name": "calculator", "arguments": {"expression": "2**10"}}],
        "usage": {"prompt_tokens": 50, "completion_tokens": 20}},
        {"content": "391 and 1024", "usage": {"prompt_tokens": 80, "completion_tokens": 5}})
    result = runner.run_agent(CALC, "two sums", overrides=[
        "model.id=openai/scripted", f"model.api_base={server.url}", "loop.style=tools",
        f"trace.otlp.endpoint={rx.url}"])
    assert result.answer == "391 and 1024"
    runner.trace.otel.flush()
    spans = rx.spans
    assert len(spans) == 7  # run, 2 steps, 2 chats, 2 tool calls
    _assert_tree(spans)
    named = _by_name(spans)
    step1 = named["step 1"][0]
    tools = named["execute_tool calculator"]
    assert {t.attributes["gen_ai.tool.call.id"] for t in tools} == {"call_a", "call_b"}
    assert all(t.parent_span_id == step1.span_id for t in tools)
    chat1 = named["chat scripted"][0]
    assert chat1.attributes["gen_ai.response.finish_reasons"] == ["tool_calls"]
    assert chat1.attributes["gen_ai.usage.output_tokens"] == 20


def test_failing_tool_marks_its_span_as_an_error(server: Any, rx: OtlpReceiver,
                                                 tmp_path: Path) -> None:
    server.script("Thought: divide\nAction: calculator[1/0]", "Final Answer: undefined")
    proc = _cli("run", CALC, "1/0?", *_wire(server, f"trace.otlp.endpoint={rx.url}"),
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    named = _by_name(rx.spans)
    tool = named["execute_tool calculator"][0]
    assert tool.status == "error" and tool.attributes["error.type"] == "tool_error"
    assert tool.status_message == ""  # the error text quotes the input: content, off
    assert named["invoke_agent calculator"][0].status == "unset"  # the run went on


def test_model_auth_failure_marks_the_run_and_the_call(server: Any, rx: OtlpReceiver,
                                                       tmp_path: Path) -> None:
    server.script({"status": 401, "body": json.dumps({"error": {"message": "bad key"}})})
    # the spec names the key's variable: an api_base gets no key otherwise
    proc = _cli("run", CALC, QUESTION, *_wire(server, f"trace.otlp.endpoint={rx.url}",
                                              "model.retries=0",
                                              "model.api_key_env=OPENAI_API_KEY"), cwd=tmp_path)
    assert proc.returncode == 1
    spans = rx.spans
    assert sorted(s.name for s in spans) == ["chat scripted", "invoke_agent calculator",
                                             "step 1"]
    _assert_tree(spans)
    named = _by_name(spans)
    run, chat = named["invoke_agent calculator"][0], named["chat scripted"][0]
    assert run.status == chat.status == "error"
    assert run.attributes["error.type"] == chat.attributes["error.type"] == "model_auth_error"
    assert run.attributes["runner.status"] == "model_auth_error"
    assert "OPENAI_API_KEY" in run.status_message
    assert "gen_ai.usage.input_tokens" not in chat.attributes


def test_retries_are_events_of_the_model_call(server: Any, rx: OtlpReceiver, api_env: Path) -> None:
    server.script({"status": 500, "body": "boom"}, "Final Answer: 4")
    spec = runner.load_spec(CALC, ["model.id=openai/scripted", f"model.api_base={server.url}",
                                   "model.retries=1", f"trace.otlp.endpoint={rx.url}"])
    clock = FakeClock()
    run = runner.Agent(spec, clock=clock).start(QUESTION)
    assert asyncio.run(run.execute()).status == "finished"
    runner.trace.otel.flush()
    chat = _by_name(rx.spans)["chat scripted"][0]
    assert chat.attributes["runner.attempts"] == 2
    (retry,) = chat.events
    assert retry["name"] == "retry"
    assert retry["attributes"]["runner.attempt"] == 1
    assert retry["attributes"]["runner.wait_s"] == clock.sleeps[0]
    assert chat.start_ns <= retry["time_ns"] <= chat.end_ns


def test_sub_agent_run_nests_under_the_tool_call(server: Any, rx: OtlpReceiver,
                                                 tmp_path: Path) -> None:
    boss = sub_agent_project(tmp_path, server, f"trace: {{otlp: {{endpoint: '{rx.url}'}}}}\n")
    proc = _cli("run", str(boss), "cats", *_wire(server), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    spans = rx.spans
    assert len(spans) == 9  # boss: run, 2 steps, 2 chats, 1 tool; writer: run, step, chat
    root = _assert_tree(spans)
    named = _by_name(spans)
    tool = named["execute_tool writer"][0]
    writer = named["invoke_agent writer"][0]
    assert root.name == "invoke_agent boss"
    assert writer.parent_span_id == tool.span_id
    assert writer.attributes["runner.parent_run_id"] == root.attributes["runner.run_id"]
    writer_step = next(s for s in named["step 1"] if s.parent_span_id == writer.span_id)
    assert any(c.parent_span_id == writer_step.span_id for c in named["chat scripted"])
    assert tool.attributes["gen_ai.tool.description"] == "Writes one sentence."


def test_captured_content_is_redacted(server: Any, rx: OtlpReceiver, api_env: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    server.script(*KNOWN_RUN)
    question = f"My key is {KEY}. What is 2 plus 2?"
    result = runner.run_agent(CALC, question, overrides=[
        "model.id=openai/scripted", f"model.api_base={server.url}",
        f"trace.otlp.endpoint={rx.url}"])
    assert result.answer == "4"
    runner.trace.otel.flush()
    spans = rx.spans
    assert KEY not in _all_values(spans)
    named = _by_name(spans)
    run, chat1 = named["invoke_agent calculator"][0], named["chat scripted"][0]
    tool = named["execute_tool calculator"][0]
    (asked,) = json.loads(run.attributes["gen_ai.input.messages"])
    assert asked == {"role": "user", "parts": [
        {"type": "text", "content": "My key is ***. What is 2 plus 2?"}]}
    assert json.loads(run.attributes["gen_ai.output.messages"])[0]["parts"][0]["content"] == "4"
    sent = json.loads(chat1.attributes["gen_ai.input.messages"])
    assert sent[-1]["role"] == "user" and "My key is ***." in sent[-1]["parts"][0]["content"]
    (reply,) = json.loads(chat1.attributes["gen_ai.output.messages"])
    assert reply == {"role": "assistant", "finish_reason": "stop", "parts": [
        {"type": "text", "content": "Thought: add them\nAction: calculator[2+2]"}]}
    assert tool.attributes["gen_ai.tool.call.arguments"] == "2+2"
    assert tool.attributes["gen_ai.tool.call.result"] == "4"


def test_names_and_ids_from_the_model_are_redacted_without_content(
        server: Any, rx: OtlpReceiver, api_env: Path) -> None:
    # a tool name and a call id are the model's text: a secret in them is masked in the
    # span's name and attributes even though content capture is off
    server.script({"tool_calls": [{"id": f"call-{KEY}", "name": f"x{KEY}",
                                   "arguments": {KEY: 1}}]}, "done")
    result = runner.run_agent(CALC, "q", overrides=[
        "model.id=openai/scripted", f"model.api_base={server.url}", "loop.style=tools",
        f"trace.otlp.endpoint={rx.url}"])
    assert result.answer == "done"
    runner.trace.otel.flush()
    spans = rx.spans
    assert KEY not in json.dumps([s.name for s in spans]) + _all_values(spans)
    (tool,) = _by_name(spans)["execute_tool x***"]
    assert tool.attributes["gen_ai.tool.name"] == "x***"
    assert tool.attributes["gen_ai.tool.call.id"] == "call-***"
    assert "gen_ai.tool.call.arguments" not in tool.attributes


def test_capture_content_from_the_spec_with_native_calls(server: Any, rx: OtlpReceiver,
                                                         api_env: Path) -> None:
    server.script({"tool_calls": [{"id": "call_1", "name": "calculator",
                                   "arguments": {"expression": "6*7"}}]}, "It is 42.")
    result = runner.run_agent(CALC, "6 times 7", overrides=[
        "model.id=openai/scripted", f"model.api_base={server.url}", "loop.style=tools",
        f"trace.otlp.endpoint={rx.url}", "trace.otlp.capture_content=true"])
    assert result.answer == "It is 42."
    runner.trace.otel.flush()
    named = _by_name(rx.spans)
    chat1, chat2 = named["chat scripted"]
    (reply,) = json.loads(chat1.attributes["gen_ai.output.messages"])
    assert reply["parts"] == [{"type": "tool_call", "id": "call_1", "name": "calculator",
                               "arguments": {"expression": "6*7"}}]
    sent = json.loads(chat2.attributes["gen_ai.input.messages"])
    assert sent[-1] == {"role": "tool", "parts": [
        {"type": "tool_call_response", "id": "call_1", "response": "42"}]}
    tool = named["execute_tool calculator"][0]
    assert json.loads(tool.attributes["gen_ai.tool.call.arguments"]) == {"expression": "6*7"}


def test_grpc_protocol_is_a_clear_error(server: Any, rx: OtlpReceiver, tmp_path: Path,
                                        api_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = _cli("run", CALC, QUESTION, *_wire(server), cwd=tmp_path, env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": rx.url, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert proc.returncode == 2
    assert "OTEL_EXPORTER_OTLP_PROTOCOL=grpc" in proc.stderr and "http/protobuf" in proc.stderr
    assert "Traceback" not in proc.stderr
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
    with pytest.raises(SpecError, match="OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=grpc"):
        runner.trace.otel.otel_sink(OtlpSpec(endpoint=rx.url), Redactor())
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")  # the traces one wins
    assert runner.trace.otel.otel_sink(OtlpSpec(endpoint=rx.url), Redactor()) is not None


@pytest.mark.parametrize("variable", [("OTEL_SDK_DISABLED", "true"),
                                      ("OTEL_TRACES_EXPORTER", "none")])
def test_standard_switches_turn_export_off(variable: tuple[str, str], server: Any,
                                           rx: OtlpReceiver, tmp_path: Path,
                                           api_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server.script(*KNOWN_RUN)
    proc = _cli("run", CALC, QUESTION, *_wire(server, f"trace.otlp.endpoint={rx.url}"),
                cwd=tmp_path, env=dict([variable]))
    assert proc.returncode == 0, proc.stderr
    assert rx.spans == [] and rx.requests == []
    monkeypatch.setenv(*variable)
    assert runner.trace.otel.otel_sink(OtlpSpec(endpoint=rx.url), Redactor()) is None
    monkeypatch.delenv(variable[0])
    assert runner.trace.otel.otel_sink(OtlpSpec(endpoint=rx.url), Redactor()) is not None


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dead_collector_never_fails_the_run(server: Any, tmp_path: Path) -> None:
    server.script(*KNOWN_RUN)
    dead = f"http://127.0.0.1:{_closed_port()}"
    proc = _cli("run", CALC, QUESTION, *_wire(server, f"trace.otlp.endpoint={dead}"),
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "4\n"
    problems = [line for line in proc.stderr.splitlines() if "warning" in line.lower()
                or "otlp" in line.lower() or "export" in line.lower()]
    assert problems == [f"warning: spans not exported: cannot reach the OTLP endpoint "
                        f"{dead}/v1/traces (ConnectionError)"]


def test_collector_errors_show_one_warning(server: Any, rx: OtlpReceiver, tmp_path: Path) -> None:
    server.script(*KNOWN_RUN)
    wrong = f"{rx.url}/not-here/v1/traces"  # the receiver answers 404
    proc = _cli("run", CALC, QUESTION, *_wire(server, f"trace.otlp.endpoint={wrong}"),
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    problems = [line for line in proc.stderr.splitlines() if "warning" in line.lower()
                or "export" in line.lower()]
    assert problems == [f"warning: spans not exported: the OTLP endpoint {wrong} answered "
                        f"404 Not Found"]
    assert rx.spans == []


_PROBE = """
import sys, runner
result = runner.run_agent(sys.argv[1], "hi", overrides=["model.id=fake/echo", *sys.argv[2:]])
assert result.status == "finished", result.error
print(sorted({m.split(".")[1] for m in sys.modules if m.startswith("opentelemetry.")}))
"""


def test_a_run_without_export_never_imports_opentelemetry(rx: OtlpReceiver,
                                                          tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}

    def probe(*overrides: str) -> str:
        proc = subprocess.run([sys.executable, "-c", _PROBE, CALC, *overrides], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    assert probe() == "[]"
    assert "sdk" in probe(f"trace.otlp.endpoint={rx.url}")  # the probe can see an import
