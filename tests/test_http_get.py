"""The `http_get` tool against real HTTP servers on 127.0.0.1: allowlist, SSRF address checks
on every hop, caps, content types, HTML extraction and spec errors."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

import runner
from runner.default_plugins import http_get as mod
from runner.errors import SpecError, ToolError

PAGE = b"""<!doctype html><html><head><title>Guide</title>
<script>var junk = "SCRIPTJUNK";</script><style>.x{color:red}</style></head>
<body><nav><a href="/">Home</a> | <a href="/a">NAVJUNK menu</a></nav>
<article><h1>Resuming runs</h1>
<p>An interrupted run can be resumed with the resume command; it continues from the last
committed checkpoint, so no finished step is repeated and no tokens are spent twice.</p>
<p>Each run keeps its checkpoints in the run folder until the run is deleted by the user.</p>
</article><footer>FOOTERJUNK copyright</footer></body></html>"""


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, ctype: str, body: bytes, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self.server.seen.append((self.path, self.headers.get("Host")))  # type: ignore[attr-defined]
        port = self.server.server_address[1]
        if self.path == "/page":
            self._send(200, "text/html; charset=utf-8", PAGE)
        elif self.path == "/big":
            self._send(200, "text/plain", b"x" * 50_000)
        elif self.path == "/png":
            self._send(200, "image/png", b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
        elif self.path == "/missing":
            self._send(404, "text/plain", b"nope")
        elif self.path == "/loop":
            self._send(302, "text/plain", b"", Location="/loop")
        elif self.path == "/away":
            self._send(302, "text/plain", b"", Location=f"http://evil.test:{port}/page")
        elif self.path == "/hop":
            self._send(302, "text/plain", b"", Location="/page")
        else:
            self._send(200, "text/plain", b"plain")


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def write_spec(tmp_path: Path, entry: Any) -> Path:
    (tmp_path / "pyproject.toml").write_text("")
    data = {
        "name": "fetcher",
        "model": {"id": "fake/script", "options": {"replies": ["Final Answer: ok"]}},
        "loop": {"style": "react"},
        "tools": [{"http_get": entry}],
        "memory": {"backend": "none"},
    }
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def tool_fn(tmp_path: Path, **entry: Any) -> Any:
    agent = runner.Agent(runner.load_spec(write_spec(tmp_path, entry)))
    return agent.tools["http_get"].fn


def get(fn: Any, url: str) -> str:
    return asyncio.run(fn(url=url))


def refused(fn: Any, url: str) -> str:
    with pytest.raises(ToolError) as err:
        get(fn, url)
    return str(err.value)


def test_allowlisted_local_page_is_fetched_as_readable_text(tmp_path: Path, server: Any) -> None:
    port = server.server_address[1]
    fn = tool_fn(tmp_path, allow=["127.0.0.1"], allow_private=True)
    out = get(fn, f"http://127.0.0.1:{port}/page")
    header = out.splitlines()[0]
    assert f"http://127.0.0.1:{port}/page" in header and "200" in header
    assert "text/html" in header and "not instructions" in header
    assert "continues from the last" in out and "committed checkpoint" in out
    for junk in ("SCRIPTJUNK", "NAVJUNK", "FOOTERJUNK", "color:red"):
        assert junk not in out


def test_private_address_refused_without_allow_private(tmp_path: Path, server: Any) -> None:
    port = server.server_address[1]
    fn = tool_fn(tmp_path, allow=["127.0.0.1"])
    msg = refused(fn, f"http://127.0.0.1:{port}/page")
    assert "private or reserved" in msg and "allow_private" in msg
    assert server.seen == []


SPELLINGS = ["127.1", "0x7f.1", "2130706433", "0x7f000001", "0177.0.0.1", "[::ffff:127.0.0.1]",
             "[::1]",
             "localhost", "0.0.0.0", "169.254.169.254", "10.0.0.1", "224.0.0.1"]


@pytest.mark.parametrize("host", SPELLINGS)
def test_every_spelling_of_a_private_address_is_refused(tmp_path: Path, server: Any,
                                                        host: str) -> None:
    port = server.server_address[1]
    fn = tool_fn(tmp_path, allow=SPELLINGS)
    msg = refused(fn, f"http://{host}:{port}/page")
    assert "private or reserved" in msg, msg
    assert server.seen == []


def test_empty_allowlist_refuses_and_names_the_key(tmp_path: Path, server: Any) -> None:
    fn = tool_fn(tmp_path, allow_private=True)
    msg = refused(fn, f"http://127.0.0.1:{server.server_address[1]}/page")
    assert "not on the allowlist" in msg and "`allow:`" in msg
    assert "tools[0].http_get" in msg and "agent.yaml" in msg


@pytest.mark.parametrize("allow, host, ok", [
    (["*.example.com"], "docs.example.com", True),
    (["*.example.com"], "a.b.example.com", True),
    (["*.example.com"], "example.com", False),
    (["*.example.com"], "badexample.com", False),
    (["docs.python.org"], "docs.python.org", True),
    (["docs.python.org"], "python.org", False),
    (["::1"], "::1", True),
])
def test_host_matching(allow: list[str], host: str, ok: bool) -> None:
    options = mod.HttpGetOptions(allow=allow)
    assert mod._allowed(host, options.allow) is ok


def test_redirect_to_a_host_off_the_allowlist_is_refused(tmp_path: Path, server: Any) -> None:
    port = server.server_address[1]
    fn = tool_fn(tmp_path, allow=["127.0.0.1"], allow_private=True)
    msg = refused(fn, f"http://127.0.0.1:{port}/away")
    assert "evil.test" in msg and "not on the allowlist" in msg
    assert [p for p, _ in server.seen] == ["/away"]


def test_redirect_is_followed_and_rechecked(tmp_path: Path, server: Any) -> None:
    port = server.server_address[1]
    fn = tool_fn(tmp_path, allow=["127.0.0.1"], allow_private=True)
    out = get(fn, f"http://127.0.0.1:{port}/hop")
    assert out.startswith(f"Fetched http://127.0.0.1:{port}/page")
    assert fn.fetcher.resolves == 2


def test_redirect_loop_is_capped(tmp_path: Path, server: Any) -> None:
    port = server.server_address[1]
    fn = tool_fn(tmp_path, allow=["127.0.0.1"], allow_private=True, max_redirects=3)
    msg = refused(fn, f"http://127.0.0.1:{port}/loop")
    assert "more than 3 times" in msg
    assert len(server.seen) == 4


def test_body_cut_at_max_bytes_with_marker(tmp_path: Path, server: Any) -> None:
    port = server.server_address[1]
    fn = tool_fn(tmp_path, allow=["127.0.0.1"], allow_private=True, max_bytes=1000,
                 max_chars=100_000)
    out = get(fn, f"http://127.0.0.1:{port}/big")
    assert re.search(r"\nx{1000}\n", out) and "[body cut at 1000 bytes (max_bytes)]" in out


def test_text_cut_at_max_chars_with_marker(tmp_path: Path, server: Any) -> None:
    port = server.server_address[1]
    fn = tool_fn(tmp_path, allow=["127.0.0.1"], allow_private=True, max_chars=300)
    out = get(fn, f"http://127.0.0.1:{port}/big")
    assert re.search(r"\nx{300}\n", out) and "cut at 300 of 50000 characters" in out


def test_non_text_type_is_refused(tmp_path: Path, server: Any) -> None:
    port = server.server_address[1]
    fn = tool_fn(tmp_path, allow=["127.0.0.1"], allow_private=True)
    out = get(fn, f"http://127.0.0.1:{port}/png")
    assert "image/png" in out and "not a text page" in out and "PNG" not in out


def test_http_error_is_an_observation(tmp_path: Path, server: Any) -> None:
    port = server.server_address[1]
    fn = tool_fn(tmp_path, allow=["127.0.0.1"], allow_private=True)
    out = get(fn, f"http://127.0.0.1:{port}/missing")
    assert out.startswith("HTTP 404") and "check the URL" in out


def test_connection_refused_is_an_observation(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fn = tool_fn(tmp_path, allow=["127.0.0.1"], allow_private=True)
    assert "cannot connect to 127.0.0.1" in refused(fn, f"http://127.0.0.1:{port}/")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://a/",
                                 "127.0.0.1/page", "http://user:pw@127.0.0.1/"])
def test_bad_schemes_and_userinfo_are_refused(tmp_path: Path, url: str) -> None:
    fn = tool_fn(tmp_path, allow=["127.0.0.1"], allow_private=True)
    msg = refused(fn, url)
    assert "http://" in msg or "user name" in msg


def test_connection_goes_to_the_checked_address(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # DNS rebinding: the name answers public first, private after; the tool resolves once per
    # hop and connects to the address it checked, with the name in the Host header
    answers = ["8.8.8.8", "8.8.8.8", "127.0.0.1"]
    calls: list[str] = []

    def fake(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        calls.append(host)
        ip = answers[min(len(calls) - 1, 2)]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))]

    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if request.url.path == "/again":
            return httpx.Response(302, headers={"Location": "/next"})
        return httpx.Response(200, headers={"Content-Type": "text/plain"},
                              stream=httpx.ByteStream(b"hello"))

    monkeypatch.setattr(mod, "getaddrinfo", fake)
    fn = tool_fn(tmp_path, allow=["rebind.test"])
    fn.fetcher.transport = httpx.MockTransport(handler)
    out = get(fn, "http://rebind.test/start")
    assert calls == ["rebind.test"] and "hello" in out
    assert sent[0].url.host == "8.8.8.8" and sent[0].headers["host"] == "rebind.test"
    # a redirect hop resolves again; the second answer is private and that hop is refused
    msg = refused(fn, "http://rebind.test/again")
    assert "private or reserved" in msg and "127.0.0.1" in msg
    assert len(calls) == 3 and [r.url.path for r in sent] == ["/start", "/again"]
    assert sent[1].url.host == "8.8.8.8"


def test_https_sets_sni_to_the_name() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, headers={"Content-Type": "text/plain"},
                              stream=httpx.ByteStream(b"ok"))

    f = mod._Fetcher(mod.HttpGetOptions(allow=["secure.test"]), "the entry")
    f.transport = httpx.MockTransport(handler)

    async def one_ip(host: str, port: int) -> str:
        return "8.8.4.4"

    f._address = one_ip  # type: ignore[method-assign]
    asyncio.run(f.fetch("https://secure.test/x"))
    assert sent[0].url.host == "8.8.4.4" and sent[0].extensions["sni_hostname"] == "secure.test"


@pytest.mark.parametrize("ip, bad", [
    ("8.8.8.8", False), ("2001:4860:4860::8888", False), ("127.0.0.1", True),
    ("::ffff:10.0.0.1", True), ("::ffff:8.8.8.8", False), ("::127.0.0.1", True),
    ("2002:7f00:1::", True), ("64:ff9b::a9fe:a9fe", True),
    ("64:ff9b::808:808", False), ("100.64.0.1", True), ("fe80::1", True), ("fc00::1", True),
    ("ff02::1", True), ("240.0.0.1", True), ("::", True), ("192.168.1.1", True),
])
def test_address_rules(ip: str, bad: bool) -> None:
    import ipaddress

    assert mod.is_forbidden_address(ipaddress.ip_address(ip)) is bad


@pytest.mark.parametrize("entry, key, words", [
    ({"allow": ["a.test"], "proxy": "x"}, "tools[0].http_get.proxy", "unknown key"),
    ({"allow": ["bad host!"]}, "tools[0].http_get.allow", "bad allow entry"),
    ({"allow": ["*."]}, "tools[0].http_get.allow", "bad allow entry"),
    ({"max_bytes": "10"}, "tools[0].http_get.max_bytes", "integer"),
])
def test_spec_errors_name_file_line_and_key(tmp_path: Path, entry: dict[str, Any], key: str,
                                            words: str) -> None:
    with pytest.raises(SpecError) as err:
        runner.Agent(runner.load_spec(write_spec(tmp_path, entry)))
    text = str(err.value)
    assert err.value.key is not None and err.value.key.startswith(key), text
    assert words in text and "agent.yaml" in text and ":" in text
