"""compose/: the production-shaped deployment agrees with the code, and its NATS nodes form a
JetStream cluster for real that lets in only the clients with their own credentials: the
services and the operator with their passwords from ./secrets.sh, the agents with the nkeys of
the block setup generates and reloads. The checks themselves are in tests/compose_checks.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from relaybus.agents.demo import setup as demo
from relaybus.bus import Bus, ConnectionFailed, Settings, default_topology, ensure
from relaybus.bus.server import find_binary, free_port
from relaybus.services.identity.client import write_agent_key
from relaybus.services.identity.messages import AgentRecord
from relaybus.services.identity.natsconfig import inbox_prefix, nkey_path, write_nkey
from relaybus.services.identity.registry import Registry

from .compose_checks import (
    COMPOSE_DIR,
    ROOT,
    check,
    env_example_values,
    environment,
    load_compose,
    parse_nats_conf,
    port_of,
    read_texts,
    script_calls,
    shell_value,
)


def test_the_compose_files_agree_with_the_code() -> None:
    assert check(read_texts()) == []


def test_the_values_in_env_example_are_settings_the_stack_accepts() -> None:
    # Given every assignment .env.example shows, the commented-out real endpoints too
    texts = read_texts()
    # Then every process still accepts its environment (endpoints may now point outside)
    assert check(texts, env_example_values(texts)) == []


def _urls(user: str, var: str) -> str:
    """A client's RELAYBUS_NATS_URL as docker-compose.yml writes it: every node, one user."""
    return ",".join(
        f"nats://{user}:${{{var}:?run compose/secrets.sh}}@nats{i}:4222" for i in (1, 2, 3)
    )


_BOOTSTRAP_BLOCK = re.search(
    r"^authorization \{.*?^\}\n", read_texts()["nats/auth.conf"], re.M | re.S
)
_PLAIN = "nats://nats1:4222,nats://nats2:4222,nats://nats3:4222"

