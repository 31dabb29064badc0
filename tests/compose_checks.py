"""compose/ held against the code: every finding is a line in the list `check()` returns.

`check(texts)` takes the files of compose/ as text (path relative to compose/ → content), so
tests can run it on mutated copies. It reads docker-compose.yml with compose's own `${...}`
interpolation and YAML merge keys, and checks:

- each relaybus service's command against the real `relaybus` argparse parser; `MODULE:CLASS`
  specs import and are Agent subclasses named like their service; the setup script's
  registrations match `agents.demo.setup`;
- each environment block: every `RELAYBUS_*` name is a Settings field and `Settings.from_env`
  accepts the block; the endpoints in it (NATS, Qdrant, OTLP, model, SMTP, prices) point at
  the services and ports the other files declare;
- the NATS node configs (server names, client ports, routes to each other, store on a volume),
  the collector's pipelines, the Dockerfile, .env.example, depends_on, volumes, and that agents
  can be scaled (no container_name, no host ports).
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import yaml

from agents.cli import agent_run, build_parser, load_agent
from agents.demo import setup as demo
from bus import RelayError, Settings
from services.identity.client import agent_key_path
from services.ledger.prices import load_prices

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_DIR = ROOT / "compose"
FILES = (
    "docker-compose.yml",
    "nats/nats1.conf",
    "nats/nats2.conf",
    "nats/nats3.conf",
    "nats/auth.conf",
    "otel-collector.yaml",
    "Dockerfile",
    ".env.example",
)
QDRANT_HTTP_PORT = 6333
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


def read_texts() -> dict[str, str]:
    return {name: (COMPOSE_DIR / name).read_text() for name in FILES}


# ---------------------------------------------------------------- compose interpolation

_VAR = re.compile(
    r"\$(?:(?P<dollar>\$)|\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|(?P<bare>\w+)|)"
)


def interpolate(value: str, environ: Mapping[str, str], used: set[str], problems: list[str]) -> str:
    """What compose makes of `value`: `$$` → `$`, `${X}`, `${X:-default}`, `${X-default}`."""

    def one(m: re.Match[str]) -> str:
        if m["dollar"]:
            return "$"
        if m["bare"] or not m["name"]:
            problems.append(
                f"{m[0]!r} in {value[:40]!r}…: compose interpolates it when it reads the file "
                "(write $$ for a shell's $, ${NAME} for a compose variable)"
            )
            return m[0]
        used.add(m["name"])
        have = environ.get(m["name"])
        op = m["op"] or ""
        if have is None or (have == "" and op.startswith(":")):
            return m["arg"] if op.endswith("-") else ""
        return have

    return _VAR.sub(one, value)


def load_compose(
    text: str, environ: Mapping[str, str], problems: list[str]
) -> tuple[dict[str, Any], set[str]]:
    used: set[str] = set()

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            return interpolate(node, environ, used, problems)
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(yaml.safe_load(text)), used


# ---------------------------------------------------------------- nats-server config files


def parse_nats_conf(text: str) -> dict[str, Any]:
    """The subset of the nats-server config syntax our node files use: `key: value`,
    `key { … }`, `key: [ … ]` (one item a line or comma-separated), `include PATH`, comments."""
    root: dict[str, Any] = {}
    stack = [root]
    array: list[Any] | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"(^|\s)(#|//).*$", "", raw).strip()
        if not line:
            continue
        if array is not None:
            if line.startswith("]"):
                array = None
            else:
                array.extend(_conf_value(v) for v in re.split(r"[,\s]+", line) if v)
            continue
        if line == "}":
            if len(stack) == 1:
                raise ValueError(f"line {lineno}: '}}' without a block")
            stack.pop()
            continue
        if m := re.fullmatch(r"include\s+(\S+)", line):
            stack[-1].setdefault("include", []).append(_conf_value(m[1]))
            continue
        m = re.fullmatch(r"(\w+)\s*[:=]?\s*(.*)", line)
        if m is None:
            raise ValueError(f"line {lineno}: cannot read {raw!r}")
        key, value = m[1], m[2].strip()
        if value == "{":
            block: dict[str, Any] = {}
            stack[-1][key] = block
            stack.append(block)
        elif value.startswith("["):
            items = [_conf_value(v) for v in re.split(r"[,\s]+", value[1:].rstrip("]")) if v]
            stack[-1][key] = items
            array = None if value.endswith("]") else items
        else:
            stack[-1][key] = _conf_value(value)
    if len(stack) != 1 or array is not None:
        raise ValueError("unclosed block or array")
    return root


def _conf_value(raw: str) -> Any:
    raw = raw.strip().strip('"').strip("'")
    return int(raw) if raw.isdigit() else raw


def port_of(listen: Any) -> int:
    return int(str(listen).rsplit(":", 1)[-1])


# ---------------------------------------------------------------- the deployment as read


@dataclass
class Deployment:
    texts: Mapping[str, str]
    services: dict[str, dict[str, Any]]
    volumes: dict[str, Any]
    used_vars: set[str]
    problems: list[str] = field(default_factory=list)
    nats: dict[str, dict[str, Any]] = field(default_factory=dict)  # service -> parsed conf
    collector: dict[str, Any] = field(default_factory=dict)
    dev: dict[str, tuple[str, int]] = field(default_factory=dict)  # "model"/"smtp" -> service, port

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def mounts(self, name: str) -> Iterator[tuple[str, str, str]]:
        """(source, target, mode) of each volume of a service."""
        for entry in self.services[name].get("volumes", []):
            source, target, *mode = str(entry).split(":")
            yield source, target, mode[0] if mode else "rw"

    def mounted_file(self, name: str, target: str) -> str | None:
        """The compose/ file a service sees at `target`, or None."""
        for source, tgt, _ in self.mounts(name):
            if tgt == target and source.startswith("./"):
                return source[2:]
        return None

    def of_image(self, prefix: str) -> list[str]:
        return [n for n, s in self.services.items() if str(s.get("image", "")).startswith(prefix)]

    def relaybus(self) -> list[str]:
        return [n for n, s in self.services.items() if "build" in s]


def check(texts: Mapping[str, str], environ: Mapping[str, str] | None = None) -> list[str]:
    """Every inconsistency between compose/ and the code; [] when there is none.

    With `environ` (values compose would read from .env), endpoints may point outside the
    stack; without it the defaults must all point at services of this file."""
    problems: list[str] = []
    compose, used = load_compose(texts["docker-compose.yml"], environ or {}, problems)
    d = Deployment(texts, compose.get("services", {}), compose.get("volumes") or {}, used, problems)
    for step in (check_structure, check_nats, check_collector, check_dockerfile, check_env_file):
        step(d)
    find_stand_ins(d)
    for name in d.relaybus():
        check_relaybus_service(d, name, external_ok=environ is not None)
    check_agents(d)
    return problems


# ---------------------------------------------------------------- structure


def check_structure(d: Deployment) -> None:
    for name, svc in d.services.items():
        deps = svc.get("depends_on", {})
        for dep, spec in deps.items() if isinstance(deps, dict) else ((x, {}) for x in deps):
            if dep not in d.services:
                d.problem(f"{name} depends on {dep}, which is not a service")
                continue
            cond = (spec or {}).get("condition", "service_started")
            if cond not in CONDITIONS:
                d.problem(f"{name}: depends_on {dep} has an unknown condition {cond!r}")
            if cond == "service_healthy" and "healthcheck" not in d.services[dep]:
                d.problem(f"{name} waits for {dep} to be healthy, but {dep} has no healthcheck")
            if cond == "service_completed_successfully" and d.services[dep].get("restart") != "no":
                d.problem(f"{name} waits for {dep} to complete, but {dep} restarts")
        for source, _target, _ in d.mounts(name):
            if source.startswith("./"):
                if source[2:] not in d.texts and not (COMPOSE_DIR / source).exists():
                    d.problem(f"{name} mounts {source}, which is not in compose/")
            elif source not in d.volumes:
                d.problem(f"{name} mounts volume {source!r}, which volumes: does not declare")
        if "profiles" not in svc and svc.get("restart") not in ("no", "always", "unless-stopped"):
            d.problem(f"{name} is not restarted when it exits (restart: unless-stopped)")
    for name in d.relaybus():
        build = d.services[name]["build"]
        if not (COMPOSE_DIR / build["context"] / build["dockerfile"]).resolve().is_file():
            d.problem(f"{name}: build {build} names no Dockerfile")


# ---------------------------------------------------------------- NATS


def check_nats(d: Deployment) -> None:
    nodes = [n for n, s in d.services.items() if (s.get("command") or [""])[0] == "nats-server"]
    if len(nodes) != 3:
        d.problem(f"expected 3 NATS nodes, found {nodes}")
    for name in nodes:
        argv = d.services[name]["command"]
        target = argv[argv.index("--config") + 1] if "--config" in argv else ""
        source = d.mounted_file(name, target)
        if source is None or source not in d.texts:
            d.problem(f"{name}: --config {target!r} is not a compose/ file mounted there")
            continue
        try:
            d.nats[name] = conf = parse_nats_conf(d.texts[source])
        except ValueError as exc:
            d.problem(f"{source}: {exc}")
            continue
        if conf.get("server_name") != name:
            d.problem(
                f"{source}: server_name {conf.get('server_name')!r} is not the service {name}"
            )
        store = str(conf.get("jetstream", {}).get("store_dir", ""))
        if not any(t == store and not s.startswith("./") for s, t, _ in d.mounts(name)):
            d.problem(f"{source}: JetStream store_dir {store!r} is not on a volume of {name}")
        for inc in conf.get("include", []):
            path = str(PurePosixPath(target).parent / inc)
            if d.mounted_file(name, path) is None:
                d.problem(f"{source}: include {inc} is not mounted at {path} in {name}")
        health = " ".join(d.services[name].get("healthcheck", {}).get("test", []))
        if f":{port_of(conf.get('http', 0))}/healthz" not in health:
            d.problem(f"{name}: the healthcheck does not ask the monitoring port of {source}")
    for name in d.of_image("natsio/nats-box"):
        check_nats_url(d, name, environment(d.services[name]).get("NATS_URL"))
    clusters = {str(c.get("cluster", {}).get("name")) for c in d.nats.values()}
    if len(clusters) != 1:
        d.problem(f"the NATS nodes name different clusters: {sorted(clusters)}")
    for name, conf in d.nats.items():
        routes = set()
        for route in conf.get("cluster", {}).get("routes", []):
            parts = urlsplit(str(route))
            routes.add((parts.hostname, parts.port))
        want = {
            (other, port_of(c.get("cluster", {}).get("listen", 6222)))
            for other, c in d.nats.items()
            if other != name
        }
        if routes != want:
            d.problem(
                f"{name}: cluster routes {sorted(routes)} are not the other nodes {sorted(want)}"
            )


def check_nats_url(d: Deployment, name: str, url: str | None) -> None:
    if not url:
        d.problem(f"{name}: RELAYBUS_NATS_URL is not set (it would start an embedded server)")
        return
    seen = set()
    for one in url.split(","):
        parts = urlsplit(one.strip())
        host = parts.hostname or ""
        seen.add(host)
        if host not in d.nats:
            d.problem(f"{name}: RELAYBUS_NATS_URL names {host!r}, which is not a NATS node")
        elif parts.port != port_of(d.nats[host].get("listen", d.nats[host].get("port", 4222))):
            d.problem(
                f"{name}: RELAYBUS_NATS_URL port {parts.port} for {host} is not its client port"
            )
    for node in sorted(set(d.nats) - seen):
        d.problem(
            f"{name}: RELAYBUS_NATS_URL does not list {node} (a client must reach every node)"
        )


# ---------------------------------------------------------------- collector


def check_collector(d: Deployment) -> None:
    names = d.of_image("otel/opentelemetry-collector")
    if len(names) != 1:
        d.problem(f"expected one OpenTelemetry collector service, found {names}")
        return
    name = names[0]
    target = next(
        (
            a.split("=", 1)[1]
            for a in d.services[name].get("command", [])
            if a.startswith("--config=")
        ),
        "",
    )
    source = d.mounted_file(name, target)
    if source is None or source not in d.texts:
        d.problem(f"{name}: --config={target} is not a compose/ file mounted there")
        return
    d.collector = conf = yaml.safe_load(d.texts[source])
    service = conf.get("service", {})
    for ext in service.get("extensions", []):
        if ext not in (conf.get("extensions") or {}):
            d.problem(f"{source}: extension {ext} is used but not defined")
    for pipeline, spec in service.get("pipelines", {}).items():
        for kind in ("receivers", "processors", "exporters"):
            for component in spec.get(kind, []):
                if component not in (conf.get(kind) or {}):
                    d.problem(
                        f"{source}: pipeline {pipeline} uses {kind[:-1]} {component}, not defined"
                    )
    for exporter, spec in (conf.get("exporters") or {}).items():
        host = str((spec or {}).get("endpoint", "")).split("://")[-1].rsplit(":", 1)[0]
        if host and host != "0.0.0.0" and host not in d.services:
            d.problem(f"{source}: exporter {exporter} sends to {host}, which is not a service")


def otlp_http_port(d: Deployment) -> int | None:
    http = (d.collector.get("receivers") or {}).get("otlp", {}).get("protocols", {}).get("http")
    return port_of(http.get("endpoint", "0.0.0.0:4318")) if http is not None else None


# ---------------------------------------------------------------- Dockerfile, .env.example


def check_dockerfile(d: Deployment) -> None:
    text = d.texts["Dockerfile"]
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    if froms[:1] != ["python:3.11-slim"]:
        d.problem(f"Dockerfile: FROM {froms} (want python:3.11-slim)")
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]
    copied = {m.split("/")[0] for m in re.findall(r"^COPY\s+(\S+)\s", text, re.M)}
    for top in sorted({p.split(".")[0] for p in packages} - copied):
        d.problem(f"Dockerfile does not copy the {top} package that pyproject.toml installs")
    if not re.search(r"pip install\s+\"?\.", text):
        d.problem("Dockerfile: no `pip install .`")
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    if not users or users[-1] in ("root", "0"):
        d.problem("Dockerfile: the image runs as root")
    for name in d.relaybus():
        for source, target, _ in d.mounts(name):
            if not source.startswith("./") and not re.search(re.escape(target) + r"(\s|$)", text):
                d.problem(
                    f"{name} mounts volume {source} at {target}, which the Dockerfile does not "
                    "create (a fresh volume would be owned by root)"
                )


def workdir(d: Deployment) -> str:
    found = re.findall(r"^WORKDIR\s+(\S+)", d.texts["Dockerfile"], re.M)
    return found[-1] if found else "/"


def check_env_file(d: Deployment) -> None:
    fields = set(Settings.model_fields)
    for var in sorted(d.used_vars):
        if var.startswith("RELAYBUS_") and var[9:].lower() not in fields:
            d.problem(f"docker-compose.yml: ${{{var}}} looks like a relaybus setting but is none")
    for key in re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", d.texts[".env.example"], re.M):
        if key.startswith("RELAYBUS_"):
            if key[9:].lower() not in fields:
                d.problem(f".env.example: {key} is not a relaybus setting")
        elif key not in d.used_vars:
            d.problem(f".env.example: {key} is not used by docker-compose.yml")


def env_example_values(texts: Mapping[str, str]) -> dict[str, str]:
    """Every assignment of .env.example, the commented-out alternatives too."""
    return dict(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", texts[".env.example"], re.M))


# ---------------------------------------------------------------- relaybus services


@cache
def parser() -> Any:
    return build_parser()


def parse_command(argv: list[str]) -> tuple[Any, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            return parser().parse_args(argv), ""
        except SystemExit:
            return None, err.getvalue().strip().splitlines()[-1]


def environment(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def check_relaybus_service(d: Deployment, name: str, external_ok: bool) -> None:
    svc = d.services[name]
    argv = [str(a) for a in svc.get("command", [])]
    if argv[:2] == ["sh", "-ec"]:
        check_setup(d, name, argv[2])
    elif argv[:1] != ["relaybus"]:
        d.problem(f"{name}: command {argv[:3]} is neither `relaybus …` nor the setup script")
        return
    else:
        args, error = parse_command(argv[1:])
        if args is None:
            d.problem(f"{name}: `{' '.join(argv)}` does not parse: {error}")
            return
        if args.command == "dev":
            if args.host in LOOPBACK:
                d.problem(
                    f"{name}: `relaybus dev` listens on {args.host}, out of other containers' reach"
                )
            return
        if args.func is agent_run:
            check_agent_command(d, name, args)
    check_settings(d, name, argv, external_ok)


def find_stand_ins(d: Deployment) -> None:
    """The `relaybus dev model|smtp` services and their ports, for the agents' endpoints."""
    for name in d.relaybus():
        argv = [str(a) for a in d.services[name].get("command", [])]
        if argv[1:2] == ["dev"]:
            args, _ = parse_command(argv[1:])
            if args is not None:
                d.dev[args.dev_cmd] = (name, args.port)


