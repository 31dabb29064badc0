"""Where a process's spans and metrics go: installed once per process, shut down on exit.

- `RELAYBUS_TRACE_DIR`: finished spans as JSON lines, one file per process (no backend needed).
- `--metrics-port` (`metrics_port`): a Prometheus endpoint on `RELAYBUS_METRICS_HOST` (loopback
  by default).
- The standard OpenTelemetry variables (`exporters.py`): `OTEL_EXPORTER_OTLP_ENDPOINT` and its
  per-signal forms, `OTEL_TRACES_EXPORTER` / `OTEL_METRICS_EXPORTER` (`otlp`, `console`, `none`),
  `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, `grpc`), `OTEL_SERVICE_NAME`,
  `OTEL_RESOURCE_ATTRIBUTES`.

With none of these, no SDK provider is installed and instrumentation stays a no-op.
"""

from __future__ import annotations

import os
import socket
from types import TracebackType
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.resources import Resource

from .errors import ConfigError
from .exporters import Exporters, metric_exporter, span_exporter
from .settings import Settings
from .tracing import JsonLinesExporter, RunIdGenerator

# Histogram buckets that fit what is measured: agent work takes milliseconds to minutes (the SDK's
# default buckets, 0..10000, are for milliseconds: every handoff landed in le="5.0").
SECONDS = (
    *(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
    *(1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
)
TOKENS = (16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0)
SCORES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


class Telemetry:
    """`with Telemetry("agent-writer", settings, metrics_port=9464): ...`

    `service` is the process's role; `OTEL_SERVICE_NAME`, when set, wins as `service.name` (the
    role stays in `relaybus.process`)."""

    def __init__(self, service: str, settings: Settings, metrics_port: int | None = None) -> None:
        self.service = service
        self.settings = settings
        self.metrics_port = metrics_port
        self.exporters = Exporters.from_env(os.environ)
        self._tracer_provider: Any = None
        self._meter_provider: Any = None
        self._server: Any = None

    def __enter__(self) -> Telemetry:
        # Resource.create reads OTEL_RESOURCE_ATTRIBUTES; OTEL_SERVICE_NAME goes over the role
        resource = Resource.create(
            {
                "service.name": os.environ.get("OTEL_SERVICE_NAME") or self.service,
                "relaybus.process": self.service,
                # hostname too: in containers every replica is pid 1
                "service.instance.id": f"{socket.gethostname()}-{os.getpid()}",
            }
        )
        if self.settings.trace_dir is not None or self.exporters.traces:
            self._tracer_provider = self._tracing(resource)
            trace.set_tracer_provider(self._tracer_provider)
        if self.metrics_port is not None or self.exporters.metrics:
            self._meter_provider = self._metrics(resource)
            metrics.set_meter_provider(self._meter_provider)
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for provider in (self._tracer_provider, self._meter_provider):
            if provider is not None:
                provider.shutdown()

    def _tracing(self, resource: Resource) -> Any:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider(resource=resource, id_generator=RunIdGenerator())
        trace_dir = self.settings.trace_dir
        if trace_dir is not None:
            trace_dir.mkdir(parents=True, exist_ok=True)
            path = trace_dir / f"{self.service}-{os.getpid()}.jsonl"
            # batched off the hot path; flushed every 200 ms and at shutdown
            provider.add_span_processor(
                BatchSpanProcessor(JsonLinesExporter(path), schedule_delay_millis=200)
            )
        for name in self.exporters.traces:
            provider.add_span_processor(
                BatchSpanProcessor(span_exporter(name, self.exporters.traces_protocol))
            )
        return provider

    def _metrics(self, resource: Resource) -> Any:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        readers: list[Any] = []
        if self.metrics_port is not None:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from prometheus_client import start_http_server

            host = self.settings.metrics_host
            try:
                self._server, _thread = start_http_server(self.metrics_port, addr=host)
            except OSError as exc:
                raise ConfigError(
                    f"cannot serve metrics on {host}:{self.metrics_port} ({exc.strerror}); "
                    "pick a free port with --metrics-port"
                ) from None
            readers.append(PrometheusMetricReader())
        for name in self.exporters.metrics:
            exporter = metric_exporter(name, self.exporters.metrics_protocol)
            readers.append(PeriodicExportingMetricReader(exporter))
        return MeterProvider(resource=resource, metric_readers=readers, views=_views())


def _views() -> list[Any]:
    from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

    def buckets(name: str, bounds: tuple[float, ...]) -> View:
        return View(instrument_name=name, aggregation=ExplicitBucketHistogramAggregation(bounds))

    return [
        buckets("relaybus.handoff.latency", SECONDS),
        buckets("relaybus.step.duration", SECONDS),
        buckets("relaybus.tool.duration", SECONDS),
        buckets("relaybus.memory.recall.duration", SECONDS),
        buckets("gen_ai.client.operation.duration", SECONDS),
        buckets("gen_ai.client.token.usage", TOKENS),
        buckets("relaybus.evaluation.score", SCORES),
    ]