# file, old text, new text, what the findings must say
MUTATIONS = [
    ("docker-compose.yml", "RELAYBUS_STREAM_REPLICAS:", "RELAYBUS_STREAM_REPLICA:",
     r"RELAYBUS_STREAM_REPLICA is not a relaybus setting"),
    ("docker-compose.yml", "RELAYBUS_LEDGER: \"1\"", "RELAYBUS_LEDGER: \"maybe\"",
     r"Settings.from_env refuses .*RELAYBUS_LEDGER='maybe'"),
    ("docker-compose.yml", "relaybus.agents.demo.agents:Research", "relaybus.agents.demo.agent:Research",
     r"research: cannot import 'relaybus.agents.demo.agent'"),
    ("docker-compose.yml", "relaybus.agents.demo.agents:Mailer", "relaybus.agents.demo.agents:Email",
     r"email: relaybus.agents.demo.agents has no 'Email' \(its Agent subclasses: Mailer"),
    ("docker-compose.yml", "relaybus.agents.demo.agents:Writer", "relaybus.agents.demo.agents:Research",
     r"writer: runs agent 'research'"),
    ("docker-compose.yml", '"--concurrency", "8"', '"--concurrent", "8"',
     r"does not parse: .*unrecognized arguments: --concurrent"),
    ("docker-compose.yml", '"service", "ledger"', '"service", "ledgr"',
     r"ledger: .* does not parse: .*invalid choice: 'ledgr'"),
    ("docker-compose.yml", "RELAYBUS_METRICS_HOST: 0.0.0.0", "RELAYBUS_METRICS_HOST: 127.0.0.1",
     r"--metrics-port on RELAYBUS_METRICS_HOST=127.0.0.1 \(loopback\)"),
    ("docker-compose.yml", "http://otel-collector:4318", "http://otel-collector:4317",
     r"OTEL_EXPORTER_OTLP_ENDPOINT=http://otel-collector:4317: otel-collector listens on 4318"),
    ("docker-compose.yml", f"  RELAYBUS_NATS_URL: {_PLAIN}\n",
     "  RELAYBUS_NATS_URL: nats://nats1:4222,nats://nats2:4222\n",
     r"orchestrator: RELAYBUS_NATS_URL does not list nats3"),
    ("docker-compose.yml", "@nats2:4222,nats://identity:", "@nats2:4223,nats://identity:",
     r"identity: RELAYBUS_NATS_URL port 4223 for nats2 is not its client port"),
    ("docker-compose.yml", 'RELAYBUS_STREAM_REPLICAS: "3"', 'RELAYBUS_STREAM_REPLICAS: "1"',
     r"RELAYBUS_STREAM_REPLICAS=1 on a 3-node cluster"),
    ("docker-compose.yml", "RELAYBUS_QDRANT_URL: http://qdrant:6333", "RELAYBUS_QDRANT_URL: http://qdrant:6334",
     r"memory: RELAYBUS_QDRANT_URL=http://qdrant:6334: qdrant listens on 6333"),
    ("docker-compose.yml", "      qdrant:\n        condition", "      qdrnt:\n        condition",
     r"memory depends on qdrnt, which is not a service"),
    ("docker-compose.yml", "    deploy:\n      replicas: 3",
     "    container_name: research\n    deploy:\n      replicas: 3",
     r"research: container_name stops `docker compose up --scale research=3`"),
    ("docker-compose.yml", "--handoff-to writer", "--handoff-to writr",
     r"setup: registers agents .*agents.demo.setup.AGENTS says"),
    ("docker-compose.yml", "${RELAYBUS_LLM_MODEL:-scripted}", "${RELAYBUS_LLM_MODEL:-gpt-x}",
     r"no price for model 'gpt-x'"),
    ("docker-compose.yml", '"--port", "8000"', '"--port", "8080"',
     r"RELAYBUS_LLM_BASE_URL=http://model:8000/v1: model listens on 8080"),
    ("docker-compose.yml", '[ "$$n" -lt 60 ]', '[ "$n" -lt 60 ]',
     r"'\$n' in .*compose interpolates it"),
    ("docker-compose.yml", "- research-keys:/var/lib/relaybus/keys:ro", "- research-keys:/var/lib/relaybus/keys",
     r"research: identity is on but no keys volume is mounted read-only"),
    ("docker-compose.yml", "      - mail:/var/lib/relaybus/mail\n",
     "      - mail:/var/lib/relaybus/mailbox\n",
     r"smtp mounts volume mail at /var/lib/relaybus/mailbox, which the Dockerfile does not create"),
    ("docker-compose.yml", "@nats3:6222", "@nats3:6223",
     r"nats1: cluster routes .*6223.* are not the other nodes"),
    ("nats/nats2.conf", "    $NATS_ROUTE_NATS3\n", "    $NATS_ROUTE_NATS2\n",
     r"nats2: cluster routes .*'nats2'.* are not the other nodes"),
    ("nats/nats3.conf", "server_name: nats3", "server_name: nats-3",
     r"nats/nats3.conf: server_name 'nats-3' is not the service nats3"),
    ("nats/nats1.conf", "listen: 0.0.0.0:4222", "listen: 0.0.0.0:4333",
     r"port 4222 for nats1 is not its client port"),
    ("nats/nats1.conf", "store_dir: /data", "store_dir: /var/nats",
     r"JetStream store_dir '/var/nats' is not on a volume of nats1"),
    ("nats/nats2.conf", "http: 0.0.0.0:8222", "http: 0.0.0.0:8223",
     r"nats2: the healthcheck does not ask the monitoring port"),
    ("otel-collector.yaml", "exporters: [otlp/jaeger]", "exporters: [otlp/jaegr]",
     r"pipeline traces uses exporter otlp/jaegr, not defined"),
    ("otel-collector.yaml", "endpoint: jaeger:4317", "endpoint: jaegr:4317",
     r"exporter otlp/jaeger sends to jaegr, which is not a service"),
    ("Dockerfile", "COPY memory ./memory\n", "",
     r"Dockerfile does not copy the memory package"),
    ("Dockerfile", "FROM python:3.11-slim", "FROM python:3.10-slim",
     r"Dockerfile: FROM \['python:3.10-slim'\]"),
    (".env.example", "# RELAYBUS_SMTP_FROM=", "# RELAYBUS_SMTP_SENDER=",
     r".env.example: RELAYBUS_SMTP_SENDER is not a relaybus setting"),
    # -- NATS authentication: the nodes
    ("nats/auth.conf", _BOOTSTRAP_BLOCK[0] if _BOOTSTRAP_BLOCK else "authorization {", "",
     r"nats1: no authorization block with users: the node would accept anonymous clients"),
    ("nats/nats2.conf", "include ./auth.conf\n", "",
     r"nats2: no authorization block with users"),
    ("nats/auth.conf", "system_account: SYS", "system_account: SYS\nno_auth_user: operator",
     r"nats1: no_auth_user lets clients without credentials in"),
    ("nats/auth.conf", "password: $NATS_MEMORY_PASSWORD", "password: memory",
     r"nats1: user memory has a literal password in compose/"),
    ("nats/auth.conf", "password: $NATS_LEDGER_PASSWORD", "password: $NATS_IDENTITY_PASSWORD",
     r"NATS users identity and ledger have the same password"),
    ("nats/auth.conf", "  SYS {\n    users = [\n      {user: system, password: $NATS_SYSTEM_PASSWORD}\n",
     "  SYS {\n    users = [\n",
     r"nats1: no system account with a user and password"),
    ("nats/nats3.conf", "include ./generated/auth.conf\n", "",
     r"nats3: includes no block generated from the identity registry"),
    ("nats/nats1.conf", "include ./auth.conf\n", "include ./generated/auth.conf\ninclude ./auth.conf\n",
     r"nats/nats1.conf: includes ./auth.conf after the generated block"),
    ("nats/nats1.conf", "$NATS_ROUTE_NATS3", "$NATS_ROUTE_NATS4",
     r"nats1: \$NATS_ROUTE_NATS4 of its config is not in its environment"),
    ("nats/nats1.conf", "  authorization {\n    user: route\n    password: $NATS_ROUTE_PASSWORD\n  }\n", "",
     r"nats1: the cluster port has no authorization"),
    ("docker-compose.yml", "nats://route:${NATS_ROUTE_PASSWORD:?run compose/secrets.sh}@nats2:6222",
     "nats://nats2:6222",
     r"nats1: its route to nats2 does not carry the route credentials"),
    ("docker-compose.yml", "touch /var/lib/relaybus/nats/auth.conf", "touch /var/lib/relaybus/nats/auth.cnf",
     r"nats1: nothing it waits for creates auth.conf on volume nats-auth"),
    ("docker-compose.yml", "      - nats-auth:/etc/nats/generated:ro\n      - nats2-data",
     "      - nats-auth:/etc/nats/generated\n      - nats2-data",
     r"nats2 mounts volume nats-auth read-write"),
    # -- passwords: required, generated, never in git
    ("docker-compose.yml", "NATS_LEDGER_PASSWORD: ${NATS_LEDGER_PASSWORD:?run compose/secrets.sh}",
     "NATS_LEDGER_PASSWORD: ${NATS_LEDGER_PASSWORD:-ledger}",
     r"\$\{NATS_LEDGER_PASSWORD\} is not required everywhere"),
    ("secrets.sh", ' NATS_ROUTE_PASSWORD"', '"',
     r"secrets.sh does not generate NATS_ROUTE_PASSWORD, which docker-compose.yml requires"),
    (".env.example", "# NATS_SYSTEM_PASSWORD=", "NATS_SYSTEM_PASSWORD=changeme",
     r".env.example: NATS_SYSTEM_PASSWORD has a value"),
    # -- every client with its own credentials
    ("docker-compose.yml", f"  RELAYBUS_NATS_URL: {_PLAIN}\n",
     f"  RELAYBUS_NATS_URL: {_urls('operator', 'NATS_OPERATOR_PASSWORD')}\n",
     r"orchestrator: RELAYBUS_NATS_URL carries the credentials of NATS user 'operator'"),
    ("docker-compose.yml", "  RELAYBUS_PRICES: ${RELAYBUS_PRICES",
     '  NATS_OPERATOR_PASSWORD: ${NATS_OPERATOR_PASSWORD:?x}\n  RELAYBUS_PRICES: ${RELAYBUS_PRICES',
     r"writer: its environment holds the password of NATS user operator"),
    ("docker-compose.yml", "  RELAYBUS_PRICES: ${RELAYBUS_PRICES",
     '  RELAYBUS_NATS_AUTH: "0"\n  RELAYBUS_PRICES: ${RELAYBUS_PRICES',
     r"research: RELAYBUS_NATS_AUTH=0 turns NATS authentication off"),
    ("docker-compose.yml", f"RELAYBUS_NATS_URL: {_urls('ledger', 'NATS_LEDGER_PASSWORD')}",
     f"RELAYBUS_NATS_URL: {_urls('identity', 'NATS_IDENTITY_PASSWORD')}",
     r"ledger: connects as NATS user 'identity'; it must be its own user 'ledger'"),
    ("docker-compose.yml", f"RELAYBUS_NATS_URL: {_urls('memory', 'NATS_MEMORY_PASSWORD')}",
     f"RELAYBUS_NATS_URL: {_urls('memory', 'NATS_LEDGER_PASSWORD')}",
     r"memory: its password for NATS user 'memory' is not the one the nodes'"),
    ("docker-compose.yml", f"RELAYBUS_NATS_URL: {_urls('identity', 'NATS_IDENTITY_PASSWORD')}",
     f"RELAYBUS_NATS_URL: {_PLAIN}",
     r"identity: its NATS URL has no credentials: the nodes refuse anonymous clients"),
    ("docker-compose.yml", f"      NATS_URL: {_urls('operator', 'NATS_OPERATOR_PASSWORD')}",
     f"      NATS_URL: {_PLAIN}",
     r"nats-box: its NATS URL has no credentials"),
    # -- agents: each its own key volume, into which setup registered it
    ("docker-compose.yml", "- research-keys:/var/lib/relaybus/keys:ro", "- orchestrator-keys:/var/lib/relaybus/keys:ro",
     r"orchestrator and research mount the same key volume orchestrator-keys"),
    ("docker-compose.yml", "RELAYBUS_HOME=agents/writer relaybus", "relaybus",
     r"setup: `agent add writer` writes its keys to /var/lib/relaybus/keys, which is not a writable volume"),
    ("docker-compose.yml", "      - email-keys:/var/lib/relaybus/agents/email/keys\n      - ./nats",
     "      - writer-keys:/var/lib/relaybus/agents/email/keys\n      - ./nats",
     r"email: mounts key volume email-keys, but setup writes email's keys to .* on volume writer-keys"),
    # -- setup: the generated block, installed whole, then reloaded
    ("docker-compose.yml", ' --admin "memory:$$NATS_MEMORY_PASSWORD"', "",
     r"setup: `identity nats-config` leaves out NATS user memory"),
    ("docker-compose.yml", ' --admin "memory:$$NATS_MEMORY_PASSWORD"',
     ' --admin "memory:$$NATS_MEMORY_PASSWORD" --admin "research:$$NATS_OPERATOR_PASSWORD"',
     r"setup: `identity nats-config` gives full access to research"),
    ("docker-compose.yml", '--admin "ledger:$$NATS_LEDGER_PASSWORD"', '--admin "ledger:$$NATS_MEMORY_PASSWORD"',
     r"setup: `identity nats-config` gives ledger another password"),
    ("docker-compose.yml", ">nats/auth.conf.tmp\n        mv nats/auth.conf.tmp nats/auth.conf\n",
     ">nats/auth.conf\n",
     r"setup: writes the NATS block in place"),
    ("docker-compose.yml", "mv nats/auth.conf.tmp nats/auth.conf", "mv nats/auth.conf.tmp nats/users.conf",
     r"setup: installs the NATS block as /var/lib/relaybus/nats/users.conf"),
    ("docker-compose.yml", "        python /etc/relaybus/nats-reload.py\n", "",
     r"setup: does not reload the nodes after writing the NATS block"),
    ("docker-compose.yml", "NATS_SYSTEM_URL: nats://system:", "NATS_SYSTEM_URL: nats://operator:",
     r"setup: NATS_SYSTEM_URL is not the system account's user"),
    ("docker-compose.yml", "mv nats/auth.conf.tmp nats/auth.conf\n",
     "mv nats/auth.conf.tmp nats/auth.conf\n        RELAYBUS_HOME=agents/writer relaybus identity agent add writer\n",
     r"setup: generates the NATS block before it has registered every agent"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("file", "old", "new", "finding"), MUTATIONS, ids=[f"{m[0]}:{m[3][:40]}" for m in MUTATIONS]
)
def test_a_mutated_copy_is_caught(file: str, old: str, new: str, finding: str) -> None:
    # Given a copy of compose/ with one mistake in it
    texts = read_texts()
    assert old in texts[file], f"the mutation no longer applies to {file}"
    texts[file] = texts[file].replace(old, new, 1)
    # When it is checked, Then the mistake is reported
    problems = check(texts)
    assert any(re.search(finding, p) for p in problems), problems


# ---------------------------------------------------------------- ./secrets.sh


def _run_secrets(where: Path, *args: str) -> dict[str, str]:
    """Run compose/secrets.sh on a copy of compose/ (its .env.example) in `where`; the .env."""
    where.mkdir(exist_ok=True)
    for name in ("secrets.sh", ".env.example"):
        (where / name).write_text((COMPOSE_DIR / name).read_text())
    out = subprocess.run(
        ["sh", str(where / "secrets.sh"), *args], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    return dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.+)$", (where / ".env").read_text(), re.M))


def test_secrets_sh_writes_every_password_compose_requires_and_rotates_one(
    tmp_path: Path,
) -> None:
    # Given a fresh checkout: compose refuses to start without its required variables
    _, used = load_compose(read_texts()["docker-compose.yml"], {}, [])
    required = {var for var, ops in used.items() if ":?" in ops}
    assert {v for v in required if v.endswith("_PASSWORD")} == required and len(required) >= 6
    # When ./secrets.sh runs
    env = _run_secrets(tmp_path)
    # Then .env (0600) holds every one, each its own, shaped to be safe unquoted in a
    # nats-server config and in a URL
    assert (tmp_path / ".env").stat().st_mode & 0o777 == 0o600
    passwords = {k: v for k, v in env.items() if k in required}
    assert set(passwords) == required
    assert len(set(passwords.values())) == len(passwords)
    assert all(re.fullmatch(r"p[0-9a-f]{48}", v) for v in passwords.values())
    # and running it again changes nothing
    assert _run_secrets(tmp_path) == env
    # while --rotate replaces exactly the one named
    rotated = _run_secrets(tmp_path, "--rotate", "NATS_LEDGER_PASSWORD")
    assert rotated["NATS_LEDGER_PASSWORD"] != env["NATS_LEDGER_PASSWORD"]
    assert {k: v for k, v in rotated.items() if k != "NATS_LEDGER_PASSWORD"} == {
        k: v for k, v in env.items() if k != "NATS_LEDGER_PASSWORD"
    }


# ---------------------------------------------------------------- the nodes, for real


@dataclass
class Loopback:
    """compose/ on loopback: the nodes' config directories as compose mounts them (hosts →
    127.0.0.1, ports → free ones, store → a temp dir, named volumes → shared temp dirs), each
    node's environment, and the services as compose defines them, read with a real .env."""

    secrets: dict[str, str]
    services: dict[str, dict[str, Any]]
    confs: dict[str, Path]  # node -> its nats.conf
    envs: dict[str, dict[str, str]]  # node -> its environment, rewritten for loopback
    ports: dict[tuple[str, int], int]  # (node, port in compose) -> port on loopback
    volumes: Path  # named volumes: one directory each

    def local(self, url: str) -> str:
        """`url` (or a comma-separated list) pointing at the loopback nodes."""

        def one(m: re.Match[str]) -> str:
            return f"127.0.0.1:{self.ports[(m[1], int(m[2]))]}"

        return re.sub(r"(?<=[@/])(nats\d):(\d+)", one, url)

    def env(self, service: str) -> dict[str, str]:
        """A service's environment, its URLs pointing at the loopback nodes."""
        return {k: self.local(v) for k, v in environment(self.services[service]).items()}

    def settings(self, service: str, home: Path) -> Settings:
        return Settings.from_env(self.env(service), home=str(home))

    def node_url(self, node: str) -> str:
        return f"nats://127.0.0.1:{self.ports[(node, 4222)]}"


def loopback(tmp_path: Path) -> Loopback:
    secrets = _run_secrets(tmp_path / "compose")  # what ./secrets.sh writes, as compose reads it
    texts = read_texts()
    compose, _ = load_compose(texts["docker-compose.yml"], secrets, [])
    services = compose["services"]
    nodes = {n: s for n, s in services.items() if s.get("command", [""])[0] == "nats-server"}
    volumes = tmp_path / "volumes"
    ports: dict[tuple[str, int], int] = {}
    parsed = {}
    for name, svc in nodes.items():
        target = svc["command"][svc["command"].index("--config") + 1]
        source = next(v[2:].split(":")[0] for v in svc["volumes"] if f":{target}" in v)
        parsed[name] = (PurePosixPath(target).parent, source, parse_nats_conf(texts[source]))
        conf = parsed[name][2]
        for listen in (conf["listen"], conf["http"], conf["cluster"]["listen"]):
            ports[(name, port_of(listen))] = free_port()
    lb = Loopback(secrets, services, {}, {}, ports, volumes)
    for name, (etc, source, conf) in parsed.items():
        text = texts[source]
        swaps = [
            (
                f"listen: {conf['listen']}",
                f"listen: 127.0.0.1:{ports[(name, port_of(conf['listen']))]}",
            ),
            (f"http: {conf['http']}", f"http: 127.0.0.1:{ports[(name, port_of(conf['http']))]}"),
            (
                f"listen: {conf['cluster']['listen']}",
                f"listen: 127.0.0.1:{ports[(name, port_of(conf['cluster']['listen']))]}",
            ),
            (f"store_dir: {conf['jetstream']['store_dir']}", f"store_dir: {tmp_path / name}"),
        ]
        for old, new in swaps:
            assert text.count(old) == 1, f"{source}: {old!r} is not there once"
            text = text.replace(old, new)
        node_dir = tmp_path / f"{name}-etc"
        for mount in nodes[name]["volumes"]:  # the node's view of /etc/nats
            src, tgt = mount.split(":")[:2]
            if not tgt.startswith(f"{etc}/"):
                continue
            at = node_dir / tgt[len(str(etc)) + 1 :]
            at.parent.mkdir(parents=True, exist_ok=True)
            if src.startswith("./"):
                at.write_text(texts[src[2:]])
            else:
                (volumes / src).mkdir(parents=True, exist_ok=True)
                at.symlink_to(volumes / src, target_is_directory=True)
        (node_dir / "nats.conf").write_text(text)
        lb.confs[name] = node_dir / "nats.conf"
        lb.envs[name] = {k: lb.local(v) for k, v in environment(nodes[name]).items()}
    # the one-shot the nodes wait for (nats-auth) creates the file they include
    for dep in nodes["nats1"]["depends_on"]:
        script = services[dep]["command"][2]
        for mount in services[dep]["volumes"]:
            src, tgt = mount.split(":")[:2]
            script = script.replace(tgt, str(volumes / src))
        subprocess.run(["sh", "-ec", script], check=True, timeout=30)
    return lb


def _server_env(env: dict[str, str]) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", ""), **env}


def test_the_node_configs_are_valid_and_need_their_secrets(tmp_path: Path) -> None:
    lb = loopback(tmp_path)
    binary = find_binary()
    for node, conf in lb.confs.items():
        # Given a node's config as compose mounts it, with its environment: valid
        ok = subprocess.run(
            [binary, "-t", "-c", str(conf)],
            env=_server_env(lb.envs[node]),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert ok.returncode == 0, ok.stderr + ok.stdout
        # but without a password it does not start (there is no default to fall back on)
        env = {k: v for k, v in lb.envs[node].items() if k != "NATS_OPERATOR_PASSWORD"}
        bad = subprocess.run(
            [binary, "-t", "-c", str(conf)],
            env=_server_env(env),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert bad.returncode != 0 and "NATS_OPERATOR_PASSWORD" in bad.stderr + bad.stdout


@contextlib.contextmanager
def nats_node(
    conf: Path, env: dict[str, str], timeout_s: float = 20.0
) -> Iterator[subprocess.Popen[bytes]]:
    """`nats-server -c CONF` with `env` and nothing else, ready once its log says so;
    stopped by its pid."""
    proc = subprocess.Popen(
        [find_binary(), "-c", str(conf)],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=_server_env(env),
    )
    ready, log = threading.Event(), []

    def pump() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            log.append(raw.decode(errors="replace").rstrip())
            if "Server is ready" in log[-1]:
                ready.set()
        ready.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        assert ready.wait(timeout_s) and proc.poll() is None, "\n".join(log[-20:])
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        reader.join(5)
        if proc.stderr is not None:
            proc.stderr.close()


async def _connects(settings: Settings, **options: Any) -> bool:
    """Whether a client with `settings` (and nats-py `options`) is let in. An agent (`agent=`
    in `options`) also makes a JetStream API call that its permissions allow."""
    agent = options.pop("agent", None)
    try:
        async with Bus(settings, name="compose-test", connect_options=options, agent=agent) as bus:
            await bus.nc.flush(timeout=5)
            if agent is not None:
                await bus.js.account_info()
            return True
    except ConnectionFailed:
        return False


def _setup_call(lb: Loopback, words: list[str]) -> list[str]:
    """The setup script's command that starts with `words`, its $NAMEs read from setup's env."""
    env = environment(lb.services["setup"])
    for call in script_calls(lb.services["setup"]["command"][2]):
        if call.words[: len(words)] == words:
            return [shell_value(w, env) for w in call.words]
    raise AssertionError(f"setup runs no {' '.join(words)}")


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=_server_env(env), cwd=ROOT, capture_output=True, text=True, timeout=60
    )


@pytest.mark.timeout(180)
async def test_the_three_nodes_authenticate_every_client_and_form_an_r3_cluster(
    tmp_path: Path,
) -> None:
    # Given the three nodes started from compose/nats/*.conf (on loopback) with the passwords
    # ./secrets.sh generated, before setup has run (the generated block is empty)
    lb = loopback(tmp_path)
    home = tmp_path / "home"
    with contextlib.ExitStack() as nodes:
        for node, conf in lb.confs.items():
            await asyncio.to_thread(nodes.enter_context, nats_node(conf, lb.envs[node]))
        anonymous = Settings.from_env({}, home=str(home), connect_timeout_s=2)
        # Then no node lets an anonymous client in, not even on its cluster port
        for node in lb.confs:
            assert not await _connects(anonymous.model_copy(update={"nats_url": lb.node_url(node)}))
            route = f"nats://127.0.0.1:{lb.ports[(node, 6222)]}"
            assert not await _connects(anonymous.model_copy(update={"nats_url": route}))
        # and each service, and the operator's setup and cli, connect with their own credentials
        for service in ("identity", "ledger", "memory", "setup", "cli"):
            assert await _connects(lb.settings(service, home)), service
        # but not with another's password
        identity = lb.settings("identity", home)
        wrong = identity.nats_url.replace(  # type: ignore[union-attr]
            lb.secrets["NATS_IDENTITY_PASSWORD"], lb.secrets["NATS_LEDGER_PASSWORD"]
        )
        assert not await _connects(identity.model_copy(update={"nats_url": wrong}))

        # When identity provisions the relaybus topology (ensure waits for the meta leader)
        assert identity.stream_replicas == 3
        async with Bus(identity, name="compose-test") as bus:
            await ensure(bus, default_topology(bus.subjects, identity.stream_replicas))
            # Then every stream and bucket has three replicas, one on each node of the file
            for name in ("RELAY_TASKS", "RELAY_LEDGER", "RELAY_AUDIT", "KV_relay_journal"):
                info = await bus.js.stream_info(name)
                assert info.config.num_replicas == 3
                assert info.cluster is not None
                peers = {info.cluster.leader, *(r.name for r in info.cluster.replicas or [])}
                assert peers == set(lb.confs), (name, peers)

        # Given the demo's agents registered, each with its keys in its own directory (setup
        # puts them in each agent's volume; `agent add` needs the identity service, so the
        # records go to the registry directly, with the same fields)
        operator = lb.settings("setup", home)
        agent_homes = {name: tmp_path / "agents" / name for name in demo.AGENTS}
        async with Bus(operator, name="compose-test-operator") as bus:
            registry = await Registry.open(bus)
            for name, (scopes, handoff_to) in demo.AGENTS.items():
                key = write_agent_key(agent_homes[name], name)
                record = AgentRecord(
                    name=name,
                    public_key=bytes(key.verify_key).hex(),
                    scopes=scopes,
                    handoff_to=handoff_to,
                    nkey=write_nkey(agent_homes[name], name),
                )
                await registry.put_agent(record)

        def agent_settings(name: str, node: str) -> tuple[Settings, dict[str, Any]]:
            settings = lb.settings(name, agent_homes[name])
            settings = settings.model_copy(update={"nats_url": lb.node_url(node)})
            seed = str(nkey_path(agent_homes[name], name))
            return settings, {"nkeys_seed": seed, "inbox_prefix": inbox_prefix(name), "agent": name}

        # Then an agent is still refused: its nkey is in no block the nodes have
        settings, options = agent_settings("research", "nats1")
        assert not await _connects(settings, **options)

        # When setup's own commands run: `relaybus identity nats-config` with its --admin
        # users, the block written to a .tmp and renamed over the file every node includes
        # (the volume nats-auth), then nats/reload.py as the system user
        setup_env = {
            **{k: v for k, v in lb.env("setup").items() if not k.startswith("OTEL_")},
            "RELAYBUS_HOME": str(home),
        }
        argv = _setup_call(lb, ["relaybus", "identity", "nats-config"])
        block = _run([sys.executable, "-m", "relaybus.cli", *argv[1 : argv.index(">")]], setup_env)
        assert block.returncode == 0, block.stderr
        generated = lb.volumes / "nats-auth" / "auth.conf"
        generated.with_suffix(".tmp").write_text(block.stdout)
        generated.with_suffix(".tmp").rename(generated)
        reload_argv = _setup_call(lb, ["python"])
        assert reload_argv[1] == "/etc/relaybus/nats-reload.py"
        reload_cmd = [sys.executable, str(COMPOSE_DIR / "nats" / "reload.py"), *reload_argv[2:]]
        reloaded = _run(reload_cmd, setup_env)
        assert reloaded.returncode == 0, reloaded.stderr
        assert sorted(re.findall(r"(nats\d): configuration reloaded", reloaded.stdout)) == sorted(
            lb.confs
        )

        # Then every agent connects, as its own nkey user, to every node
        for name in demo.AGENTS:
            for node in lb.confs:
                settings, options = agent_settings(name, node)
                assert await _connects(settings, **options), (name, node)
        # with an nkey the block does not know still refused
        stranger = tmp_path / "stranger"
        write_nkey(stranger, "research")
        settings, options = agent_settings("research", "nats2")
        options["nkeys_seed"] = str(nkey_path(stranger, "research"))
        assert not await _connects(settings, **options)
        # while anonymous clients stay refused and the services and the operator stay in
        assert not await _connects(anonymous.model_copy(update={"nats_url": lb.node_url("nats3")}))
        for service in ("identity", "ledger", "memory", "setup", "cli"):
            assert await _connects(lb.settings(service, home)), service

        # When an agent's nkey is rotated (registered anew, as setup does once its key files
        # are deleted), and setup's block is generated and reloaded again
        settings, options = agent_settings("writer", "nats2")
        old_seed = options.pop("nkeys_seed")
        agent = options.pop("agent")
        connected = Bus(
            settings,
            name="old-writer",
            connect_options={**options, "nkeys_seed": old_seed},
            agent=agent,
        )
        await connected.__aenter__()
        try:
            async with Bus(operator, name="compose-test-operator") as bus:
                registry = await Registry.open(bus)
                known = await registry.agent("writer")
                assert known is not None
                agent_homes["writer"] = tmp_path / "agents" / "writer-2"
                key = write_agent_key(agent_homes["writer"], "writer")
                known.public_key = bytes(key.verify_key).hex()
                known.nkey = write_nkey(agent_homes["writer"], "writer")
                await registry.put_agent(known)
            block = _run(
                [sys.executable, "-m", "relaybus.cli", *argv[1 : argv.index(">")]], setup_env
            )
            assert block.returncode == 0, block.stderr
            generated.write_text(block.stdout)
            assert _run(reload_cmd, setup_env).returncode == 0
            # Then the old key's open connection is closed and it cannot connect again
            for _ in range(50):
                if not connected.nc.is_connected:
                    break
                await asyncio.sleep(0.1)
            assert not connected.nc.is_connected
        finally:
            await connected.nc.close()
        settings, options = agent_settings("writer", "nats1")
        assert not await _connects(settings, **{**options, "nkeys_seed": old_seed})
        # while the new key connects
        assert await _connects(settings, **options)

        # When a broken block is installed, Then the reload says so and the nodes keep the
        # block they have
        generated.write_text("authorization {\n  users = [\n")
        broken = _run(reload_cmd, setup_env)
        assert broken.returncode == 1 and "nats reload: nats" in broken.stderr, broken.stderr
        settings, options = agent_settings("writer", "nats3")
        assert await _connects(settings, **options)
