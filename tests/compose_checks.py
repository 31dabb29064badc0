"""compose/ held against the code: every finding is a line in the list `check()` returns.

`check(texts)` takes the files of compose/ as text (path relative to compose/ → content), so
tests can run it on mutated copies. It reads docker-compose.yml with compose's own `${...}`
interpolation and YAML merge keys, and checks:

- each relaybus service's command against the real `relaybus` argparse parser; `MODULE:CLASS`
  specs import and are Agent subclasses named like their service; the setup script's
  registrations match `relaybus.agents.demo.setup`;
- each environment block: every `RELAYBUS_*` name is a setting of the bus or of a layer and
  `Settings.from_env` accepts the block; the endpoints in it (NATS, Qdrant, OTLP, model, SMTP,
  prices) point at the services and ports the other files declare;
- the NATS node configs (server names, client ports, routes to each other, store on a volume),
  the collector's pipelines, the Dockerfile, .env.example, depends_on, volumes, and that agents
  can be scaled (no container_name, no host ports);
- NATS authentication: every node has an authorization block (no anonymous access, no
  `no_auth_user`, passwords from the environment, never in git or with a default), a system
  account for reloads and route credentials; it includes the block `setup` generates with
  `relaybus identity nats-config` (the same users, written atomically, then reloaded); every
  service connects as its own user with the nodes' password for it, the operator's tools as
  `operator`, and every agent with no password at all but its own nkey from a key volume that
  only it mounts and into which setup registered it.

Required compose variables (`${NAME:?…}`, the passwords) that the environment does not set are
read as a stand-in value derived from the name (`placeholder`), as if ./secrets.sh had run.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shlex
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

from relaybus.agents.demo import setup as demo
from relaybus.agents.settings import LlmSettings, ToolSettings
from relaybus.bus import RelayError, Settings
from relaybus.bus.settings import known_names
from relaybus.cli import agent_run, build_parser, load_agent
from relaybus.memory.settings import MemorySettings
from relaybus.services.identity.client import agent_key_path
from relaybus.services.identity.natsconfig import nkey_path
from relaybus.services.identity.settings import IdentitySettings
from relaybus.services.ledger.prices import load_prices
from relaybus.services.ledger.settings import LedgerSettings

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
    "secrets.sh",
)
QDRANT_HTTP_PORT = 6333
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
OPERATOR = "operator"  # the NATS user of the operator's processes (setup, cli, nats-box)
SYSTEM_URL = "NATS_SYSTEM_URL"  # how setup tells nats/reload.py the system user's URLs
RELOAD_SCRIPT = "./nats/reload.py"


def read_texts() -> dict[str, str]:
    return {name: (COMPOSE_DIR / name).read_text() for name in FILES}


# ---------------------------------------------------------------- compose interpolation

_VAR = re.compile(
    r"\$(?:(?P<dollar>\$)|\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|(?P<bare>\w+)|)"
)


def placeholder(name: str) -> str:
    """The value the checks read for a required variable that the environment does not set:
    shaped like the passwords ./secrets.sh writes, distinct for each name."""
    return "p" + hashlib.sha256(name.encode()).hexdigest()[:32]


def interpolate(
    value: str, environ: Mapping[str, str], used: dict[str, set[str]], problems: list[str]
) -> str:
    """What compose makes of `value`: `$$` → `$`, `${X}`, `${X:-default}`, `${X-default}`,
    `${X:?error}` (a required variable; `placeholder(X)` when unset). `used` collects every
    variable with the operators it is read with."""

    def one(m: re.Match[str]) -> str:
        if m["dollar"]:
            return "$"
        if m["bare"] or not m["name"]:
            problems.append(
                f"{m[0]!r} in {value[:40]!r}…: compose interpolates it when it reads the file "
                "(write $$ for a shell's $, ${NAME} for a compose variable)"
            )
            return m[0]
        op = m["op"] or ""
        used.setdefault(m["name"], set()).add(op)
        have = environ.get(m["name"])
        if have is None or (have == "" and op.startswith(":")):
            if op.endswith("?"):
                return placeholder(m["name"])
            return m["arg"] if op.endswith("-") else ""
        return have

    return _VAR.sub(one, value)


def load_compose(
    text: str, environ: Mapping[str, str], problems: list[str]
) -> tuple[dict[str, Any], dict[str, set[str]]]:
    used: dict[str, set[str]] = {}

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
    """The nats-server config syntax our files use: `key: value` / `key = value`, blocks
    `key { … }`, arrays `[ … ]` of values or of blocks (items split by newlines or commas),
    inline blocks `{user: x, password: $Y}`, quoted strings and keys (JSON is a subset),
    `include PATH` (collected, in order, under "include"), `#` and `//` comments. `$NAME`
    stays a string: `resolve_vars` reads it from an environment, as nats-server does. A key
    given twice keeps the later value, as in nats-server."""
    return _ConfParser(text).body(None)


class _ConfParser:
    _KEY = re.compile(r"[A-Za-z_$][\w$.-]*")
    _BARE = re.compile(r"[^\s,\]}]+")

    def __init__(self, text: str) -> None:
        self.s, self.i = text, 0

    def fail(self, what: str) -> ValueError:
        return ValueError(f"line {self.s.count(chr(10), 0, self.i) + 1}: {what}")

    def skip(self, newlines: bool = True) -> None:
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in " \t\r" or (newlines and c in "\n,;"):
                self.i += 1
            elif c == "#" or self.s.startswith("//", self.i):
                while self.i < len(self.s) and self.s[self.i] != "\n":
                    self.i += 1
            else:
                return

    def body(self, end: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while True:
            self.skip()
            if self.i >= len(self.s):
                if end:
                    raise self.fail("unclosed block")
                return out
            c = self.s[self.i]
            if c == end:
                self.i += 1
                return out
            if c in "}]{[":
                raise self.fail(f"unexpected {c!r}")
            key = self.quoted() if c in "\"'" else self.key()
            self.skip(newlines=False)
            if key == "include":
                out.setdefault("include", []).append(_conf_value(self.bare()))
                continue
            if self.s[self.i : self.i + 1] in (":", "="):
                self.i += 1
                self.skip(newlines=False)
            out.pop(key, None)  # the later value wins, and takes the later place
            out[key] = self.value()

    def key(self) -> str:
        m = self._KEY.match(self.s, self.i)
        if m is None:
            raise self.fail(f"cannot read {self.s[self.i : self.i + 20]!r}")
        self.i = m.end()
        return m[0]

    def value(self) -> Any:
        c = self.s[self.i : self.i + 1]
        if c == "{":
            self.i += 1
            return self.body("}")
        if c == "[":
            self.i += 1
            items: list[Any] = []
            while True:
                self.skip()
                if self.i >= len(self.s):
                    raise self.fail("unclosed array")
                if self.s[self.i] == "]":
                    self.i += 1
                    return items
                items.append(self.value())
        if c in ('"', "'"):
            return self.quoted()
        return _conf_value(self.bare())

    def quoted(self) -> str:
        end = self.s.find(self.s[self.i], self.i + 1)
        if end < 0:
            raise self.fail("unclosed string")
        text, self.i = self.s[self.i + 1 : end], end + 1
        return text

    def bare(self) -> str:
        m = self._BARE.match(self.s, self.i)
        if m is None:
            raise self.fail(f"a key without a value at {self.s[self.i : self.i + 20]!r}")
        self.i = m.end()
        return m[0]


def _conf_value(raw: str) -> Any:
    raw = raw.strip().strip('"').strip("'")
    return int(raw) if raw.isdigit() else raw


_CONF_VAR = re.compile(r"\$(\w+)")


def resolve_vars(node: Any, environ: Mapping[str, str], missing: set[str]) -> Any:
    """`node` with each `$NAME` value read from `environ` (nats-server reads its environment);
    names it lacks go to `missing` and stay as they are."""
    if isinstance(node, dict):
        return {k: resolve_vars(v, environ, missing) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve_vars(v, environ, missing) for v in node]
    if isinstance(node, str) and (m := _CONF_VAR.fullmatch(node)):
        if m[1] in environ:
            return _conf_value(environ[m[1]])
        missing.add(m[1])
    return node


def find_key(node: Any, key: str) -> bool:
    """Whether `key` is set anywhere in a parsed config."""
    if isinstance(node, dict):
        return key in node or any(find_key(v, key) for v in node.values())
    if isinstance(node, list):
        return any(find_key(v, key) for v in node)
    return False


def port_of(listen: Any) -> int:
    return int(str(listen).rsplit(":", 1)[-1])


# ---------------------------------------------------------------- the deployment as read


@dataclass
class Deployment:
    texts: Mapping[str, str]
    services: dict[str, dict[str, Any]]
    volumes: dict[str, Any]
    used_vars: dict[str, set[str]]  # compose variable -> the operators it is read with
    problems: list[str] = field(default_factory=list)
    nats: dict[str, dict[str, Any]] = field(default_factory=dict)  # node -> conf, $NAMEs read
    nats_users: dict[str, str] = field(default_factory=dict)  # bootstrap user -> password
    system_user: tuple[str, str] | None = None  # the system account's user, password
    generated: tuple[str, str] | None = None  # the volume and file of setup's block
    agent_keys: dict[str, tuple[str, str]] = field(default_factory=dict)  # agent -> setup's
    # (volume, keys dir) it registers the agent's keys into
    collector: dict[str, Any] = field(default_factory=dict)
    dev: dict[str, tuple[str, int]] = field(default_factory=dict)  # "model"/"smtp" -> service, port

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def mounts(self, name: str) -> Iterator[tuple[str, str, str]]:
        """(source, target, mode) of each volume of a service."""
        for entry in self.services[name].get("volumes", []):
            source, target, *mode = str(entry).split(":")
            yield source, target, mode[0] if mode else "rw"

    def volume_at(self, name: str, path: str) -> tuple[str, str, str] | None:
        """(volume, mount target, mode) of the named volume holding `path` in a service."""
        best = None
        for source, target, mode in self.mounts(name):
            if source.startswith("./") or not (path == target or path.startswith(target + "/")):
                continue
            if best is None or len(target) > len(best[1]):
                best = (source, target, mode)
        return best

    def passwords(self) -> dict[str, str]:
        """password -> the NATS user it belongs to (bootstrap users and the system user)."""
        out = {pw: user for user, pw in self.nats_users.items()}
        if self.system_user:
            out[self.system_user[1]] = self.system_user[0]
        return out

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
    steps = (check_structure, check_nats, check_collector, check_dockerfile, check_env_file)
    for step in steps:
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
            raw = node_config(d, name, source, target)
        except ValueError as exc:
            d.problem(f"{source}: {exc}")
            continue
        missing: set[str] = set()
        d.nats[name] = conf = resolve_vars(raw, environment(d.services[name]), missing)
        for var in sorted(missing):
            d.problem(
                f"{name}: ${var} of its config is not in its environment (it would not start)"
            )
        if conf.get("server_name") != name:
            d.problem(
                f"{source}: server_name {conf.get('server_name')!r} is not the service {name}"
            )
        store = str(conf.get("jetstream", {}).get("store_dir", ""))
        if not any(t == store and not s.startswith("./") for s, t, _ in d.mounts(name)):
            d.problem(f"{source}: JetStream store_dir {store!r} is not on a volume of {name}")
        health = " ".join(d.services[name].get("healthcheck", {}).get("test", []))
        if f":{port_of(conf.get('http', 0))}/healthz" not in health:
            d.problem(f"{name}: the healthcheck does not ask the monitoring port of {source}")
        check_nats_auth(d, name, raw, conf)
    for name in d.of_image("natsio/nats-box"):
        url = environment(d.services[name]).get("NATS_URL")
        check_nats_url(d, name, url)
        check_credentials(d, name, url or "", OPERATOR)
    clusters = {str(c.get("cluster", {}).get("name")) for c in d.nats.values()}
    if len(clusters) != 1:
        d.problem(f"the NATS nodes name different clusters: {sorted(clusters)}")
    for name, conf in d.nats.items():
        routes = set()
        for route in conf.get("cluster", {}).get("routes", []):
            parts = urlsplit(str(route))
            routes.add((str(parts.hostname or route), parts.port or 0))
        want = {
            (other, port_of(c.get("cluster", {}).get("listen", 6222)))
            for other, c in d.nats.items()
            if other != name
        }
        if routes != want:
            d.problem(
                f"{name}: cluster routes {sorted(routes)} are not the other nodes {sorted(want)}"
            )


def node_config(d: Deployment, name: str, source: str, target: str) -> dict[str, Any]:
    """A node's config with the compose/ files it includes merged in, in order (the later
    key wins). The include that is on a named volume is setup's generated block, whose
    content the checks know from setup's script: it must come after every static
    authorization, which it replaces, and be the same file on every node."""
    conf = parse_nats_conf(d.texts[source])
    merged = {k: v for k, v in conf.items() if k != "include"}
    generated: list[tuple[str, str]] = []
    for inc in conf.get("include", []):
        path = str(PurePosixPath(target).parent / inc)
        static = d.mounted_file(name, path)
        volume = d.volume_at(name, path)
        if static is not None and static in d.texts:
            part = parse_nats_conf(d.texts[static])
            if generated and "authorization" in part:
                d.problem(
                    f"{source}: includes {inc} after the generated block, whose authorization "
                    "it would replace (agents locked out)"
                )
            merged.update({k: v for k, v in part.items() if k != "include"})
        elif volume is not None:
            vol, mount, mode = volume
            if mode != "ro":
                d.problem(f"{name} mounts volume {vol} read-write: a node only reads it")
            generated.append((vol, path[len(mount) + 1 :]))
        else:
            d.problem(f"{source}: include {inc} is not mounted at {path} in {name}")
    if not generated:
        d.problem(
            f"{name}: includes no block generated from the identity registry: "
            "agents (one nkey user each) could never connect"
        )
    for one in generated[:1]:
        if d.generated is not None and d.generated != one:
            d.problem(f"{name}: includes {one}, other nodes {d.generated}: one block for all")
        d.generated = one
        check_generated_file_exists(d, name, one)
    return merged


def check_generated_file_exists(d: Deployment, name: str, generated: tuple[str, str]) -> None:
    """nats-server refuses a missing include: a one-shot the node waits for creates it."""
    volume, file = generated
    deps = d.services[name].get("depends_on") or {}
    for dep, spec in deps.items() if isinstance(deps, dict) else ():
        if (spec or {}).get("condition") != "service_completed_successfully":
            continue
        command = " ".join(str(a) for a in d.services.get(dep, {}).get("command", []))
        for source, target, mode in d.mounts(dep) if dep in d.services else ():
            if source == volume and mode == "rw" and f"{target}/{file}" in command:
                return
    d.problem(
        f"{name}: nothing it waits for creates {file} on volume {volume} "
        "(nats-server does not start with a missing include)"
    )


def check_nats_auth(d: Deployment, name: str, raw: dict[str, Any], conf: dict[str, Any]) -> None:
    """Who may connect to a node: users with passwords from the environment, no anonymous
    access, a system account user, route credentials."""
    if find_key(conf, "no_auth_user"):
        d.problem(
            f"{name}: no_auth_user lets clients without credentials in as that user "
            "(anonymous access)"
        )
    auth = conf.get("authorization")
    users = (auth.get("users") if isinstance(auth, dict) else None) or []
    if not users or not isinstance(users, list):
        d.problem(
            f"{name}: no authorization block with users: the node would accept anonymous clients"
        )
        users = []
    raw_users = (raw.get("authorization") or {}).get("users") or []
    creds: dict[str, str] = {}
    for user, raw_user in zip(users, raw_users, strict=False):
        if not isinstance(user, dict) or not user.get("user") or not user.get("password"):
            d.problem(f"{name}: a user of the authorization block has no user name and password")
            continue
        if not str(raw_user.get("password", "")).startswith("$"):
            d.problem(
                f"{name}: user {user['user']} has a literal password in compose/ (in git): "
                "read it from the environment ($NAME)"
            )
        creds[str(user["user"])] = str(user["password"])
    for a, b in _same_values(creds):
        d.problem(f"{name}: NATS users {a} and {b} have the same password")
    if d.nats_users and creds and creds != d.nats_users:
        d.problem(f"{name}: its users or passwords differ from the other nodes'")
    d.nats_users = d.nats_users or creds
    system = conf.get("system_account")
    account = (conf.get("accounts") or {}).get(system) if system else None
    sys_users = [u for u in (account or {}).get("users", []) if u.get("user") and u.get("password")]
    if not sys_users:
        d.problem(
            f"{name}: no system account with a user and password: setup cannot ask the node "
            "to reload the block it generates"
        )
    else:
        d.system_user = (str(sys_users[0]["user"]), str(sys_users[0]["password"]))
        if d.system_user[1] in creds.values():
            d.problem(f"{name}: the system user has the password of another NATS user")
    check_route_auth(d, name, raw, conf)


def check_route_auth(d: Deployment, name: str, raw: dict[str, Any], conf: dict[str, Any]) -> None:
    cluster = conf.get("cluster") or {}
    auth = cluster.get("authorization") or {}
    if not auth.get("user") or not auth.get("password"):
        d.problem(
            f"{name}: the cluster port has no authorization: anything on the network could join "
            "as a route, past every client permission"
        )
        return
    raw_pw = str(((raw.get("cluster") or {}).get("authorization") or {}).get("password", ""))
    if not raw_pw.startswith("$"):
        d.problem(f"{name}: the route password is literal in compose/ (in git)")
    if str(auth["password"]) in d.passwords():
        d.problem(f"{name}: the route password is a client's password too")
    for route in cluster.get("routes", []):
        parts = urlsplit(str(route))
        if (parts.username, parts.password) != (str(auth["user"]), str(auth["password"])):
            d.problem(
                f"{name}: its route to {parts.hostname} does not carry the route credentials "
                "(the other node refuses it)"
            )


def _same_values(creds: Mapping[str, str]) -> Iterator[tuple[str, str]]:
    seen: dict[str, str] = {}
    for user, password in creds.items():
        if password in seen:
            yield seen[password], user
        seen.setdefault(password, user)


def url_credentials(url: str) -> set[tuple[str, str]]:
    """The (user, password) pairs of a comma-separated NATS URL list ("" when absent)."""
    out = set()
    for one in url.split(","):
        parts = urlsplit(one.strip())
        out.add((unquote(parts.username or ""), unquote(parts.password or "")))
    return out


def check_credentials(d: Deployment, name: str, url: str, user: str | None) -> None:
    """The client connects as NATS user `user` with the nodes' password for it; an agent
    (`user` None) with no user or password at all, only its nkey."""
    found = url_credentials(url)
    if len(found) > 1:
        d.problem(f"{name}: its NATS URLs carry different credentials for different nodes")
    have, password = sorted(found)[-1]
    if user is None:
        if have or password:
            d.problem(
                f"{name}: RELAYBUS_NATS_URL carries the credentials of NATS user {have!r}: an "
                "agent connects only as its own nkey user"
            )
        return
    if not have:
        d.problem(f"{name}: its NATS URL has no credentials: the nodes refuse anonymous clients")
    elif have != user:
        d.problem(f"{name}: connects as NATS user {have!r}; it must be its own user {user!r}")
    elif d.nats_users and d.nats_users.get(have) != password:
        d.problem(
            f"{name}: its password for NATS user {have!r} is not the one the nodes' "
            "authorization block has"
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
    # relaybus/ links the layer folders in (relaybus.bus → bus/): the image needs both
    sources = {p.split(".")[0] for p in packages} | {
        p.split(".")[1]
        for p in packages
        if p.count(".") == 1 and (ROOT / p.replace(".", "/")).is_symlink()
    }
    for top in sorted(sources - copied):
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
    names = known_names()
    for var in sorted(d.used_vars):
        if var.startswith("RELAYBUS_") and var[9:].lower() not in names:
            d.problem(f"docker-compose.yml: ${{{var}}} looks like a relaybus setting but is none")
    for key in re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", d.texts[".env.example"], re.M):
        if key.startswith("RELAYBUS_"):
            if key[9:].lower() not in names:
                d.problem(f".env.example: {key} is not a relaybus setting")
        elif key not in d.used_vars:
            d.problem(f".env.example: {key} is not used by docker-compose.yml")
    for key in re.findall(r"^([A-Z][A-Z0-9_]*_PASSWORD)=.", d.texts[".env.example"], re.M):
        d.problem(f".env.example: {key} has a value (a password anyone with the file knows)")
    for var, ops in sorted(d.used_vars.items()):
        if var.endswith("_PASSWORD") and ops != {":?"}:
            d.problem(
                f"docker-compose.yml: ${{{var}}} is not required everywhere (${{{var}:?…}}): "
                "a default or empty password is one anyone can guess"
            )
    check_secrets_script(d)


def check_secrets_script(d: Deployment) -> None:
    """./secrets.sh writes every variable compose requires (so `up` can start), no other."""
    m = re.search(r'^VARS="([^"]*)"', d.texts["secrets.sh"], re.M)
    generated = set(m[1].split()) if m else set()
    required = {var for var, ops in d.used_vars.items() if any("?" in op for op in ops)}
    for var in sorted(required - generated):
        d.problem(f"secrets.sh does not generate {var}, which docker-compose.yml requires")
    for var in sorted(generated - required):
        d.problem(f"secrets.sh generates {var}, which docker-compose.yml does not use")


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
        if not any(relaybus_calls(argv[2])):
            return  # a one-shot that does not use NATS (nats-auth: it creates a file)
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
        if key.startswith("RELAYBUS_") and key[9:].lower() not in known_names():
            d.problem(f"{name}: {key} is not a relaybus setting")
    try:
        settings = Settings.from_env(env)
    except RelayError as exc:
        d.problem(f"{name}: Settings.from_env refuses the environment: {str(exc)[:200]}")
        return
    check_nats_url(d, name, settings.nats_url)
    if not settings.nats_auth:
        d.problem(
            f"{name}: RELAYBUS_NATS_AUTH={env.get('RELAYBUS_NATS_AUTH')} turns NATS "
            "authentication off (development only)"
        )
    agent = argv[1:3] == ["agent", "run"]
    check_credentials(
        d,
        name,
        settings.nats_url or "",
        None if agent else (argv[2] if argv[1:2] == ["service"] else OPERATOR),
    )
    if agent:
        for value in env.values():
            for password, user in d.passwords().items():
                if password in value:
                    d.problem(f"{name}: its environment holds the password of NATS user {user}")
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
    qdrant_url = MemorySettings.of(settings).qdrant_url
    if argv[1:3] == ["service", "memory"] or qdrant_url:
        check_endpoint(
            d,
            name,
            "RELAYBUS_QDRANT_URL",
            qdrant_url,
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
    if IdentitySettings.of(settings).identity:
        mounted = [(s, mode) for s, t, mode in d.mounts(name) if t == keys]
        if not mounted or mounted[0][1] != "ro":
            d.problem(f"{name}: identity is on but no keys volume is mounted read-only at {keys}")
    llm = LlmSettings.of(settings)
    model, smtp = d.dev.get("model"), d.dev.get("smtp")
    for var, url, dev in (
        ("RELAYBUS_LLM_BASE_URL", llm.llm_base_url, model),
        ("RELAYBUS_SMTP_URL", ToolSettings.of(settings).smtp_url, smtp),
    ):
        if url or var == "RELAYBUS_LLM_BASE_URL":
            check_endpoint(
                d, name, var, url, [dev[0]] if dev else [], dev[1] if dev else None, external_ok
            )
    prices = str(LedgerSettings.of(settings).prices or "")
    base = workdir(d).rstrip("/") + "/"
    if prices.startswith(base):
        try:
            load_prices(ROOT / prices[len(base) :]).chat(llm.llm_model or "scripted", 0, 0)
        except RelayError as exc:
            d.problem(f"{name}: {exc}")
    elif not external_ok:
        d.problem(f"{name}: RELAYBUS_PRICES={prices!r} is not a file of the image ({base}…)")


# ---------------------------------------------------------------- agents and setup


def check_agents(d: Deployment) -> None:
    specs = {}
    key_volumes: dict[str, list[str]] = {}
    for name in d.relaybus():
        argv = [str(a) for a in d.services[name].get("command", [])]
        if argv[1:3] == ["agent", "run"]:
            specs[name] = argv[3]
            svc = d.services[name]
            for key in ("container_name", "ports"):
                if key in svc:
                    d.problem(f"{name}: {key} stops `docker compose up --scale {name}=3`")
            home = environment(svc).get("RELAYBUS_HOME", "")
            keys = str(nkey_path(Path(home), name).parent)
            found = d.volume_at(name, keys)
            if found is not None and found[1] == keys:
                key_volumes.setdefault(found[0], []).append(name)
                check_agent_keys(d, name, found[0])
    for volume, names in sorted(key_volumes.items()):
        if len(names) > 1:
            d.problem(
                f"{' and '.join(names)} mount the same key volume {volume}: each agent must "
                "hold only its own keys (or it can connect and sign as another)"
            )
    if sorted(specs.values()) != sorted(demo.SPECS.values()):
        d.problem(
            f"agent services run {sorted(specs.values())}, the demo has {sorted(demo.SPECS.values())}"
        )
    for name in ("identity", "ledger"):
        if d.services.get(name, {}).get("deploy", {}).get("replicas", 1) != 1:
            d.problem(f"{name}: one replica only (its key / the ledger's single writer)")


def check_agent_keys(d: Deployment, name: str, volume: str) -> None:
    """The agent's key volume is the one setup registered it into."""
    written = d.agent_keys.get(name)
    if written is None:
        d.problem(f"{name}: setup registers no agent {name} (so it has no keys)")
    elif written[0] != volume:
        d.problem(
            f"{name}: mounts key volume {volume}, but setup writes {name}'s keys to "
            f"{written[1]} on volume {written[0]}"
        )


