"""Build the exact MIME bytes of one message: multipart/alternative, text + HTML, UTF-8."""

from __future__ import annotations

import datetime as dt
import email
import functools
import html
import re
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from email.quoprimime import body_encode
from email.utils import format_datetime, formataddr, make_msgid, parseaddr
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.audience.addresses import ascii_address
from pipeline.audience.tokens import make_token
from pipeline.config import Config
from pipeline.errors import MessageError
from pipeline.files import write_atomically

if TYPE_CHECKING:  # not at run time: a sender process needs no renderer (mjml, premailer, jinja2)
    from pipeline.issue.build import Build
    from pipeline.issue.render import Rendered


def sender_address(config: Config) -> str:
    """The bare address of ``From``: the envelope sender."""
    return parseaddr(config.sender)[1]


def sender_domain(config: Config) -> str:
    return sender_address(config).rpartition("@")[2]


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
        raise MessageError(f"cannot build message to {to!r}: {error}") from None
    message.set_content(text, subtype="plain", charset="utf-8")
    message.add_alternative(html, subtype="html", charset="utf-8")
    return message


def message_bytes(message: EmailMessage) -> bytes:
    # CRLF line endings: SMTP servers (and aiosmtpd) reject bare LF.
    return message.as_bytes(policy=SMTP)


# --- The sample message `build` writes (and `check` scores) ----------------------------------


def _sample_recipient(config: Config) -> dict[str, str]:
    from pipeline.issue.render import sample_recipient  # the editor's side only: see the imports

    return sample_recipient(config)


def write_build(config: Config, build: Build) -> dict[str, Path]:
    """Write the three files, each atomically: a reader never sees half a file."""
    folder = config.paths.build / str(build.rendered.issue.number)
    folder.mkdir(parents=True, exist_ok=True)
    outputs = {
        "email.html": build.html.encode("utf-8"),
        "email.txt": build.text.encode("utf-8"),
        # What the sample recipient would get in a campaign, byte for byte: the size that
        # `build` reports against the clip budget is the one `check` enforces.
        "message.eml": sample_as_sent(config, build.rendered),
    }
    written = {}
    for name, data in outputs.items():
        written[name] = write_atomically(folder / name, data)
    return written


# --- Per-recipient messages, built from one template per issue ------------------------------

_MARKERS = ("NLTEXTPARTMARKER", "NLHTMLPARTMARKER")
_SOFT_BREAK = "=\r\n"


@dataclass(frozen=True)
class Recipient:
    email: str
    name: str
    unsubscribe_url: str
    message_id: str

    def values(self) -> dict[str, str]:
        return {"email": self.email, "unsubscribe_url": self.unsubscribe_url}


