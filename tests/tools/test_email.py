"""The send_email tool against a real SMTP server (aiosmtpd, recording what it receives):
model-written text cannot add a mail header, and a sent message carries exactly the tool's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relaybus.agents import ToolArgumentsInvalid
from relaybus.agents.tools.email import HEADERS, Email, build_message, send_email, smtp_send
from relaybus.agents.tools.mailbox import read_mailbox, serve_mailbox

SENDER = "relay@relaybus.example"
TO = "ana@team.example"

HOSTILE_SUBJECTS = [
    "=?utf-8?q?hi=0AReply-To:_evil@x.example?=",
    "=?UTF-8?Q?hi=0D=0ABcc:_evil@x.example?=",
    "=?utf-8?b?aGkKUmVwbHktVG86IGV2aWxAeC5leGFtcGxl?=",  # base64 of hi\nReply-To: evil@x
    "Re: =?utf-8?q?x=0ABcc:_evil@x.example?= (fwd)",
    "=?iso-8859-1*en?q?hi=0AReply-To:_evil@x.example?=",
    "hi\r\nBcc: evil@x.example",
    "hi\nReply-To: evil@x.example",
    "hi\rReply-To: evil@x.example",
    "hi\x85Reply-To: evil@x.example",
    "hi\u2028Reply-To: evil@x.example",
    "hi\u2029Bcc: evil@x.example",
    "hi\x0bBcc: evil@x.example",
    "hi\tthere",
    "hi\x00",
]
HOSTILE_RECIPIENTS = [
    f"{TO}\r\nBcc: evil@x.example",
    f"{TO}\nReply-To: evil@x.example",
    "=?utf-8?q?ana=0ABcc:_evil=40x.example?=@team.example",
    f"{TO}, evil@x.example",
    f"Ana <{TO}>, evil@x.example",
]


@pytest.fixture
async def mailbox(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    path = tmp_path / "mailbox.jsonl"
    server = await serve_mailbox(path, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"smtp://127.0.0.1:{port}", path
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize("subject", HOSTILE_SUBJECTS)
async def test_a_subject_cannot_add_a_header(mailbox: tuple[str, Path], subject: str) -> None:
    url, path = mailbox
    with pytest.raises(ToolArgumentsInvalid, match=r"tool send_email: subject: .*(not allowed)"):
        send_email.validate({"to": TO, "subject": subject, "body": "hello"})
    # however it got past validation, the message is not built, so never sent
    sneaked = Email.model_construct(to=TO, subject=subject, body="hello")
    with pytest.raises(ToolArgumentsInvalid, match=r"subject: .*not allowed"):
        await asyncio.to_thread(smtp_send, url, build_message(SENDER, sneaked, "<1@relaybus>"))
    assert read_mailbox(path) == []


@pytest.mark.parametrize("to", HOSTILE_RECIPIENTS)
async def test_a_recipient_cannot_add_a_header_or_a_recipient(
    mailbox: tuple[str, Path], to: str
) -> None:
    with pytest.raises(ToolArgumentsInvalid, match="tool send_email: to: "):
        send_email.validate({"to": to, "subject": "report", "body": "hello"})
    assert read_mailbox(mailbox[1]) == []


@pytest.mark.parametrize(
    "subject",
    [
        "Competitive analysis",
        "Reply-To: evil@x.example",  # words, not a header: it stays in the subject
        "Q3: Bcc: everyone? =? no",
        "Preis 5 € — Übersicht für 日本",
        "long " * 39 + "end",
        "",
    ],
)
async def test_a_sent_message_has_exactly_the_tools_headers(
    mailbox: tuple[str, Path], subject: str
) -> None:
    url, path = mailbox
    args = send_email.validate({"to": TO, "subject": subject, "body": "line 1\nBcc: x@y\n"})
    assert isinstance(args, Email)
    await asyncio.to_thread(smtp_send, url, build_message(SENDER, args, "<7@relaybus>"))
    (mail,) = read_mailbox(path)
    assert [name for name, _ in mail["headers"]] == list(HEADERS)
    headers = dict(mail["headers"])
    assert headers["To"] == TO and headers["From"] == SENDER
    assert " ".join(headers["Subject"].split()) == " ".join(subject.split())
    assert mail["rcpt_tos"] == [TO] and mail["body"] == "line 1\nBcc: x@y\n"
    assert not {"reply-to", "bcc", "cc"} & {name.lower() for name in headers}
