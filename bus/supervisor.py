"""`relaybus up`: run the embedded stack (nats-server + service processes) until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import select
import signal
import socket
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from .client import Bus
from .errors import RelayError, ServerError
from .private import write_private
from .runtime import stop_on_signals
from .server import NatsServer
from .settings import Settings
from .stack import (
    Proc,
    StackRecord,
    describe,
    is_alive,
    public_url,
    read_stack,
    remove_stack,
    write_stack,
)
from .streams import default_topology, ensure

log = logging.getLogger("relaybus.stack")


class StackAuth(Protocol):
    """How `up` secures the embedded server (RELAYBUS_NATS_AUTH=1); supplied by the identity layer."""

    def initial(self, admins: dict[str, str]) -> str:
        """The first authorization block: the operator and the services (user → password)."""
        ...

    async def follow(self, bus: Bus, write: Callable[[str], None]) -> None:
        """Run for the stack's life, calling `write(block)` whenever the block should change."""
        ...


async def serve_stack(
    settings: Settings,
    services: Mapping[str, Sequence[str]],
    ready_fd: int | None = None,
    auth: StackAuth | None = None,
) -> int:
    """Start nats-server (unless RELAYBUS_NATS_URL is set) and `services`; stop on SIGTERM.

    With RELAYBUS_NATS_AUTH=1 and an `auth` provider, the server runs with an authorization
    block that `auth` keeps in step with the registry (rewritten, then reloaded with SIGHUP)."""
    home = settings.home.resolve()
    _refuse_a_second_stack(settings)
    (home / "logs").mkdir(parents=True, exist_ok=True)
    stop = asyncio.Event()
    stop_on_signals(stop)
    server: NatsServer | None = None
    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        url = settings.nats_url
        conf = home / "nats-auth.conf"
        secure = settings.nats_auth and auth is not None and not url
        passwords = {name: secrets.token_urlsafe(18) for name in (OPERATOR, CLIENT, *services)}
        if not url and not secure:
            log.warning(
                "RELAYBUS_NATS_AUTH=0: the embedded nats-server accepts ANY local process as the "
                "operator, with no permissions. For development only; never expose this stack."
            )
        if not url:
            if secure:
                assert auth is not None
                write_private(conf, auth.initial(passwords).encode())
            server = await asyncio.to_thread(
                _start_server, home, settings.nats_server, conf if secure else None
            )
            url = server.url
        service_urls = {name: url for name in services}
        client_url = ""
        if secure and server is not None:
            service_urls = {n: _with_user(server.url, n, passwords[n]) for n in services}
            url = _with_user(server.url, OPERATOR, passwords[OPERATOR])
            client_url = _with_user(server.url, CLIENT, passwords[CLIENT])
        run_settings = settings.model_copy(update={"nats_url": url, "home": home})
        async with Bus(run_settings, name="relaybus-up") as bus:
            await ensure(bus, default_topology(bus.subjects, bus.settings.stream_replicas))
        env = {**os.environ, **run_settings.env()}

        def spawn(name: str) -> subprocess.Popen[bytes]:
            with (home / "logs" / f"{name}.log").open("ab") as logf:
                return subprocess.Popen(
                    list(services[name]),
                    env={**env, "RELAYBUS_NATS_URL": service_urls[name]},
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=logf,
                )

        for name in services:
            children[name] = spawn(name)
        async with Bus(run_settings, name="relaybus-up-probe") as bus:
            ready_by = asyncio.get_running_loop().time() + SERVICE_START_S
            for name, child in children.items():
                await _wait_ready(bus, name, child, ready_by)
        procs = [describe(n, p.pid, _metrics_port(services[n])) for n, p in children.items()]
        if server is not None:
            procs.insert(0, describe("nats", server.pid))
        write_stack(
            settings,
            StackRecord(
                nats_url=url,
                home=str(home),
                supervisor=describe("up", os.getpid()),
                processes=tuple(procs),
                client_url=client_url,
            ),
        )
        log.info("relaybus stack up: %s (home %s)", public_url(url), home)
        if ready_fd is not None:
            os.write(ready_fd, f"{public_url(url)}\n".encode())
            os.close(ready_fd)
        if secure and server is not None:
            assert auth is not None
            running = server

            def rewrite(block: str) -> None:
                write_private(conf, block.encode())
                running.reload()

            async with Bus(run_settings, name="relaybus-up-auth") as auth_bus:
                follower = asyncio.create_task(auth.follow(auth_bus, rewrite))
                try:
                    await _wait_for_exit(stop, server, children, spawn)
                finally:
                    follower.cancel()
        else:
            await _wait_for_exit(stop, server, children, spawn)
    finally:
        remove_stack(settings)
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children.values():
            try:
                child.wait(20)
            except subprocess.TimeoutExpired:
                child.kill()
        if server is not None:
            await asyncio.to_thread(server.stop)
    return 0


MAX_RESTARTS = 5
# How long the services together may take to answer their first ping. Generous: a loaded
# machine starting several Python processes at once is slow, and failing there helps nobody.
SERVICE_START_S = 90.0
OPERATOR = "operator"
CLIENT = "client"  # plain NATS clients: bare task subjects and run events only (docs/wire.md)


def _with_user(url: str, user: str, password: str) -> str:
    """`url` with one NATS user's credentials (each service connects as itself)."""
    return url.replace("nats://", f"nats://{user}:{password}@", 1)