def check_agent_command(d: Deployment, name: str, args: Any) -> None:
    try:
        cls = load_agent(args.spec)
    except RelayError as exc:
        d.problem(f"{name}: {exc}")
        return
    if cls.name != name:
        d.problem(f"{name}: runs agent {cls.name!r}; name the service after its agent")
    if args.replicas != 1:
        d.problem(
            f"{name}: --replicas {args.replicas}: one process a container, scale with compose"
        )


def check_settings(d: Deployment, name: str, argv: list[str], external_ok: bool) -> None:
    env = environment(d.services[name])
    for key in sorted(env):
        if key.startswith("RELAYBUS_") and key[9:].lower() not in Settings.model_fields:
            d.problem(f"{name}: {key} is not a relaybus setting")
    try:
        settings = Settings.from_env(env)
    except RelayError as exc:
        d.problem(f"{name}: Settings.from_env refuses the environment: {str(exc)[:200]}")
        return
    check_nats_url(d, name, settings.nats_url)
    if d.nats and settings.stream_replicas < min(3, len(d.nats)):
        d.problem(
            f"{name}: RELAYBUS_STREAM_REPLICAS={settings.stream_replicas} on a "
            f"{len(d.nats)}-node cluster: streams would not survive a node"
        )
    telemetry = argv[1:2] in (["service"], ["agent"])
    if "--metrics-port" in argv and settings.metrics_host in LOOPBACK:
        d.problem(
            f"{name}: --metrics-port on RELAYBUS_METRICS_HOST={settings.metrics_host} (loopback)"
        )
    if telemetry:
        check_endpoint(
            d,
            name,
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            env.get("OTEL_EXPORTER_OTLP_ENDPOINT"),
            d.of_image("otel/opentelemetry-collector"),
            otlp_http_port(d),
            False,
        )
    if argv[1:3] == ["service", "memory"] or settings.qdrant_url:
        check_endpoint(
            d,
            name,
            "RELAYBUS_QDRANT_URL",
            settings.qdrant_url,
            d.of_image("qdrant/qdrant"),
            QDRANT_HTTP_PORT,
            external_ok,
        )
    if argv[1:3] == ["agent", "run"]:
        check_agent_settings(d, name, settings, external_ok)