class MessageTemplate:
    """One issue's message, MIME-encoded once; :meth:`build` only fills in a recipient.

    Personalising by re-encoding the 80 KB body per subscriber would cost more than
    sending it; here each static stretch of the body is quoted-printable encoded once,
    ending in a soft line break, and only the short recipient values are encoded per message.
    """

    def __init__(self, config: Config, rendered: Rendered, *, unsubscribe_mailto: str | None = None) -> None:
        self.config = config
        self.subject = rendered.issue.subject
        self._mailto = unsubscribe_mailto or sender_address(config)
        skeleton = build_message(
            config,
            to="placeholder@example.invalid",
            subject=self.subject,
            html=_MARKERS[1],
            text=_MARKERS[0],
            date=dt.datetime.now(dt.UTC),
            message_id="<placeholder@example.invalid>",
            extra_headers={"List-Id": list_id(config), "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
        )
        for part in skeleton.iter_parts():
            del part["Content-Transfer-Encoding"]
            part["Content-Transfer-Encoding"] = "quoted-printable"
        for name in ("To", "Date", "Message-ID"):
            del skeleton[name]
        raw = message_bytes(skeleton).decode("ascii")
        head, _, body = raw.partition("\r\n\r\n")
        self._head = head + "\r\n"
        before_text, _, rest = body.partition(_MARKERS[0] + "\r\n")
        between, _, after_html = rest.partition(_MARKERS[1] + "\r\n")
        self._frame = (before_text, between, after_html)
        self._text = _qp_segments(rendered.text)
        self._html = _qp_segments(rendered.html)

    def build(self, recipient: Recipient, date: dt.datetime | None = None) -> bytes:
        values = recipient.values()
        headers = "".join(
            SMTP.fold(name, value)
            for name, value in (
                ("To", formataddr((recipient.name, recipient.email)) if recipient.name else recipient.email),
                ("Date", format_datetime(date or dt.datetime.now(dt.UTC))),
                ("Message-ID", recipient.message_id),
                (
                    "List-Unsubscribe",
                    f"<{recipient.unsubscribe_url}>, <mailto:{self._mailto}?subject=unsubscribe>",
                ),
            )
        )
        before_text, between, after_html = self._frame
        parts = [
            headers,
            self._head,
            "\r\n",
            before_text,
            _fill(self._text, values, escape=False),
            between,
            _fill(self._html, values, escape=True),
            after_html,
        ]
        return "".join(parts).encode("ascii")


def recipient_for(
    config: Config, secret: bytes, subscriber_id: int, email: str, name: str, message_id: str
) -> Recipient:
    """One subscriber's values. The token signs the address as stored (what the unsubscribe
    endpoint will verify); headers get its ASCII form (an internationalised domain in punycode)."""
    address = header_address(email)
    check_header_value(name, "name")
    token = make_token(secret, "unsubscribe", subscriber_id, email, list_id=list_id(config))
    return Recipient(address, name, f"{config.public_url}/unsubscribe/{token}", message_id)


def header_address(email: str) -> str:
    """The form an address takes in headers and envelopes: checked, its domain in ASCII (punycode)."""
    check_header_value(email, "address")
    try:
        return ascii_address(email)
    except ValueError as error:
        raise MessageError(str(error)) from None


def service_message(
    config: Config, *, email: str, subject: str, text: str, html: str, date: dt.datetime
) -> tuple[str, bytes]:
    """A one-off message of the web service (confirm your subscription) to one address, without
    a name (whoever filled in the form chose it): returns the envelope recipient (ASCII) and the
    message bytes. Refuses header injection."""
    address = header_address(email)
    message = build_message(
        config,
        to=address,
        subject=subject,
        html=html,
        text=text,
        date=date,
        extra_headers={"Auto-Submitted": "auto-generated"},
    )
    return address, message_bytes(message)


def check_header_value(value: str, what: str) -> str:
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise MessageError(f"{what} {value!r} contains a line break or control character")
    return value


def list_id(config: Config) -> str:
    # Remembered: every recipient's unsubscribe token signs it, and working it out costs ~30 µs.
    return _list_id(config.name, config.sender)


@functools.lru_cache(maxsize=16)
def _list_id(name: str, sender: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "newsletter"
    return f"{name} <{slug}.{parseaddr(sender)[1].rpartition('@')[2]}>"


def _qp(text: str) -> str:
    # quoprimime works on one char per byte, as email.contentmanager feeds it.
    return body_encode(text.encode("utf-8").decode("latin-1"), 76, "\r\n")


def _qp_segments(template: str) -> list[str]:
    """Alternate encoded static text and placeholder names: [static, name, static, ...]."""
    from pipeline.issue.render import PLACEHOLDER  # building the template is the parent's work

    pieces = PLACEHOLDER.split(template.replace("\r\n", "\n"))
    encoded: list[str] = []
    for index, piece in enumerate(pieces):
        if index % 2:
            encoded.append(piece)
            continue
        chunk = _qp(piece)
        if index < len(pieces) - 1 and not piece.endswith("\n"):
            chunk += _SOFT_BREAK  # the recipient value continues this line
        encoded.append(chunk)
    if not encoded[-1].endswith("\r\n"):
        encoded[-1] += "\r\n"
    return encoded


def _fill(segments: list[str], values: dict[str, str], *, escape: bool) -> str:
    out = []
    for index, segment in enumerate(segments):
        if index % 2 == 0:
            out.append(segment)
        else:
            value = values[segment]
            out.append(_qp(html.escape(value) if escape else value) + _SOFT_BREAK)
    return "".join(out)


def sample_as_sent(config: Config, rendered: Rendered) -> bytes:
    """The bytes a subscriber gets (quoted-printable parts, List-Unsubscribe headers), for the sample
    recipient: what ``check`` measures against the clip budget and scores for spam."""
    sample = _sample_recipient(config)
    recipient = Recipient(
        sample["email"], "", sample["unsubscribe_url"], make_msgid(domain=sender_domain(config))
    )
    return MessageTemplate(config, rendered).build(recipient)


def html_size_as_sent(message: bytes) -> int:
    """The HTML part's size as it travels, quoted-printable encoded: what a mailbox provider measures
    against its clip limit (Gmail's 102 KB), about 10 % more than the decoded HTML."""
    parsed = email.message_from_bytes(message)
    part = next(part for part in parsed.walk() if part.get_content_type() == "text/html")
    return len(str(part.get_payload()).encode("ascii"))
