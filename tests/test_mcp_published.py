"""Published MCP servers as an agent's tools, each called through a real agent run on the
scripted `fake/` model: mcp-server-time, mcp-server-fetch and mcp-server-git from PyPI (the
test extras), and the MCP project's reference server from npm (install.sh puts it under the
cache folder) over stdio and over streamable HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, time, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import runner
from runner import events as ev

from conftest import ROOT, run_cli, tool_spec, wait_for

NPM_PREFIX = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache",
                  "yaml-agent-runner", "npm")
EVERYTHING_BIN = NPM_PREFIX / "node_modules" / ".bin" / "mcp-server-everything"
EVERYTHING_PACKAGE = (NPM_PREFIX / "node_modules" / "@modelcontextprotocol" / "server-everything"
                      / "package.json")


# ---------------------------------------------------------------------------- helpers


def _published(command: str) -> str:
    """The console script of a PyPI server, preferably the one beside this interpreter."""
    here = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(command, path=here)
    assert found, f"{command} is not installed: pip install -e '.[test]'"
    return found


def _action(tool: str, arguments: dict[str, Any]) -> str:
    return f"Thought: call {tool}\nAction: {tool}[{json.dumps(arguments)}]"


def _spec(folder: Path, entry: dict[str, Any], *calls: tuple[str, dict[str, Any]]) -> Path:
    """agent.yaml with the one MCP server `entry`, scripted to make `calls`, then answer."""
    return tool_spec(folder, "mcp", entry, [*(_action(t, a) for t, a in calls),
                                            "Final Answer: done"])


def _run(spec: Path, sinks: list[Any] | None = None) -> runner.RunResult:
    """One run of the spec's agent, which is closed after (its servers end with it)."""
    agent = runner.Agent(runner.load_spec(spec), sinks=sinks)
    try:
        result = asyncio.run(agent.run("q"))
    finally:
        asyncio.run(agent.close())
    assert result.ok, (result.status, result.error)
    return result


def _observations(result: runner.RunResult) -> list[str]:
    """What each tool call answered, in order (the last step is the final answer)."""
    steps = result.steps[:-1]
    assert all(s.observation is not None for s in steps), steps
    return [s.observation or "" for s in steps]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _holding(marker: str) -> list[list[str]]:
    """The command lines of the live processes that have `marker` among their arguments."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if marker in argv:
            found.append(argv)
    return found


# ---------------------------------------------------------------------------- mcp-server-time


def _time_server() -> dict[str, Any]:
    return {"name": "time", "command": _published("mcp-server-time"),
            "args": ["--local-timezone", "UTC"]}


def test_time_server_tells_the_current_time_in_the_asked_zone(tmp_path: Path) -> None:
    spec = _spec(tmp_path, _time_server(),
                 ("time__get_current_time", {"timezone": "UTC"}),
                 ("time__get_current_time", {"timezone": "Asia/Tokyo"}))
    before = datetime.now(timezone.utc).replace(microsecond=0)  # the server gives seconds
    observations = _observations(_run(spec))
    after = datetime.now(timezone.utc)
    for observation, zone in zip(observations, ("UTC", "Asia/Tokyo"), strict=True):
        told = json.loads(observation)
        assert told["timezone"] == zone
        moment = datetime.fromisoformat(told["datetime"])
        assert before <= moment <= after, (before, told, after)
        assert moment.utcoffset() == moment.astimezone(ZoneInfo(zone)).utcoffset()
        assert told["day_of_week"] == moment.strftime("%A")


@pytest.mark.parametrize("target", ["America/New_York", "Asia/Kathmandu"])
def test_time_server_converts_a_time_between_zones(tmp_path: Path, target: str) -> None:
    asked = time(23, 15)
    spec = _spec(tmp_path, _time_server(), ("time__convert_time", {
        "source_timezone": "UTC", "time": asked.strftime("%H:%M"), "target_timezone": target}))
    days = {datetime.now(timezone.utc).date()}  # the server converts the time of its today
    told = json.loads(_observations(_run(spec))[0])
    days.add(datetime.now(timezone.utc).date())
    source = datetime.fromisoformat(told["source"]["datetime"])
    converted = datetime.fromisoformat(told["target"]["datetime"])
    expected = {datetime.combine(d, asked, timezone.utc) for d in days}
    assert source in expected and source.utcoffset() == timedelta(0)
    assert told["target"]["timezone"] == target
    assert converted == source  # the same instant, read in the other zone
    local = source.astimezone(ZoneInfo(target))
    assert (converted.date(), converted.time(), converted.utcoffset()) == (
        local.date(), local.time(), local.utcoffset())
    offset = local.utcoffset() or timedelta(0)
    assert float(told["time_difference"].rstrip("h")) == offset.total_seconds() / 3600


# ---------------------------------------------------------------------------- mcp-server-fetch


class _Site(ThreadingHTTPServer):
    """Pages by path, served on 127.0.0.1; keeps every path asked for."""

    daemon_threads = True

    def __init__(self, pages: dict[str, tuple[str, str]]) -> None:
        super().__init__(("127.0.0.1", 0), _Page)
        self.pages = pages
        self.asked: list[str] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _Page(BaseHTTPRequestHandler):
    server: _Site

    def do_GET(self) -> None:
        self.server.asked.append(self.path)
        page = self.server.pages.get(self.path)
        body = (page[1] if page else "not here").encode()
        self.send_response(200 if page else 404)
        self.send_header("Content-Type", page[0] if page else "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def site() -> Iterator[tuple[_Site, str]]:
    """A site whose article holds a word made for this test; robots.txt keeps /private/."""
    word = f"tide{uuid.uuid4().hex[:8]}"
    article = f"""<!doctype html><html><head><title>Harbour notes</title></head><body>