def check_endpoint(
    d: Deployment,
    name: str,
    var: str,
    url: str | None,
    services: list[str],
    port: int | None,
    external_ok: bool,
) -> None:
    if not url:
        d.problem(f"{name}: {var} is not set")
        return
    parts = urlsplit(url)
    if parts.hostname not in services:
        if not external_ok:
            d.problem(
                f"{name}: {var}={url} does not point at {' or '.join(services) or 'a service'}"
            )
    elif parts.port != port:
        d.problem(f"{name}: {var}={url}: {parts.hostname} listens on {port}")


def check_agent_settings(d: Deployment, name: str, settings: Settings, external_ok: bool) -> None:
    keys = str(PurePosixPath(settings.home) / "keys")
    if settings.identity:
        mounted = [(s, mode) for s, t, mode in d.mounts(name) if t == keys]
        if not mounted or mounted[0][1] != "ro":
            d.problem(f"{name}: identity is on but no keys volume is mounted read-only at {keys}")
    model, smtp = d.dev.get("model"), d.dev.get("smtp")
    for var, url, dev in (
        ("RELAYBUS_LLM_BASE_URL", settings.llm_base_url, model),
        ("RELAYBUS_SMTP_URL", settings.smtp_url, smtp),
    ):
        if url or var == "RELAYBUS_LLM_BASE_URL":
            check_endpoint(
                d, name, var, url, [dev[0]] if dev else [], dev[1] if dev else None, external_ok
            )
    prices = str(settings.prices or "")
    base = workdir(d).rstrip("/") + "/"
    if prices.startswith(base):
        try:
            load_prices(ROOT / prices[len(base) :]).chat(settings.llm_model or "scripted", 0, 0)
        except RelayError as exc:
            d.problem(f"{name}: {exc}")
    elif not external_ok:
        d.problem(f"{name}: RELAYBUS_PRICES={prices!r} is not a file of the image ({base}…)")


