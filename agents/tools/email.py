"""The `send_email` tool (scope `email/send`): one message to one recipient over SMTP.

`RELAYBUS_SMTP_URL` says where: `smtp://host:port` (plain, for a local relay),
`smtp+starttls://user:password@host:587` or `smtps://user:password@host:465`.
`RELAYBUS_SMTP_FROM` is the sender address.

The call is journaled like every tool call, so a retried or resumed run does not send again.
The one window left is a crash after the SMTP server accepted the message and before the journal
recorded it; the Message-ID is derived from the run, task and recipient so that receivers can
tell a repeat.
"""

from __future__ import annotations

import asyncio
import hashlib
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, Field, field_validator

from bus import ConfigError, UpstreamFailed

from ..tool import tool

if TYPE_CHECKING:
    from ..context import Context

EMAIL_COST = 1_000  # micro-units per message; the price table can override it
SCHEMES = {"smtp", "smtp+starttls", "smtps"}


class Email(BaseModel):
    to: str = Field(description="one recipient address, e.g. ana@team.example")
    subject: str = Field(max_length=200)
    body: str = Field(max_length=200_000)

    @field_validator("to")
    @classmethod
    def _one_plain_address(cls, value: str) -> str:
        _, address = parseaddr(value)
        if not address or address != value.strip() or address.count("@") != 1:
            raise ValueError(f"{value!r} is not one plain address like ana@team.example")
        return address


def message_id(run_id: str, task_id: str, to: str) -> str:
    digest = hashlib.sha256(f"{run_id}\0{task_id}\0{to}".encode()).hexdigest()[:32]
    return f"<{digest}@relaybus>"


def build_message(sender: str, args: Email, msg_id: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = args.to
    msg["Subject"] = args.subject
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = msg_id
    msg.set_content(args.body)
    return msg


def smtp_send(url: str, msg: EmailMessage, timeout_s: float = 30.0) -> None:
    """Send `msg` through the server at `url` (blocking; run it in a thread)."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise ConfigError(
            f"RELAYBUS_SMTP_URL={url!r}: expected smtp://host:port, "
            "smtp+starttls://user:password@host:587 or smtps://user:password@host:465"
        )
    port = parts.port or {"smtp": 25, "smtp+starttls": 587, "smtps": 465}[parts.scheme]
    client: smtplib.SMTP
    try:
        if parts.scheme == "smtps":
            client = smtplib.SMTP_SSL(
                parts.hostname, port, timeout=timeout_s, context=ssl.create_default_context()
            )
        else:
            client = smtplib.SMTP(parts.hostname, port, timeout=timeout_s)
        with client:
            if parts.scheme == "smtp+starttls":
                client.starttls(context=ssl.create_default_context())
            if parts.username:
                client.login(unquote(parts.username), unquote(parts.password or ""))
            refused = client.send_message(msg)
    except smtplib.SMTPRecipientsRefused as exc:
        raise UpstreamFailed(f"the SMTP server refused {msg['To']}: {exc.recipients}") from None
    except (OSError, smtplib.SMTPException) as exc:
        raise UpstreamFailed(
            f"SMTP delivery through {parts.hostname}:{port} failed: {exc}"
        ) from None
    if refused:
        raise UpstreamFailed(f"the SMTP server refused {sorted(refused)}")


@tool("email/send", cost=EMAIL_COST, name="send_email")
async def send_email(ctx: Context, args: Email) -> dict[str, Any]:
    """Send an email with `subject` and `body` to one recipient (`to`)."""
    url = ctx.settings.smtp_url
    if not url:
        raise ConfigError("no SMTP server: set RELAYBUS_SMTP_URL (e.g. smtp://127.0.0.1:2525)")
    msg_id = message_id(ctx.run_id, ctx.task_id, args.to)
    await asyncio.to_thread(smtp_send, url, build_message(ctx.settings.smtp_from, args, msg_id))
    return {"to": args.to, "message_id": msg_id}