_REDIRECT = re.compile(r"[|&;<>]")


@dataclass
class Call:
    """A command of a shell script: its line, the NAME=VALUE words before it, its words."""

    index: int
    line: str
    env: dict[str, str]
    words: list[str]

    def after(self, word: str) -> str | None:
        """The word after `word` (a redirection's target), if any."""
        return self.words[self.words.index(word) + 1] if word in self.words[:-1] else None


def script_calls(script: str) -> Iterator[Call]:
    """Every command of a shell script (one a line, after `||` / `&&` too)."""
    for index, line in enumerate(script.splitlines()):
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = list(lexer)
        env: dict[str, str] = {}
        command: list[str] = []
        for word in [*words, "&&"]:
            if word in ("||", "&&", ";"):
                if command:
                    yield Call(index, line, env, command)
                env, command = {}, []
            elif not command and re.fullmatch(r"[A-Za-z_]\w*=.*", word):
                key, _, value = word.partition("=")
                env[key] = value
            else:
                command.append(word)


def relaybus_calls(script: str) -> Iterator[tuple[Call, list[str]]]:
    """(call, argv after `relaybus`, up to a redirection) for every relaybus command."""
    for call in script_calls(script):
        if call.words[:1] == ["relaybus"]:
            argv: list[str] = []
            for w in call.words[1:]:
                if _REDIRECT.match(w):
                    break
                argv.append(w)
            yield call, argv


