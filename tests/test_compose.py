"""compose/: the production-shaped deployment agrees with the code, and its NATS nodes form a
JetStream cluster for real. The checks themselves are in tests/compose_checks.py."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bus import Bus, ConnectionFailed, Settings, Subjects, default_topology, ensure
from bus.server import find_binary, free_port
from services.identity.natsconfig import authorization_block

from .compose_checks import (
    COMPOSE_DIR,
    check,
    env_example_values,
    environment,
    load_compose,
    parse_nats_conf,
    read_texts,
)


def test_the_compose_files_agree_with_the_code() -> None:
    assert check(read_texts()) == []


def test_the_values_in_env_example_are_settings_the_stack_accepts() -> None:
    # Given every assignment .env.example shows, the commented-out real endpoints too
    texts = read_texts()
    # Then every process still accepts its environment (endpoints may now point outside)
    assert check(texts, env_example_values(texts)) == []


# file, old text, new text, what the findings must say
MUTATIONS = [
    ("docker-compose.yml", "RELAYBUS_STREAM_REPLICAS:", "RELAYBUS_STREAM_REPLICA:",
     r"RELAYBUS_STREAM_REPLICA is not a relaybus setting"),
    ("docker-compose.yml", "RELAYBUS_LEDGER: \"1\"", "RELAYBUS_LEDGER: \"maybe\"",
     r"Settings.from_env refuses .*RELAYBUS_LEDGER='maybe'"),
    ("docker-compose.yml", "agents.demo.agents:Research", "agents.demo.agent:Research",
     r"research: cannot import 'agents.demo.agent'"),
    ("docker-compose.yml", "agents.demo.agents:Mailer", "agents.demo.agents:Email",
     r"email: 'agents.demo.agents:Email' is not an Agent subclass"),
    ("docker-compose.yml", "agents.demo.agents:Writer", "agents.demo.agents:Research",
     r"writer: runs agent 'research'"),
    ("docker-compose.yml", '"--concurrency", "8"', '"--concurrent", "8"',
     r"does not parse: .*unrecognized arguments: --concurrent"),
    ("docker-compose.yml", '"service", "ledger"', '"service", "ledgr"',
     r"ledger: .* does not parse: .*invalid choice: 'ledgr'"),
    ("docker-compose.yml", "RELAYBUS_METRICS_HOST: 0.0.0.0", "RELAYBUS_METRICS_HOST: 127.0.0.1",
     r"--metrics-port on RELAYBUS_METRICS_HOST=127.0.0.1 \(loopback\)"),
    ("docker-compose.yml", "http://otel-collector:4318", "http://otel-collector:4317",
     r"OTEL_EXPORTER_OTLP_ENDPOINT=http://otel-collector:4317: otel-collector listens on 4318"),
    ("docker-compose.yml", "  RELAYBUS_NATS_URL: nats://nats1:4222,nats://nats2:4222,nats://nats3:4222\n",
     "  RELAYBUS_NATS_URL: nats://nats1:4222,nats://nats2:4222\n",
     r"orchestrator: RELAYBUS_NATS_URL does not list nats3"),
    ("docker-compose.yml", "nats://nats2:4222,nats://nats3:4222}", "nats://nats2:4223,nats://nats3:4222}",
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
    ("docker-compose.yml", "- keys:/var/lib/relaybus/keys:ro", "- keys:/var/lib/relaybus/keys",
     r"identity is on but no keys volume is mounted read-only"),
    ("docker-compose.yml", "      - mail:/var/lib/relaybus/mail\n",
     "      - mail:/var/lib/relaybus/mailbox\n",
     r"smtp mounts volume mail at /var/lib/relaybus/mailbox, which the Dockerfile does not create"),
    ("nats/nats2.conf", "nats://nats3:6222", "nats://nats3:6223",
     r"nats2: cluster routes .*6223.* are not the other nodes"),
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


def test_the_node_configs_are_valid_for_nats_server() -> None:
    binary = find_binary()
    for conf in sorted((COMPOSE_DIR / "nats").glob("nats*.conf")):
        out = subprocess.run(
            [binary, "-t", "-c", str(conf)], capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0, out.stderr + out.stdout


def _loopback_copies(tmp_path: Path, admin_password: str) -> dict[str, tuple[Path, int]]:
    """The node configs as compose mounts them, rewritten for loopback: hosts → 127.0.0.1,
    ports → free ones, store → a temp dir, auth.conf → the block `identity nats-config` makes.
    Returns node → (config file, client port)."""
    texts = read_texts()
    compose, _ = load_compose(texts["docker-compose.yml"], {}, [])
    nodes = {
        n: s for n, s in compose["services"].items() if s.get("command", [""])[0] == "nats-server"
    }
    confs = {}
    for name, svc in nodes.items():  # the file compose mounts where --config points
        target = svc["command"][svc["command"].index("--config") + 1]
        confs[name] = next(v[2:].split(":")[0] for v in svc["volumes"] if f":{target}" in v)
    parsed = {n: parse_nats_conf(texts[path]) for n, path in confs.items()}
    ports = {n: {"client": free_port(), "cluster": free_port(), "http": free_port()} for n in nodes}
    block = authorization_block(Subjects("relay"), [], {"svc": admin_password})
    out = {}
    for name, conf in parsed.items():
        text = texts[confs[name]]
        swaps = [
            (f"listen: {conf['listen']}", f"listen: 127.0.0.1:{ports[name]['client']}"),
            (f"http: {conf['http']}", f"http: 127.0.0.1:{ports[name]['http']}"),
            (f"listen: {conf['cluster']['listen']}", f"listen: 127.0.0.1:{ports[name]['cluster']}"),
            (f"store_dir: {conf['jetstream']['store_dir']}", f"store_dir: {tmp_path / name}"),
        ]
        for route in conf["cluster"]["routes"]:
            host = route.split("//", 1)[1].split(":", 1)[0]
            swaps.append((route, f"nats://127.0.0.1:{ports[host]['cluster']}"))
        for old, new in swaps:
            assert text.count(old) == 1, f"{confs[name]}: {old!r} is not there once"
            text = text.replace(old, new)
        node_dir = tmp_path / f"{name}-etc"
        node_dir.mkdir()
        (node_dir / "auth.conf").write_text(block)
        (node_dir / "nats.conf").write_text(text)
        out[name] = (node_dir / "nats.conf", ports[name]["client"])
    return out


@contextlib.contextmanager
def nats_node(conf: Path, timeout_s: float = 20.0) -> Iterator[subprocess.Popen[bytes]]:
    """`nats-server -c CONF` and nothing else, ready once its log says so; stopped by its pid."""
    proc = subprocess.Popen(
        [find_binary(), "-c", str(conf)], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE
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


@pytest.mark.timeout(120)
async def test_the_three_nodes_form_a_jetstream_cluster_with_r3_streams(tmp_path: Path) -> None:
    # Given the three nodes started from compose/nats/*.conf (on loopback), with the
    # authorization block generated from the identity registry in their auth.conf
    password = secrets.token_hex(8)
    copies = _loopback_copies(tmp_path, password)
    with contextlib.ExitStack() as nodes:
        for conf, _ in copies.values():
            await asyncio.to_thread(nodes.enter_context, nats_node(conf))
        # and the identity service's settings from docker-compose.yml, pointed at them
        texts = read_texts()
        compose, _ = load_compose(texts["docker-compose.yml"], {}, [])
        env = environment(compose["services"]["identity"])
        urls = ",".join(f"nats://svc:{password}@127.0.0.1:{port}" for _, port in copies.values())
        settings = Settings.from_env(env, nats_url=urls, home=str(tmp_path / "home"))
        assert settings.stream_replicas == 3
        # When the bus provisions the relaybus topology (ensure waits for the meta leader)
        async with Bus(settings, name="compose-test") as bus:
            await ensure(bus, default_topology(bus.subjects, settings.stream_replicas))
            # Then every stream and bucket has three replicas, one on each node of the file
            for name in ("RELAY_TASKS", "RELAY_LEDGER", "RELAY_AUDIT", "KV_relay_journal"):
                info = await bus.js.stream_info(name)
                assert info.config.num_replicas == 3
                assert info.cluster is not None
                peers = {info.cluster.leader, *(r.name for r in info.cluster.replicas or [])}
                assert peers == set(copies), (name, peers)
        # and a client without the admin credentials is refused
        anonymous = settings.model_copy(update={"nats_url": urls.replace(f"svc:{password}@", "")})
        with pytest.raises(ConnectionFailed):
            async with Bus(anonymous, name="compose-test-anonymous"):
                pass
