"""Where a process's spans and metrics go: installed once per process, shut down on exit.

- `RELAYBUS_TRACE_DIR`: finished spans as JSON lines, one file per process (no backend needed).
- `--metrics-port` (`metrics_port`): a Prometheus endpoint on `RELAYBUS_METRICS_HOST` (loopback
  by default).
- `OTEL_EXPORTER_OTLP_ENDPOINT` (standard `OTEL_*` variables): spans and metrics over OTLP/HTTP.

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
from .settings import Settings
from .tracing import JsonLinesExporter


class Telemetry:
    """`with Telemetry("agent-writer", settings, metrics_port=9464): ...`"""

    def __init__(self, service: str, settings: Settings, metrics_port: int | None = None) -> None:
        self.service = service
        self.settings = settings
        self.metrics_port = metrics_port
        self.otlp = bool(
            os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        )
        self._tracer_provider: Any = None
        self._meter_provider: Any = None
        self._server: Any = None

    def __enter__(self) -> Telemetry:
        resource = Resource.create(
            {
                "service.name": self.service,
                # hostname too: in containers every replica is pid 1
                "service.instance.id": f"{socket.gethostname()}-{os.getpid()}",
            }
        )
        if self.settings.trace_dir is not None or self.otlp:
            self._tracer_provider = self._tracing(resource)
            trace.set_tracer_provider(self._tracer_provider)
        if self.metrics_port is not None or self.otlp:
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

        provider = TracerProvider(resource=resource)
        trace_dir = self.settings.trace_dir
        if trace_dir is not None:
            trace_dir.mkdir(parents=True, exist_ok=True)
            path = trace_dir / f"{self.service}-{os.getpid()}.jsonl"
            # batched off the hot path; flushed every 200 ms and at shutdown
            provider.add_span_processor(
                BatchSpanProcessor(JsonLinesExporter(path), schedule_delay_millis=200)
            )
        if self.otlp:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        return provider

    def _metrics(self, resource: Resource) -> Any:
        from opentelemetry.sdk.metrics import MeterProvider

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
        if self.otlp:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        return MeterProvider(resource=resource, metric_readers=readers)