def shell_value(word: str, env: Mapping[str, str]) -> str:
    """`word` with the shell's $NAME / ${NAME} read from `env`."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m[1], ""), word)


def check_setup(d: Deployment, name: str, script: str) -> None:
    svc = d.services[name]
    env = environment(svc)
    home = env.get("RELAYBUS_HOME", "")
    cwd = PurePosixPath(str(svc.get("working_dir", "/")))
    agents: dict[str, tuple[list[str], list[str]]] = {}
    did: set[str] = set()
    last_add, config_call = -1, None
    for call, argv in relaybus_calls(script):
        args, error = parse_command(argv)
        if args is None:
            d.problem(f"{name}: `relaybus {' '.join(argv)}` does not parse: {error}")
            continue
        did.update({" ".join(argv[:2]), " ".join(argv[:3])})
        if argv[:3] == ["identity", "agent", "add"]:
            agents[args.name] = (sorted(args.scope), sorted(args.handoff_to))
            last_add = call.index
            agent_home = call.env.get("RELAYBUS_HOME", home)
            guard = str(agent_key_path(Path(os.path.relpath(cwd / agent_home, cwd)), args.name))
            if f"test -f {guard} ||" not in call.line:
                d.problem(f"{name}: `agent add {args.name}` is not guarded by its key {guard}")
            keys = str((cwd / agent_home / "keys").as_posix())
            found = d.volume_at(name, keys)
            if found is None or found[2] != "rw" or found[1] != keys:
                d.problem(
                    f"{name}: `agent add {args.name}` writes its keys to {keys}, which is not a "
                    "writable volume of that agent's own"
                )
            else:
                d.agent_keys[args.name] = (found[0], keys)
        elif argv[:2] == ["identity", "nats-config"]:
            config_call = (call, args)
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
    if svc.get("working_dir") != home:
        d.problem(f"{name}: working_dir {svc.get('working_dir')} is not RELAYBUS_HOME {home}")
    if f">{demo.TOKEN_FILE}" not in script.replace(" ", ""):
        d.problem(f"{name}: does not write the user's token to {demo.TOKEN_FILE}")
    if config_call is None:
        d.problem(
            f"{name}: does not generate the NATS authorization block "
            "(`relaybus identity nats-config`): no agent could connect"
        )
        return
    call, args = config_call
    if call.index < last_add:
        d.problem(f"{name}: generates the NATS block before it has registered every agent")
    check_setup_admins(d, name, args.admin, env)
    installed = check_setup_writes_block(d, name, script, call, cwd)
    check_setup_reloads(d, name, script, installed, env)


def check_setup_admins(d: Deployment, name: str, admins: list[str], env: Mapping[str, str]) -> None:
    """The generated block keeps exactly the bootstrap block's users, with their passwords."""
    given = dict(a.split(":", 1) for a in admins if ":" in a)
    given = {user: shell_value(pw, env) for user, pw in given.items()}
    for user in sorted(set(d.nats_users) - set(given)):
        d.problem(
            f"{name}: `identity nats-config` leaves out NATS user {user}: the block it writes "
            f"would lock {user} out"
        )
    for user in sorted(set(given) - set(d.nats_users)):
        d.problem(
            f"{name}: `identity nats-config` gives full access to {user}, who is no user of "
            "the nodes' bootstrap block"
        )
    for user in sorted(set(given) & set(d.nats_users)):
        if given[user] != d.nats_users[user]:
            d.problem(
                f"{name}: `identity nats-config` gives {user} another password than the nodes' "
                "bootstrap block"
            )


