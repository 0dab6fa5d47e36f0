"""Recall: the earlier turns most like the question brought back beside the recent window,
embedded with the semantic search's real model, each turn embedded once."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import yaml

import runner
from runner import events as ev
from runner.memory import SQLiteMemory
from runner.recall import CACHE, HEADER

FACTS = ["My cat is called Whiskers and she is grey.", "I work as a plumber in Leeds.",
         "My favourite food is spicy ramen.", "I have two brothers, Tom and Sam.",
         "I am learning to play the cello.", "The weather today is rainy."]


def project(tmp_path: Path, memory: dict[str, Any], replies: list[str] | None = None) -> Path:
    (tmp_path / "pyproject.toml").touch()
    spec = {"version": 1, "name": "friend", "loop": {"style": "react"},
            "model": {"id": "fake/script",
                      "options": {"replies": replies or ["Final Answer: ok"]}},
            "memory": {"backend": "sqlite", "path": str(tmp_path / "memory.db"),
                       "session": "s", **memory}}
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def seed(tmp_path: Path) -> None:
    async def go() -> None:
        store = SQLiteMemory(tmp_path / "memory.db")
        for fact in FACTS:
            await store.append("s", [{"role": "user", "content": fact},
                                     {"role": "assistant", "content": "Noted."}])
        await store.close()

    asyncio.run(go())


def ask(path: Path, question: str) -> tuple[str, list[ev.Event]]:
    events: list[ev.Event] = []

    async def go() -> str:
        async with runner.Agent(runner.load_spec(path)) as agent:
            result = await agent.start(question).execute(listener=events.append)
            assert result.ok, result.error
            return agent.models[0].calls[0][0]["content"]

    return asyncio.run(go()), events


def recalled(prompt: str) -> str:
    """The part of the prompt between the recall header and the question."""
    assert HEADER in prompt, prompt
    return prompt.split(HEADER, 1)[1].split("Question:", 1)[0]


def test_the_turn_most_like_the_question_comes_back_beside_the_window(tmp_path: Path) -> None:
    path = project(tmp_path, {"window": 2, "recall": {"k": 1}})
    seed(tmp_path)
    prompt, events = ask(path, "What is the name of my pet?")
    part = recalled(prompt)
    assert "User: My cat is called Whiskers" in part
    assert "plumber" not in part and "ramen" not in part
    assert part.rstrip().endswith("User: The weather today is rainy.\nAssistant: Noted.")
    [event] = [e for e in events if isinstance(e, ev.MemoryRecalled)]
    assert (event.messages, event.recalled) == (5, 1)

    prompt, _ = ask(path, "What do I do for a living?")
    assert "plumber in Leeds" in recalled(prompt) and "Whiskers" not in recalled(prompt)


def test_each_turn_is_embedded_once_and_kept(tmp_path: Path) -> None:
    from runner.search_semantic import embedder

    path = project(tmp_path, {"window": 2, "recall": {"k": 2}})
    seed(tmp_path)
    ask(path, "Which instrument am I learning?")
    with sqlite3.connect(tmp_path / CACHE) as db:
        kept = db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
    assert kept == 5  # the five turns before the window
    before = embedder().calls
    prompt, _ = ask(path, "Which instrument am I learning?")
    # the weather turn has left the window: it alone is embedded, with the question; the
    # five others came from the cache
    assert embedder().calls == before + 2
    with sqlite3.connect(tmp_path / CACHE) as db:
        assert db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] == 6
    assert "cello" in recalled(prompt)


def test_recall_after_a_summary(tmp_path: Path) -> None:
    path = project(tmp_path, {"summarize": {"after_tokens": 100, "keep_tokens": 10},
                              "recall": {"k": 1}},
                   replies=["SUMMARY: a chat about a pet, a job, food and family.",
                            "Final Answer: ok"])
    seed(tmp_path)

    async def go() -> str:
        async with runner.Agent(runner.load_spec(path)) as agent:
            result = await agent.run("What food do I love?")
            assert result.ok, result.error
            return agent.models[0].calls[1][0]["content"]

    prompt = asyncio.run(go())
    summary = prompt.index("Summary of the earlier conversation: SUMMARY:")
    assert summary < prompt.index(HEADER) < prompt.index("spicy ramen")


def test_recall_needs_a_window_or_a_summary(tmp_path: Path, cli: Any) -> None:
    path = project(tmp_path, {"recall": {"k": 2}})
    done = cli("validate", str(path))
    assert done.returncode == 2 and "give window:" in done.stdout, done.stdout