# ---------------------------------------------------------------- agents and setup


def check_agents(d: Deployment) -> None:
    specs = {}
    for name in d.relaybus():
        argv = [str(a) for a in d.services[name].get("command", [])]
        if argv[1:3] == ["agent", "run"]:
            specs[name] = argv[3]
            svc = d.services[name]
            for key in ("container_name", "ports"):
                if key in svc:
                    d.problem(f"{name}: {key} stops `docker compose up --scale {name}=3`")
    if sorted(specs.values()) != sorted(demo.SPECS.values()):
        d.problem(
            f"agent services run {sorted(specs.values())}, the demo has {sorted(demo.SPECS.values())}"
        )
    for name in ("identity", "ledger"):
        if d.services.get(name, {}).get("deploy", {}).get("replicas", 1) != 1:
            d.problem(f"{name}: one replica only (its key / the ledger's single writer)")


_REDIRECT = re.compile(r"[|&;<>]")


def relaybus_calls(script: str) -> Iterator[tuple[str, list[str]]]:
    """(line, argv after `relaybus`) for every relaybus command in a shell script."""
    for line in script.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = list(lexer)
        for i, word in enumerate(words):
            if word == "relaybus":
                argv: list[str] = []
                for w in words[i + 1 :]:
                    if _REDIRECT.match(w):
                        break
                    argv.append(w)
                yield line, argv


