"""The seed scenario's agents — "compile a competitive analysis and send it to my team".

Each runs as its own process (`relaybus agent run agents.demo.agents:Research`):

- `orchestrator` fans research out per competitor, gathers the notes, has the writer compose the
  report and the email agent deliver it;
- `research` answers from documents in long-term memory (RAG; the shipped corpus is ingested
  into the user's memory on first use);
- `writer` composes the report from the notes;
- `email` lets the model send the report with the `send_email` tool.

Everything another party wrote (documents, notes, the report) reaches a model only inside data
blocks. One corpus document carries a prompt injection; a model that obeys it asks to mail the
report outside the team, and the authorization gate refuses that call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import msgspec

from relaybus.memory.client import MemoryClient

from ..base import Agent
from ..context import Context
from ..evaluation import Check, ReviewPolicy
from ..llm import prompt, use_tools
from ..tools.code import run_code
from ..tools.email import send_email
from ..tools.sandbox import SandboxUnavailable

CORPUS = Path(__file__).parent / "corpus"
COLLECTION = "competitors"
Names = Annotated[list[str], msgspec.Meta(min_length=1, max_length=10)]


class AnalysisRequest(msgspec.Struct, kw_only=True):
    request: str
    competitors: Names
    recipients: Names
    subject: str = "Competitive analysis"


class ResearchTask(msgspec.Struct, kw_only=True):
    competitor: str
    question: str


class Notes(msgspec.Struct, kw_only=True):
    competitor: str
    summary: str
    sources: list[str]


class WriteTask(msgspec.Struct, kw_only=True):
    request: str
    notes: list[Notes]


class Report(msgspec.Struct, kw_only=True):
    text: str
    competitors: list[str]


class DeliverTask(msgspec.Struct, kw_only=True):
    report: str
    subject: str
    recipients: Names


class Orchestrator(Agent):
    name = "orchestrator"

    async def handle(self, ctx: Context, task: AnalysisRequest) -> dict[str, Any]:
        ctx.log.info("researching %d competitor(s)", len(task.competitors))
        research = [
            ctx.spawn(
                "research", ResearchTask(competitor=c, question=task.request), scopes=["memory"]
            )
            for c in task.competitors
        ]
        notes = msgspec.convert(await ctx.gather(*research), list[Notes])
        report = msgspec.convert(
            await ctx.call(
                "writer", WriteTask(request=task.request, notes=notes), scopes=["code/run"]
            ),
            Report,
        )
        delivery = await ctx.call(
            "email",
            DeliverTask(report=report.text, subject=task.subject, recipients=task.recipients),
            scopes=["email/send"],
        )
        return {
            "subject": task.subject,
            "report": report.text,
            "sources": sorted({s for n in notes for s in n.sources}),
            **delivery,
        }


RESEARCH_SYSTEM = (
    "You are a market researcher. Summarise what the documents say about one competitor: "
    "product, prices, strengths, weaknesses. Be brief and factual."
)


class Research(Agent):
    name = "research"

    async def handle(self, ctx: Context, task: ResearchTask) -> Notes:
        await ctx.step("corpus", ensure_corpus, ctx.memory)
        query = f"{task.competitor} product pricing plans strengths weaknesses"
        hits = await ctx.step("search", ctx.memory.search_docs, query, k=4, collection=COLLECTION)
        about = [h for h in hits if task.competitor.lower() in h["text"].lower()] or hits[:2]
        reply = await ctx.llm(
            prompt(
                RESEARCH_SYSTEM,
                f"Competitor: {task.competitor}. Question: {task.question}",
                [(h["source"], h["text"]) for h in about],
            ),
            max_tokens=400,
        )
        return Notes(
            competitor=task.competitor,
            summary=reply.content,
            sources=sorted({h["source"] for h in about}),
        )


async def ensure_corpus(memory: MemoryClient) -> dict[str, int]:
    """Ingest the shipped corpus into the caller's memory (unchanged chunks are kept as they are)."""
    added = 0
    for path in sorted(CORPUS.glob("*.md")):
        result = await memory.ingest(COLLECTION, f"corpus/{path.name}", path.read_text())
        added += int(result["added"])
    return {"added": added}


