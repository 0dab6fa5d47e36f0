"""Every memory backend through the same conformance suite (runner.testing.memory_suite), plus
what is particular to each: a corrupted or missing store, a store that is unavailable, a
password that is wrong or masked, a TTL."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

import runner
from conftest import RedisServer, run_cli
from runner.errors import RunnerError
from runner.testing.memory_suite import CASES, IN_PROCESS, build_memory, run_case


def backends(redis: RedisServer, tmp: Path) -> dict[str, dict[str, Any]]:
    return {"sqlite": {"backend": "sqlite", "path": str(tmp / "case" / "memory.db")},
            "redis": {"backend": "redis", "url": redis.url(), "timeout_s": 10}}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_every_persistent_backend_passes_the_suite(case: str, backend: str, redis_server: Any,
                                                   tmp_path: Path) -> None:
    run_case(case, backends(redis_server, tmp_path)[backend], tmp_path / "case")


@pytest.mark.parametrize("case", IN_PROCESS)
def test_the_buffer_passes_the_in_process_cases(case: str, tmp_path: Path) -> None:
    run_case(case, {"backend": "buffer"}, tmp_path / "case")


def _call(memory: Any, op: Any) -> Any:
    async def go() -> Any:
        try:
            return await op(memory)
        finally:
            await memory.close()

    return asyncio.run(go())


def test_a_corrupted_sqlite_store_is_a_clear_error_naming_the_file(tmp_path: Path) -> None:
    db = tmp_path / "spec" / "memory.db"
    db.parent.mkdir()
    db.write_bytes(b"this is not a database" * 100)
    memory = build_memory({"backend": "sqlite", "path": str(db)}, tmp_path / "spec")
    with pytest.raises(RunnerError) as caught:
        _call(memory, lambda m: m.load("s"))
    assert str(db) in str(caught.value) and "not a database" in str(caught.value)


def test_a_missing_sqlite_store_is_created_and_empty(tmp_path: Path) -> None:
    db = tmp_path / "spec" / "deep" / "folder" / "memory.db"
    memory = build_memory({"backend": "sqlite", "path": str(db)}, tmp_path / "spec")
    assert _call(memory, lambda m: m.load("s")) == []


def test_redis_down_is_a_clear_error_naming_the_url_within_the_timeout(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"redis://:hunter2secret@127.0.0.1:{port}/0"
    memory = build_memory({"backend": "redis", "url": url, "timeout_s": 2}, tmp_path)
    with pytest.raises(RunnerError) as caught:
        _call(memory, lambda m: m.append("s", [{"role": "user", "content": "x"}]))
    message = str(caught.value)
    assert f"redis://:***@127.0.0.1:{port}/0" in message and "cannot reach" in message
    assert "hunter2secret" not in message


def test_a_silent_redis_is_bounded_by_the_timeout(tmp_path: Path) -> None:
    with socket.socket() as listener:  # accepts, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        memory = build_memory({"backend": "redis", "url": f"redis://127.0.0.1:{port}/0",
                               "timeout_s": 1}, tmp_path)
        with pytest.raises(RunnerError) as caught:
            _call(memory, lambda m: m.load("s"))
    assert f"127.0.0.1:{port}" in str(caught.value)


def test_a_wrong_or_missing_redis_password_is_a_clear_error(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "auth", password="right-password-1")
    try:
        for url in (server.url(password="wrong-password-1"), server.url()):
            memory = build_memory({"backend": "redis", "url": url, "timeout_s": 5}, tmp_path)
            with pytest.raises(RunnerError) as caught:
                _call(memory, lambda m: m.load("s"))
            message = str(caught.value)
            assert "password" in message and "wrong-password-1" not in message, message
        memory = build_memory({"backend": "redis", "url": server.url(
            password="right-password-1"), "timeout_s": 5}, tmp_path)
        assert _call(memory, lambda m: m.load("s")) == []
    finally:
        server.stop()


def test_a_redis_ttl_forgets_an_idle_session_and_renews_on_write(redis_server: Any,
                                                                 tmp_path: Path) -> None:
    import redis

    memory = build_memory({"backend": "redis", "url": redis_server.url(1), "ttl_s": 30},
                          tmp_path)
    raw = redis.Redis.from_url(redis_server.url(1))
    key = "runner:memory:ttl"

    async def body(m: Any) -> Any:
        await m.append("ttl", [{"role": "user", "content": "1"}])
        first = raw.pttl(key)
        assert 0 < first <= 30_000, first  # a TTL was set on the first write
        while raw.pttl(key) > first - 1500:  # let it run down a little (pttl falls: bounded)
            await asyncio.sleep(0.1)
        before = raw.pttl(key)
        await m.append("ttl", [{"role": "user", "content": "2"}])  # renews the 30 s
        return before, raw.pttl(key), await m.load("ttl")

    before, renewed, kept = _call(memory, body)
    assert 0 < before < renewed <= 30_000, (before, renewed)
    assert [x["content"] for x in kept] == ["1", "2"]
    raw.pexpire(key, 1)  # idle past its TTL: forgotten, and no longer listed
    memory = build_memory({"backend": "redis", "url": redis_server.url(1), "ttl_s": 30},
                          tmp_path)
    assert _call(memory, lambda m: m.load("ttl")) == []
    memory = build_memory({"backend": "redis", "url": redis_server.url(1)}, tmp_path)
    assert all(row["session"] != "ttl" for row in _call(memory, lambda m: m.sessions()))
    raw.close()


def test_a_redis_password_from_a_variable_is_masked_in_explain_and_errors(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pyproject.toml").touch()
    spec = tmp_path / "agent.yaml"
    spec.write_text("version: 1\nname: a\nmodel: {id: fake/echo}\nmemory: {backend: redis, "
                    "url: 'redis://:${REDIS_PASSWORD}@127.0.0.1:1/0', session: s, "
                    "timeout_s: 1}\n")
    env = {"REDIS_PASSWORD": "pw-that-must-not-show"}
    explained = run_cli("explain", str(spec), env=env)
    assert explained.returncode == 0 and "pw-that-must-not-show" not in explained.stdout
    done = run_cli("run", str(spec), "hi", env=env)
    assert done.returncode != 0
    assert "pw-that-must-not-show" not in done.stdout + done.stderr
    assert "redis://:***@127.0.0.1:1/0" in done.stderr, done.stderr


def test_an_agent_keeps_its_conversation_in_redis_across_processes(redis_server: Any,
                                                                   tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").touch()
    spec = tmp_path / "agent.yaml"
    spec.write_text("version: 1\nname: a\nmodel: {id: fake/echo}\n"
                    f"memory: {{backend: redis, url: '{redis_server.url(2)}', session: chat}}\n")
    for question in ("first question", "second question"):
        done = run_cli("run", str(spec), question, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    memory = build_memory({"backend": "redis", "url": redis_server.url(2)}, tmp_path / "m")
    turns = _call(memory, lambda m: m.load("chat"))
    assert [t["content"] for t in turns] == ["first question", "first question",
                                             "second question", "second question"]


def test_a_corrupted_redis_session_is_a_clear_error(redis_server: Any, tmp_path: Path) -> None:
    """Something else wrote the session's key (a string, not a list), or wrote junk into the
    list: a clear error for the first, the junk skipped for the second."""
    import redis

    raw = redis.Redis.from_url(redis_server.url(10))
    raw.set("runner:memory:clobbered", "not a list")
    raw.rpush("runner:memory:junk", "{not json", '{"role": "user", "content": "kept"}', "[1]")
    memory = build_memory({"backend": "redis", "url": redis_server.url(10)}, tmp_path)
    with pytest.raises(RunnerError) as caught:
        _call(memory, lambda m: m.load("clobbered"))
    assert f"127.0.0.1:{redis_server.port}/10" in str(caught.value)
    assert "WRONGTYPE" in str(caught.value)
    memory = build_memory({"backend": "redis", "url": redis_server.url(10)}, tmp_path)
    assert _call(memory, lambda m: m.load("junk")) == [{"role": "user", "content": "kept"}]
    raw.close()
