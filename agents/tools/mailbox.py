"""`relaybus dev smtp`: a local SMTP server (aiosmtpd) that accepts every message and appends it
to a JSON-lines mailbox file instead of delivering it. For demos and tests; production mail goes
to the server `RELAYBUS_SMTP_URL` names."""

from __future__ import annotations

import asyncio
import json
import time
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, cast

from aiosmtpd.smtp import SMTP, Envelope, Session


class Mailbox:
    """aiosmtpd handler: every accepted message becomes one line of `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        msg = cast(EmailMessage, message_from_bytes(content, policy=policy.default))
        body = msg.get_body(("plain",))
        record = {
            "time": time.time(),
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "subject": str(msg["Subject"] or ""),
            # every header line as received, decoded: what a mail client would act on
            "headers": [[name, str(value)] for name, value in msg.items()],
            "message_id": str(msg["Message-ID"] or ""),
            "body": body.get_content().replace("\r\n", "\n") if body is not None else "",
        }
        with self.path.open("a") as out:
            out.write(json.dumps(record) + "\n")
        return "250 Message accepted for delivery"


def read_mailbox(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def serve_mailbox(path: Path, host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
    """Start the SMTP server on the running loop; the caller owns it (`server.close()`)."""
    handler = Mailbox(path)
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: SMTP(handler, hostname="relaybus-dev-smtp", decode_data=False), host, port
    )
