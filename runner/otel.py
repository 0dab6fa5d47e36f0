"""OpenTelemetry export of a run's spans (placeholder until the exporter lands)."""

from __future__ import annotations

from typing import Any

from .redact import Redactor
from .spec import OtlpSpec

__all__ = ["otel_sink", "flush"]


def otel_sink(spec: OtlpSpec, redactor: Redactor) -> Any:
    """An event sink exporting spans over OTLP, or None when no endpoint is configured."""
    return None


def flush(timeout_s: float = 5.0) -> None:
    """Send the spans still buffered (the CLI calls this before it exits)."""
