"""OTLP export: with OTEL_EXPORTER_OTLP_ENDPOINT set, an agent process sends its spans and
metrics over OTLP/HTTP (received here by a real HTTP server decoding the protobuf bodies)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from relaybus.agents.submit import submit
from relaybus.bus import Bus

from .conftest import Spawn, wait_for


class Receiver(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.spans: list[tuple[str, dict[str, object]]] = []
        self.metric_names: set[str] = set()


class Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/v1/traces":
            request = ExportTraceServiceRequest.FromString(body)
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        attributes = {a.key: a.value for a in span.attributes}
                        self.server.spans.append((span.name, attributes))
        elif self.path == "/v1/metrics":
            request = ExportMetricsServiceRequest.FromString(body)
            for resource_metrics in request.resource_metrics:
                for scope_metrics in resource_metrics.scope_metrics:
                    self.server.metric_names.update(m.name for m in scope_metrics.metrics)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


async def test_spans_and_metrics_reach_an_otlp_endpoint(
    bus: Bus, spawn: Spawn, receiver: Receiver
) -> None:
    port = receiver.server_address[1]
    spawn(
        "runtime_agents:Child",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
        OTEL_BSP_SCHEDULE_DELAY="100",
        OTEL_METRIC_EXPORT_INTERVAL="300",
    )
    outcome = await submit(bus, "child", b'{"x": 3}', wait=True, timeout_s=60)
    assert outcome.status == "completed"
    await wait_for(
        lambda: any(name == "invoke_agent child" for name, _ in receiver.spans),
        what="the agent's span over OTLP",
    )
    (attributes,) = [a for name, a in receiver.spans if name == "invoke_agent child"]
    assert attributes["relaybus.run_id"].string_value == outcome.run_id  # type: ignore[attr-defined]
    await wait_for(
        lambda: {"relaybus.handoffs", "relaybus.step.duration"} <= receiver.metric_names,
        what="the agent's metrics over OTLP",
    )