def check_setup_writes_block(
    d: Deployment, name: str, script: str, call: Call, cwd: PurePosixPath
) -> int:
    """The block goes, whole, to the file every node includes: written to a .tmp, then
    renamed over it (a node reloading meanwhile never reads half a block). Returns the index
    of the line that installs it."""
    if d.generated is None:
        return call.index
    volume, file = d.generated
    mount = next((t for s, t, m in d.mounts(name) if s == volume and m == "rw"), None)
    if mount is None:
        d.problem(f"{name}: does not mount volume {volume} (writable), where the nodes read")
        return call.index
    want = f"{mount}/{file}"
    tmp = call.after(">")
    for later in script_calls(script):
        if later.index > call.index and later.words[:1] == ["mv"] and later.words[1:2] == [tmp]:
            if str(cwd / later.words[-1]) != want:
                d.problem(
                    f"{name}: installs the NATS block as {cwd / later.words[-1]}, not {want} "
                    "(the file the nodes include)"
                )
            return later.index
    if tmp is not None and str(cwd / tmp) == want:
        d.problem(
            f"{name}: writes the NATS block in place: a node reloading meanwhile would read "
            "half of it (write a .tmp, then mv)"
        )
    else:
        d.problem(f"{name}: does not install the NATS block it generates at {want}")
    return call.index


def check_setup_reloads(
    d: Deployment, name: str, script: str, after: int, env: Mapping[str, str]
) -> None:
    """After the block is in place, every node is asked to reload, as the system user."""
    target = next((t for s, t, _ in d.mounts(name) if s == RELOAD_SCRIPT), None)
    reloads = [c for c in script_calls(script) if target and target in c.words]
    if target is None or not any(c.index > after for c in reloads):
        d.problem(
            f"{name}: does not reload the nodes after writing the NATS block "
            f"({RELOAD_SCRIPT} mounted and run): agents stay locked out until the nodes restart"
        )
    url = env.get(SYSTEM_URL, "")
    check_nats_url(d, name, url)
    if d.system_user is not None and url_credentials(url) != {d.system_user}:
        d.problem(f"{name}: {SYSTEM_URL} is not the system account's user and password")
