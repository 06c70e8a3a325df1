"""Build the exact MIME bytes of one message: multipart/alternative, text + HTML, UTF-8."""

from __future__ import annotations

import datetime as dt
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid, parseaddr

from .config import Config
from .errors import NewsletterError


def sender_domain(config: Config) -> str:
    return parseaddr(config.sender)[1].rpartition("@")[2]


def build_message(
    config: Config,
    *,
    to: str,
    subject: str,
    html: str,
    text: str,
    date: dt.datetime,
    message_id: str | None = None,
    extra_headers: dict[str, str] | None = None,
) -> EmailMessage:
    message = EmailMessage(policy=SMTP)
    try:
        message["From"] = config.sender
        message["To"] = to
        if config.reply_to:
            message["Reply-To"] = config.reply_to
        message["Subject"] = subject
        message["Date"] = format_datetime(date)
        message["Message-ID"] = message_id or make_msgid(domain=sender_domain(config))
        for name, value in (extra_headers or {}).items():
            message[name] = value
    except ValueError as error:  # CR/LF in a header value: refuse rather than inject
        raise NewsletterError(f"cannot build message to {to!r}: {error}") from None
    message.set_content(text, subtype="plain", charset="utf-8")
    message.add_alternative(html, subtype="html", charset="utf-8")
    return message


def message_bytes(message: EmailMessage) -> bytes:
    # CRLF line endings: SMTP servers (and aiosmtpd) reject bare LF.
    return message.as_bytes(policy=SMTP)
