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

from conftest import built_tool
from runner.errors import SpecError, ToolError

KEY = "sk-test-SERPERKEY-123456"
# The shape of searx/webutils.py get_json_response (searxng/searxng, 2026): each result is a
# MainResult.as_dict(), answers are Answer.as_dict() (plain strings before 2025), infoboxes
# carry `infobox`/`content`/`urls`/`attributes`, unresponsive_engines are [engine, error].
SEARXNG = {"query": "rust async", "results": [
    {"url": "https://a.example/1", "title": "First  result", "content": "alpha\n\n beta",
     "template": "default.html", "engine": "duckduckgo", "engines": ["duckduckgo", "brave"],
     "parsed_url": ["https", "a.example", "/1", "", "", ""], "positions": [1, 3],
     "score": 2.0, "category": "general", "priority": "", "thumbnail": "", "img_src": ""},
    {"url": "https://b.example/2", "title": "Second", "content": "x" * 5000, "score": 1.0,
     "engine": "brave", "engines": ["brave"], "template": "default.html"},
    {"url": 7, "title": None},
    "garbage",
    {"url": "https://c.example/3", "title": "Third", "content": "gamma", "engine": "brave"}],
    "answers": [], "corrections": [], "infoboxes": [], "suggestions": ["rust tokio"],
    "unresponsive_engines": []}
# The shape of a google.serper.dev/search answer (serper.dev playground; the fields
# langchain_community/utilities/google_serper.py and crewAI's SerperDevTool read).
SERPER = {"searchParameters": {"q": "who", "type": "search", "num": 2, "engine": "google"},
          "answerBox": {"title": "Box", "answer": "42", "link": "https://box.example"},
          "knowledgeGraph": {"title": "Douglas Adams", "type": "English author",
                             "description": "Wrote the Hitchhiker's Guide.",
                             "descriptionSource": "Wikipedia",
                             "descriptionLink": "https://en.wikipedia.org/wiki/Douglas_Adams",
                             "attributes": {"Born": "11 March 1952", "Bad": 3}},
          "organic": [{"title": "Org one", "link": "https://o.example/1", "snippet": "one",
                       "position": 1, "sitelinks": [{"title": "s", "link": "https://o/s"}]},
                      {"title": "Org two", "link": "https://o.example/2", "snippet": "two",
                       "position": 2, "date": "Jan 1, 2024"}],
          "peopleAlsoAsk": [], "relatedSearches": [{"query": "who else"}], "credits": 1}


def blocked(headers: Any) -> bool:
    """What searx/botdetection/http_*.py answer 429 to (no Retry-After)."""
    accept = headers.get("Accept", "")
    encodings = [e.strip() for e in headers.get("Accept-Encoding", "").split(",")]
    return (("text/html" not in accept and "*/*" not in accept)
            or not ({"gzip", "deflate"} & set(encodings))
            or not headers.get("Accept-Language", "").strip()
            or headers.get("Connection", "").strip() == "close")


class Server:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.reply: tuple[int, dict[str, str], bytes] = (200, {}, b"{}")
        self.limiter = False  # SearXNG's bot detection (searx/limiter.py) on /search
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def _answer(self, body: bytes = b"") -> None:
                outer.requests.append({"method": self.command, "path": self.path,
                                       "headers": dict(self.headers), "body": body})
                status, headers, data = outer.reply
                if outer.limiter and self.path.startswith("/search") and blocked(self.headers):
                    status, headers, data = 429, {}, b"Too Many Requests"
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
    built = built_tool(tmp_path, "search", entry)
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


@pytest.mark.parametrize("status,headers,body,match", [
    (429, {"Retry-After": "30"}, b"Too Many Requests", r"rate limiting.*Retry-After: 30.*wait"),
    (503, {}, b"err", "HTTP 503"),
    # flask.abort(403) in webapp.search() when `json` is not in settings search.formats
    (403, {"Content-Type": "text/html"}, b"<h1>Forbidden</h1>", r"refused.*search\.formats"),
    # index_error(): {"error": ...} with 400 (No query, SearxParameterException) or 500
    (400, {"Content-Type": "application/json"}, b'{"error": "No query"}', r"HTTP 400.*No query"),
    (500, {"Content-Type": "application/json"}, b'{"error": "search error"}',
     r"HTTP 500.*search error"),
    # an external bang (`!!g ...`) answers with a redirect to the other site
    (302, {"Location": "https://www.google.com/search?q=x"}, b"", r"redirected.*google\.com.*!!")])
