"""Every checkpoint store (SQLite, Redis) through the same cases: save and load back, a
prefix of the id, list, has, a claim that one of two takers gets, secrets masked at rest,
a state that is not what a run wrote, the store unavailable; and every memory backend keeps
secrets masked at rest."""

from __future__ import annotations

import asyncio
import json
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import runner
from runner.checkpoints import CheckpointStore, release, store_at
from runner.errors import CheckpointError, SpecError
from runner.testing.memory_suite import build_memory

SECRET = "sk-live-1234567890abcdef"


def state(run_id: str, **changes: Any) -> dict[str, Any]:
    base = {"version": 1, "run_id": run_id, "parent_run_id": None, "agent": "a",
            "spec_path": "/nowhere/a.yaml", "spec_digest": "x", "overrides": [],
            "session": None, "input": f"use {SECRET} please", "status": "interrupted",
            "answer": None, "error": None, "steps": [], "messages": [], "calls": 1,
            "parse_errors": 0, "repeats": {}, "approvals": {}, "in_flight": [],
            "budget": {"prompt_tokens": 5, "completion_tokens": 2},
            "run_usage": {"prompt_tokens": 5, "completion_tokens": 2, "cost_usd": None},
            "owner": {"host": socket.gethostname(), "pid": 1 << 30, "resumed": False}}
    return {**base, **changes}


@pytest.fixture(params=["sqlite", "redis"])
def where(request: Any, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "runs.db")
    import redis

    url = request.getfixturevalue("redis_server").url(11)  # this file's database, emptied
    with redis.Redis.from_url(url) as raw:
        raw.flushdb()
    return url


def opened(where: str) -> CheckpointStore:
    return store_at(where, secrets={SECRET})


def test_a_saved_state_loads_back_by_id_and_by_prefix(where: str) -> None:
    store = opened(where)
    try:
        store.save(state("conf-run-aaaa1"))
        store.save(state("conf-run-aaaa1", calls=2))  # replaced, not added
        store.save(state("conf-run-bbbb2"))
        assert store.load("conf-run-aaaa1")["calls"] == 2
        assert store.load("conf-run-b")["run_id"] == "conf-run-bbbb2"
        with pytest.raises(SpecError, match="matches several runs"):
            store.load("conf-run-")
        with pytest.raises(SpecError, match="no run"):
            store.load("nobody")
        assert store.has("conf-run-aaaa1") and not store.has("nobody")
        listed = {r["run_id"]: r for r in store.list(10) if r["run_id"].startswith("conf-")}
        assert set(listed) == {"conf-run-aaaa1", "conf-run-bbbb2"}
        assert listed["conf-run-aaaa1"]["budget"] == {"prompt_tokens": 5,
                                                       "completion_tokens": 2}
        assert listed["conf-run-aaaa1"]["status"] == "interrupted"
    finally:
        store.close()


def test_secrets_are_masked_at_rest(where: str) -> None:
    store = opened(where)
    try:
        store.save(state("conf-secret-1"))
        assert SECRET not in json.dumps(store.load("conf-secret-1"))
        text = store._state_text("conf-secret-1")
        assert text is not None and SECRET not in text and "use *** please" in text
    finally:
        store.close()


def test_of_two_claims_exactly_one_gets_the_run(where: str) -> None:
    opened(where).save(state("conf-claim-1"))
    stores = [opened(where) for _ in range(2)]

    def take(store: CheckpointStore) -> str:
        try:
            store.claim("conf-claim-1")
            return "claimed"
        except SpecError:
            return "refused"

    try:
        with ThreadPoolExecutor(2) as pool:
            outcomes = sorted(pool.map(take, stores))
        assert outcomes == ["claimed", "refused"], outcomes
        assert stores[0].load("conf-claim-1")["status"] == "running"
    finally:
        release("conf-claim-1")
        for s in stores:
            s.close()


def test_a_state_that_is_not_a_runs_is_refused_naming_the_store(where: str) -> None:
    store = opened(where)
    try:
        store.save(state("conf-bad-1", steps="not a list"))
        with pytest.raises(CheckpointError) as caught:
            store.load("conf-bad-1")
        assert "conf-bad-1" in str(caught.value)
        store.save(state("conf-done-1", status="finished"))
        with pytest.raises(SpecError, match="already finished"):
            store.claim("conf-done-1")
    finally:
        store.close()


def test_an_unavailable_store_is_a_checkpoint_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    unreachable = store_at(f"redis://127.0.0.1:{port}/0")
    with pytest.raises(CheckpointError, match="cannot reach"):
        unreachable.save(state("conf-down-1"))
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "runs.db").mkdir()  # a folder where the file should be
    with pytest.raises(CheckpointError, match="runs.db"):
        store_at(str(folder / "runs.db")).save(state("conf-down-2"))


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_memory_keeps_secrets_masked_at_rest(backend: str, tmp_path: Path, redis_server: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A secret of the environment in a question and its answer never reaches the store."""
    monkeypatch.setenv("SERVICE_API_KEY", SECRET)
    memory = {"sqlite": {"backend": "sqlite", "path": str(tmp_path / "memory.db")},
              "redis": {"backend": "redis", "url": redis_server.url(4),
                        "prefix": f"secret-test-{abs(hash(str(tmp_path)))}:"}}[backend]
    (tmp_path / "pyproject.toml").touch()
    spec = tmp_path / "agent.yaml"
    spec.write_text(json.dumps({"version": 1, "name": "a", "model": {"id": "fake/echo"},
                                "memory": {**memory, "session": "s"}}))

    async def go() -> None:
        async with runner.Agent(runner.load_spec(spec)) as agent:
            result = await agent.run(f"my key is {SECRET}")
            assert result.ok

    asyncio.run(go())
    store = build_memory(memory, tmp_path)
    kept = asyncio.run(_load(store))
    assert len(kept) == 2 and all(SECRET not in m["content"] for m in kept), kept


async def _load(store: Any) -> Any:
    try:
        return await store.load("s")
    finally:
        await store.close()
