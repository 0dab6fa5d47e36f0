"""A small OTLP/HTTP trace receiver on 127.0.0.1 that decodes what it gets, for tests.

    with OtlpReceiver() as rx:            # rx.url is the collector's base URL
        ... export spans to rx.url ...
        rx.spans                          # decoded spans, in arrival order
        rx.requests                       # one dict per POST: headers, span count

It speaks OTLP/HTTP with protobuf bodies (gzip or deflate bodies are inflated), answers each
request with an empty ExportTraceServiceResponse, and answers anything else with 404/415.
"""

from __future__ import annotations

import gzip
import threading
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan, Status as PbStatus

__all__ = ["OtlpReceiver", "ReceivedSpan", "any_value"]

KINDS = {v: k.removeprefix("SPAN_KIND_").lower() for k, v in PbSpan.SpanKind.items()}
STATUS = {v: k.removeprefix("STATUS_CODE_").lower() for k, v in PbStatus.StatusCode.items()}


def any_value(v: AnyValue) -> Any:
    """An OTLP AnyValue as a plain Python value."""
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, which)


def _attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


@dataclass
class ReceivedSpan:
    """One decoded span, ids as hex strings ('' for no parent)."""

    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[dict[str, Any]]
    status: str
    status_message: str
    resource: dict[str, Any]
    scope: str
    links: list[dict[str, Any]] = field(default_factory=list)


class OtlpReceiver:
    """An OTLP/HTTP collector stand-in: POST /v1/traces, protobuf in, spans kept in memory."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                if self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_error(415, "only application/x-protobuf")
                    return
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver._store(request, dict(self.headers.items()))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:  # quiet in test output
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _store(self, request: ExportTraceServiceRequest, headers: dict[str, str]) -> None:
        got: list[ReceivedSpan] = []
        for rs in request.resource_spans:
            resource = _attributes(rs.resource.attributes)
            for ss in rs.scope_spans:
                for s in ss.spans:
                    got.append(ReceivedSpan(
                        s.name, KINDS[s.kind], s.trace_id.hex(), s.span_id.hex(),
                        s.parent_span_id.hex(), s.start_time_unix_nano, s.end_time_unix_nano,
                        _attributes(s.attributes),
                        [{"name": e.name, "time_ns": e.time_unix_nano,
                          "attributes": _attributes(e.attributes)} for e in s.events],
                        STATUS[s.status.code], s.status.message, resource, ss.scope.name,
                        [{"trace_id": ln.trace_id.hex(), "span_id": ln.span_id.hex()}
                         for ln in s.links]))
        with self._arrived:
            self.requests.append({"headers": {k.lower(): v for k, v in headers.items()},
                                  "spans": len(got)})
            self.spans.extend(got)
            self._arrived.notify_all()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedSpan]:
        """The spans once at least `count` have arrived (or whatever came within `timeout`)."""
        with self._arrived:
            self._arrived.wait_for(lambda: len(self.spans) >= count, timeout)
            return list(self.spans)

    def clear(self) -> None:
        with self._lock:
            self.spans.clear()
            self.requests.clear()

    def start(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
