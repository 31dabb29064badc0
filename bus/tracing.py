"""OpenTelemetry tracing: W3C trace context in NATS headers, the tracer, and the JSON-lines
span files `RELAYBUS_TRACE_DIR` asks for (`relaybus.bus.telemetry` installs the exporters).

With nothing configured there is no SDK provider and every call here is a cheap no-op.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import msgspec
from opentelemetry import context, propagate, trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

TRACER = trace.get_tracer("relaybus")


def recording() -> bool:
    """Whether a tracer provider is installed (ours, `relaybus.bus.telemetry`, or the embedding
    app's). Without one no span is recorded anywhere in this process; trace context is only
    passed on."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def inject(headers: dict[str, str]) -> None:
    """Add `traceparent`/`tracestate` for the current span, if there is one."""
    if trace.get_current_span().get_span_context().is_valid:
        propagate.inject(headers)


def extract(headers: Mapping[str, str] | None) -> context.Context:
    """The trace context a message carries (empty when it carries none)."""
    return propagate.extract(headers or {})


def run_context(headers: Mapping[str, str] | None, run_id: str, task_id: str) -> context.Context:
    """The parent context for work on a message of run `run_id`.

    A message published under a span carries it. One published without (a client that does
    not trace) gets a remote parent derived from the run and task ids, so every attempt of
    that task, its dead letter, and everything after it share one trace id per run.
    """
    ctx = extract(headers)
    if trace.get_current_span(ctx).get_span_context().is_valid or not run_id:
        return ctx
    parent = trace.SpanContext(
        trace_id=run_trace_id(run_id),
        span_id=int.from_bytes(hashlib.blake2b(task_id.encode(), digest_size=8).digest()) or 1,
        is_remote=True,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(parent), ctx)


def start_run_root(name: str, run_id: str, **kwargs: Any) -> trace.Span:
    """A run's root span (no parent) in the trace id `run_trace_id(run_id)`, so that a run
    submitted by a client that does not trace still has one trace with a proper root."""
    token = _ROOT_TRACE_ID.set(run_trace_id(run_id))
    try:
        return TRACER.start_span(name, context=context.Context(), **kwargs)
    finally:
        _ROOT_TRACE_ID.reset(token)


def traceparent_of(span: trace.Span) -> str:
    """The W3C traceparent naming `span` ("" for a span that is not valid)."""
    carrier: dict[str, str] = {}
    if span.get_span_context().is_valid:
        propagate.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent", "")


class RunIdGenerator(RandomIdGenerator):
    """Random ids, except the trace id of a run's root span (`start_run_root`)."""

    def generate_trace_id(self) -> int:
        return _ROOT_TRACE_ID.get() or super().generate_trace_id()


_ROOT_TRACE_ID: ContextVar[int] = ContextVar("relaybus_root_trace_id", default=0)


def run_trace_id(run_id: str) -> int:
    """The trace id a run gets when its first message carried no trace context."""
    return int.from_bytes(hashlib.blake2b(run_id.encode(), digest_size=16).digest()) or 1


def links_from(traceparents: Iterable[str]) -> list[trace.Link]:
    """Span links to the spans named by W3C `traceparent` values (empty ones skipped)."""
    links = []
    for value in traceparents:
        if value:
            span_context = trace.get_current_span(
                propagate.extract({"traceparent": value})
            ).get_span_context()
            if span_context.is_valid:
                links.append(trace.Link(span_context))
    return links


def link_fan_in(traceparents: Iterable[str]) -> None:
    """Link the current span to the spans that fan in to it (children whose results it
    gathers), and list them in `relaybus.links`, since some backends drop links."""
    span = trace.get_current_span()
    links = links_from(traceparents)
    if not links or not span.is_recording():
        return
    for link in links:
        span.add_link(link.context)
    span.set_attribute("relaybus.links", [f"{link.context.span_id:016x}" for link in links])


def read_spans(trace_dir: Path) -> list[dict[str, object]]:
    """Every span the processes wrote under `trace_dir` (for `relaybus trace` and tests)."""
    spans = []
    for path in sorted(trace_dir.glob("*.jsonl")):
        # split on newlines only: a span's text may hold U+2028 and the like, which
        # `str.splitlines` would also split on (JSON strings escape "\n" itself)
        spans += [json.loads(line) for line in path.read_bytes().split(b"\n") if line.strip()]
    return spans


class JsonLinesExporter(SpanExporter):
    """A span exporter that appends one JSON object per finished span to a file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._out = path.open("ab")
        self._encode = msgspec.json.Encoder(enc_hook=str).encode

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = []
        for span in spans:
            ctx = span.get_span_context()
            if ctx is None:
                continue
            parent = span.parent
            status = span.status
            record = {
                "name": span.name,
                "trace_id": f"{ctx.trace_id:032x}",
                "span_id": f"{ctx.span_id:016x}",
                "parent_id": f"{parent.span_id:016x}" if parent else None,
                "kind": span.kind.name,
                "start_ns": span.start_time,
                "end_ns": span.end_time,
                "status": status.status_code.name,
                "error": status.description or "",
                "attributes": dict(span.attributes or {}),
                "links": [
                    {
                        "trace_id": f"{link.context.trace_id:032x}",
                        "span_id": f"{link.context.span_id:016x}",
                    }
                    for link in span.links
                ],
                "events": [
                    {"name": event.name, "attributes": dict(event.attributes or {})}
                    for event in span.events
                ],
                "service": span.resource.attributes.get("service.name"),
            }
            try:
                lines.append(self._encode(record))
            except (UnicodeEncodeError, TypeError, ValueError):  # a lone surrogate, say: one
                # span written the slow way rather than its whole batch lost
                lines.append(json.dumps(record, default=str).encode())
        if lines:  # one write per batch, not one per span
            self._out.write(b"\n".join(lines) + b"\n")
            self._out.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._out.close()