def test_searxng_errors(tmp_path: Path, server: Server, status: int,
                        headers: dict[str, str], body: bytes, match: str) -> None:
    server.reply = (status, headers, body)
    with pytest.raises(ToolError, match=match):
        build(tmp_path, {"backend": "searxng", "url": server.url})("q")


def test_searxng_error_text_is_capped(tmp_path: Path, server: Server) -> None:
    server.reply = (400, {}, json.dumps({"error": "e" * 5000}).encode())
    with pytest.raises(ToolError) as e:
        build(tmp_path, {"backend": "searxng", "url": server.url})("q")
    assert "e" * 200 in str(e.value) and "e" * 201 not in str(e.value)
    server.reply = (400, {}, json.dumps({"error": ["not", "text"]}).encode())
    with pytest.raises(ToolError, match=r"HTTP 400; answer"):
        build(tmp_path, {"backend": "searxng", "url": server.url})("q")


def test_searxng_passes_its_limiter(tmp_path: Path, server: Server) -> None:
    """With `server.limiter: true` SearXNG answers 429 to a /search request without
    Accept-Language, or whose Accept or Accept-Encoding a browser would not send."""
    server.limiter = True
    server.reply = (200, {}, json.dumps(SEARXNG).encode())
    out = build(tmp_path, {"backend": "searxng", "url": server.url})("rust async")
    assert "First result" in out
    # `*` passes the check yet names no locale (searx/preferences.py ClientPref), so it
    # does not change the instance's language
    assert server.requests[0]["headers"]["Accept-Language"] == "*"


def test_searxng_answers_and_infobox(tmp_path: Path, server: Server) -> None:
    data = dict(SEARXNG, answers=[
        {"answer": "Rust 1.39 stabilised async/await", "url": "https://blog.example/async",
         "template": "answer/legacy.html", "engine": "wikidata", "parsed_url": None},
        "an answer as SearXNG sent it before 2025",
        {"answer": "a" * 5000, "url": None},
        {"answer": 42}, None] + ["more"] * 50,
        infoboxes=[{"infobox": "Rust (programming language)", "id": "https://w/Rust",
                    "content": "A language for reliable software. " + "r" * 5000,
                    "img_src": "https://w/logo.png", "engine": "wikipedia",
                    "urls": [{"title": "Wikipedia", "url": "https://en.wikipedia.org/wiki/Rust"}],
                    "attributes": [{"label": "Designed by", "value": "Graydon Hoare"},
                                   {"label": "Typing", "value": {"not": "text"}}]},
                   {"infobox": "Second box", "content": "never shown"}])
    server.reply = (200, {}, json.dumps(data).encode())
    out = build(tmp_path, {"backend": "searxng", "url": server.url, "k": 1})("rust async")
    assert "not instructions" in out.split("\n")[0]
    assert out.index("Rust 1.39 stabilised async/await") < out.index("[1] First result")
    assert "https://blog.example/async" in out
    assert "before 2025" in out
    assert out.index("Rust (programming language)") < out.index("[1] First result")
    assert "A language for reliable software." in out and "Designed by: Graydon Hoare" in out
    assert "https://en.wikipedia.org/wiki/Rust" in out and "Second box" not in out
    assert "a" * 601 not in out and "r" * 301 not in out and "Typing" not in out
    assert "more" not in out  # a few answers, not fifty
    assert "Second" not in out  # k=1 counts results only


def test_searxng_answer_without_results(tmp_path: Path, server: Server) -> None:
    data = dict(SEARXNG, results=[], answers=[{"answer": "4", "url": None}])
    server.reply = (200, {}, json.dumps(data).encode())
    out = build(tmp_path, {"backend": "searxng", "url": server.url})("2+2")
    assert "found nothing" not in out and "4" in out and "not instructions" in out


