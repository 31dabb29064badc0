"""OTLP export: with OTEL_EXPORTER_OTLP_ENDPOINT set, an agent process sends its spans and
metrics over OTLP/HTTP (received here by a real HTTP server decoding the protobuf bodies) or
OTLP/gRPC (a real grpcio server), as the standard OTEL_* variables say."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from relaybus.agents.submit import submit
from relaybus.bus import Bus, ConfigError
from relaybus.bus.exporters import Exporters

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


class GrpcReceiver:
    """A real OTLP/gRPC endpoint (grpcio), recording spans with their resource, and metric calls."""

    def __init__(self) -> None:
        import grpc
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        self.spans: list[tuple[str, dict[str, str]]] = []  # (span name, resource attributes)
        self.metric_calls = 0
        receiver = self

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                for resource_spans in request.resource_spans:
                    resource = {
                        a.key: a.value.string_value for a in resource_spans.resource.attributes
                    }
                    for scope_spans in resource_spans.scope_spans:
                        receiver.spans.extend((s.name, resource) for s in scope_spans.spans)
                return trace_service_pb2.ExportTraceServiceResponse()

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                receiver.metric_calls += 1
                return ExportMetricsServiceResponse()

        from concurrent.futures import ThreadPoolExecutor

        self.server = grpc.server(ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), self.server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()


@pytest.fixture
def grpc_receiver() -> Iterator[GrpcReceiver]:
    receiver = GrpcReceiver()
    yield receiver
    receiver.server.stop(grace=None)


async def test_the_standard_otel_variables_choose_protocol_exporters_and_service_name(
    bus: Bus, spawn: Spawn, grpc_receiver: GrpcReceiver
) -> None:
    spawn(
        "runtime_agents:Child",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{grpc_receiver.port}",
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        OTEL_METRICS_EXPORTER="none",  # a traces-only backend: no metrics sent, no errors logged
        OTEL_SERVICE_NAME="billing-agents",
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment=staging",
        OTEL_BSP_SCHEDULE_DELAY="100",
        OTEL_METRIC_EXPORT_INTERVAL="300",
    )
    outcome = await submit(bus, "child", b'{"x": 3}', wait=True, timeout_s=60)
    assert outcome.status == "completed"
    await wait_for(
        lambda: any(name == "invoke_agent child" for name, _ in grpc_receiver.spans),
        what="the agent's span over OTLP/gRPC",
    )
    (resource,) = {
        tuple(sorted(r.items())) for n, r in grpc_receiver.spans if n == "invoke_agent child"
    }
    attributes = dict(resource)
    assert attributes["service.name"] == "billing-agents"  # OTEL_SERVICE_NAME wins
    assert attributes["relaybus.process"] == "agent-child"  # the role stays visible
    assert attributes["deployment.environment"] == "staging"
    await asyncio.sleep(1.0)  # three metric export intervals
    assert grpc_receiver.metric_calls == 0


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_METRICS_EXPORTER": "otlp,zipkin"}, "OTEL_METRICS_EXPORTER"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "udp"}, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
    ],
)
def test_an_unknown_exporter_or_protocol_is_refused_by_name(
    variables: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        Exporters.from_env(variables)


def test_exporters_follow_the_specs_defaults() -> None:
    assert Exporters.from_env({}).traces == ()  # nothing leaves the process unless told
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    assert Exporters.from_env(endpoint).traces == Exporters.from_env(endpoint).metrics == ("otlp",)
    only_traces = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}
    assert Exporters.from_env(only_traces).metrics == ()
    none = {**endpoint, "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "console"}
    assert Exporters.from_env(none).traces == ()
    assert Exporters.from_env(none).metrics == ("console",)
    grpc = {**endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    assert Exporters.from_env(grpc).traces_protocol == "grpc"
    mixed = {**grpc, "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf"}
    assert Exporters.from_env(mixed).metrics_protocol == "http/protobuf"
