"""The processes a demo starts, each stopped by its own pid at the end."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from relaybus.bus import RelayError

SELF_COMMAND = [sys.executable, "-m", "relaybus.cli"]


class Processes:
    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, env: Mapping[str, str], *args: str) -> subprocess.Popen[bytes]:
        """`relaybus ARGS` in the background, its output in logs/NAME.log."""
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [*SELF_COMMAND, *args],
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self.started.append((name, proc))
        return proc

    def start_server(
        self,
        name: str,
        announces: str,
        *args: str,
        env: Mapping[str, str] | None = None,
        timeout_s: float = 30.0,
    ) -> str:
        """Start a `relaybus dev …` server on a free port; return the URL it announces as
        `ANNOUNCES=URL` on its first line of output (any free port unless ARGS name one)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [*SELF_COMMAND, *args, *(() if "--port" in args else ("--port", "0"))],
                env={**os.environ, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        self.started.append((name, proc))
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        line = b""
        while not line.endswith(b"\n") and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.2)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                line += chunk
        found = re.search(rf"{announces}=(\S+)", line.decode(errors="replace"))
        if found is None:
            raise RelayError(
                f"`relaybus {' '.join(args)}` did not start; see {self.logs}/{name}.log"
            )
        return found[1]

    def stop_all(self, timeout_s: float = 20.0) -> None:
        for _, proc in reversed(self.started):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in reversed(self.started):
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        self.started.clear()
