"""MCP servers' lives, on real processes and the real SDK server (tests/mcp_servers/faulty.py):
no process of a server's tree outlives its agent, however the agent or the runner ends; slow,
mute, noisy and crashing servers; streamable HTTP reconnecting; one session for many runs."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

import runner
from conftest import ROOT, tool_spec, wait_for
from runner.errors import ToolServerError

FAULTY = ROOT / "tests" / "mcp_servers" / "faulty.py"
ADD = 'Action: f__add[{"a": 2, "b": 3}]'
CRASH = "Action: f__crash[{}]"
DONE = "Final Answer: ok"
GONE_S = 30.0
"""How long a tree may take to go: a hang guard, not a speed check."""


# ---------------------------------------------------------------------------- helpers


def entry(name: str, mode: str, state: Path, **extra: Any) -> dict[str, Any]:
    """The `mcp:` entry of a faulty.py server started over stdio in `mode`."""
    state.mkdir(parents=True, exist_ok=True)
    return {"name": name, "command": sys.executable,
            "args": [str(FAULTY), "--mode", mode, "--state", str(state)], **extra}


def agent_yaml(folder: Path, entries: list[dict[str, Any]], replies: list[str]) -> Path:
    """A project whose agent has one `mcp:` tools entry per server (tool_spec takes one)."""
    path = tool_spec(folder, "mcp", entries[0], replies)
    data = yaml.safe_load(path.read_text())
    data["tools"] = [{"mcp": e} for e in entries]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie has ended; only its entry is left)."""
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (ProcessLookupError, FileNotFoundError):
        return False
    except PermissionError:
        return True
    return stat[stat.rfind(b")") + 2:].split()[0] != b"Z"


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return int(stat[stat.rfind(b")") + 2:].split()[1])


def server_pids(state: Path) -> list[int]:
    """Every pid the server of `state` wrote, one per start."""
    path = state / "server.pid"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def tree(state: Path) -> dict[str, int]:
    """The live server's tree: its guard, the server itself and its grandchild (if any)."""
    server = wait_for(lambda: server_pids(state), what=f"{state}/server.pid")[-1]
    found = {"guard": parent_of(server), "server": server}
    with open(f"/proc/{found['guard']}/cmdline", "rb") as f:
        assert b"_process_guard.py" in f.read()  # the server really runs under the guard
    if (state / "grandchild.pid").exists():
        found["grandchild"] = int((state / "grandchild.pid").read_text().split()[-1])
    assert all(alive(pid) for pid in found.values()), found
    return found


def strays(folder: Path) -> list[int]:
    """Live processes whose command line names `folder` (guards and servers of this test)."""
    mark = str(folder).encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if mark in f.read() and alive(int(name)):
                    found.append(int(name))
        except OSError:
            continue
    return found


def assert_gone(pids: dict[str, int] | list[int], folder: Path | None = None) -> None:
    named = pids if isinstance(pids, dict) else {str(p): p for p in pids}
    wait_for(lambda: not [n for n, p in named.items() if alive(p)], GONE_S,
             what=f"the end of {named} (alive: {[n for n, p in named.items() if alive(p)]})")
    if folder is not None:
        wait_for(lambda: not strays(folder), GONE_S, what=f"the end of {strays(folder)}")


