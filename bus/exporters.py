"""The standard OpenTelemetry exporter variables, read the way the SDK's own auto-configuration
reads them (https://opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables/):

- `OTEL_TRACES_EXPORTER`, `OTEL_METRICS_EXPORTER`: a comma-separated list of `otlp`, `console`
  or `none`. Unset, a signal goes over OTLP only when an OTLP endpoint variable is set (relaybus
  sends nothing anywhere unless told to).
- `OTEL_EXPORTER_OTLP_PROTOCOL` and `OTEL_EXPORTER_OTLP_{TRACES,METRICS}_PROTOCOL`:
  `http/protobuf` (default) or `grpc`. The exporters themselves read the endpoint, headers,
  timeout and compression variables.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

KNOWN = ("otlp", "console", "none")
PROTOCOLS = ("http/protobuf", "grpc")


@dataclass(frozen=True)
class Exporters:
    traces: tuple[str, ...]
    metrics: tuple[str, ...]
    traces_protocol: str
    metrics_protocol: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Exporters:
        endpoint = bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        protocol = _protocol(environ, "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        return cls(
            traces=_exporters(
                environ,
                "OTEL_TRACES_EXPORTER",
                endpoint or bool(environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")),
            ),
            metrics=_exporters(
                environ,
                "OTEL_METRICS_EXPORTER",
                endpoint or bool(environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")),
            ),
            traces_protocol=_protocol(environ, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", protocol),
            metrics_protocol=_protocol(environ, "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", protocol),
        )


def _exporters(environ: Mapping[str, str], variable: str, endpoint_set: bool) -> tuple[str, ...]:
    raw = environ.get(variable)
    if raw is None or not raw.strip():
        return ("otlp",) if endpoint_set else ()
    names = tuple(dict.fromkeys(n.strip().lower() for n in raw.split(",") if n.strip()))
    unknown = [n for n in names if n not in KNOWN]
    if unknown:
        raise ConfigError(
            f"{variable}={raw!r}: relaybus knows the exporters {', '.join(KNOWN)}; "
            f"{', '.join(unknown)} is not one of them (Prometheus: --metrics-port)"
        )
    return () if "none" in names else names


def _protocol(environ: Mapping[str, str], variable: str, default: str) -> str:
    value = (environ.get(variable) or default).strip().lower()
    if value == "http/json":
        raise ConfigError(
            f"{variable}=http/json is not supported by the OpenTelemetry Python exporters; "
            "use http/protobuf or grpc"
        )
    if value not in PROTOCOLS:
        raise ConfigError(f"{variable}={value!r}: use one of {', '.join(PROTOCOLS)}")
    return value


def span_exporter(name: str, protocol: str) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )

        return GrpcSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def metric_exporter(name: str, protocol: str) -> Any:
    if name == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        return ConsoleMetricExporter()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcMetricExporter,
        )

        return GrpcMetricExporter()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter()