<nav><a href="/">Home</a> | <a href="/about.html">About</a></nav>
<article><h1>Tides of the north harbour</h1>
<p>The north harbour sees two high tides a day, and the <strong>{word}</strong> comes
in a little later each day than the day before, as the moon moves on in its orbit.</p>
<h2>Spring and neap tides</h2>
<p>Twice a month the sun and the moon pull together, and the range between high and low
water is widest; a week later they pull at right angles and the range is narrowest.
Read the <a href="/boats.html">list of boats</a> before you set out.</p>
</article></body></html>"""
    server = _Site({"/robots.txt": ("text/plain", "User-agent: *\nDisallow: /private/\n"),
                    "/article.html": ("text/html; charset=utf-8", article),
                    "/private/ledger.html": ("text/html", "<p>the harbour's accounts</p>")})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, word
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _fetch_server(*args: str) -> dict[str, Any]:
    return {"name": "web", "command": _published("mcp-server-fetch"), "args": list(args)}


def test_fetch_server_gives_a_local_page_as_markdown(tmp_path: Path,
                                                     site: tuple[_Site, str]) -> None:
    server, word = site
    url = f"{server.url}/article.html"
    # loopback is refused unless allowed; robots.txt stays in force
    spec = _spec(tmp_path, _fetch_server("--allow-private-ips"), ("web__fetch", {"url": url}))
    result = _run(spec)
    observation = _observations(result)[0]
    assert not result.steps[0].error, observation
    assert observation.startswith(f"Contents of {url}:\n")
    assert f"**{word}**" in observation  # markdown, not HTML
    assert re.search(r"^## Spring and neap tides$", observation, re.M), observation
    assert re.search(r"\[list of boats\]\(\S*/boats\.html\)", observation), observation
    assert "<p>" not in observation and "<strong>" not in observation
    assert server.asked == ["/robots.txt", "/article.html"]


def test_fetch_server_keeps_to_robots_txt(tmp_path: Path, site: tuple[_Site, str]) -> None:
    server, _ = site
    url = f"{server.url}/private/ledger.html"
    result = _run(_spec(tmp_path, _fetch_server("--allow-private-ips"),
                        ("web__fetch", {"url": url})))
    assert result.steps[0].error
    assert "robots.txt" in _observations(result)[0]
    assert server.asked == ["/robots.txt"]  # the page itself was never asked for


def test_fetch_server_refuses_loopback_unless_allowed(tmp_path: Path,
                                                      site: tuple[_Site, str]) -> None:
    server, _ = site
    result = _run(_spec(tmp_path, _fetch_server("--ignore-robots-txt"),
                        ("web__fetch", {"url": f"{server.url}/article.html"})))
    assert result.steps[0].error
    assert "not a public address" in _observations(result)[0]
    assert server.asked == []


# ---------------------------------------------------------------------------- mcp-server-git


def _git(repo: Path, *args: str) -> str:
    """The test's own git, with an identity and no user or system configuration."""
    env = {**os.environ, "GIT_AUTHOR_NAME": "Tess Tester", "GIT_AUTHOR_EMAIL": "tess@example.org",
           "GIT_COMMITTER_NAME": "Tess Tester", "GIT_COMMITTER_EMAIL": "tess@example.org",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
    return subprocess.run(["git", "-C", str(repo), *args], env=env, check=True, text=True,
                          capture_output=True, timeout=60).stdout


def _repo(folder: Path, message: str) -> Path:
    """A repository with one commit of greeting.txt (`message`), then greeting.txt changed."""
    folder.mkdir()
    _git(folder, "init", "-q", "-b", "main")
    (folder / "greeting.txt").write_text("hello\n")
    _git(folder, "add", "greeting.txt")
    _git(folder, "commit", "-q", "-m", message)
    (folder / "greeting.txt").write_text("hello\nand welcome\n")
    return folder


def test_git_server_shows_status_diff_and_log_of_a_repository(tmp_path: Path) -> None:
    message = f"Add the greeting ({uuid.uuid4().hex[:8]})"
    repo = _repo(tmp_path / "repo", message)
    entry = {"name": "git", "command": _published("mcp-server-git"),
             "args": ["--repository", str(repo)]}
    result = _run(_spec(tmp_path / "project", entry,
                        ("git__git_status", {"repo_path": str(repo)}),
                        ("git__git_diff_unstaged", {"repo_path": str(repo)}),
                        ("git__git_log", {"repo_path": str(repo)})))
    status, diff, log = _observations(result)
    assert not any(s.error for s in result.steps), result.steps
    assert re.search(r"modified:\s+greeting\.txt", status), status
    assert "+and welcome" in diff and "-hello" not in diff
    assert message in log and "Tess Tester" in log
    assert _git(repo, "rev-parse", "HEAD").strip() in log


def test_git_server_refuses_a_repository_outside_its_own(tmp_path: Path) -> None:
    hidden = f"Hidden work ({uuid.uuid4().hex[:8]})"
    repo = _repo(tmp_path / "repo", "allowed")
    other = _repo(tmp_path / "other", hidden)
    entry = {"name": "git", "command": _published("mcp-server-git"),
             "args": ["--repository", str(repo)]}
    result = _run(_spec(tmp_path / "project", entry,
                        ("git__git_log", {"repo_path": str(other)})))
    observation = _observations(result)[0]
    assert result.steps[0].error
    assert "outside the allowed repository" in observation
    assert hidden not in observation


# ---------------------------------------------------------------------------- server-everything


def _pinned_version() -> str:
    found = re.search(r"^EVERYTHING_VERSION=(\S+)$", (ROOT / "install.sh").read_text(), re.M)
    assert found, "install.sh no longer pins EVERYTHING_VERSION"
    return found.group(1)


def _everything_bin() -> str:
    """The reference server's bin, as install.sh installs it: missing is a failure."""
    if not EVERYTHING_BIN.exists():
        pytest.fail(f"{EVERYTHING_BIN} is missing: run ./install.sh (it installs "
                    f"@modelcontextprotocol/server-everything from npm)")
    installed = json.loads(EVERYTHING_PACKAGE.read_text())["version"]
    if installed != _pinned_version():
        pytest.fail(f"server-everything {installed} is installed, install.sh pins "
                    f"{_pinned_version()}: run ./install.sh")
    return str(EVERYTHING_BIN)


@contextlib.contextmanager
def _everything_on_http(log: Path, port: int) -> Iterator[str]:
    """The reference server on streamable HTTP (`streamableHttp` serves /mcp on $PORT, on
    every interface: it takes no host), logging to `log`; its URL."""
    listening = log.read_text().count("listening on port") if log.exists() else 0
    with log.open("a") as out:
        proc = subprocess.Popen([_everything_bin(), "streamableHttp"], stdout=out, stderr=out,
                                stdin=subprocess.DEVNULL, env={**os.environ, "PORT": str(port)},
                                start_new_session=True)
    try:
        wait_for(lambda: proc.poll() is not None or
                 log.read_text().count("listening on port") > listening, 60,
                 "server-everything to listen")
        assert proc.poll() is None, log.read_text()
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture(scope="module")
def everything_http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The reference server on streamable HTTP, shared by this module's tests: URL and log."""
    log = tmp_path_factory.mktemp("everything") / "server.log"
    with _everything_on_http(log, _free_port()) as url:
        yield url, log


@pytest.fixture(params=["stdio", "http"])
def everything(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The reference server's spec entry, over stdio or over streamable HTTP."""
    if request.param == "stdio":
        return {"name": "ev", "command": _everything_bin(), "args": ["stdio"]}
    url, _ = request.getfixturevalue("everything_http")
    return {"name": "ev", "url": url}


def test_everything_tools_are_listed_as_the_model_gets_them(
        tmp_path: Path, everything: dict[str, Any]) -> None:
    spec = tool_spec(tmp_path, "mcp", everything)
    done = run_cli("tools", str(spec), "--json")
    assert done.returncode == 0, done.stderr
    rows = {r["name"]: r for r in json.loads(done.stdout)}
    assert {"ev__echo", "ev__get-sum", "ev__trigger-long-running-operation"} <= set(rows)
    assert all(r["mcp"]["server"] == "ev" and r["name"] == "ev__" + r["mcp"]["server_tool"]
               for r in rows.values())
    transport = rows["ev__echo"]["mcp"]["transport"]
    assert transport == (f"http {everything['url']}" if "url" in everything
                         else f"stdio {everything['command']} stdio")
    sums = rows["ev__get-sum"]
    assert sums["parameters"]["required"] == ["a", "b"]
    assert {k: v["type"] for k, v in sums["parameters"]["properties"].items()} == {
        "a": "number", "b": "number"}
    assert sums["mcp"]["annotations"]["readOnlyHint"] is True
    assert not (tmp_path / "agent.tools.lock").exists()  # only --lock writes one


def test_everything_echoes_and_adds(tmp_path: Path, everything: dict[str, Any]) -> None:
    message = f"ahoy, wörld {uuid.uuid4().hex[:6]} ✓"
    a, b = 2.25, -7
    result = _run(_spec(tmp_path, everything, ("ev__echo", {"message": message}),
                        ("ev__get-sum", {"a": a, "b": b})))
    echoed, summed = _observations(result)
    assert echoed == f"Echo: {message}"
    assert re.findall(r"-?\d+(?:\.\d+)?", summed)[-1] == f"{a + b:g}", summed


def test_everything_progress_arrives_as_tool_progress_events(
        tmp_path: Path, everything: dict[str, Any]) -> None:
    steps = 3
    events: list[ev.Event] = []
    result = _run(_spec(tmp_path, everything, ("ev__trigger-long-running-operation",
                                               {"duration": 0.3, "steps": steps})),
                  sinks=[events.append])
    assert "completed" in _observations(result)[0]
    progress = [e for e in events if isinstance(e, ev.ToolProgress)]
    assert [(e.tool, e.progress, e.total) for e in progress] == [
        ("ev__trigger-long-running-operation", float(n), float(steps))
        for n in range(1, steps + 1)]
    observed = next(i for i, e in enumerate(events) if isinstance(e, ev.Observed))
    assert max(events.index(e) for e in progress) < observed  # during the call, not after
    assert {e.run_id for e in progress} == {result.run_id}


def test_everything_call_cut_by_its_timeout_leaves_the_session_usable(
        tmp_path: Path, everything: dict[str, Any]) -> None:
    long = "ev__trigger-long-running-operation"
    entry = {**everything, "tools": {"trigger-long-running-operation": {"timeout_s": 4}}}
    events: list[ev.Event] = []
    result = _run(_spec(tmp_path, entry, (long, {"duration": 30, "steps": 30}),
                        (long, {"duration": 0.4, "steps": 4}), ("ev__echo", {"message": "on"})),
                  sinks=[events.append])
    cut, finished, echoed = _observations(result)
    assert result.steps[0].error and "timed out" in cut
    assert not result.steps[1].error and "Steps: 4" in finished
    assert echoed == "Echo: on"
    # the cut call's progress (total 30) never turns up in the next call's
    assert [(e.progress, e.total) for e in events
            if isinstance(e, ev.ToolProgress) and e.step == 2] == [(float(n), 4.0)
                                                                   for n in range(1, 5)]


def test_everything_offers_the_model_no_tool_it_cannot_call(tmp_path: Path) -> None:
    """simulate-research-query requires task augmentation (its `execution.taskSupport` is
    `required`), which the runner does not send: offered to the model, it can only fail."""
    tool = "ev__simulate-research-query"
    spec = _spec(tmp_path, {"name": "ev", "command": _everything_bin(), "args": ["stdio"]},
                 (tool, {"topic": "tides"}))
    agent = runner.Agent(runner.load_spec(spec))
    try:
        assert "ev__echo" in agent.tools  # the server's tools were listed
        assert tool not in agent.tools
    finally:
        asyncio.run(agent.close())


def test_everything_over_stdio_gets_only_the_safe_environment_and_its_env(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = f"sk-{uuid.uuid4().hex}"
    monkeypatch.setenv("RUNNER_TEST_SECRET", secret)
    entry = {"name": "ev", "command": _everything_bin(), "args": ["stdio"],
             "env": {"GREETING": "hello"}}
    environment = json.loads(_observations(_run(_spec(tmp_path, entry, ("ev__get-env", {}))))[0])
    assert environment["GREETING"] == "hello"
    assert "RUNNER_TEST_SECRET" not in environment and secret not in json.dumps(environment)
    assert environment["PATH"] == os.environ["PATH"]


def test_closing_the_agent_ends_the_stdio_server(tmp_path: Path) -> None:
    marker = f"mark-{uuid.uuid4().hex}"  # the server ignores arguments after its transport
    spec = _spec(tmp_path, {"name": "ev", "command": _everything_bin(),
                            "args": ["stdio", marker]}, ("ev__echo", {"message": "hi"}))
    agent = runner.Agent(runner.load_spec(spec))
    try:
        assert asyncio.run(agent.run("q")).ok
        running = _holding(marker)
        assert any(Path(argv[0]).name.startswith("node") for argv in running), running
    finally:
        asyncio.run(agent.close())
    wait_for(lambda: not _holding(marker), 30, "the server's processes to end")


def test_closing_the_agent_ends_its_http_session(tmp_path: Path,
                                                 everything_http: tuple[str, Path]) -> None:
    url, log = everything_http
    opened = log.read_text().count("Session initialized with ID:")
    spec = _spec(tmp_path, {"name": "ev", "url": url}, ("ev__echo", {"message": "hi"}))
    agent = runner.Agent(runner.load_spec(spec))
    try:
        assert asyncio.run(agent.run("q")).ok
        started = re.findall(r"Session initialized with ID: (\S+)", log.read_text())[opened:]
        assert len(started) == 1, log.read_text()
    finally:
        asyncio.run(agent.close())
    wait_for(lambda: f"Transport closed for session {started[0]}" in log.read_text(), 30,
             "the server to close the session")


def test_agent_recovers_when_the_http_server_restarts(tmp_path: Path) -> None:
    """A restarted server has forgotten the session. This one answers the old session id with
    400 (not the 404 the spec asks for): the agent must still get a new session, as it does
    after a 404 or a stdio server's death, at the latest by the call after the first failure."""
    port, log = _free_port(), tmp_path / "server.log"
    replies = [_action("ev__echo", {"message": "one"}), "Final Answer: done"] * 3
    spec = tool_spec(tmp_path, "mcp", {"name": "ev", "url": f"http://127.0.0.1:{port}/mcp"},
                     replies)
    agent = None
    try:
        with _everything_on_http(log, port):
            agent = runner.Agent(runner.load_spec(spec))
            first = asyncio.run(agent.run("q"))
        with _everything_on_http(log, port):  # the same address; the session is forgotten
            asyncio.run(agent.run("q"))  # may fail: the server never took the call
            third = asyncio.run(agent.run("q"))
    finally:
        if agent is not None:
            asyncio.run(agent.close())
    assert first.steps[0].observation == "Echo: one"
    assert (third.steps[0].error, third.steps[0].observation) == (False, "Echo: one")
    assert log.read_text().count("Session initialized with ID:") == 2, log.read_text()
