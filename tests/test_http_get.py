"""The `http_get` tool against real HTTP servers on 127.0.0.1: allowlist, SSRF address checks
on every hop, caps, content types, HTML extraction and spec errors."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme

import runner
from conftest import built_tool, tool_spec
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


BOMB = gzip.compress(b"a" * 50_000_000, compresslevel=9)


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
        elif self.path == "/gzip":  # sent compressed although the tool asks for identity
            self._send(200, "text/html", gzip.compress(PAGE), **{"Content-Encoding": "gzip"})
        elif self.path == "/bomb":  # 50 MB of text in about 50 KB
            self._send(200, "text/plain", BOMB, **{"Content-Encoding": "gzip"})
        elif self.path == "/brotli":
            self._send(200, "text/plain", b"\x0b\x02\x80hi\x03", **{"Content-Encoding": "br"})
        elif self.path == "/trickle":  # a byte at a time, never done
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            with contextlib.suppress(OSError):
                for _ in range(600):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.1)
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


def tool_fn(tmp_path: Path, **entry: Any) -> Any:
    return built_tool(tmp_path, "http_get", entry).fn


def fetch_local(tmp_path: Path, server: Any, path: str, **entry: Any) -> str:
    """What http_get, allowed to the local server, returns for `path` on it."""
    fn = tool_fn(tmp_path, allow=["127.0.0.1"], allow_private=True, **entry)
    return get(fn, f"http://127.0.0.1:{server.server_address[1]}{path}")


def get(fn: Any, url: str) -> str:
    return asyncio.run(fn(url=url))


def refused(fn: Any, url: str) -> str:
    with pytest.raises(ToolError) as err:
        get(fn, url)
    return str(err.value)


def test_allowlisted_local_page_is_fetched_as_readable_text(tmp_path: Path, server: Any) -> None:
    out = fetch_local(tmp_path, server, "/page")
    header = out.splitlines()[0]
    assert f"http://127.0.0.1:{server.server_address[1]}/page" in header and "200" in header
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


def test_redirect_loop_is_capped(tmp_path: Path, server: Any) -> None:
    port = server.server_address[1]
    fn = tool_fn(tmp_path, allow=["127.0.0.1"], allow_private=True, max_redirects=3)
    msg = refused(fn, f"http://127.0.0.1:{port}/loop")
    assert "more than 3 times" in msg
    assert len(server.seen) == 4


def test_body_cut_at_max_bytes_with_marker(tmp_path: Path, server: Any) -> None:
    out = fetch_local(tmp_path, server, "/big", max_bytes=1000, max_chars=100_000)
    assert re.search(r"\nx{1000}\n", out) and "[body cut at 1000 bytes (max_bytes)]" in out


def test_text_cut_at_max_chars_with_marker(tmp_path: Path, server: Any) -> None:
    out = fetch_local(tmp_path, server, "/big", max_chars=300)
    assert re.search(r"\nx{300}\n", out) and "cut at 300 of 50000 characters" in out


def test_a_compressed_page_is_read(tmp_path: Path, server: Any) -> None:
    assert "committed checkpoint" in fetch_local(tmp_path, server, "/gzip")


def test_a_gzip_bomb_is_inflated_only_to_the_cap(tmp_path: Path, server: Any) -> None:
    out = fetch_local(tmp_path, server, "/bomb", max_bytes=5000, max_chars=100_000)
    assert re.search(r"\na{5000}\n", out) and "[body cut at 5000 bytes (max_bytes)]" in out


def test_an_encoding_it_cannot_read_is_an_observation(tmp_path: Path, server: Any) -> None:
    out = fetch_local(tmp_path, server, "/brotli")
    assert "br-encoded" in out and "not read" in out and "hi" not in out


def test_a_server_that_trickles_is_stopped_at_the_time_cap(tmp_path: Path, server: Any) -> None:
    port = server.server_address[1]
    fn = tool_fn(tmp_path, allow=["127.0.0.1"], allow_private=True, timeout_s=1)
    assert "took longer than 1s and was stopped" in refused(fn, f"http://127.0.0.1:{port}/trickle")


def test_non_text_type_is_refused(tmp_path: Path, server: Any) -> None:
    out = fetch_local(tmp_path, server, "/png")
    assert "image/png" in out and "not a text page" in out and "PNG" not in out


def test_http_error_is_an_observation(tmp_path: Path, server: Any) -> None:
    out = fetch_local(tmp_path, server, "/missing")
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


def resolver(monkeypatch: pytest.MonkeyPatch, names: dict[str, str]) -> list[str]:
    """The tool's resolver answers `names` itself (other hosts as the system does); returns
    the list of the names it was asked, one per lookup."""
    asked: list[str] = []
    real = mod.getaddrinfo

    def lookup(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        asked.append(host)
        if host in names:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (names[host], port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(mod, "getaddrinfo", lookup)
    return asked


def test_redirect_is_followed_and_rechecked(tmp_path: Path, server: Any,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    port = server.server_address[1]
    asked = resolver(monkeypatch, {})
    fn = tool_fn(tmp_path, allow=["127.0.0.1"], allow_private=True)
    out = get(fn, f"http://127.0.0.1:{port}/hop")
    assert out.startswith(f"Fetched http://127.0.0.1:{port}/page")
    assert asked == ["127.0.0.1", "127.0.0.1"]  # one lookup and check per hop


def test_connection_goes_to_the_checked_address(tmp_path: Path, server: Any,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # DNS rebinding: the name's next answer (the system resolver's) points elsewhere; the
    # tool resolves once, checks, and connects to that address with the name as Host
    port = server.server_address[1]
    asked = resolver(monkeypatch, {"rebind.test": "127.0.0.1"})
    system = socket.getaddrinfo

    def rebound(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "rebind.test":  # a connection by name would land on 10.255.255.1
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.255.255.1", args[0]))]
        return system(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebound)
    fn = tool_fn(tmp_path, allow=["rebind.test"], allow_private=True)
    out = get(fn, f"http://rebind.test:{port}/page")
    assert "committed checkpoint" in out
    assert asked == ["rebind.test"]
    assert server.seen == [("/page", f"rebind.test:{port}")]


def test_a_redirect_to_a_private_address_is_refused(tmp_path: Path, server: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # the first hop passes the address check (loopback counted public here, so that a
    # server on 127.0.0.1 stands for a public site); its redirect resolves to 10.0.0.7
    port = server.server_address[1]
    asked = resolver(monkeypatch, {"site.test": "127.0.0.1", "evil.test": "10.0.0.7"})
    monkeypatch.setattr(mod, "is_forbidden_address", lambda ip: ip.is_private
                        and not ip.is_loopback)
    fn = tool_fn(tmp_path, allow=["site.test", "evil.test"])
    msg = refused(fn, f"http://site.test:{port}/away")
    assert "evil.test resolves to a private or reserved address (10.0.0.7)" in msg
    assert asked == ["site.test", "evil.test"] and [p for p, _ in server.seen] == ["/away"]


def test_https_sends_the_name_and_checks_the_certificate(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # a real TLS server on the checked address; its certificate, for the right name, is
    # signed by a CA nobody trusts: the client sends the name (SNI) and then refuses it
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("secure.test").configure_cert(context)
    names: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: names.append(name)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        listener.settimeout(60)  # a client that never comes ends the thread, not the test

        def serve() -> None:
            with contextlib.suppress(OSError):  # ssl.SSLError and TimeoutError among them
                conn, _ = listener.accept()
                with conn:
                    context.wrap_socket(conn, server_side=True).close()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        resolver(monkeypatch, {"secure.test": "127.0.0.1"})
        fn = tool_fn(tmp_path, allow=["secure.test"], allow_private=True)
        msg = refused(fn, f"https://secure.test:{port}/x")
        thread.join()
    assert names == ["secure.test"]
    assert "TLS certificate of secure.test could not be verified" in msg


@pytest.mark.parametrize("ip, bad", [
    ("8.8.8.8", False), ("2001:4860:4860::8888", False), ("127.0.0.1", True),
    ("::ffff:10.0.0.1", True), ("::ffff:8.8.8.8", False), ("::127.0.0.1", True),
    ("2002:7f00:1::", True), ("64:ff9b::a9fe:a9fe", True),
    ("64:ff9b::808:808", False), ("100.64.0.1", True), ("fe80::1", True), ("fc00::1", True),
    ("ff02::1", True), ("240.0.0.1", True), ("::", True), ("192.168.1.1", True),
    # Python's ipaddress counts these as global; they are refused all the same
    ("224.0.0.1", True), ("239.255.255.250", True), ("ff0e::1", True), ("fec0::1", True),
    ("4000::1", True),
    # documentation, benchmark, broadcast, this-network and 6to4-relay edges
    ("192.0.2.1", True), ("198.18.0.1", True), ("255.255.255.255", True), ("0.1.2.3", True),
    ("2001:db8::1", True), ("1.1.1.1", False), ("2606:4700::1111", False),
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
        runner.Agent(runner.load_spec(tool_spec(tmp_path, "http_get", entry)))
    text = str(err.value)
    assert err.value.key is not None and err.value.key.startswith(key), text
    assert words in text and "agent.yaml" in text and ":" in text
