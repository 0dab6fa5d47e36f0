"""Summary memory: a long session's older turns replaced in the prompt by a model's summary,
the summary call counted and traced, reused by the next run, and a failed summary that never
loses history."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import yaml

import runner
from runner import events as ev
from runner.memory import SQLiteMemory
from runner.summary import SUMMARY_SUFFIX

OLD = [m for i in range(12) for m in (
    {"role": "user", "content": f"question {i}: what about topic {i}? " * 4},
    {"role": "assistant", "content": f"answer {i}: topic {i} is fine. " * 4})]


def project(tmp_path: Path, model: dict[str, Any], summarize: dict[str, Any] | None,
            budget: dict[str, Any] | None = None) -> Path:
    (tmp_path / "pyproject.toml").touch()
    memory: dict[str, Any] = {"backend": "sqlite", "path": str(tmp_path / "memory.db"),
                              "session": "s"}
    if summarize is not None:
        memory["summarize"] = summarize
    spec = {"version": 1, "name": "talker", "model": model, "loop": {"style": "react"},
            "memory": memory, **({"budget": budget} if budget else {})}
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def seed(tmp_path: Path, messages: list[dict[str, str]] = OLD) -> None:
    async def go() -> None:
        store = SQLiteMemory(tmp_path / "memory.db")
        await store.append("s", messages)
        await store.close()

    asyncio.run(go())


def stored(tmp_path: Path, session: str = "s") -> list[dict[str, str]]:
    async def go() -> list[dict[str, str]]:
        store = SQLiteMemory(tmp_path / "memory.db")
        try:
            return await store.load(session)
        finally:
            await store.close()

    return asyncio.run(go())


def run(path: Path, question: str = "and topic 99?") -> tuple[Any, list[ev.Event], Any]:
    events: list[ev.Event] = []

    async def go() -> tuple[Any, Any]:
        async with runner.Agent(runner.load_spec(path)) as agent:
            result = await agent.start(question).execute(listener=events.append)
            return result, agent.models[0]

    result, model = asyncio.run(go())
    return result, events, model


def scripted(*replies: str) -> dict[str, Any]:
    return {"id": "fake/script", "options": {"replies": list(replies)}}


def test_a_short_history_is_used_whole_without_a_summary_call(tmp_path: Path) -> None:
    path = project(tmp_path, scripted("Final Answer: ok"), {"after_tokens": 100_000})
    seed(tmp_path)
    result, events, model = run(path)
    assert result.ok and result.answer == "ok"
    assert len(model.calls) == 1
    assert "question 0: what about topic 0?" in model.calls[0][0]["content"]
    assert not [e for e in events if isinstance(e, ev.MemorySummarized)]


def test_a_long_history_is_summarized_counted_stored_and_reused(tmp_path: Path) -> None:
    path = project(tmp_path, scripted("SUMMARY-ONE: topics 0 to 10 are fine.",
                                      "Final Answer: ninety-nine is fine too"),
                   {"after_tokens": 300, "keep_tokens": 60})
    seed(tmp_path)
    result, events, model = run(path)
    assert result.ok and result.answer == "ninety-nine is fine too", result.error
    summary_call, agent_call = model.calls
    asked = summary_call[0]["content"]
    assert "question 0: what about topic 0?" in asked and "Summary:" in asked
    prompt = agent_call[0]["content"]
    assert "Summary of the earlier conversation: SUMMARY-ONE: topics 0 to 10 are fine." in prompt
    assert "question 0: what about topic 0?" not in prompt  # the old turns are gone from it
    assert "question 11: what about topic 11?" in prompt  # the newest turn is kept whole
    # the summary call is the run's: its tokens are in the run's usage
    [summarized] = [e for e in events if isinstance(e, ev.MemorySummarized)]
    assert summarized.messages == 22 and not summarized.reused and summarized.error is None
    assert summarized.tokens_after < summarized.tokens_before
    assert result.usage.prompt_tokens > summarized.prompt_tokens > 0
    # the store still has every message, and the summary beside them
    assert stored(tmp_path)[:len(OLD)] == OLD and len(stored(tmp_path)) == len(OLD) + 2
    [record] = stored(tmp_path, "s" + SUMMARY_SUFFIX)
    assert json.loads(record["content"]) == {"messages": 22,
                                             "text": "SUMMARY-ONE: topics 0 to 10 are fine."}
    # the trace holds the summary as a memory item
    [trace] = (tmp_path / ".runner" / "traces").glob("*.jsonl")
    assert '"memory_summarized"' in trace.read_text()

    # the next run: more turns have grown old, so the summary is extended from the stored one
    path = project(tmp_path, scripted("SUMMARY-TWO", "Final Answer: again"),
                   {"after_tokens": 300, "keep_tokens": 60})
    result, events, model = run(path, "one more?")
    summary_call, agent_call = model.calls
    assert "The summary of what came before:\nSUMMARY-ONE" in summary_call[0]["content"]
    assert "question 0: what about topic 0?" not in summary_call[0]["content"]
    assert "Summary of the earlier conversation: SUMMARY-TWO" in agent_call[0]["content"]


def test_summary_works_over_redis_and_over_the_buffer(tmp_path: Path, redis_server: Any) -> None:
    """The summary is the prompt's, not the store's: any backend keeps the history and the
    summary beside it."""
    from runner.testing.memory_suite import build_memory

    session = f"sum-{abs(hash(str(tmp_path)))}"  # the buffer is the process's: a name of its own
    for memory in ({"backend": "redis", "url": redis_server.url(9)}, {"backend": "buffer"}):
        (tmp_path / "pyproject.toml").touch()
        spec = {"version": 1, "name": "talker", "loop": {"style": "react"},
                "model": {"id": "fake/script", "options": {"replies": [
                    "SUMMARY-R", "Final Answer: ok"]}},
                "memory": {**memory, "session": session,
                           "summarize": {"after_tokens": 300, "keep_tokens": 60}}}
        path = tmp_path / "agent.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))

        async def go() -> tuple[Any, list[Any], list[Any]]:
            store = build_memory(memory, tmp_path)
            await store.append(session, OLD)
            async with runner.Agent(runner.load_spec(path), memory=store) as agent:
                result = await agent.run("and now?")
                found = (result, await agent.memory.load(session),
                         await agent.memory.load(session + SUMMARY_SUFFIX))
                for name in (session, session + SUMMARY_SUFFIX):
                    await agent.memory.clear(name)
                return found

        result, kept, summary = asyncio.run(go())
        assert result.ok and result.answer == "ok", (memory, result.error)
        assert kept[:len(OLD)] == OLD and len(kept) == len(OLD) + 2
        assert json.loads(summary[-1]["content"])["text"] == "SUMMARY-R"


def test_a_stored_summary_that_still_covers_the_old_turns_is_reused(tmp_path: Path) -> None:
    path = project(tmp_path, scripted("Final Answer: reused"),
                   {"after_tokens": 300, "keep_tokens": 60})
    seed(tmp_path)

    async def pre() -> None:  # a summary that covers the 22 oldest messages already
        store = SQLiteMemory(tmp_path / "memory.db")
        await store.append("s" + SUMMARY_SUFFIX, [{"role": "system", "content": json.dumps(
            {"messages": 22, "text": "STORED"})}])
        await store.close()

    asyncio.run(pre())
    result, events, model = run(path)
    assert result.answer == "reused" and len(model.calls) == 1  # no summary call
    assert "Summary of the earlier conversation: STORED" in model.calls[0][0]["content"]
    [summarized] = [e for e in events if isinstance(e, ev.MemorySummarized)]
    assert summarized.reused


def test_a_failed_summary_keeps_the_whole_history(tmp_path: Path, server: Any,
                                                  scripted: list[str]) -> None:
    server.script({"status": 400, "body": json.dumps({"error": {"message": "no summaries"}})},
                  "Thought: fine\nFinal Answer: whole")
    path = project(tmp_path, {"id": "openai/scripted", "api_base": server.url},
                   {"after_tokens": 300, "keep_tokens": 60})
    seed(tmp_path)
    result, events, _ = run(path)
    assert result.ok and result.answer == "whole", result.error
    prompt = server.requests[1]["messages"][0]["content"]
    assert "question 0: what about topic 0?" in prompt  # nothing of the history was lost
    assert any(isinstance(e, ev.Warned) and "summary of session 's' failed" in e.message
               for e in events)
    [summarized] = [e for e in events if isinstance(e, ev.MemorySummarized)]
    assert summarized.error and "no summaries" in summarized.error
    assert stored(tmp_path, "s" + SUMMARY_SUFFIX) == []
    assert len(stored(tmp_path)) == len(OLD) + 2


def test_the_summary_call_counts_against_the_budget(tmp_path: Path) -> None:
    path = project(tmp_path, scripted("A summary.", "Final Answer: never"),
                   {"after_tokens": 300, "keep_tokens": 60}, budget={"tokens": 50})
    seed(tmp_path)
    result, _, model = run(path)
    assert result.status == "budget_tokens" and len(model.calls) == 1
    assert stored(tmp_path) == OLD  # the run ended: nothing new, nothing lost


def test_another_model_can_write_the_summary(tmp_path: Path) -> None:
    path = project(tmp_path, scripted("Final Answer: mine"),
                   {"after_tokens": 300, "keep_tokens": 60, "model": "fake/echo"})
    seed(tmp_path)
    result, events, model = run(path)
    assert result.answer == "mine" and len(model.calls) == 1  # its own script untouched
    [summarized] = [e for e in events if isinstance(e, ev.MemorySummarized)]
    assert summarized.model == "fake/echo" and not summarized.error


def test_an_unknown_summary_model_is_a_spec_error(tmp_path: Path, cli: Any) -> None:
    path = project(tmp_path, scripted("Final Answer: x"), {"model": "nosuch/model"})
    done = cli("validate", str(path))
    assert done.returncode == 2
    assert "memory.summarize.model" in done.stdout and "nosuch" in done.stdout
