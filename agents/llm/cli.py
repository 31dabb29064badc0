"""`relaybus dev model` / `dev smtp`: the scripted model server and the recording SMTP server,
in the foreground, for demos and local development."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from relaybus.bus import ConfigError, Settings


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
    from relaybus.bus.httpserve import serve_until_stopped

    from .scripted import ScriptedModel, serve_model

    del settings
    model = ScriptedModel.from_rules(load_rules(args.script), args.fail_first, args.fail_every)
    url = f"http://{args.host}:{{}}/v1"
    return await serve_until_stopped(
        await serve_model(model, args.host, args.port),
        lambda port: (
            f"scripted model (not a real LLM) at {url.format(port)} — "
            f"RELAYBUS_LLM_BASE_URL={url.format(port)}"
        ),
    )


async def dev_smtp(args: argparse.Namespace, settings: Settings) -> int:
    from relaybus.bus.httpserve import serve_until_stopped

    from ..tools.mailbox import serve_mailbox

    del settings
    return await serve_until_stopped(
        await serve_mailbox(args.mailbox, args.host, args.port),
        lambda port: (
            f"recording SMTP server (delivers nothing; writes {args.mailbox}) — "
            f"RELAYBUS_SMTP_URL=smtp://{args.host}:{port}"
        ),
    )


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
    p.add_argument(
        "--fail-every", type=int, default=0, help="repeat the --fail-first burst every M requests"
    )
    p.set_defaults(func=dev_model)

    p = dev.add_parser("smtp", help="an SMTP server that records mail to a file (delivers nothing)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    p.add_argument("--mailbox", type=Path, default=Path("mailbox.jsonl"), help="JSON lines file")
    p.set_defaults(func=dev_smtp)
