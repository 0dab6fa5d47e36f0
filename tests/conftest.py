"""Shared fixtures: the scripted OpenAI-compatible server, a CLI runner, and a guard that
makes any network connection other than to 127.0.0.1 fail."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import contextlib
from collections.abc import Iterator

import pytest
import yaml

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_MODE", "PRODUCTION")
for _key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "RUNNER_MODEL", "RUNNER_PLUGINS"):
    os.environ.pop(_key, None)

from runner.testing import ScriptedOpenAIServer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
_real_connect = socket.socket.connect


def _guarded_connect(self: socket.socket, address: Any) -> Any:
    if self.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise ConnectionRefusedError(f"tests may only connect to 127.0.0.1, not {host}")
    return _real_connect(self, address)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def openai_server() -> Any:
    server = ScriptedOpenAIServer().start()
    yield server
    server.stop()


@pytest.fixture
def server(openai_server: ScriptedOpenAIServer) -> ScriptedOpenAIServer:
    """The scripted server, emptied for this test."""
    openai_server.reset()
    return openai_server


@pytest.fixture
def scripted(server: ScriptedOpenAIServer) -> list[str]:
    """--set overrides that point a spec at the scripted server through LiteLLM."""
    return ["model.id=openai/scripted", f"model.api_base={server.url}"]


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts in its own temporary folder, so what a run writes relative to the
    current directory (`.runner/` traces, checkpoints, memory) never lands in the repository."""
    monkeypatch.chdir(tmp_path)


def run_cli(*args: str, cwd: Path | str | None = None, env: dict[str, str] | None = None,
            input: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run `python -m runner ARGS` in a subprocess, as a user would (in the test's own
    temporary folder unless `cwd` is given)."""
    full_env = {**os.environ, "OPENAI_API_KEY": "sk-test-not-a-real-key", **(env or {})}
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=cwd, env=full_env,
                          input=input, capture_output=True, text=True, timeout=timeout)


def wait_for(check: Any, timeout: float = 60, what: str = "") -> Any:
    """The first truthy value of `check()`, polled; a hang guard, not a speed check."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what or check}")


@pytest.fixture
def cli() -> Any:
    return run_cli


@contextlib.contextmanager
def tools_plugin(*tools: Any) -> Iterator[Any]:
    """Register `tools` through a real inline plugin for the duration of the block."""
    import runner

    class InlineTools:
        @runner.hookimpl
        def register_tools(self, register: Any) -> None:
            for t in tools:
                register(t)

    plugin = InlineTools()
    runner.register_plugin(plugin)
    try:
        yield plugin
    finally:
        runner.unregister_plugin(plugin)


def tool_spec(folder: Path, tool: str, entry: Any, replies: list[Any] | None = None,
              name: str = "tooled") -> Path:
    """A project (pyproject.toml) in `folder` whose agent.yaml has the one tool entry
    `{tool: entry}` and runs on the scripted `fake/` model with `replies`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text("")
    data = {"name": name,
            "model": {"id": "fake/script", "options": {"replies": replies or ["Final Answer: ok"]}},
            "loop": {"style": "react"}, "tools": [{tool: entry}], "memory": {"backend": "none"}}
    path = folder / "agent.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def built_tool(folder: Path, tool: str, entry: Any, name: str | None = None) -> Any:
    """The tool `name` (default: `tool`) as built for the spec entry `{tool: entry}`."""
    import runner

    agent = runner.Agent(runner.load_spec(tool_spec(folder, tool, entry)))
    return agent.tools[name or tool]


_REFRESH = """
import sys
from pathlib import Path
from {module} import {name}
open(sys.argv[3], "a").close()
while len(list(Path(sys.argv[4]).glob("ready*"))) < 2:  # both start together
    pass
print({name}(Path(sys.argv[1]), Path(sys.argv[2])).refresh(){field})
"""


def refresh_in_two_processes(index: str, folder: Path, db: Path, work: Path,
                             field: str = "") -> list[int]:
    """Two processes refresh the index class `index` ("module:Class") of `folder` into `db`
    at the same moment; returns what each refresh returned (its `field`, if named)."""
    module, name = index.split(":")
    code = _REFRESH.format(module=module, name=name, field=f".{field}" if field else "")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(folder), str(db),
                               str(work / f"ready{n}"), str(work)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for n in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    return [int(out) for out, _ in outs]


def sub_agent_project(folder: Path, server: ScriptedOpenAIServer, boss_extra: str = "") -> Path:
    """A project where agent `boss` hands a task to sub-agent `writer` (both on the scripted
    server, which is scripted for one delegation); returns boss.yaml."""
    (folder / "pyproject.toml").write_text("")
    (folder / "writer.yaml").write_text(
        "version: 1\nname: writer\ndescription: Writes one sentence.\nmemory: {backend: none}\n"
        f"loop: {{style: react}}\nmodel: {{id: openai/scripted, api_base: '{server.url}'}}\n")
    (folder / "boss.yaml").write_text(
        "version: 1\nname: boss\nmemory: {backend: none}\nloop: {style: react}\n"
        "tools:\n  - agent: writer.yaml\n" + boss_extra)
    server.script("Thought: delegate\nAction: writer[a line about cats]",
                  "Final Answer: Cats nap in the sun.",
                  "Final Answer: The writer says: Cats nap in the sun.")
    return folder / "boss.yaml"


class RedisServer:
    """A real redis-server (Debian's package, installed by install.sh) on a free port, its
    files in a temporary folder; `password` makes it require one."""

    def __init__(self, folder: Path, password: str | None = None) -> None:
        import shutil

        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed: run ./install.sh"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        folder.mkdir(parents=True, exist_ok=True)
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(folder), "--daemonize", "no"]
        if password:
            args += ["--requirepass", password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.password = password

        def up() -> bool:
            assert self.proc.poll() is None, "redis-server exited"
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(up, 30, "redis-server")

    def url(self, db: int = 0, password: str | None = None) -> str:
        auth = f":{password}@" if password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


FAKE_AGENTS = {
    # agents on the built-in fake models, served by the `runner serve` and `runner mcp` tests
    "adder": {"description": "Adds with the calculator.",
              "model": {"id": "fake/script", "options": {"replies": [
                  "Thought: add\nAction: calculator[2+3]", "Final Answer: 5"]}},
              "loop": {"style": "react"}, "tools": ["calculator"]},
    "echoer": {"description": "Repeats the question back.", "model": {"id": "fake/echo"}},
    "broken": {"description": "Always runs out of replies.",
               "model": {"id": "fake/script", "options": {"replies": []}}},
    "poem": {"kind": "chain", "description": "A line about a topic.",
             "model": {"id": "fake/echo"},
             "inputs": {"topic": {"description": "What it is about."},
                        "tone": {"description": "A word on tone.", "default": "calm"}},
             "prompt": {"text": "Question: {{ topic }} in a {{ tone }} tone"}},
    "counted": {"description": "Answers with a structured count.",
                "model": {"id": "fake/script", "options": {"replies": [
                    'Final Answer: {"count": 3}']}},
                "output": {"schema": {"type": "object", "required": ["count"],
                                      "properties": {"count": {"type": "integer"}}}}},
}


def write_agents(folder: Path, specs: dict[str, Any] = FAKE_AGENTS) -> Path:
    """Each spec as FOLDER/NAME.yaml (memory off), and an empty pyproject.toml beside the
    folder so the runner takes its parent as the project root."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder.parent / "pyproject.toml").write_text("")
    for name, body in specs.items():
        data = {"version": 1, "name": name, "memory": {"backend": "none"}, **body}
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return folder
