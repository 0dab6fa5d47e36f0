"""`runner mcp FOLDER`: agents served as MCP tools, over stdio and streamable HTTP, checked
with the SDK's own client and with the runner's client (an agent calling agents over MCP)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import runner
from conftest import FAKE_AGENTS, run_cli, wait_for, write_agents

def stdio_params(folder: Path, *extra: str) -> Any:
    from mcp.client.stdio import StdioServerParameters

    return StdioServerParameters(command=sys.executable,
                                 args=["-m", "runner", "mcp", str(folder), *extra],
                                 cwd=str(folder.parent), env=dict(os.environ))


async def _session(target: Any, body: Any) -> Any:
    from mcp import Client

    async with Client(target) as client:
        return await body(client)


def with_client(target: Any, body: Any) -> Any:
    return asyncio.run(asyncio.wait_for(_session(target, body), 120))


def test_the_sdk_client_lists_every_agent_with_its_description_and_arguments(
        tmp_path: Path) -> None:
    folder = write_agents(tmp_path / "agents")

    async def body(client: Any) -> Any:
        return {t.name: t for t in (await client.list_tools()).tools}

    tools = with_client(stdio_params(folder), body)
    assert set(tools) == set(FAKE_AGENTS)
    assert tools["adder"].description == "Adds with the calculator."
    assert tools["adder"].input_schema["required"] == ["input"]
    poem = tools["poem"].input_schema
    assert set(poem["properties"]) == {"topic", "tone"}
    assert poem["required"] == ["topic"]  # tone has a default
    assert tools["counted"].output_schema["required"] == ["count"]


def test_a_call_runs_the_agent_and_sends_each_step_as_progress(tmp_path: Path) -> None:
    folder = write_agents(tmp_path / "agents")
    progress: list[tuple[float, str | None]] = []

    async def body(client: Any) -> Any:
        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            progress.append((value, message))

        added = await client.call_tool("adder", {"input": "what is 2+3?"},
                                       progress_callback=on_progress)
        echoed = await client.call_tool("echoer", {"input": "hello there"})
        poem = await client.call_tool("poem", {"topic": "rain"})
        counted = await client.call_tool("counted", {"input": "count"})
        return added, echoed, poem, counted

    added, echoed, poem, counted = with_client(stdio_params(folder), body)
    assert not added.is_error and added.content[0].text == "5"
    assert [m for _, m in progress] == ["step 1: calculator answered", "step 2: final answer"]
    assert [v for v, _ in progress] == sorted({v for v, _ in progress})  # strictly growing
    assert echoed.content[0].text == "hello there"
    assert "rain in a calm tone" in poem.content[0].text
    assert counted.structured_content == {"count": 3}


def test_a_failed_run_or_bad_arguments_are_error_results(tmp_path: Path) -> None:
    folder = write_agents(tmp_path / "agents")

    async def body(client: Any) -> Any:
        return (await client.call_tool("broken", {"input": "x"}),
                await client.call_tool("echoer", {"question": "x"}),
                await client.call_tool("nobody", {"input": "x"}))

    broken, bad, unknown = with_client(stdio_params(folder), body)
    assert broken.is_error and "broken ended with" in broken.content[0].text
    assert bad.is_error and "'input' is a required property" in bad.content[0].text
    assert unknown.is_error and "no agent named 'nobody'" in unknown.content[0].text


def test_bases_and_test_files_are_not_served_and_bad_specs_stop_the_server(
        tmp_path: Path) -> None:
    folder = write_agents(tmp_path / "agents", {
        "base": {"model": {"id": "fake/echo"}},  # only a base: extended, no description
        "child": {"extends": "base.yaml", "description": "a child"},
        "grandchild": {"extends": "child.yaml", "description": "a child's child"}})
    (folder / "child.test.yaml").write_text("spec: child.yaml\ncases: []\n")
    # a spec in a subfolder whose name is taken is served by its path
    write_agents(folder / "team", {"child": {"model": {"id": "fake/echo"},
                                             "description": "the team's own"}})

    async def body(client: Any) -> Any:
        return sorted(t.name for t in (await client.list_tools()).tools)

    # child is extended by grandchild, but has a description: an agent, not only a base
    assert with_client(stdio_params(folder), body) == ["child", "grandchild", "team.child"]
    for f in (folder / "team").iterdir():
        f.unlink()
    (folder / "team").rmdir()

    write_agents(folder, {"twin": {"name": "child", "model": {"id": "fake/echo"}},
                          "typo": {"model": {"id": "fake/echo"}, "tools": ["calculater"]}})
    done = run_cli("mcp", str(folder), cwd=tmp_path, input="")
    assert done.returncode == 2
    assert "typo.yaml" in done.stderr and "did you mean 'calculator'" in done.stderr
    assert "agent name 'child' is also the name of" in done.stderr


def test_runs_keep_their_state_in_the_served_project_wherever_the_client_starts_it(
        tmp_path: Path) -> None:
    folder = write_agents(tmp_path / "project" / "agents", {"echoer": FAKE_AGENTS["echoer"]})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    params = stdio_params(folder)
    params.cwd = str(elsewhere)

    async def body(client: Any) -> Any:
        return await client.call_tool("echoer", {"input": "hi"})

    assert with_client(params, body).content[0].text == "hi"
    assert list((tmp_path / "project" / ".runner" / "traces").glob("*.jsonl"))
    assert not (elsewhere / ".runner").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_http(folder: Path, port: int, env: dict[str, str] | None = None) -> Any:
    proc = subprocess.Popen([sys.executable, "-m", "runner", "mcp", str(folder), "--http",
                             f"127.0.0.1:{port}"], cwd=folder.parent,
                            env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)

    def up() -> bool:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_for(up, 60, "the MCP HTTP server")
    return proc


def test_streamable_http_serves_the_same_tools(tmp_path: Path) -> None:
    folder = write_agents(tmp_path / "agents")
    port = _free_port()
    proc = _serve_http(folder, port)
    try:
        async def body(client: Any) -> Any:
            names = [t.name for t in (await client.list_tools()).tools]
            return names, await client.call_tool("adder", {"input": "2+3?"})

        names, added = with_client(f"http://127.0.0.1:{port}/mcp", body)
        assert "adder" in names and added.content[0].text == "5"
    finally:
        proc.kill()
        proc.wait()


def test_http_beyond_loopback_needs_a_token_and_a_token_is_checked(tmp_path: Path) -> None:
    folder = write_agents(tmp_path / "agents", {"echoer": FAKE_AGENTS["echoer"]})
    env = {k: v for k, v in os.environ.items() if k != "RUNNER_MCP_TOKEN"}
    refused = subprocess.run([sys.executable, "-m", "runner", "mcp", str(folder), "--http",
                              f"0.0.0.0:{_free_port()}"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "RUNNER_MCP_TOKEN" in refused.stderr

    port = _free_port()
    proc = _serve_http(folder, port, {"RUNNER_MCP_TOKEN": "tok-123"})
    try:
        import httpx

        bare = httpx.post(f"http://127.0.0.1:{port}/mcp", json={})
        assert bare.status_code == 401

        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client

        async def authorised() -> Any:
            from mcp import Client

            async with create_mcp_http_client(
                    headers={"Authorization": "Bearer tok-123"}) as http:
                async with Client(streamable_http_client(f"http://127.0.0.1:{port}/mcp",
                                                         http_client=http)) as client:
                    return await client.call_tool("echoer", {"input": "hi"})

        assert asyncio.run(asyncio.wait_for(authorised(), 60)).content[0].text == "hi"
    finally:
        proc.kill()
        proc.wait()


def test_an_agent_calls_served_agents_through_the_runners_own_client(tmp_path: Path) -> None:
    folder = write_agents(tmp_path / "team")
    boss = tmp_path / "boss.yaml"
    boss.write_text(yaml.safe_dump({
        "version": 1, "name": "boss", "memory": {"backend": "none"}, "loop": {"style": "react"},
        "model": {"id": "fake/script", "options": {"replies": [
            "Thought: delegate\nAction: team__adder[what is 2+3?]",
            "Thought: and\nAction: team__broken[x]", "Final Answer: it is 5"]}},
        "tools": [{"mcp": {"name": "team", "command": sys.executable,
                           "args": ["-m", "runner", "mcp", str(folder)]}}]}))

    async def main() -> Any:
        async with runner.Agent(runner.load_spec(boss)) as agent:
            return await agent.run("add 2 and 3")

    result = asyncio.run(main())
    assert result.ok and result.answer == "it is 5"
    assert result.steps[0].observation == "5" and not result.steps[0].error
    assert result.steps[1].error and "broken ended with" in result.steps[1].observation


@pytest.mark.parametrize("flag", ["--http", "--http=nohost"])
def test_a_bad_http_address_is_a_usage_error(tmp_path: Path, flag: str) -> None:
    folder = write_agents(tmp_path / "agents", {"echoer": FAKE_AGENTS["echoer"]})
    args = ["mcp", str(folder), *(flag.split("=") if "=" in flag else [flag, "8931"])]
    done = run_cli(*args, cwd=tmp_path)
    assert done.returncode == 2 and "HOST:PORT" in done.stderr
