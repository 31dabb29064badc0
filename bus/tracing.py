"""W3C trace context in NATS headers. With no OpenTelemetry SDK configured these are no-ops."""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import context, propagate


def inject(headers: dict[str, str]) -> None:
    """Add `traceparent`/`tracestate` for the current span, if there is one."""
    propagate.inject(headers)


def extract(headers: Mapping[str, str] | None) -> context.Context:
    """The trace context a message carries (empty when it carries none)."""
    return propagate.extract(headers or {})
