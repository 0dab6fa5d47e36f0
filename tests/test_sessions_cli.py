"""`runner sessions`: list, show and delete conversations, in .runner/memory.db (what
`--session` uses) or in a spec's own memory backend (Redis here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import run_cli


def _spec(folder: Path, memory: str = "") -> Path:
    (folder / "pyproject.toml").touch()
    spec = folder / "chat.yaml"
    spec.write_text("version: 1\nname: chat\nmodel: {id: fake/echo}\n" + memory)
    return spec


def test_sessions_lists_shows_and_deletes_the_default_store(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    for session, question in (("alpha", "hello there"), ("beta", "one"), ("beta", "two")):
        done = run_cli("run", str(spec), "--session", session, question, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    listed = run_cli("sessions", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = {r["session"]: r for r in json.loads(listed.stdout)}
    assert {k: v["messages"] for k, v in rows.items()} == {"alpha": 2, "beta": 4}
    table = run_cli("sessions", cwd=tmp_path).stdout
    assert table.splitlines()[0].split() == ["SESSION", "MESSAGES", "LAST", "USED"]
    shown = run_cli("sessions", "show", "beta", cwd=tmp_path)
    assert shown.stdout.splitlines() == ["user: one", "assistant: one", "user: two",
                                         "assistant: two"]
    removed = run_cli("sessions", "rm", "alpha", cwd=tmp_path)
    assert removed.returncode == 0 and "2 messages" in removed.stderr
    left = json.loads(run_cli("sessions", "--json", cwd=tmp_path).stdout)
    assert [r["session"] for r in left] == ["beta"]
    missing = run_cli("sessions", "show", "alpha", cwd=tmp_path)
    assert missing.returncode == 2 and "no session 'alpha'" in missing.stderr
    assert run_cli("sessions", "rm", "nobody", cwd=tmp_path).returncode == 2


def test_sessions_of_a_spec_with_redis_memory(redis_server: Any, tmp_path: Path) -> None:
    spec = _spec(tmp_path, f"memory: {{backend: redis, url: '{redis_server.url(3)}', "
                           f"prefix: 'cli-test:'}}\n")
    done = run_cli("run", str(spec), "--session", "r1", "in redis", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    listed = json.loads(run_cli("sessions", "--spec", str(spec), "--json", cwd=tmp_path).stdout)
    assert [(r["session"], r["messages"]) for r in listed] == [("r1", 2)]
    shown = run_cli("sessions", "--spec", str(spec), "show", "r1", cwd=tmp_path).stdout
    assert shown.splitlines() == ["user: in redis", "assistant: in redis"]
    assert not (tmp_path / ".runner" / "memory.db").exists()  # nothing went to SQLite
    assert run_cli("sessions", "--spec", str(spec), "rm", "r1", cwd=tmp_path).returncode == 0
    assert json.loads(run_cli("sessions", "--spec", str(spec), "--json",
                              cwd=tmp_path).stdout) == []
