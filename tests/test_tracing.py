"""One trace per run across processes, read back from the spans each process wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from relaybus.agents.submit import submit
from relaybus.bus import Bus, Settings
from relaybus.bus.tracing import read_spans

from .conftest import Spawn, wait_for


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(update={"trace_dir": tmp_path / "spans"})


async def test_a_fan_out_run_is_one_trace_across_three_processes(
    bus: Bus, settings: Settings, spawn: Spawn
) -> None:
    spawn("runtime_agents:FanOut")
    spawn("runtime_agents:Child")
    spawn("runtime_agents:Child")
    items = [{"x": i, "sleep_s": 0.2} for i in range(4)]
    outcome = await submit(
        bus, "fanout", json.dumps({"items": items}).encode(), wait=True, timeout_s=60
    )
    assert outcome.status == "completed"
    other = await submit(bus, "child", b'{"x": 9}', wait=True, timeout_s=60)
    assert other.status == "completed"
    assert settings.trace_dir is not None
    trace_dir = settings.trace_dir

    def run_spans(run_id: str) -> list[dict]:
        return [
            s for s in read_spans(trace_dir) if s["attributes"].get("relaybus.run_id") == run_id
        ]

    await wait_for(
        lambda: (
            len([s for s in run_spans(outcome.run_id) if s["name"] == "invoke_agent child"]) >= 4
        )
    )
    spans = run_spans(outcome.run_id)
    assert len({s["trace_id"] for s in spans}) == 1  # one trace for the whole run
    children = [s for s in spans if s["name"] == "invoke_agent child"]
    fanout = [s for s in spans if s["name"] == "invoke_agent fanout"]
    assert fanout and len(children) == 4
    assert {s["parent_id"] for s in children} <= {s["span_id"] for s in fanout}
    assert len({s["service"] for s in spans}) >= 2 and all(
        s["end_ns"] >= s["start_ns"] for s in spans
    )
    assert {c["attributes"]["relaybus.delivery_count"] for c in children} == {1}
    # runs never mix: the other run has its own trace
    await wait_for(lambda: run_spans(other.run_id))
    assert {s["trace_id"] for s in run_spans(other.run_id)}.isdisjoint({spans[0]["trace_id"]})


async def test_a_tool_call_is_a_child_span_of_its_agent(
    bus: Bus, settings: Settings, spawn: Spawn, tmp_path: Path
) -> None:
    spawn("runtime_agents:ToolUser")
    log = tmp_path / "log"
    outcome = await submit(
        bus,
        "tooluser",
        json.dumps({"a": 2, "b": 3, "log": str(log)}).encode(),
        wait=True,
        timeout_s=60,
    )
    assert outcome.status == "completed"
    assert settings.trace_dir is not None
    trace_dir = settings.trace_dir

    def spans() -> list[dict]:
        return [
            s
            for s in read_spans(trace_dir)
            if s["attributes"].get("relaybus.run_id") == outcome.run_id
        ]

    await wait_for(lambda: len([s for s in spans() if s["name"].startswith("invoke_agent")]) >= 2)
    tool = [s for s in spans() if s["name"] == "execute_tool add"]
    invokes = {s["span_id"]: s for s in spans() if s["name"] == "invoke_agent tooluser"}
    assert (
        len(tool) == 1 and tool[0]["parent_id"] in invokes
    )  # the replayed attempt did not re-run it
    attempts = sorted(s["attributes"]["relaybus.delivery_count"] for s in invokes.values())
    assert attempts == [1, 2]
    first = next(s for s in invokes.values() if s["attributes"]["relaybus.delivery_count"] == 1)
    assert first["status"] == "ERROR" and "once more" in first["error"]


def test_every_span_in_a_file_reads_back_whatever_text_it_carries(tmp_path: Path) -> None:
    """An LLM's text reaches span attributes and statuses: a line separator inside it must not
    split a span's line, and a string JSON cannot encode as UTF-8 (a lone surrogate) must not
    cost the spans batched with it."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace import Status, StatusCode

    from relaybus.bus.tracing import JsonLinesExporter

    exporter = JsonLinesExporter(tmp_path / "agent-1.jsonl")
    provider = TracerProvider()
    finished = []
    provider.add_span_processor(SimpleSpanProcessor(_Keep(finished)))
    tracer = provider.get_tracer("test")
    texts = ["plain", "line\u2028separator", "para\u2029graph", "next\x85line", "lone \ud800"]
    for n, text in enumerate(texts):
        with tracer.start_as_current_span(f"s{n}", attributes={"text": text, "n": n}) as span:
            span.set_status(Status(StatusCode.ERROR, text))
    exporter.export(finished)  # one batch, as BatchSpanProcessor hands them over
    exporter.shutdown()
    spans = read_spans(tmp_path)
    assert sorted(s["attributes"]["n"] for s in spans) == list(range(len(texts)))
    by_n = {s["attributes"]["n"]: s for s in spans}
    for n, text in enumerate(texts[:-1]):
        assert by_n[n]["attributes"]["text"] == text
        assert by_n[n]["error"] == text


class _Keep:
    def __init__(self, into: list[object]) -> None:
        self.into = into

    def export(self, spans: object) -> object:
        from opentelemetry.sdk.trace.export import SpanExportResult

        self.into.extend(spans)  # type: ignore[call-overload]
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 0) -> bool:
        return True
