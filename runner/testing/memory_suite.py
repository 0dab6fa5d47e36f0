"""The conformance suite every memory backend passes, the built-in ones and a plugin's alike.

A backend is named the way a spec names it, by its `memory:` mapping, so the same store can
be built again in another process (two writers, a writer killed mid-write):

    from runner.testing.memory_suite import CASES, run_case

    @pytest.mark.parametrize("case", CASES)
    def test_my_backend(case, tmp_path):
        run_case(case, {"backend": "mine", "dsn": "..."}, tmp_path)

`run_case` raises AssertionError with what went wrong. The backend must be installed (its
plugin registered) in the test's process and in the processes the cases start.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["CASES", "IN_PROCESS", "run_case", "build_memory"]

Case = Callable[[dict[str, Any], Path], None]


def build_memory(memory: dict[str, Any], folder: Path) -> Any:
    """The Memory a spec with this `memory:` mapping gets (through the installed plugins)."""
    import yaml

    from ..resolve import resolve
    from ..spec import load_spec

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").touch()
    path = folder / "memory-suite.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "name": "memory-suite",
                                    "model": {"id": "fake/echo"}, "memory": memory}))
    return resolve(load_spec(path)).memory()


def _session(folder: Path, name: str) -> str:
    """A session name of this test's own, so a shared server (Redis) keeps tests apart."""
    return f"{name}-{abs(hash(str(folder))) % 10**8}"


def _with(memory: dict[str, Any], folder: Path, body: Any) -> Any:
    async def go() -> Any:
        store = build_memory(memory, folder)
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(go())


def append_and_read_back(memory: dict[str, Any], folder: Path) -> None:
    s = _session(folder, "basic")
    turns = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]

    async def body(store: Any) -> Any:
        await store.append(s, turns[:1])
        await store.append(s, turns[1:])
        return await store.load(s), await store.load(s + "-other")

    got, other = _with(memory, folder, body)
    assert got == turns, got
    assert other == [], other
    # and in a store opened afresh (a new process would see the same)
    assert _with(memory, folder, lambda store: store.load(s)) == turns


def window(memory: dict[str, Any], folder: Path) -> None:
    s = _session(folder, "window")

    async def body(store: Any) -> Any:
        await store.append(s, [{"role": "user", "content": str(i)} for i in range(10)])
        return await store.load(s, 3), await store.load(s, 100)

    last3, every = _with(memory, folder, body)
    assert [m["content"] for m in last3] == ["7", "8", "9"], last3
    assert len(every) == 10


def clear(memory: dict[str, Any], folder: Path) -> None:
    s, kept = _session(folder, "clear"), _session(folder, "kept")

    async def body(store: Any) -> Any:
        await store.append(s, [{"role": "user", "content": "forget me"}])
        await store.append(kept, [{"role": "user", "content": "keep me"}])
        listed = {row["session"]: row for row in await store.sessions()}
        await store.clear(s)
        return listed, await store.load(s), await store.load(kept), \
            {row["session"] for row in await store.sessions()}

    listed, gone, other, after = _with(memory, folder, body)
    assert listed[s]["messages"] == 1 and listed[kept]["messages"] == 1, listed
    assert isinstance(listed[s]["last_used"], (int, float)), listed
    assert gone == [] and other == [{"role": "user", "content": "keep me"}]
    assert s not in after and kept in after, after


def unicode_and_large(memory: dict[str, Any], folder: Path) -> None:
    s = _session(folder, "big")
    texts = ["naïve café — 東京 🚀 \u202e rtl", "\x00 nul and \x1b escape", "x" * 2_000_000,
             '{"role": "system"}', "line\nbreaks\r\nand\ttabs"]

    async def body(store: Any) -> Any:
        await store.append(s, [{"role": "user", "content": t} for t in texts])
        return await store.load(s)

    got = _with(memory, folder, body)
    assert [m["content"] for m in got] == texts
    assert all(m["role"] == "user" for m in got)


_WRITER = textwrap.dedent("""
    import asyncio, json, sys
    from pathlib import Path
    from runner.testing.memory_suite import build_memory

    memory, folder, session, tag, count = json.loads(sys.argv[1])

    async def main():
        store = build_memory(memory, Path(folder))
        print("ready", flush=True)
        for i in range(count):
            await store.append(session, [{"role": "user", "content": f"{tag}-{i}-q"},
                                         {"role": "assistant", "content": f"{tag}-{i}-a"}])
        await store.close()

    asyncio.run(main())
""")


def _writer(memory: dict[str, Any], folder: Path, session: str, tag: str,
            count: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _WRITER,
                             json.dumps([memory, str(folder), session, tag, count])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=folder)


def two_process_writers(memory: dict[str, Any], folder: Path) -> None:
    s = _session(folder, "pair")
    folder.mkdir(parents=True, exist_ok=True)
    writers = [_writer(memory, folder, s, tag, 200) for tag in ("a", "b")]
    for w in writers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
    got = [m["content"] for m in _with(memory, folder, lambda store: store.load(s))]
    assert len(got) == 800, len(got)
    for tag in ("a", "b"):  # each writer's turns whole, in its order, none lost
        mine = [c for c in got if c.startswith(tag + "-")]
        assert mine == [f"{tag}-{i}-{r}" for i in range(200) for r in "qa"], mine[:6]
    for i in range(0, 800, 2):  # a turn's two messages are never split by the other writer
        assert got[i].endswith("-q") and got[i + 1] == got[i][:-1] + "a", got[i:i + 2]


def killed_mid_write(memory: dict[str, Any], folder: Path) -> None:
    s = _session(folder, "killed")
    folder.mkdir(parents=True, exist_ok=True)
    w = _writer(memory, folder, s, "k", 1_000_000)
    assert w.stdout is not None and w.stdout.readline().strip() == "ready", w.stderr
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # until a few turns are in
        if len(_with(memory, folder, lambda store: store.load(s, 10))) >= 10:
            break
        time.sleep(0.05)
    os.kill(w.pid, signal.SIGKILL)
    w.wait(30)
    got = [m["content"] for m in _with(memory, folder, lambda store: store.load(s))]
    assert len(got) >= 10 and len(got) % 2 == 0, len(got)  # whole turns only
    assert got == [f"k-{i}-{r}" for i in range(len(got) // 2) for r in "qa"], got[-4:]

    async def more(store: Any) -> Any:  # and the store still takes writes
        await store.append(s, [{"role": "user", "content": "after"}])
        return await store.load(s, 1)

    assert _with(memory, folder, more) == [{"role": "user", "content": "after"}]


CASES: dict[str, Case] = {
    "append_and_read_back": append_and_read_back,
    "window": window,
    "clear": clear,
    "unicode_and_large": unicode_and_large,
    "two_process_writers": two_process_writers,
    "killed_mid_write": killed_mid_write,
}
"""Every case by name; each takes the backend's `memory:` mapping and a folder of its own."""
IN_PROCESS = ("append_and_read_back", "window", "clear", "unicode_and_large")
"""The cases for a backend that lives in one process (`buffer`): no second process sees it."""


def run_case(name: str, memory: dict[str, Any], folder: Path) -> None:
    """Run one case of the suite against the backend `memory` names."""
    CASES[name](memory, folder)