def check_setup(d: Deployment, name: str, script: str) -> None:
    svc = d.services[name]
    agents: dict[str, tuple[list[str], list[str]]] = {}
    did: set[str] = set()
    for line, argv in relaybus_calls(script):
        args, error = parse_command(argv)
        if args is None:
            d.problem(f"{name}: `relaybus {' '.join(argv)}` does not parse: {error}")
            continue
        did.update({" ".join(argv[:2]), " ".join(argv[:3])})
        if argv[:3] == ["identity", "agent", "add"]:
            agents[args.name] = (sorted(args.scope), sorted(args.handoff_to))
            guard = str(agent_key_path(Path(), args.name))
            if f"test -f {guard} ||" not in line:
                d.problem(f"{name}: `agent add {args.name}` is not guarded by its key {guard}")
        elif argv[:3] == ["identity", "role", "add"] and (args.name, sorted(args.scope)) != (
            demo.ROLE,
            sorted(demo.ROLE_SCOPES),
        ):
            d.problem(f"{name}: role {args.name} {args.scope} is not the demo's {demo.ROLE}")
        elif argv[:3] == ["identity", "user", "add"] and (args.id, args.role) != (
            demo.DEMO_USER,
            [demo.ROLE],
        ):
            d.problem(f"{name}: user {args.id} {args.role} is not the demo's {demo.DEMO_USER}")
        elif argv[:2] == ["ledger", "budget"] and (args.level, args.limit, args.period) != (
            f"user:{demo.DEMO_USER}",
            demo.USER_BUDGET,
            "monthly",
        ):
            d.problem(f"{name}: budget {args.level} {args.limit} differs from the demo's")
    want = {n: (sorted(s), sorted(h)) for n, (s, h) in demo.AGENTS.items()}
    if agents != want:
        d.problem(f"{name}: registers agents {agents}, agents.demo.setup.AGENTS says {want}")
    for step in ("identity role add", "identity user add", "ledger budget", "identity user token"):
        if step not in did:
            d.problem(f"{name}: the setup script does not run `relaybus {step}`")
    env = environment(svc)
    home = env.get("RELAYBUS_HOME", "")
    if svc.get("working_dir") != home:
        d.problem(f"{name}: working_dir {svc.get('working_dir')} is not RELAYBUS_HOME {home}")
    if not any(t == f"{home}/keys" and mode == "rw" for _, t, mode in d.mounts(name)):
        d.problem(f"{name}: writes agent keys but mounts no writable volume at {home}/keys")
    if f">{demo.TOKEN_FILE}" not in script.replace(" ", ""):
        d.problem(f"{name}: does not write the user's token to {demo.TOKEN_FILE}")
