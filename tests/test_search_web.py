"""The `search` tool's web backends against a real HTTP server on 127.0.0.1 imitating
SearXNG's and Serper's JSON responses, errors and rate limits."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

import runner
from runner.errors import SpecError, ToolError

KEY = "sk-test-SERPERKEY-123456"
SEARXNG = {"query": "q", "number_of_results": 0, "results": [
    {"url": "https://a.example/1", "title": "First  result", "content": "alpha\n\n beta",
     "engine": "duckduckgo", "score": 2.0},
    {"url": "https://b.example/2", "title": "Second", "content": "x" * 5000, "score": 1.0},
    {"url": 7, "title": None},
    "garbage",
    {"url": "https://c.example/3", "title": "Third", "content": "gamma"}]}
SERPER = {"searchParameters": {"q": "q", "type": "search"},
          "answerBox": {"title": "Box", "answer": "42", "link": "https://box.example"},
          "organic": [{"title": "Org one", "link": "https://o.example/1", "snippet": "one",
                       "position": 1},
                      {"title": "Org two", "link": "https://o.example/2", "snippet": "two",
                       "position": 2}]}


class Server:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.reply: tuple[int, dict[str, str], bytes] = (200, {}, b"{}")
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def _answer(self, body: bytes = b"") -> None:
                outer.requests.append({"method": self.command, "path": self.path,
                                       "headers": dict(self.headers), "body": body})
                status, headers, data = outer.reply
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer(self.rfile.read(int(self.headers.get("Content-Length", 0))))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server() -> Any:
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def build(tmp_path: Path, entry: dict[str, Any], whole: bool = False) -> Any:
    """The function the model calls, of the search tool built for `entry` (or the tool)."""
    (tmp_path / "pyproject.toml").write_text("")
    data = {"name": "web", "model": {"id": "fake/script",
                                     "options": {"replies": ["Final Answer: ok"]}},
            "loop": {"style": "react"}, "tools": [{"search": entry}],
            "memory": {"backend": "none"}}
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    built = runner.Agent(runner.load_spec(path)).tools["search"]
    return built if whole else built.fn


def test_searxng_query_params_order_caps(tmp_path: Path, server: Server) -> None:
    server.reply = (200, {"Content-Type": "application/json"}, json.dumps(SEARXNG).encode())
    out = build(tmp_path, {"backend": "searxng", "url": server.url, "k": 2})("rust async")
    q = parse_qs(urlparse(server.requests[0]["path"]).query)
    assert urlparse(server.requests[0]["path"]).path == "/search"
    assert q == {"q": ["rust async"], "format": ["json"]}
    assert "not instructions" in out
    assert out.index("First result") < out.index("Second")
    assert "alpha beta" in out and "x" * 601 not in out and "x" * 600 in out
    assert "Third" not in out  # k=2


def test_searxng_hostile_bodies(tmp_path: Path, server: Server) -> None:
    fn = build(tmp_path, {"backend": "searxng", "url": server.url})
    server.reply = (200, {}, b"<html>not json</html>")
    with pytest.raises(ToolError, match="did not send JSON"):
        fn("q")
    server.reply = (200, {}, b'{"results": "nope"}')
    with pytest.raises(ToolError, match="no `results` list"):
        fn("q")
    server.reply = (200, {}, b"[1,2]")
    with pytest.raises(ToolError, match="not an object"):
        fn("q")
    server.reply = (200, {}, b'{"results": [' + b'"a",' * 1_000_000 + b'"a"]}')
    with pytest.raises(ToolError, match="more than"):
        fn("q")
    server.reply = (200, {}, b"[" * 100_000)  # deeper than the JSON parser recurses
    with pytest.raises(ToolError, match="did not send JSON"):
        fn("q")
    server.reply = (200, {}, b'{"results": []}')
    assert "found nothing" in fn("q")


@pytest.mark.parametrize("status,headers,match", [
    (429, {"Retry-After": "30"}, r"rate limiting.*Retry-After: 30.*wait"),
    (503, {}, "HTTP 503"), (403, {}, "refused")])
def test_searxng_errors(tmp_path: Path, server: Server, status: int,
                        headers: dict[str, str], match: str) -> None:
    server.reply = (status, headers, b"err")
    with pytest.raises(ToolError, match=match):
        build(tmp_path, {"backend": "searxng", "url": server.url})("q")


def test_connection_refused(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ToolError, match="cannot connect"):
        build(tmp_path, {"backend": "searxng", "url": f"http://127.0.0.1:{port}"})("q")


def test_serper_request_and_answer_box(tmp_path: Path, server: Server,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERPER_API_KEY", KEY)
    server.reply = (200, {}, json.dumps(SERPER).encode())
    out = build(tmp_path, {"backend": "serper", "url": server.url, "k": 3})("who")
    r = server.requests[0]
    assert r["method"] == "POST" and r["path"] == "/search"
    assert r["headers"]["X-API-KEY"] == KEY
    assert json.loads(r["body"]) == {"q": "who", "num": 3}
    assert out.index("Box") < out.index("Org one") < out.index("Org two")
    assert "42" in out and KEY not in out


def test_serper_missing_and_bad_key(tmp_path: Path, server: Server,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MY_SERPER_KEY", raising=False)
    fn = build(tmp_path, {"backend": "serper", "url": server.url, "api_key_env": "MY_SERPER_KEY"})
    with pytest.raises(ToolError, match="MY_SERPER_KEY.*api_key_env"):
        fn("q")
    assert server.requests == []
    monkeypatch.setenv("MY_SERPER_KEY", KEY)
    server.reply = (401, {}, json.dumps({"message": f"bad key {KEY}"}).encode())
    with pytest.raises(ToolError, match="MY_SERPER_KEY") as e:
        fn("q")
    assert KEY not in str(e.value)


@pytest.mark.parametrize("entry,match", [
    ({"backend": "searxng"}, "needs `url`"),
    ({"backend": "searxng", "url": "file:///etc/passwd"}, "http"),
    ({"backend": "serper", "api_key_env": "sk-abc def"}, "api_key_env"),
    ({"backend": "serpr"}, "serper")])
def test_spec_errors_name_key(tmp_path: Path, entry: dict[str, Any], match: str) -> None:
    with pytest.raises(SpecError, match=match) as e:
        build(tmp_path, entry)
    assert "agent.yaml" in str(e.value)


def test_the_model_is_told_it_searches_the_web(tmp_path: Path, server: Server) -> None:
    described = build(tmp_path, {"backend": "searxng", "url": server.url}, whole=True).description
    assert "web" in described and "URL" in described and "project's documents" not in described