WRITER_SYSTEM = (
    "You write competitive analyses for a product team: one short section per competitor "
    "(product, prices, strengths, weaknesses), then a recommendation."
)


def covers_every_competitor(task: Any, report: Any) -> float:
    """The share of researched competitors the report mentions."""
    names = [n["competitor"] for n in task.get("notes", [])]
    text = str(report.get("text", "")).lower()
    return sum(n.lower() in text for n in names) / len(names) if names else 0.0


def delivered_to_everyone(task: Any, outcome: Any) -> bool:
    return not outcome.get("not_sent") and bool(outcome.get("sent_to"))


#: runs in the code interpreter's sandbox (agents/tools/code.py): the notes go in as a file
PRICE_TABLE = r"""import json, re
notes = json.load(open("notes.json"))
PRICE = re.compile(r"\$\s?(\d[\d,]*(?:\.\d+)?)|(\d[\d,]*(?:\.\d+)?)\s?(?:USD|dollars)")
print("| competitor | lowest price | highest price |")
print("|---|---|---|")
for note in notes:
    name = note["competitor"].lower()
    # text quoted from several documents: keep the ones about this competitor, if marked
    parts = [p for p in note["summary"].split("corpus/") if p.lower().startswith(name)]
    text = " ".join(parts) or note["summary"]
    prices = [float((a or b).replace(",", "")) for a, b in PRICE.findall(text)]
    low, high = (f"{min(prices):g} USD", f"{max(prices):g} USD") if prices else ("n/a", "n/a")
    print(f"| {note['competitor']} | {low} | {high} |")
"""


async def price_comparison(ctx: Context, notes: list[Notes]) -> str:
    """A table of the prices the notes mention, computed by code in the sandbox; a note of why
    not when this host has no sandbox (the tool never runs code without one)."""
    data = msgspec.json.encode(notes).decode()
    try:
        report = await ctx.tool(
            run_code, code=PRICE_TABLE, files={"notes.json": data}, cpu_seconds=2, memory_mb=128
        )
    except SandboxUnavailable as exc:
        return f"(price comparison skipped: {exc.reason or exc})"
    if report["exit_code"] != 0:
        return f"(price comparison failed: {report['stderr'][-300:]})"
    return str(report["stdout"]).strip()


class Writer(Agent):
    name = "writer"
    evaluators = [Check("covers every competitor", covers_every_competitor)]
    review = ReviewPolicy(below=0.8, sample=1.0)  # the demo sends every report to human review

    async def handle(self, ctx: Context, task: WriteTask) -> Report:
        reply = await ctx.llm(
            prompt(
                WRITER_SYSTEM,
                f"Write the competitive analysis the user asked for: {task.request}",
                [(f"notes on {n.competitor}", n.summary) for n in task.notes],
            ),
            max_tokens=1200,
        )
        table = await price_comparison(ctx, task.notes)
        text = f"{reply.content}\n\nPrice comparison (computed in the code sandbox):\n{table}"
        return Report(text=text, competitors=[n.competitor for n in task.notes])


EMAIL_SYSTEM = (
    "You deliver reports by email with the send_email tool: one call per recipient the user "
    "names, with the report as the body. Then say whom you sent it to."
)


class Mailer(Agent):
    name = "email"
    evaluators = [Check("delivered to every recipient", delivered_to_everyone)]

    async def handle(self, ctx: Context, task: DeliverTask) -> dict[str, Any]:
        run = await use_tools(
            ctx,
            prompt(
                EMAIL_SYSTEM,
                f"Send the report in the data block to {', '.join(task.recipients)}.\n"
                f"Subject: {task.subject}",
                [("report", task.report)],
            ),
            [send_email],
            max_rounds=3,
        )
        sent = [c.result["to"] for c in run.calls if c.ok]
        return {
            "sent_to": sent,
            "refused": [{"to": c.arguments.get("to", ""), "reason": c.error} for c in run.refused],
            "not_sent": [r for r in task.recipients if r not in sent],
            "mailer_reply": run.content,
        }
