"""Ingesting documents in bounded steps: a folder through `relaybus memory ingest` and the real
service with the semantic embedder (progress, search, nothing twice), steps that stop at their
limit or budget and continue, and a failure that names its file and what was stored."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from relaybus.bus import Bus, Settings, rpc
from relaybus.memory.cli import ingest as ingest_command
from relaybus.memory.client import INGEST_STEP_CHUNKS
from relaybus.memory.documents import EMBED_STEP, chunk
from relaybus.memory.ingest_cli import IngestStopped
from relaybus.memory.messages import Caller, Ingest
from relaybus.memory.service import MemoryService

from ..conftest import ROOT, child_env, service_process, wait_service
from .conftest import Clock, client

GARAGE_FACT = "The north garage opens at 06:40, for electric cars only."


def handbook(topic: str, sections: int, extra: str = "") -> str:
    """A markdown file of about 700 characters a section: one chunk each."""
    parts = [f"# The {topic} handbook"]
    for i in range(sections):
        rules = " ".join(
            f"Rule {i}.{j} of the {topic} policy: a request about {topic} item {i * 31 + j} "
            f"goes to desk {j} and is answered within {i + j + 1} days."
            for j in range(6)
        )
        parts.append(f"## {topic.title()}, part {i}\n\n{rules}")
    if extra:
        parts.append(f"## Notes\n\n{extra}")
    return "\n\n".join(parts)


def write_folder(folder: Path) -> dict[str, str]:
    files = {
        "01-travel.md": handbook("travel", 6),
        "02-expenses.md": handbook("expenses", 6),
        # more chunks than one step embeds: this file takes several requests
        "03-security.md": handbook("security", INGEST_STEP_CHUNKS + 8),
        "04-parking.md": handbook("parking", 6, extra=GARAGE_FACT),
    }
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    return files


def memory_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relaybus.cli", "memory", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env(settings),
        timeout=170,
    )


async def test_a_folder_goes_in_with_progress_and_a_second_ingest_adds_nothing(
    bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    settings = settings.with_values(embedder="minilm")
    files = write_folder(tmp_path / "docs")
    assert all(len(text) > 4000 for text in files.values())
    total = sum(len(chunk(text)) for text in files.values())
    ingest = ("ingest", str(tmp_path / "docs"), "--collection", "handbook", "--as", "alice")
    with service_process(settings, "memory"):
        await wait_service(bus, "memory", 60)
        ping = await rpc.call(bus, bus.subjects.service("memory", "ping"), {})
        assert ping == {"embedder": "all-minilm-l6-v2"}
        first = await asyncio.to_thread(memory_cli, settings, *ingest)
        assert first.returncode == 0, first.stderr
        lines = first.stdout.splitlines()
        assert len(lines) == len(files) + 1  # a line per file, then the summary
        for index, (name, line) in enumerate(zip(files, lines, strict=False), 1):
            chunks = len(chunk(files[name]))
            # (a step answered too late on a loaded machine is sent again; what it stored
            # then counts as unchanged, never twice)
            assert line.startswith(f"[{index}/4] {name}: {chunks} chunks ("), line
            assert line.endswith(" new, 0 removed)"), line
        assert lines[-1].startswith(f"4 file(s), {total} chunks into 'handbook': "), lines[-1]

        hits = await client(bus, "alice").search_docs(
            "when does the north garage open", k=3, collection="handbook"
        )
        assert hits and hits[0]["source"] == "04-parking.md" and "06:40" in hits[0]["text"]

        again = await asyncio.to_thread(memory_cli, settings, *ingest, "--json")
        assert again.returncode == 0, again.stderr
        summary = json.loads(again.stdout)  # one object, at the end
        assert (summary["added"], summary["kept"], summary["removed"]) == (0, total, 0)
        assert [f["source"] for f in summary["files"]] == list(files)
        assert all(f["added"] == 0 and f["steps"] == 1 for f in summary["files"])
        assert (await client(bus, "alice").stats())["document_chunks"] == total


async def test_a_step_stops_at_its_limit_or_budget_and_the_next_continues(
    bus: Bus, served: tuple[MemoryService, Clock]
) -> None:
    text = handbook("security", 20)
    chunks = len(chunk(text))
    subject = bus.subjects.service("memory", "ingest")
    caller = Caller(run_id="RUN1", agent="research", principal="user:alice")
    step = Ingest(caller=caller, collection="hb", source="security.md", text=text, limit=5)
    first = await rpc.call(bus, subject, step)
    assert (first["kept"], first["added"], first["pending"]) == (0, 5, chunks - 5)
    in_a_hurry = msgspec.structs.replace(step, limit=0, budget_s=1e-9)
    second = await rpc.call(bus, subject, in_a_hurry)  # one batch, then the budget is spent
    assert (second["kept"], second["added"]) == (5, EMBED_STEP)
    assert second["pending"] == chunks - 5 - EMBED_STEP
    rest = await client(bus, "alice").ingest("hb", "security.md", text)
    assert rest["kept"] == 5 + EMBED_STEP and rest["added"] == chunks - rest["kept"]

    # a new version: its chunks go in over several steps; the old ones go once all are in
    edited = text.replace("desk 3", "desk 9")
    steps: list[dict[str, int]] = []
    result = await client(bus, "alice").ingest("hb", "security.md", edited, on_step=steps.append)
    assert result["steps"] == len(steps) and all(s["removed"] == 0 for s in steps[:-1])
    assert result["removed"] == steps[-1]["removed"] > 0 and result["added"] > 0
    assert (await client(bus, "alice").stats())["document_chunks"] == len(chunk(edited))


async def test_a_failure_names_the_file_and_what_was_stored_and_a_rerun_continues(
    bus: Bus,
    settings: Settings,
    served: tuple[MemoryService, Clock],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.md").write_text(handbook("travel", 4))
    (folder / "b.md").write_text("   \n")  # the service refuses an empty document
    (folder / "c.md").write_text(handbook("parking", 3))
    a_chunks = len(chunk(handbook("travel", 4)))
    args = argparse.Namespace(path=folder, collection="hb", as_user="alice", token=None, json=False)
    with pytest.raises(IngestStopped) as stopped:
        await ingest_command(args, settings)
    message = str(stopped.value)
    assert message.startswith("ingest stopped at b.md (file 2 of 3): document 'b.md' is empty")
    assert f"Stored before it: 1 file(s) whole ({a_chunks} chunks); of b.md: no step" in message
    assert "Run the same command again to continue" in message
    assert capsys.readouterr().out == f"[1/3] a.md: {a_chunks} chunks ({a_chunks} new, 0 removed)\n"

    (folder / "b.md").write_text(handbook("expenses", 2))
    args.json = True
    assert await ingest_command(args, settings) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [(f["source"], f["added"]) for f in summary["files"]] == [
        ("a.md", 0),
        ("b.md", len(chunk(handbook("expenses", 2)))),
        ("c.md", len(chunk(handbook("parking", 3)))),
    ]
    total = sum(len(chunk(p.read_text())) for p in sorted(folder.iterdir()))
    assert summary["chunks"] == total and summary["added"] == total - a_chunks
    assert (await client(bus, "alice").stats())["document_chunks"] == total