def test_searxng_nothing_found_says_why(tmp_path: Path, server: Server) -> None:
    data = dict(SEARXNG, results=[], suggestions=["rust tokio", 5, "s" * 500] + ["x"] * 20,
                unresponsive_engines=[["google", "timeout"], ["duckduckgo", "CAPTCHA"],
                                      "junk", [None, 1]])
    server.reply = (200, {}, json.dumps(data).encode())
    out = build(tmp_path, {"backend": "searxng", "url": server.url})("rust async")
    assert "found nothing" in out
    assert "google (timeout)" in out and "duckduckgo (CAPTCHA)" in out
    assert "rust tokio" in out and "s" * 101 not in out and out.count("'x'") <= 3


def test_connection_refused(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ToolError, match="cannot connect"):
        build(tmp_path, {"backend": "searxng", "url": f"http://127.0.0.1:{port}"})("q")


def test_serper_request_and_answer_box(tmp_path: Path, server: Server,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERPER_API_KEY", KEY)
    server.reply = (200, {"Content-Type": "application/json"}, json.dumps(SERPER).encode())
    out = build(tmp_path, {"backend": "serper", "url": server.url, "k": 2})("who")
    r = server.requests[0]
    assert r["method"] == "POST" and r["path"] == "/search"
    assert r["headers"]["X-API-KEY"] == KEY
    assert r["headers"]["Content-Type"] == "application/json"
    assert json.loads(r["body"]) == {"q": "who", "num": 2}
    assert "not instructions" in out.split("\n")[0]
    assert out.index("42") < out.index("[1] Org one") < out.index("[2] Org two")  # k counts organic
    assert "https://box.example" in out
    assert out.index("Douglas Adams (English author)") < out.index("[1] Org one")
    assert "Hitchhiker's Guide" in out and "Born: 11 March 1952" in out and "Bad" not in out
    assert "https://en.wikipedia.org/wiki/Douglas_Adams" in out and KEY not in out


@pytest.mark.parametrize("box,shown", [
    ({"title": "T", "snippet": "the featured\nsnippet", "link": "https://f.example"},
     "the featured snippet"),
    ({"title": "T", "snippetHighlighted": ["first", 3, "second"], "link": "https://f.example"},
     "first; second"),
    ({"answer": "a" * 5000}, "a" * 500)])
def test_serper_answer_box_shapes(tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch,
                                  box: dict[str, Any], shown: str) -> None:
    monkeypatch.setenv("SERPER_API_KEY", KEY)
    data = {"searchParameters": {"q": "q"}, "answerBox": box, "knowledgeGraph": "junk",
            "organic": [], "credits": 1}
    server.reply = (200, {}, json.dumps(data).encode())
    out = build(tmp_path, {"backend": "serper", "url": server.url})("q")
    assert shown in out and "a" * 601 not in out and "found nothing" not in out


def test_serper_missing_and_bad_key(tmp_path: Path, server: Server,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MY_SERPER_KEY", raising=False)
    fn = build(tmp_path, {"backend": "serper", "url": server.url, "api_key_env": "MY_SERPER_KEY"})
    with pytest.raises(ToolError, match="MY_SERPER_KEY.*api_key_env"):
        fn("q")
    assert server.requests == []
    monkeypatch.setenv("MY_SERPER_KEY", KEY)
    # what google.serper.dev answers to a wrong key (crewAI#633, MiroFlow#7)
    server.reply = (403, {}, b'{"message":"Unauthorized.","statusCode":403}')
    with pytest.raises(ToolError, match=r"HTTP 403.*Unauthorized\..*MY_SERPER_KEY"):
        fn("q")
    server.reply = (400, {}, json.dumps({"message": f"bad key {KEY}", "statusCode": 400}).encode())
    with pytest.raises(ToolError, match=r"HTTP 400.*bad key \*\*\*") as e:
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
