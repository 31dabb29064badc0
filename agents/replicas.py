"""`relaybus agent run --replicas N`: N replica processes sharing one durable consumer, each
restarted with backoff when it dies, until SIGTERM/SIGINT, which is forwarded to all."""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import Any

from relaybus.bus.runtime import EXIT_USAGE

log = logging.getLogger("relaybus.replicas")

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
HEALTHY_AFTER_S = 60.0  # a replica that ran this long starts its next backoff from the first
POLL_S = 0.2


class Replica:
    def __init__(self, index: int, command: Sequence[str]) -> None:
        self.index = index
        self.command = list(command)
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.backoff_s = FIRST_BACKOFF_S
        self.restart_at = 0.0
        self.restarts = 0


class Replicas:
    def __init__(self, commands: Sequence[Sequence[str]], env: Mapping[str, str], name: str):
        self.replicas = [Replica(i, command) for i, command in enumerate(commands)]
        self.env = dict(env)
        self.name = name
        self.stopping = 0
        self.failed = 0

    def run(self) -> int:
        previous = {
            signum: signal.signal(signum, self._forward)
            for signum in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            for replica in self.replicas:
                self._start(replica)
            while not self.stopping:
                self._tend(time.monotonic())
                time.sleep(POLL_S)
            return self._drain()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _start(self, replica: Replica) -> None:
        replica.proc = subprocess.Popen(replica.command, env=self.env, stdin=subprocess.DEVNULL)
        replica.started = time.monotonic()

    def _tend(self, now: float) -> None:
        for replica in self.replicas:
            if replica.proc is not None:
                code = replica.proc.poll()
                if code is None:
                    continue
                ran = now - replica.started
                if code == EXIT_USAGE and not self.stopping:
                    log.error(
                        "replica %d of %s stopped on a configuration error; not restarting",
                        replica.index + 1,
                        self.name,
                    )
                    self.failed = EXIT_USAGE
                    self._forward(signal.SIGTERM, None)
                    return
                if ran >= HEALTHY_AFTER_S:
                    replica.backoff_s = FIRST_BACKOFF_S
                replica.proc = None
                replica.restart_at = now + replica.backoff_s
                log.warning(
                    "replica %d of %s exited (%s) after %.1fs; restarting in %.1fs",
                    replica.index + 1,
                    self.name,
                    _exit(code),
                    ran,
                    replica.backoff_s,
                )
                replica.backoff_s = min(MAX_BACKOFF_S, replica.backoff_s * 2)
            elif now >= replica.restart_at and not self.stopping:
                replica.restarts += 1
                self._start(replica)

    def _forward(self, signum: int, _frame: Any) -> None:
        self.stopping = signum
        for replica in self.replicas:
            if replica.proc is not None and replica.proc.poll() is None:
                replica.proc.send_signal(signum)

    def _drain(self) -> int:
        codes = [r.proc.wait() for r in self.replicas if r.proc is not None]
        return self.failed or max((c for c in codes if c > 0), default=0)


def _exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
