"""The OTLP/HTTP export behind `runner.trace.otel`: one tracer provider, batch processor and
exporter per configuration, endpoint and protocol from the spec or the standard `OTEL_*`
variables, one warning at most for a collector that is down, and `flush()` before exit."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any

from ..errors import SpecError
from ..redact import env_secrets, printable, redact_text
from ..spec import OtlpSpec

__all__ = ["pipeline_for", "flush", "warn_once", "Pipeline"]

DEFAULT_SERVICE = "yaml-agent-runner"
EXPORT_TIMEOUT_S = 10.0
"""Per export request, retries included (the SDK's own default is also 10 s)."""
TRACES_PATH = "/v1/traces"

_pipelines: dict[tuple[Any, ...], Pipeline] = {}
_lock = threading.Lock()
_warned = threading.Event()
"""Set once a warning about the export has been shown: a process shows one at most."""
_atexit_registered = False


def pipeline_for(spec: OtlpSpec) -> Pipeline | None:
    """The export pipeline of a spec's `trace.otlp` (shared by every sink of the same
    configuration), or None when no endpoint is configured or export is disabled."""
    endpoint = _endpoint(spec)
    if endpoint is None or _disabled():
        return None
    _check_protocol()
    service = spec.service_name or os.environ.get("OTEL_SERVICE_NAME") or None
    # every OTEL_* variable shapes the exporter or the resource: a change makes a new pipeline
    key = (endpoint, tuple(sorted(spec.headers.items())), service,
           tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("OTEL_"))))
    with _lock:
        pipeline = _pipelines.get(key)
        if pipeline is None:
            pipeline = _pipelines[key] = Pipeline(endpoint, dict(spec.headers), service)
    return pipeline


def flush(timeout_s: float = 5.0) -> None:
    """Send the spans still buffered (the CLI calls this before it exits), for `timeout_s` at
    most; gives up at once on a collector that cannot be reached."""
    with _lock:
        pipelines = list(_pipelines.values())
    deadline = time.monotonic() + timeout_s
    waits = [p.start_flush() for p in pipelines]
    for done in waits:
        done.wait(max(0.0, deadline - time.monotonic()))


def _endpoint(spec: OtlpSpec) -> str | None:
    """The traces URL: the spec's, else the standard variables' (OTEL_..._TRACES_ENDPOINT is
    used as it is, the generic one gets /v1/traces), else None."""
    if spec.endpoint:
        url = spec.endpoint.rstrip("/")
        return url if url.endswith(TRACES_PATH) else url + TRACES_PATH
    if url := os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip():
        return url
    if url := os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip():
        return url.rstrip("/") + TRACES_PATH
    return None


def _disabled() -> bool:
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return True
    exporters = os.environ.get("OTEL_TRACES_EXPORTER", "").lower().split(",")
    return "none" in (e.strip() for e in exporters)


def _check_protocol() -> None:
    for var in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = os.environ.get(var, "").strip()
        if value:  # the traces-specific variable wins over the generic one
            if value.lower() != "http/protobuf":
                raise SpecError(f"{var}={value} is not supported: spans are exported with OTLP "
                                f"over http/protobuf only (set {var}=http/protobuf or unset it)",
                                key="trace.otlp")
            return


def warn_once(message: str) -> None:
    if not _warned.is_set():
        _warned.set()
        # it may quote a collector's reply, or an endpoint with a token in it
        sys.stderr.write(f"warning: {printable(redact_text(message, env_secrets()))}\n")
        sys.stderr.flush()


class _QuietSdkLogs(logging.Handler):
    """Stands in for logging's last-resort handler on the `opentelemetry` loggers, which
    would print a line per failed batch and per retry: one warning at most, and none when
    the application has configured logging (its handlers then get every record)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        if not logging.getLogger().handlers:
            warn_once(f"OpenTelemetry: {record.getMessage()[:300]}")


class Pipeline:
    """A tracer provider, batch processor and OTLP/HTTP exporter for one configuration."""

    def __init__(self, endpoint: str, headers: dict[str, str], service: str | None) -> None:
        from importlib.metadata import PackageNotFoundError, version

        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        sdk_log = logging.getLogger("opentelemetry")
        if not any(isinstance(h, _QuietSdkLogs) for h in sdk_log.handlers):
            sdk_log.addHandler(_QuietSdkLogs())
        resource = Resource.create()  # OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME
        unnamed = str(resource.attributes.get("service.name", "")).startswith("unknown_service")
        if service or unnamed:
            resource = resource.merge(Resource({"service.name": service or DEFAULT_SERVICE}))
        self.endpoint = endpoint
        self.settled = threading.Event()
        """Set when a flush is done, or when the collector proves unreachable."""
        timeout = None if (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
                           or os.environ.get("OTEL_EXPORTER_OTLP_TIMEOUT")) else EXPORT_TIMEOUT_S
        exporter = OTLPSpanExporter(endpoint=endpoint, headers=headers or None, timeout=timeout,
                                    session=self._session())
        # not the global provider; flushed by flush() (the CLI ends with os._exit)
        self.provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        try:
            runner_version = version("yaml-agent-runner")
        except PackageNotFoundError:
            runner_version = None
        self.tracer = self.provider.get_tracer("yaml-agent-runner", runner_version)
        global _atexit_registered
        if not _atexit_registered:
            import atexit

            atexit.register(flush)
            _atexit_registered = True

    def _session(self) -> Any:
        """A requests session that notices an unreachable collector, or None to let the SDK
        build its own (a credential provider plugin is configured)."""
        if os.environ.get("OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER") or \
                os.environ.get("OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER"):
            return None
        import requests

        pipeline = self

        class Session(requests.Session):
            failures = 0

            def request(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
                try:
                    response = super().request(*args, **kwargs)
                except requests.ConnectionError as exc:
                    # the SDK retries a connection error once at once (a stale pooled
                    # connection); two in a row mean nobody is listening
                    self.failures += 1
                    if self.failures >= 2:  # said before a flush stops waiting on it
                        warn_once(f"spans not exported: cannot reach the OTLP endpoint "
                                   f"{pipeline.endpoint} ({type(exc).__name__})")
                        pipeline.settled.set()
                    raise
                self.failures = 0
                if response.status_code >= 400:
                    warn_once(f"spans not exported: the OTLP endpoint {pipeline.endpoint} "
                               f"answered {response.status_code} {response.reason}")
                return response

        return Session()

    def start_flush(self) -> threading.Event:
        """Export what is buffered, in a helper thread: the SDK's force_flush ignores its
        timeout and keeps retrying an unreachable collector for up to EXPORT_TIMEOUT_S."""
        self.settled.clear()

        def run() -> None:
            try:
                self.provider.force_flush()
            finally:
                self.settled.set()

        threading.Thread(target=run, name="runner-otel-flush", daemon=True).start()
        return self.settled
