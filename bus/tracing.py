"""OpenTelemetry tracing: W3C trace context in NATS headers, and the process's tracer.

With nothing configured there is no SDK provider and every call here is a cheap no-op. With
`RELAYBUS_TRACE_DIR` set, each process writes its finished spans as JSON lines to
`<dir>/<service>-<pid>.jsonl` (readable without any backend; the tests read spans back this way).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

TRACER = trace.get_tracer("relaybus")


def inject(headers: dict[str, str]) -> None:
    """Add `traceparent`/`tracestate` for the current span, if there is one."""
    if trace.get_current_span().get_span_context().is_valid:
        propagate.inject(headers)


def extract(headers: Mapping[str, str] | None) -> context.Context:
    """The trace context a message carries (empty when it carries none)."""
    return propagate.extract(headers or {})


def setup(service: str, trace_dir: Path | None) -> None:
    """Install an SDK tracer provider for this process if tracing is configured."""
    if trace_dir is None:
        return
    trace_dir.mkdir(parents=True, exist_ok=True)
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(
        SimpleSpanProcessor(JsonLinesExporter(trace_dir / f"{service}-{os.getpid()}.jsonl"))
    )
    trace.set_tracer_provider(provider)


def shutdown() -> None:
    provider = trace.get_tracer_provider()
    if hasattr(provider, "shutdown"):
        provider.shutdown()


def read_spans(trace_dir: Path) -> list[dict[str, object]]:
    """Every span the processes wrote under `trace_dir` (for `relaybus trace` and tests)."""
    spans = []
    for path in sorted(trace_dir.glob("*.jsonl")):
        spans += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return spans


class JsonLinesExporter(SpanExporter):
    """A span exporter that appends one JSON object per finished span to a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self.path.open("a") as out:
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
                    "service": span.resource.attributes.get("service.name"),
                }
                out.write(json.dumps(record, default=str) + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass
