"""The `send_email` tool (scope `email/send`): one message to one recipient over SMTP.

`RELAYBUS_SMTP_URL` says where: `smtp://host:port` (plain, for a local relay),
`smtp+starttls://user:password@host:587` or `smtps://user:password@host:465`.
`RELAYBUS_SMTP_FROM` is the sender address.

The call is journaled like every tool call, so a retried or resumed run does not send again.
The one window left is a crash after the SMTP server accepted the message and before the journal
recorded it; the Message-ID is derived from the run, task and recipient so that receivers can
tell a repeat.

Model-written text cannot add a header: the recipient and subject are refused when they hold a
control character (CR, LF, TAB, NEL, U+2028…) or an RFC 2047 encoded word (`=?utf-8?q?…?=`,
which the email package decodes, newlines included), before and after decoding; the message is
an `EmailMessage` under the SMTP policy, checked after it is built to carry exactly the headers
the tool sets (and to read back the same after serialization), and the envelope goes to the one
recipient only.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import smtplib
import ssl
import unicodedata
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, Field, field_validator

from relaybus.bus import ConfigError, UpstreamFailed

from ..errors import ToolArgumentsInvalid
from ..settings import ToolSettings
from ..tool import tool

if TYPE_CHECKING:
    from ..context import Context

EMAIL_COST = 1_000  # micro-units per message; the price table can override it
SCHEMES = {"smtp", "smtp+starttls", "smtps"}
#: the headers a message carries, in order: nothing else, whatever the arguments say
HEADERS = (
    "From", "To", "Subject", "Date", "Message-ID",
    "Content-Type", "Content-Transfer-Encoding", "MIME-Version",
)  # fmt: skip
_ENCODED_WORD = re.compile(r"=\?[^?\s]*\?[bq]\?", re.IGNORECASE)


def one_line(value: str) -> str:
    """`value` if it is plain text for one header line; ValueError saying what is wrong."""
    _no_control(value)
    decoded = str(policy.SMTP.header_factory("Subject", value))  # what the email package reads
    if _ENCODED_WORD.search(value) or _ENCODED_WORD.search(decoded) or decoded != value:
        raise ValueError(
            "RFC 2047 encoded words (=?charset?q?...?=) are not allowed; write the text itself "
            "(any Unicode is fine)"
        )
    return _no_control(decoded)


def _no_control(text: str) -> str:
    bad = next((c for c in text if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
    if bad is not None:
        raise ValueError(
            f"control character {bad!r} is not allowed: a header is one line of plain text"
        )
    return text


class Email(BaseModel):
    to: str = Field(description="one recipient address, e.g. ana@team.example")
    subject: str = Field(max_length=200, description="one line of plain text")
    body: str = Field(max_length=200_000)

    @field_validator("to")
    @classmethod
    def _one_plain_address(cls, value: str) -> str:
        one_line(value)
        _, address = parseaddr(value)
        if not address or address != value.strip() or address.count("@") != 1:
            raise ValueError(f"{value!r} is not one plain address like ana@team.example")
        return address

    @field_validator("subject")
    @classmethod
    def _one_line(cls, value: str) -> str:
        return one_line(value)


def message_id(run_id: str, task_id: str, to: str) -> str:
    digest = hashlib.sha256(f"{run_id}\0{task_id}\0{to}".encode()).hexdigest()[:32]
    return f"<{digest}@relaybus>"


def build_message(sender: str, args: Email, msg_id: str) -> EmailMessage:
    """The message, with exactly `HEADERS`; ToolArgumentsInvalid if the arguments (however they
    got past validation) would make it carry anything else."""
    for field in ("to", "subject"):
        try:
            one_line(getattr(args, field))
        except ValueError as exc:
            raise ToolArgumentsInvalid(f"tool send_email: {field}: {exc}") from None
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = sender
    msg["To"] = args.to
    msg["Subject"] = args.subject
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = msg_id
    msg.set_content(args.body)
    sent = message_from_bytes(msg.as_bytes(), policy=policy.default)  # what the server reads
    problem = ""
    if tuple(msg.keys()) != HEADERS or tuple(sent.keys()) != HEADERS:
        problem = f"the message would carry headers {sent.keys()}, not {list(HEADERS)}"
    elif " ".join(str(sent["Subject"]).split()) != " ".join(args.subject.split()):
        problem = f"the subject would read {str(sent['Subject'])!r}"
    elif [a.addr_spec for a in sent["To"].addresses] != [args.to]:
        problem = f"the recipient would read {str(sent['To'])!r}"
    if problem:
        raise ToolArgumentsInvalid(f"tool send_email: {problem}; send plain one-line text")
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
            # the envelope: the one recipient of the To header, never one a header smuggled in
            recipients = [a.addr_spec for a in msg["To"].addresses]
            refused = client.send_message(msg, to_addrs=recipients)
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
    tools = ToolSettings.of(ctx.settings)
    url = tools.smtp_url
    if not url:
        raise ConfigError("no SMTP server: set RELAYBUS_SMTP_URL (e.g. smtp://127.0.0.1:2525)")
    msg_id = message_id(ctx.run_id, ctx.task_id, args.to)
    await asyncio.to_thread(smtp_send, url, build_message(tools.smtp_from, args, msg_id))
    return {"to": args.to, "message_id": msg_id}
