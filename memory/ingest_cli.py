"""`relaybus memory ingest PATH`: a file, or every .md/.txt file under a folder, into a collection.

Each file goes in bounded steps (`MemoryClient.ingest`), so no request runs into the request
timeout however long the file. Progress: on a terminal, a live line on stderr (file i of n,
chunks stored); one line per file on stdout and a summary at the end, or with `--json` one
object at the end (`files`, one entry per file, and the totals). A failure names the file it
stopped at and what was stored before it; running the command again continues (chunk ids derive
from tenant + collection + file + text, so nothing stored is embedded or stored twice).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, TextIO

from relaybus.bus import RelayError

from .client import MemoryClient
from .errors import MemoryRefused

SUFFIXES = (".md", ".markdown", ".txt")


class IngestStopped(RelayError):
    """Ingesting stopped at one file; the message names it and what was stored before."""


def read_documents(path: Path) -> list[tuple[str, str]]:
    """(source name, text) for a file, or for every .md/.txt file under a folder."""
    if not path.exists():
        raise MemoryRefused(f"{path}: no such file or folder")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        found = [(str(p.relative_to(path)), p.read_text(errors="replace")) for p in files]
    else:
        found = [(path.name, path.read_text(errors="replace"))]
    if not found:
        raise MemoryRefused(f"{path}: no {'/'.join(SUFFIXES)} files to ingest")
    return found


class Progress:
    """What ingesting prints as it goes: a live line on `live` (a terminal) after every step,
    and a line per file on `out` unless the output is JSON."""

    def __init__(self, files: int, out: TextIO | None, live: TextIO | None) -> None:
        self.files = files
        self.out = out
        self.live = live

    def step(self, index: int, source: str, reply: dict[str, Any]) -> None:
        if self.live is not None:
            stored = reply["chunks"] - reply["pending"]
            self.live.write(
                f"\r\x1b[K[{index}/{self.files}] {source}: {stored}/{reply['chunks']} chunks"
            )
            self.live.flush()

    def file_done(self, index: int, result: dict[str, Any]) -> None:
        self.clear()
        if self.out is not None:
            print(
                f"[{index}/{self.files}] {result['source']}: {result['chunks']} chunks "
                f"({result['added']} new, {result['removed']} removed)",
                file=self.out,
                flush=True,
            )

    def clear(self) -> None:
        if self.live is not None:
            self.live.write("\r\x1b[K")
            self.live.flush()


async def ingest_documents(
    client: MemoryClient,
    collection: str,
    documents: list[tuple[str, str]],
    progress: Progress,
) -> dict[str, Any]:
    """Ingest `documents` one by one; the totals and one result per file."""
    started = time.monotonic()
    done: list[dict[str, Any]] = []
    for index, (source, text) in enumerate(documents, 1):
        last: dict[str, Any] | None = None

        def on_step(reply: dict[str, Any], index: int = index, source: str = source) -> None:
            nonlocal last
            last = reply
            progress.step(index, source, reply)

        try:
            result = await client.ingest(collection, source, text, on_step=on_step)
        except RelayError as exc:
            progress.clear()
            message = stopped_at(source, index, len(documents), last, done, exc)
            raise IngestStopped(message) from exc
        done.append(result)
        progress.file_done(index, result)
    return {
        "collection": collection,
        "files": done,
        "chunks": sum(r["chunks"] for r in done),
        "added": sum(r["added"] for r in done),
        "kept": sum(r["kept"] for r in done),
        "removed": sum(r["removed"] for r in done),
        "seconds": round(time.monotonic() - started, 2),
    }


def stopped_at(
    source: str,
    index: int,
    files: int,
    reply: dict[str, Any] | None,
    done: list[dict[str, Any]],
    error: RelayError,
) -> str:
    """Which file failed, why, and what is stored: the files before it, and its own chunks as
    its last answered step reported them."""
    before = (
        f"{len(done)} file(s) whole ({sum(r['chunks'] for r in done)} chunks)"
        if done
        else "no file"
    )
    own = (
        f"{reply['chunks'] - reply['pending']} of {reply['chunks']} chunks"
        if reply is not None
        else "no step answered"
    )
    return (
        f"ingest stopped at {source} (file {index} of {files}): {error}. Stored before it: "
        f"{before}; of {source}: {own}. Run the same command again to continue: what is stored "
        "is kept, not added twice"
    )


def summary_line(summary: dict[str, Any]) -> str:
    return (
        f"{len(summary['files'])} file(s), {summary['chunks']} chunks into "
        f"{summary['collection']!r}: {summary['added']} new, {summary['kept']} unchanged, "
        f"{summary['removed']} removed ({summary['seconds']:.1f} s)"
    )


def progress_for(files: int, as_json: bool) -> Progress:
    """Lines per file on stdout unless `as_json`; a live line when stderr is a terminal."""
    return Progress(
        files, None if as_json else sys.stdout, sys.stderr if sys.stderr.isatty() else None
    )