async def _wait_for_exit(
    stop: asyncio.Event,
    server: NatsServer | None,
    children: dict[str, subprocess.Popen[bytes]],
    spawn: Callable[[str], subprocess.Popen[bytes]],
) -> None:
    """Block until `stop` is set. A service that exits is restarted (it rebuilds its state);
    one that keeps exiting, or a dead nats-server, ends the stack loudly."""
    restarts: dict[str, int] = {}
    while not stop.is_set():
        try:  # (not `wait_for`: on 3.11 it can swallow a cancellation, see bus/consumer.py)
            async with asyncio.timeout(1.0):
                await stop.wait()
        except TimeoutError:
            pass
        if server is not None and server.process is not None and server.process.poll() is not None:
            raise ServerError("nats-server exited; see logs/nats.log under RELAYBUS_HOME")
        for name, child in list(children.items()):
            if child.poll() is None:
                continue
            restarts[name] = restarts.get(name, 0) + 1
            if restarts[name] > MAX_RESTARTS:
                raise RelayError(
                    f"service {name} exited {MAX_RESTARTS} times (last code {child.returncode}); "
                    f"see logs/{name}.log"
                )
            log.warning("service %s exited with %s; restarting it", name, child.returncode)
            children[name] = spawn(name)


async def _wait_ready(bus: Bus, name: str, child: subprocess.Popen[bytes], deadline: float) -> None:
    """A service is ready once anything answers on `<prefix>.svc.<name>.ping` (a partition's
    process, `<service>-<partition>`: on `<prefix>.svc.<service>.ping.<partition>`)."""
    loop = asyncio.get_running_loop()
    service, _, partition = name.partition("-")
    probe = (
        bus.subjects.service_at(service, "ping", partition)
        if partition
        else bus.subjects.service(name, "ping")
    )
    while loop.time() < deadline:
        if child.poll() is not None:
            raise RelayError(f"service {name} exited with {child.returncode}; see logs/{name}.log")
        try:
            await bus.request(probe, b"{}", timeout_s=1.0)
            return
        except RelayError:
            await asyncio.sleep(0.1)
    raise RelayError(
        f"service {name} did not answer within {SERVICE_START_S:g}s of starting; "
        f"see logs/{name}.log"
    )


def _start_server(home: Path, binary: str | None, config_file: Path | None) -> NatsServer:
    """The stack's nats-server, on the port the home's last stack listened on when it is free:
    agents still running from before `relaybus down` reconnect to it on their own (they retry
    that address for ever), instead of knocking on a port nobody answers any more."""
    remembered = home / "nats" / "port"
    for port in dict.fromkeys((_free_or_none(remembered), -1)):
        if port is None:
            continue
        server = NatsServer(
            home / "nats",
            port=port,
            binary=binary,
            log_file=home / "logs" / "nats.log",
            config_file=config_file,
        )
        try:
            server.start()
        except ServerError:
            if port == -1:
                raise
            log.info("port %d is taken now; the stack takes another", port)
            continue
        remembered.write_text(server.url.rsplit(":", 1)[1])
        return server
    raise ServerError("nats-server did not start")  # pragma: no cover (the -1 try raises)


def _free_or_none(remembered: Path) -> int | None:
    try:
        port = int(remembered.read_text())
    except (OSError, ValueError):
        return None
    if not 0 < port < 65536:
        return None
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as nats-server binds
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return None
    return port


def _metrics_port(argv: Sequence[str]) -> int:
    args = list(argv)
    return int(args[args.index("--metrics-port") + 1]) if "--metrics-port" in args else 0


def _refuse_a_second_stack(settings: Settings) -> None:
    if (existing := read_stack(settings)) is not None:
        raise RelayError(
            f"a stack already runs under {settings.home.resolve()} (pid "
            f"{existing.supervisor.pid}, {public_url(existing.nats_url)}); `relaybus down` stops it"
        )


def start_detached(
    settings: Settings,
    self_command: Sequence[str],
    extra: Sequence[str] = (),
    timeout_s: float = SERVICE_START_S + 30.0,
) -> str:
    """Start `relaybus up` in its own session; return the NATS URL once the stack is ready."""
    home = settings.home.resolve()
    _refuse_a_second_stack(settings)  # here, not only in the child: its log would come too late
    (home / "logs").mkdir(parents=True, exist_ok=True)
    log_path = home / "logs" / "up.log"
    read_fd, write_fd = os.pipe()
    with log_path.open("ab") as logf:
        proc = subprocess.Popen(
            [*self_command, "up", "--ready-fd", str(write_fd), *extra],
            pass_fds=(write_fd,),
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=logf,
            start_new_session=True,
            env={**os.environ, **settings.env()},
        )
    os.close(write_fd)
    try:
        ready, _, _ = select.select([read_fd], [], [], timeout_s)
        line = os.read(read_fd, 4096).decode().strip() if ready else ""
    finally:
        os.close(read_fd)
    if not line:
        if proc.poll() is None:
            proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)  # its last words reach the log before the log is shown
        raise RelayError(f"the stack did not come up; its log:\n{_tail(log_path)}")
    return line


def stop_stack(settings: Settings, timeout_s: float = 30.0) -> bool:
    """Stop the stack `up` started under this home; False if none was running."""
    record = read_stack(settings)
    if record is None:
        return False
    os.kill(record.supervisor.pid, signal.SIGTERM)
    if not _wait_gone(record.supervisor, timeout_s):
        for proc in (record.supervisor, *record.processes):
            if is_alive(proc):
                os.kill(proc.pid, signal.SIGKILL)
        remove_stack(settings)
    return True


def _wait_gone(proc: Proc, timeout_s: float) -> bool:
    try:
        fd = os.pidfd_open(proc.pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([fd], [], [], timeout_s)
        return bool(ready) or not is_alive(proc)
    finally:
        os.close(fd)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