def observations(result: Any) -> list[tuple[str | None, str | None, bool]]:
    return [(s.action, s.observation, s.error) for s in result.steps if s.action]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_server(port: int, state: Path, flag: str = "--http") -> subprocess.Popen[bytes]:
    """faulty.py serving streamable HTTP (or SSE: `--sse`) on `port`, once it accepts
    connections."""
    state.mkdir(parents=True, exist_ok=True)
    log = open(state / "stderr.log", "ab")
    proc = subprocess.Popen([sys.executable, str(FAULTY), flag, str(port), "--mode",
                             "normal", "--state", str(state)],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    log.close()

    def accepting() -> bool:
        assert proc.poll() is None, (state / "stderr.log").read_text()
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
        except OSError:
            return False
        return True

    wait_for(accepting, 60, what=f"the HTTP server on port {port}")
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(30)


# ---------------------------------------------------------------------------- no orphans


@pytest.mark.parametrize("mode", ["grandchild", "exit-on-stdin-close"])
def test_closing_the_agent_ends_the_whole_tree(tmp_path: Path, mode: str) -> None:
    state = tmp_path / "state"
    spec = tool_spec(tmp_path, "mcp", entry("f", mode, state), [ADD, DONE])

    async def go() -> tuple[Any, dict[str, int]]:
        agent = runner.Agent(runner.load_spec(spec))
        try:
            result = await agent.run("add")
            return result, tree(state)
        finally:
            await agent.close()

    result, pids = asyncio.run(go())
    assert result.ok, result.error
    assert observations(result) == [("f__add", "5", False)]
    assert "add 2 3" in (state / "calls.log").read_text()
    assert_gone(pids, tmp_path)


def test_runner_killed_with_sigkill_leaves_no_process(tmp_path: Path) -> None:
    state = tmp_path / "state"
    tool_spec(tmp_path, "mcp", entry("f", "grandchild", state),
              ['Action: f__slow[{"seconds": 30}]', DONE])
    out = open(tmp_path / "runner.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "runner", "run", "agent.yaml", "q"],
                            cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    out.close()
    try:
        def slow_started() -> bool:
            assert proc.poll() is None, (tmp_path / "runner.log").read_text()
            log = state / "calls.log"
            return (state / "grandchild.pid").exists() and log.exists() and \
                "slow" in log.read_text()

        wait_for(slow_started, 120, what="the slow call to reach the server")
        pids = tree(state)
        assert parent_of(pids["guard"]) == proc.pid
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        assert_gone(pids, tmp_path)  # (bench/mcp_bench.py counts the survivors after 2 s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


SCRIPT = """
import sys
import runner

def main():
    agent = runner.Agent(runner.load_spec("agent.yaml"))
    print(sorted(agent.tools)[0], flush=True)
    sys.stdin.readline()  # the test has looked at the tree; return without agent.close()

main()
"""


def test_runner_exiting_without_close_leaves_no_process(tmp_path: Path) -> None:
    state = tmp_path / "state"
    tool_spec(tmp_path, "mcp", entry("f", "grandchild", state))
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=tmp_path, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        first = proc.stdout.readline()
        assert first == "f__add\n", (first, proc.stderr.read() if proc.poll() is not None
                                     else "")
        pids = tree(state)
        _, err = proc.communicate("\n", timeout=60)
        assert proc.returncode == 0, err
        assert_gone(pids, tmp_path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def test_a_failed_build_leaks_no_server(tmp_path: Path) -> None:
    good, mute = tmp_path / "good", tmp_path / "mute"
    spec = agent_yaml(tmp_path, [entry("f", "grandchild", good),
                                 # long enough for the good server to start on a busy machine
                                 entry("m", "mute", mute, start_timeout_s=15)], [DONE])
    seen: dict[str, Any] = {}

    def watch() -> None:
        # the good server's tree, looked at while the mute one holds the build up
        try:
            wait_for(lambda: (good / "grandchild.pid").exists(), what="the good server")
            seen.update(tree(good))
        except BaseException as exc:
            seen["error"] = exc

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with pytest.raises(ToolServerError) as caught:
        runner.Agent(runner.load_spec(spec))
    watcher.join(60)
    message = str(caught.value)
    assert "'m'" in message and "agent.yaml" in message and "tools[1]" in message, message
    assert "'f'" not in message, message
    assert set(seen) == {"guard", "server", "grandchild"}, seen
    assert_gone(seen, tmp_path)


def test_a_failed_build_closes_the_servers_of_sub_agents_built_before(tmp_path: Path) -> None:
    """The sub-agent's server started while the parent was built; a later entry of the
    parent fails; the sub-agent's tree ends too."""
    good, mute = tmp_path / "good", tmp_path / "mute"
    sub = tmp_path / "sub" / "agent.yaml"
    tool_spec(sub.parent, "mcp", entry("f", "grandchild", good), [DONE], name="sub")
    spec = agent_yaml(tmp_path, [entry("m", "mute", mute, start_timeout_s=3)], [DONE])
    data = yaml.safe_load(spec.read_text())
    data["tools"].insert(0, {"agent": "sub/agent.yaml"})
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ToolServerError):
        runner.Agent(runner.load_spec(spec))
    assert server_pids(good), "the sub-agent's server never started"
    assert (good / "grandchild.pid").exists()
    pids = {"server": server_pids(good)[-1],
            "grandchild": int((good / "grandchild.pid").read_text().split()[-1])}
    assert_gone(pids, tmp_path)


# ---------------------------------------------------------------------------- odd servers


def test_a_mute_server_fails_within_its_start_timeout(tmp_path: Path) -> None:
    spec = tool_spec(tmp_path, "mcp", entry("m", "mute", tmp_path / "state",
                                            start_timeout_s=2))
    with pytest.raises(ToolServerError) as caught:
        runner.Agent(runner.load_spec(spec))
    message = str(caught.value)
    assert "MCP server 'm'" in message and "did not answer within 2s" in message, message
    assert "agent.yaml" in message, message
    assert_gone([], tmp_path)


def test_a_noisy_server_still_works(tmp_path: Path) -> None:
    state = tmp_path / "state"
    spec = tool_spec(tmp_path, "mcp", entry("f", "noisy", state), [ADD, DONE])

    async def go() -> Any:
        async with runner.Agent(runner.load_spec(spec)) as agent:
            return await agent.run("add")

    result = asyncio.run(go())
    assert result.ok, result.error
    assert observations(result) == [("f__add", "5", False)]
    assert_gone(server_pids(state), tmp_path)


def test_a_crashed_server_restarts_once_per_success(tmp_path: Path) -> None:
    state = tmp_path / "state"
    # two runs, so that no run repeats one action often enough to trip loop detection
    spec = tool_spec(tmp_path, "mcp", entry("f", "normal", state),
                     [CRASH, ADD, DONE, CRASH, CRASH, ADD, DONE])

    async def go() -> tuple[Any, Any, list[int]]:
        async with runner.Agent(runner.load_spec(spec)) as agent:
            first = await agent.run("crash then add")
            pids_after_first = server_pids(state)
            second = await agent.run("crash twice")
            return first, second, pids_after_first

    first, second, pids_after_first = asyncio.run(go())
    (crash, crashed, e1), (add, added, e2) = observations(first)
    assert (crash, e1) == ("f__crash", True) and "MCP server 'f'" in crashed, crashed
    assert "started again for the next call" in crashed, crashed
    assert (add, added, e2) == ("f__add", "5", False)
    assert len(pids_after_first) == 2  # the add ran on a new server

    # the add succeeded, so the next crash earns a restart; the one after it does not
    (_, again, e3), (_, down, e4), (add, refused, e5) = observations(second)
    assert e3 and "started again for the next call" in again, again
    assert e4 and "MCP server 'f'" in down, down
    assert "had been restarted already and is not started again" in down, down
    assert add == "f__add" and e5 and "MCP server 'f'" in refused, refused
    assert "is down" in refused and "not started again" in refused, refused
    assert len(server_pids(state)) == 3  # refused without starting a fourth
    assert (state / "calls.log").read_text().split("\n").count("crash") == 3
    assert_gone(server_pids(state), tmp_path)


# ---------------------------------------------------------------------------- HTTP


def test_streamable_http_reconnects_after_the_server_comes_back(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    spec = tool_spec(tmp_path, "mcp", {"name": "h", "url": url},
                     ['Action: h__add[{"a": 2, "b": 3}]', DONE,
                      'Action: h__add[{"a": 4, "b": 5}]', DONE,
                      'Action: h__add[{"a": 6, "b": 7}]', DONE])
    servers = [http_server(port, tmp_path / "http1")]
    try:
        async def go() -> list[Any]:
            async with runner.Agent(runner.load_spec(spec)) as agent:
                assert {"h__add", "h__echo", "h__slow"} <= set(agent.tools)
                results = [await agent.run("before")]
                stop(servers[0])
                results.append(await agent.run("while down"))
                servers.append(http_server(port, tmp_path / "http2"))
                results.append(await agent.run("after"))
                return results

        before, down, after = asyncio.run(go())
        assert observations(before) == [("h__add", "5", False)]
        [(_, failed, error)] = observations(down)
        assert error and "MCP server 'h'" in failed, failed
        assert observations(after) == [("h__add", "13", False)], observations(after)
        assert (tmp_path / "http2" / "calls.log").read_text() == "add 6 7\n"
    finally:
        for proc in servers:
            stop(proc)


def test_the_older_sse_transport_works_when_asked_for(tmp_path: Path) -> None:
    port = free_port()
    spec = tool_spec(tmp_path, "mcp", {"name": "s", "url": f"http://127.0.0.1:{port}/sse",
                                        "transport": "sse"},
                     ['Action: s__add[{"a": 20, "b": 22}]', DONE])
    server = http_server(port, tmp_path / "sse", "--sse")
    try:
        async def go() -> Any:
            async with runner.Agent(runner.load_spec(spec)) as agent:
                return await agent.run("add")

        assert observations(asyncio.run(go())) == [("s__add", "42", False)]
        assert (tmp_path / "sse" / "calls.log").read_text() == "add 20 22\n"
    finally:
        stop(server)


def test_streamable_http_survives_a_restart_between_calls(tmp_path: Path) -> None:
    port = free_port()
    spec = tool_spec(tmp_path, "mcp", {"name": "h", "url": f"http://127.0.0.1:{port}/mcp"},
                     ['Action: h__add[{"a": 2, "b": 3}]', DONE,
                      'Action: h__add[{"a": 6, "b": 7}]', DONE])
    servers = [http_server(port, tmp_path / "http1")]
    try:
        async def go() -> list[Any]:
            async with runner.Agent(runner.load_spec(spec)) as agent:
                results = [await agent.run("before")]
                stop(servers[0])
                servers.append(http_server(port, tmp_path / "http2"))
                results.append(await agent.run("after"))
                return results

        before, after = asyncio.run(go())
        assert observations(before) == [("h__add", "5", False)]
        # the new server does not know the old session: the runner opens a new one
        assert observations(after) == [("h__add", "13", False)], observations(after)
    finally:
        for proc in servers:
            stop(proc)


# ---------------------------------------------------------------------------- sessions


def test_one_session_serves_many_runs(tmp_path: Path) -> None:
    state = tmp_path / "state"
    spec = tool_spec(tmp_path, "mcp", entry("f", "normal", state), [ADD, DONE, ADD, DONE])

    async def go() -> list[Any]:
        async with runner.Agent(runner.load_spec(spec)) as agent:
            return [await agent.run("one"), await agent.run("two")]

    results = asyncio.run(go())
    assert [observations(r) for r in results] == [[("f__add", "5", False)]] * 2
    assert len(server_pids(state)) == 1
    assert (state / "calls.log").read_text() == "add 2 3\nadd 2 3\n"
    assert_gone(server_pids(state), tmp_path)


def test_four_servers_all_start(tmp_path: Path) -> None:
    states = [tmp_path / f"state{n}" for n in range(4)]
    spec = agent_yaml(tmp_path, [entry(f"s{n}", "normal", s) for n, s in enumerate(states)],
                      [DONE])

    async def go() -> tuple[list[str], list[list[int]]]:
        async with runner.Agent(runner.load_spec(spec)) as agent:
            pids = [server_pids(s) for s in states]
            assert all(alive(p) for [p] in pids), pids
            return sorted(t for t in agent.tools if t.endswith("__add")), pids

    tools, pids = asyncio.run(go())
    assert tools == ["s0__add", "s1__add", "s2__add", "s3__add"]
    assert len({p for [p] in pids}) == 4
    assert_gone([p for [p] in pids], tmp_path)
