"""The OpenTelemetry instruments every relaybus process records into.

They come from the API's global meter: until `relaybus.bus.telemetry.install` sets an SDK provider (a
Prometheus endpoint with `--metrics-port`, or OTLP), recording is a no-op costing a method call.
Durations are in seconds; costs in integer micro-units, recorded by the ledger (the source of
truth) so a crashed agent process cannot lose them.
"""

from __future__ import annotations

from opentelemetry import metrics

METER = metrics.get_meter("relaybus")

HANDOFFS = METER.create_counter(
    "relaybus.handoffs",
    unit="{message}",
    description="task/result/signal messages delivered to an agent (first delivery)",
)
HANDOFF_LATENCY = METER.create_histogram(
    "relaybus.handoff.latency",
    unit="s",
    description="from a message's creation to its first delivery",
)
STEP_DURATION = METER.create_histogram(
    "relaybus.step.duration",
    unit="s",
    description="one execution of an agent's handler, by outcome",
)
TOOL_DURATION = METER.create_histogram(
    "relaybus.tool.duration", unit="s", description="one tool call, by tool and outcome"
)
RETRIES = METER.create_counter(
    "relaybus.retries",
    unit="{delivery}",
    description="task attempts that failed and will be retried",
)
DEAD_LETTERS = METER.create_counter(
    "relaybus.dead_letters",
    unit="{message}",
    description="messages moved to the dead-letter stream",
)
DENIALS = METER.create_counter(
    "relaybus.denials", unit="{decision}", description="refused chains and tool calls"
)
BUDGET_HOLDS = METER.create_counter(
    "relaybus.budget.holds", unit="{hold}", description="budget holds the ledger accepted"
)
SPENT = METER.create_counter(
    "relaybus.spent",
    unit="{micro-unit}",
    description="captured cost, by agent, tool and model (refunds not deducted)",
)
BUDGET_DENIALS = METER.create_counter(
    "relaybus.budget.denials",
    unit="{hold}",
    description="holds refused: budget exhausted or rate limited",
)
TOKEN_USAGE = METER.create_histogram(
    "gen_ai.client.token.usage", unit="{token}", description="tokens per LLM call, by type"
)
LLM_DURATION = METER.create_histogram(
    "gen_ai.client.operation.duration", unit="s", description="one LLM call"
)
RECALL_DURATION = METER.create_histogram(
    "relaybus.memory.recall.duration", unit="s", description="one memory recall or document search"
)
EVALUATIONS = METER.create_histogram(
    "relaybus.evaluation.score", unit="1", description="evaluator scores, by evaluator"
)
