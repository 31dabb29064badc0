"""`relaybus dev model`: run the scripted OpenAI-compatible model server in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from bus import ConfigError, Settings
from bus.runtime import EXIT_OK, stop_on_signals

from .scripted import ScriptedModel, serve_model


def load_rules(path: Path | None) -> list[dict[str, str]]:
    if path is None:
        return []
    try:
        rules = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--script {path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--script {path} is not JSON: {exc}") from None
    if not isinstance(rules, list) or not all(
        isinstance(r, dict) and isinstance(r.get("match"), str) and isinstance(r.get("reply"), str)
        for r in rules
    ):
        raise ConfigError(f'--script {path}: expected a list of {{"match": REGEX, "reply": TEXT}}')
    return rules


async def dev_model(args: argparse.Namespace, settings: Settings) -> int:
    del settings
    model = ScriptedModel.from_rules(load_rules(args.script), args.fail_first)
    stop = asyncio.Event()
    stop_on_signals(stop)
    server = await serve_model(model, args.host, args.port)
    port = server.sockets[0].getsockname()[1]
    print(
        f"scripted model (not a real LLM) at http://{args.host}:{port}/v1 — "
        f"RELAYBUS_LLM_BASE_URL=http://{args.host}:{port}/v1",
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()
    return EXIT_OK


def register(sub: Any) -> None:
    dev = sub.add_parser("dev", help="development helpers").add_subparsers(
        dest="dev_cmd", required=True
    )
    p = dev.add_parser("model", help="a scripted OpenAI-compatible model server (not a real LLM)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    p.add_argument(
        "--script", type=Path, default=None, help='JSON [{"match": REGEX, "reply": TEXT}]'
    )
    p.add_argument("--fail-first", type=int, default=0, help="answer the first N requests with 503")
    p.set_defaults(func=dev_model)
