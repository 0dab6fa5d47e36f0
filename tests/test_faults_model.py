"""FAULTS.md, "Model API": every fault a provider can inject, played by the scripted
OpenAI-compatible server and met through the real call path (LiteLLM, the runner's retry
layer, the loop), for both transports where their paths differ:

* `direct`: LiteLLM's translation over the runner's pooled aiohttp session (the default);
* `litellm`: `litellm.acompletion` (RUNNER_TRANSPORT=litellm; always used for streaming).

The transport is decided per model on its first call, so setting the variable before the
agent's first run is enough; each test checks which transport its model really used.

Waits between attempts are recorded by a FakeClock (no real time passes); the deadline cases
(a hanging or trickling server) use the real clock and bound the run's real duration.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

import runner
from runner import events as ev
from runner.budget import Clock
from runner.errors import (LimitExceeded, ModelAuthError, ModelProviderError, ModelRateLimited,
                           ModelTimeout)
from runner.testing import FakeClock, ScriptedOpenAIServer, http_date

from conftest import run_cli

CANARY = "sk-canary-7d3f9a1b2c4e6f80"
ANSWER = "Thought: I know it\nFinal Answer: recovered"
GUARD_S = 30.0  # no run in this file may take longer, whatever breaks: a hang guard, not a
# speed check (how soon each deadline fires is printed by bench/fault_deadlines.py)


@pytest.fixture(params=["direct", "litellm"])
def transport(request: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("RUNNER_TRANSPORT", "auto" if request.param == "direct" else "litellm")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    return request.param


class Harness:
    """Builds an agent on the scripted server from model/budget settings and runs it."""

    def __init__(self, tmp_path: Path, scripted: list[str], server: ScriptedOpenAIServer,
                 transport: str) -> None:
        self.tmp_path, self.scripted, self.server = tmp_path, scripted, server
        self.transport = transport
        self.events: list[ev.Event] = []
        self.agent: runner.Agent | None = None

    def run(self, clock: Any = None, budget: dict[str, Any] | None = None,
            **model: Any) -> runner.RunResult:
        data: dict[str, Any] = {
            "version": 1, "name": "faults",
            "model": {"retries": 2, "backoff_s": 0.5, "max_backoff_s": 30, **model},
            "loop": {"style": "react", "max_iterations": 3},
            "memory": {"backend": "none"},
        }
        if budget:
            data["budget"] = budget
        path = self.tmp_path / "faults.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        spec = runner.load_spec(path, self.scripted)
        self.events = []
        self.agent = runner.Agent(spec, clock=clock or FakeClock(), checkpoints=False,
                                  sinks=[self.events.append])
        try:  # a deadline that does not fire fails the test instead of hanging the suite
            result = asyncio.run(asyncio.wait_for(self.agent.run("What is 2+2?"), GUARD_S))
        except TimeoutError:
            pytest.fail(f"the run was still going after {GUARD_S} s")
        expected = "litellm" if model.get("stream") else self.transport
        assert self.agent.models[0].transport == expected
        return result

    @property
    def models_asked(self) -> list[str]:
        """The `model` of every request the server received, in order."""
        return [r["model"] for r in self.server.requests]

    def called(self) -> ev.ModelCalled:
        (called,) = [e for e in self.events if isinstance(e, ev.ModelCalled)]
        return called

    def warnings(self) -> list[str]:
        return [f"retrying in {e.wait_s:.1f}s: {e.error}" if isinstance(e, ev.Retried)
                else e.message for e in self.events if isinstance(e, (ev.Warned, ev.Retried))]


@pytest.fixture
def h(tmp_path: Path, scripted: list[str], server: ScriptedOpenAIServer,
      transport: str) -> Harness:
    return Harness(tmp_path, scripted, server, transport)


def error_body(message: str) -> str:
    return json.dumps({"error": {"message": message, "type": "scripted"}})


def assert_no_canary(result: runner.RunResult, events: list[ev.Event]) -> None:
    seen = [result.error or "", str(result.exception), repr(result.exception),
            json.dumps(result.to_dict(), default=str), *(repr(e) for e in events)]
    assert not [s for s in seen if CANARY in s]


# --------------------------------------------------------------------------- 429 Retry-After

@pytest.mark.parametrize("retry_after", [7, 45])  # 45: longer than max_backoff_s, still honoured
def test_429_waits_at_least_retry_after_seconds(h: Harness, server: Any,
                                                retry_after: int) -> None:
    server.script({"status": 429, "headers": {"Retry-After": str(retry_after)},
                   "body": error_body("slow down")}, ANSWER)
    clock = FakeClock()
    result = h.run(clock, backoff_s=0.01, max_backoff_s=10)
    assert result.status == "finished" and result.answer == "recovered"
    assert len(server.requests) == 2
    assert len(clock.sleeps) == 1 and clock.sleeps[0] >= retry_after
    assert clock.sleeps[0] <= retry_after + 0.01  # the header, not a backoff, set the wait
    assert h.called().attempts == 2


def test_429_waits_until_retry_after_http_date(h: Harness, server: Any) -> None:
    date = http_date(30)
    until = email.utils.parsedate_to_datetime(date).timestamp()
    server.script({"status": 429, "headers": {"Retry-After": date}, "body": error_body("later")},
                  ANSWER)
    clock = FakeClock()
    result = h.run(clock, backoff_s=0.01)
    assert result.status == "finished" and len(server.requests) == 2
    assert len(clock.sleeps) == 1
    # the wait reaches the date: it is at least what was left of it when the run ended
    assert clock.sleeps[0] >= until - time.time()
    assert clock.sleeps[0] <= 31


@pytest.mark.parametrize("header", ["60", "date"])
def test_429_gives_up_early_when_the_wall_budget_cannot_cover_the_wait(
        h: Harness, server: Any, header: str) -> None:
    value = http_date(60) if header == "date" else header
    server.script({"status": 429, "headers": {"Retry-After": value},
                   "body": error_body("slow down")}, ANSWER)
    clock = FakeClock()
    result = h.run(clock, budget={"wall_s": 10}, backoff_s=0.01)
    assert clock.sleeps == []  # no wait at all, not a wait cut short
    assert len(server.requests) == 1
    assert result.status == "model_rate_limited" and not result.ok
    assert isinstance(result.exception, ModelRateLimited)
    assert "429" in result.error and "wall-clock budget" in result.error
    assert "the server asked for" in result.error and "10.0s left" in result.error


def test_429_give_up_costs_no_real_time(h: Harness, server: Any) -> None:
    """The same with the real clock: the run ends at once instead of sleeping 60 s."""
    server.script({"status": 429, "headers": {"Retry-After": "60"}}, ANSWER)
    result = h.run(Clock(), budget={"wall_s": 10})
    assert result.status == "model_rate_limited"  # a 60 s sleep would pass GUARD_S


def test_429_after_every_retry(h: Harness, server: Any) -> None:
    server.script(*[{"status": 429, "headers": {"Retry-After": "2"}}] * 3)
    clock = FakeClock()
    result = h.run(clock, retries=2, backoff_s=0.01)
    assert result.status == "model_rate_limited" and len(server.requests) == 3
    assert len(clock.sleeps) == 2 and min(clock.sleeps) >= 2


# --------------------------------------------------------------------------- 5xx

@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_backoff_with_jitter_and_exactly_retries_plus_one_requests(
        h: Harness, server: Any, status: int) -> None:
    retries, backoff_s = 3, 1.0
    ratios = []
    for _ in range(2):  # two runs: the jitter must not repeat itself
        server.reset()
        server.script(*[{"status": status, "body": error_body(f"scripted {status}")}] * 10)
        clock = FakeClock()
        result = h.run(clock, retries=retries, backoff_s=backoff_s, max_backoff_s=30)
        assert len(server.requests) == retries + 1
        assert result.status == "model_provider_error"
        assert isinstance(result.exception, ModelProviderError) and result.exception.retryable
        assert f"scripted {status}" in result.error
        assert len(clock.sleeps) == retries
        for attempt, wait in enumerate(clock.sleeps):
            base = backoff_s * 2 ** attempt
            assert 0.5 * base <= wait <= base, (attempt, wait)
            ratios.append(round(wait / base, 6))
        assert len(h.warnings()) == retries and all("retrying in" in w for w in h.warnings())
    assert len(set(ratios)) > 1, ratios


def test_5xx_backoff_is_capped_by_max_backoff_s(h: Harness, server: Any) -> None:
    server.script(*[{"status": 503}] * 5)
    clock = FakeClock()
    h.run(clock, retries=4, backoff_s=2, max_backoff_s=3)
    assert len(server.requests) == 5 and len(clock.sleeps) == 4
    assert all(w <= 3 for w in clock.sleeps) and all(w >= 1.5 for w in clock.sleeps[1:])


def test_5xx_then_success(h: Harness, server: Any) -> None:
    server.script({"status": 503}, {"status": 502, "body": "<html>Bad Gateway</html>",
                                    "content_type": "text/html"}, ANSWER)
    clock = FakeClock()
    result = h.run(clock, retries=2)
    assert result.status == "finished" and result.answer == "recovered"
    assert len(server.requests) == 3 and len(clock.sleeps) == 2
    assert h.called().attempts == 3


def test_5xx_with_no_retries_is_one_request(h: Harness, server: Any) -> None:
    server.script({"status": 500}, ANSWER)
    result = h.run(retries=0)
    assert result.status == "model_provider_error" and len(server.requests) == 1


# --------------------------------------------------------------------------- 4xx

@pytest.mark.parametrize("status,kind,error_status", [
    (400, ModelProviderError, "model_provider_error"),
    (401, ModelAuthError, "model_auth_error"),
    (403, ModelAuthError, "model_auth_error"),
    (404, ModelProviderError, "model_provider_error")])
@pytest.mark.parametrize("variable", ["FAULTS_TEST_API_KEY", "SCRIPTED_LLM_CRED"])
def test_4xx_is_one_request_and_never_shows_the_key(
        h: Harness, server: Any, monkeypatch: pytest.MonkeyPatch, status: int, kind: type,
        error_status: str, variable: str) -> None:
    """SCRIPTED_LLM_CRED does not look like a secret's name: the key must be masked anyway,
    even when the provider echoes it back in its error (as OpenAI's 401 does)."""
    monkeypatch.setenv(variable, CANARY)
    server.script({"status": status, "body": error_body(
        f"Incorrect API key provided: {CANARY} (scripted {status})")}, ANSWER)
    clock = FakeClock()
    result = h.run(clock, retries=3, api_key_env=variable)
    assert len(server.requests) == 1 and clock.sleeps == []
    assert result.status == error_status and isinstance(result.exception, kind)
    assert not result.exception.retryable
    if status in (401, 403):
        assert f"${variable}" in result.error and f"({status})" in result.error
    else:
        assert f"scripted {status}" in result.error
    assert_no_canary(result, h.events)


def test_missing_key_variable_is_no_request(h: Harness, server: Any,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAULTS_UNSET_KEY", raising=False)
    result = h.run(api_key_env="FAULTS_UNSET_KEY")
    assert result.status == "model_auth_error" and server.requests == []
    assert "FAULTS_UNSET_KEY is not set" in result.error


# --------------------------------------------------------------------------- deadlines (real time)

def test_hang_fires_model_timeout(h: Harness, server: Any) -> None:
    server.script({"hang": True}, ANSWER)
    result = h.run(Clock(), retries=0, timeout_s=1)
    assert result.status == "model_timeout" and isinstance(result.exception, ModelTimeout)
    assert "no reply within 1s" in result.error
    assert len(server.requests) == 1


def test_hang_timeout_is_retried(h: Harness, server: Any) -> None:
    server.script({"hang": True}, {"hang": True}, ANSWER)
    result = h.run(Clock(), retries=1, backoff_s=0.05, timeout_s=1)
    assert result.status == "model_timeout" and len(server.requests) == 2


def test_hang_then_answer(h: Harness, server: Any) -> None:
    server.script({"hang": True}, ANSWER)
    result = h.run(Clock(), retries=1, backoff_s=0.05, timeout_s=1)
    assert result.status == "finished" and result.answer == "recovered"
    assert len(server.requests) == 2 and h.called().attempts == 2


def test_hang_fires_the_wall_budget_before_a_longer_timeout(h: Harness, server: Any) -> None:
    server.script(*[{"hang": True}] * 3)
    result = h.run(Clock(), budget={"wall_s": 1}, retries=2, timeout_s=30)
    assert result.status == "budget_wall_s" and isinstance(result.exception, LimitExceeded)
    assert "of 1.0" in result.error
    assert len(server.requests) == 1  # the budget is spent: no retry


def test_trickled_stream_fires_model_timeout(h: Harness, server: Any) -> None:
    """Each SSE chunk arrives well within the timeout; the call as a whole does not."""
    server.script({"trickle": 0.3, "content": "Final Answer: " + "x" * 200}, ANSWER)
    result = h.run(Clock(), retries=0, timeout_s=1, stream=True)
    assert result.status == "model_timeout" and len(server.requests) == 1


def test_trickled_body_fires_model_timeout(h: Harness, server: Any) -> None:
    """A JSON body sent a byte at a time: every read succeeds, the call never ends in time."""
    server.script({"trickle": 0.05, "content": "Final Answer: slow"}, ANSWER)
    result = h.run(Clock(), retries=0, timeout_s=1)
    assert result.status == "model_timeout" and len(server.requests) == 1


def test_trickled_body_fires_the_wall_budget(h: Harness, server: Any) -> None:
    server.script({"trickle": 0.05, "content": "Final Answer: slow"}, ANSWER)
    result = h.run(Clock(), budget={"wall_s": 1}, retries=2, timeout_s=30)
    assert result.status == "budget_wall_s" and len(server.requests) == 1


@pytest.mark.parametrize("stream", [False, True])
def test_trickle_within_the_deadline_is_a_normal_reply(h: Harness, server: Any,
                                                       stream: bool) -> None:
    """The control: the trickle item itself delivers a valid reply, just slowly."""
    item = {"trickle": 0.02, "content": "Final Answer: slow but fine"}
    if not stream:
        item["trickle_bytes"] = 40
    server.script(item)
    result = h.run(Clock(), retries=0, timeout_s=10, stream=stream)
    assert result.status == "finished" and result.answer == "slow but fine"


# --------------------------------------------------------------------------- streams

def test_stream_cut_without_finish_is_retried(h: Harness, server: Any) -> None:
    server.script({"content": "Final Answer: partial", "cut_stream": True}, ANSWER)
    clock = FakeClock()
    result = h.run(clock, retries=1, stream=True)
    assert len(server.requests) == 2 and all(r["stream"] for r in server.requests)
    assert result.status == "finished" and result.answer == "recovered"
    assert len(clock.sleeps) == 1
    assert any("without a finish" in w for w in h.warnings())


def test_stream_cut_without_finish_is_never_a_normal_stop(h: Harness, server: Any) -> None:
    server.script({"content": "Final Answer: partial", "cut_stream": True}, ANSWER)
    result = h.run(retries=0, stream=True)
    assert len(server.requests) == 1
    assert result.status == "model_provider_error" and not result.ok
    assert isinstance(result.exception, ModelProviderError) and result.exception.retryable
    assert "without a finish" in result.error and result.answer != "partial"


def test_complete_stream_is_one_request(h: Harness, server: Any) -> None:
    server.script({"content": "Final Answer: whole"})
    result = h.run(retries=1, stream=True)
    assert result.status == "finished" and result.answer == "whole"
    assert len(server.requests) == 1


# --------------------------------------------------------------------------- malformed 200s

@pytest.mark.parametrize("fault,retried", [
    ("html", False),          # a web page (captive portal, wrong api_base): the same again
    ("invalid_json", False),  # a body that is not JSON at all: not retried either
    ("empty_choices", True),  # a well-formed completion with no choice: retried
])
def test_malformed_200_is_a_typed_provider_error(h: Harness, server: Any, fault: str,
                                                 retried: bool) -> None:
    server.script(*[{"fault": fault}] * 3)
    clock = FakeClock()
    result = h.run(clock, retries=2)
    assert result.status == "model_provider_error"
    assert isinstance(result.exception, ModelProviderError)
    assert result.exception.retryable is retried
    assert len(server.requests) == (3 if retried else 1)
    assert len(clock.sleeps) == (2 if retried else 0)
    assert "openai/scripted" in result.error and "\n" not in result.error


# --------------------------------------------------------------------------- fallbacks

def fallbacks(server: ScriptedOpenAIServer, **entry: Any) -> list[dict[str, Any]]:
    """Two fallbacks on the scripted server: each names its own api_base, since a fallback
    never inherits the primary's (tests/test_hostile_models.py)."""
    return [{"id": f"openai/fallback-{n}", "api_base": server.url, **entry} for n in "ab"]


def test_fallbacks_in_order_after_the_primary_fails_for_good(h: Harness, server: Any) -> None:
    retries = 1
    server.script(*[{"status": 503}] * (2 * (retries + 1)), ANSWER)
    clock = FakeClock()
    result = h.run(clock, retries=retries, fallbacks=fallbacks(server))
    assert result.status == "finished" and result.answer == "recovered"
    assert h.models_asked == ["scripted"] * 2 + ["fallback-a"] * 2 + ["fallback-b"]
    called = h.called()
    assert called.model == "openai/fallback-b" and called.attempts == 5
    assert len(clock.sleeps) == 2  # between one model's attempts, never before a fallback


def test_every_model_gets_retries_plus_one_requests(h: Harness, server: Any) -> None:
    retries = 2
    server.script(*[{"status": 500}] * 20)
    clock = FakeClock()
    result = h.run(clock, retries=retries, fallbacks=fallbacks(server))
    assert h.models_asked == (["scripted"] * 3 + ["fallback-a"] * 3 + ["fallback-b"] * 3)
    assert len(clock.sleeps) == 3 * retries
    assert result.status == "model_provider_error" and "openai/fallback-b" in result.error


def test_a_non_retryable_error_moves_to_the_fallback_at_once(h: Harness, server: Any) -> None:
    server.script({"status": 404, "body": error_body("no such model")}, ANSWER)
    clock = FakeClock()
    result = h.run(clock, retries=3, fallbacks=fallbacks(server))
    assert result.status == "finished" and h.models_asked == ["scripted", "fallback-a"]
    assert clock.sleeps == []


def test_a_wait_past_the_budget_moves_to_the_fallback(h: Harness, server: Any) -> None:
    server.script({"status": 429, "headers": {"Retry-After": "120"}}, ANSWER)
    clock = FakeClock()
    result = h.run(clock, budget={"wall_s": 30}, retries=3, fallbacks=fallbacks(server))
    assert result.status == "finished" and h.models_asked == ["scripted", "fallback-a"]
    assert clock.sleeps == []


def test_an_auth_error_tries_the_fallbacks_with_their_own_keys(
        h: Harness, server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fallback never shares the primary's key (issue 9, item 2), so a rejected key is no
    reason to skip it; the rejected key is not retried."""
    monkeypatch.setenv("FAULTS_TEST_API_KEY", CANARY)
    monkeypatch.setenv("FAULTS_FALLBACK_KEY", "sk-fallback-not-a-real-key")
    server.script({"status": 401, "body": error_body("bad key")}, ANSWER)
    result = h.run(retries=3, fallbacks=fallbacks(server, api_key_env="FAULTS_FALLBACK_KEY"),
                   api_key_env="FAULTS_TEST_API_KEY")
    assert result.status == "finished" and h.models_asked == ["scripted", "fallback-a"]
    assert_no_canary(result, h.events)


def test_an_auth_error_of_every_model_is_the_last_models_error(h: Harness, server: Any) -> None:
    server.script(*[{"status": 401, "body": error_body("bad key")}] * 3)
    result = h.run(retries=3, fallbacks=fallbacks(server))
    assert result.status == "model_auth_error" and "openai/fallback-b" in result.error
    assert h.models_asked == ["scripted", "fallback-a", "fallback-b"]


# --------------------------------------------------------------------------- CLI

def test_cli_fault_is_exit_1_and_one_line(server: Any, tmp_path: Path) -> None:
    spec = tmp_path / "agent.yaml"
    spec.write_text("version: 1\nname: clifault\nmodel: {id: openai/scripted, retries: 1, "
                    "backoff_s: 0.01, api_key_env: FAULTS_CLI_KEY}\nmemory: {backend: none}\n")
    server.script(*[{"fault": "html"}] * 2)
    proc = run_cli("run", str(spec), "q", "--set", f"model.api_base={server.url}",
                   env={"FAULTS_CLI_KEY": CANARY}, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr and CANARY not in proc.stderr
    errors = [line for line in proc.stderr.splitlines()
              if line.startswith("model_provider_error:")]
    assert len(errors) == 1, proc.stderr
    assert "openai/scripted" in errors[0] and "HTML" in errors[0].upper()
    assert proc.stderr.rstrip("\n").splitlines()[-1] == errors[0]
    assert len(server.requests) == 1  # an HTML page is not retried
