"""The welcome mail: ``email_templates/welcome.md``, sent once to each subscriber who confirms.

The file is Markdown with front matter (``subject`` required; ``title``, ``preheader``, ``author``
optional) and is rendered exactly like an issue, through the issue's templates. It may use
``{{ latest_issue_url }}`` (the latest sent issue in the archive, or the archive's index before the
first one), ``{{ latest_issue_number }}``, ``{{ archive_url }}`` and ``{{ name }}``. No file, no welcome.

Exactly once, as a campaign's ledger does it: confirming queues a ``pending`` row in ``welcome_mails``
(at most one per subscriber, ever); a sender claims it by committing ``sending`` before handing the
message over, and records ``sent`` after. A transport that fails puts the row back to ``pending``
(sent by the next confirmation, or ``newsletter welcome --pending``); a crash between handing over and
recording leaves ``sending``, which is never sent again: a missing welcome is better than two.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import jinja2

from pipeline.config import Config
from pipeline.db import stamp_at, transaction
from pipeline.errors import (
    DeliveryUnknown,
    NewsletterError,
    SourceError,
    TransportError,
    TransportUnavailable,
)
from pipeline.issue.render import Rendered, render_issue
from pipeline.issue.source import Issue, is_one_line, read_front_matter
from pipeline.send.message import MessageTemplate, recipient_for, sender_address, sender_domain
from pipeline.send.single import envelope_to
from pipeline.send.transports import Envelope, Transport

log = logging.getLogger(__name__)

WELCOME_FILE = "welcome.md"
FIELDS = ("subject", "title", "preheader", "author")
ARCHIVE_INDEX = "README.md"  # the archive's index page (pipeline/archive writes it)
BATCH = 100  # pending welcomes one call sends at most: a confirmation never turns into a campaign


@dataclass(frozen=True)
class Welcome:
    path: Path
    subject: str
    title: str
    preheader: str
    author: str
    body: str
    """Markdown with Jinja2 variables, filled in when the mail is rendered."""
    body_line: int


def welcome_path(config: Config) -> Path:
    return config.paths.templates / WELCOME_FILE


def load_welcome(config: Config) -> Welcome | None:
    """The welcome mail as written, checked (its variables included); None when there is no file."""
    path = welcome_path(config)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise SourceError(path, f"cannot read: {error.strerror}") from None
    front = read_front_matter(
        path, data, missing="must start with front matter between '---' lines (subject: ...)"
    )
    meta = front.meta
    for name in meta:
        if name not in FIELDS:
            raise SourceError(
                path, f"{name}: unknown field (known fields: {', '.join(FIELDS)})", front.line_of(name)
            )
    for name, value in meta.items():
        if not isinstance(value, str) or not is_one_line(value):
            raise SourceError(path, f"{name}: must be one line of text (quote it)", front.line_of(name))
    subject = str(meta.get("subject") or "").strip()
    if not subject:
        raise SourceError(path, "subject: missing required field (the welcome mail's Subject line)", 1)
    body = front.body
    if not body.strip():
        raise SourceError(path, "the body is empty: write the welcome below the front matter")
    welcome = Welcome(
        path=path,
        subject=subject,
        title=str(meta.get("title") or subject).strip(),
        preheader=str(meta.get("preheader") or "").strip(),
        author=str(meta.get("author") or "").strip(),
        body=body,
        body_line=front.body_line,
    )
    _filled(welcome, _variables(config, None))  # a misspelt variable fails now, not at the first confirmation
    return welcome


def _variables(config: Config, latest: int | None) -> dict[str, Any]:
    return {
        "latest_issue_url": config.archive_url(latest) if latest else _index_url(config),
        "latest_issue_number": latest or "",
        "archive_url": _index_url(config),
        "name": config.name,
    }


def _index_url(config: Config) -> str:
    return f"{config.archive_base_url}/{ARCHIVE_INDEX}"


def _fill(path: Path, text: str, variables: dict[str, Any], line: int = 1) -> str:
    """``text`` (from the file's ``line`` on) with its ``{{ variables }}`` filled in."""
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    try:
        return environment.from_string(text).render(variables)
    except jinja2.TemplateSyntaxError as error:
        raise SourceError(path, f"template error: {error.message}", line + (error.lineno or 1) - 1) from None
    except jinja2.UndefinedError as error:
        known = ", ".join(sorted(variables))
        raise SourceError(
            path, f"{error.message} (variables: {known})", line + _line_of(text, error)
        ) from None


def _line_of(text: str, error: jinja2.UndefinedError) -> int:
    """How many lines into ``text`` the undefined name is used (Jinja does not say)."""
    name = re.search(r"'(\w+)' is undefined", error.message or "")
    if name:
        used = re.compile(r"\{[{%][^}]*\b" + re.escape(name.group(1)) + r"\b")
        for index, line in enumerate(text.split("\n")):
            if used.search(line):
                return index
    return 0


def _filled(welcome: Welcome, variables: dict[str, Any]) -> Welcome:
    """The welcome with its variables filled in: subject, title and preheader too."""
    return replace(
        welcome,
        subject=_fill(welcome.path, welcome.subject, variables),
        title=_fill(welcome.path, welcome.title, variables),
        preheader=_fill(welcome.path, welcome.preheader, variables),
        body=_fill(welcome.path, welcome.body, variables, welcome.body_line),
    )


def render_welcome(config: Config, welcome: Welcome, latest: int | None, today: dt.date) -> Rendered:
    """The welcome rendered like an issue. Its masthead's archive link and its relative links point at
    the latest sent issue (or the archive's index before the first): the issue templates build them
    from the issue number and [archive] filename, so the welcome gets a config naming that one page."""
    target = config.archive_name(latest) if latest else ARCHIVE_INDEX
    pointed = replace(config, archive_filename=target.replace("{", "{{").replace("}", "}}"))
    welcome = _filled(welcome, _variables(config, latest))
    issue = Issue(
        path=welcome.path,
        number=latest or 0,
        title=welcome.title,
        date=today,
        subject=welcome.subject,
        preheader=welcome.preheader,
        author=welcome.author,
        allow_html=False,
        body=welcome.body,
        body_line=welcome.body_line,
    )
    return render_issue(pointed, issue)


def latest_sent_issue(db: sqlite3.Connection) -> int | None:
    row = db.execute("SELECT MAX(issue) FROM campaigns WHERE status = 'done'").fetchone()
    return int(row[0]) if row and row[0] is not None else None


# --- The record: at most one welcome per subscriber ----------------------------------------------


def queue_welcome(db: sqlite3.Connection, subscriber_id: int, at: float) -> bool:
    """Queue this subscriber's welcome, unless one was ever queued for them; True if queued now."""
    stamp = stamp_at(at)
    with transaction(db):
        cursor = db.execute(
            "INSERT OR IGNORE INTO welcome_mails (subscriber_id, status, queued_at, updated_at) "
            "VALUES (?, 'pending', ?, ?)",
            (subscriber_id, stamp, stamp),
        )
    return cursor.rowcount == 1


def welcome_counts(db: sqlite3.Connection) -> dict[str, int]:
    counts = dict.fromkeys(("pending", "sending", "sent", "failed", "skipped"), 0)
    for status, count in db.execute("SELECT status, COUNT(*) FROM welcome_mails GROUP BY status"):
        counts[status] = count
    return counts


@dataclass
class WelcomeReport:
    sent: list[str] = field(default_factory=list)
    retry: list[str] = field(default_factory=list)
    """Still pending: the transport failed for now."""
    failed: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    skipped: int = 0
    unavailable: TransportUnavailable | None = None
    """Set when the transport could not send anything: the caller may reopen it."""


@dataclass(frozen=True)
class _Claimed:
    subscriber_id: int
    email: str
    name: str


def send_pending_welcomes(
    config: Config,
    db: sqlite3.Connection,
    transport: Callable[[], Transport],
    secret: bytes,
    *,
    lock: AbstractContextManager[Any] | None = None,
    clock: Callable[[], float] = time.time,
) -> WelcomeReport:
    """Send the pending welcomes (at most :data:`BATCH`), each claimed as ``sending`` first.

    ``lock`` guards ``db`` when other threads share it (the web service's); it is never held while the
    transport works. A welcome.md that does not render raises before anything is claimed.
    """
    guard = lock or nullcontext()
    report = WelcomeReport()
    welcome = load_welcome(config)
    if welcome is None:
        return report
    with guard:
        latest = latest_sent_issue(db)
        if db.execute("SELECT 1 FROM welcome_mails WHERE status = 'pending' LIMIT 1").fetchone() is None:
            return report  # nothing to render for
    template = MessageTemplate(
        config, render_welcome(config, welcome, latest, dt.datetime.fromtimestamp(clock(), dt.UTC).date())
    )
    for claimed in _claim(db, guard, clock, report):
        try:
            outcome, detail = _deliver(config, template, transport, secret, claimed)
        except TransportUnavailable as error:
            # Nothing can be sent now: back to pending, and no more claims until the next call.
            outcome, detail, report.unavailable = "pending", str(error), error
        with guard, transaction(db):
            db.execute(
                "UPDATE welcome_mails SET status = ?, provider_id = ?, last_error = ?, updated_at = ? "
                "WHERE subscriber_id = ? AND status = 'sending'",
                (
                    outcome,
                    detail if outcome == "sent" else None,
                    None if outcome == "sent" else detail,
                    stamp_at(clock()),
                    claimed.subscriber_id,
                ),
            )
        if outcome == "sent":
            report.sent.append(claimed.email)
            continue
        log.error("welcome mail to s%d not sent: %s", claimed.subscriber_id, detail)
        {"failed": report.failed, "sending": report.unknown, "pending": report.retry}[outcome].append(
            claimed.email
        )
        if report.unavailable is not None:
            break
    return report


def _claim(
    db: sqlite3.Connection,
    guard: AbstractContextManager[Any],
    clock: Callable[[], float],
    report: WelcomeReport,
) -> Iterator[_Claimed]:
    """Each pending welcome of an active subscriber, committed as ``sending`` just before it is yielded."""
    with guard, transaction(db):
        stamp = stamp_at(clock())
        # Unsubscribed or bounced before their welcome went out: it never will.
        report.skipped = db.execute(
            "UPDATE welcome_mails SET status = 'skipped', updated_at = ? WHERE status = 'pending' AND "
            "subscriber_id NOT IN (SELECT id FROM subscribers WHERE status = 'active')",
            (stamp,),
        ).rowcount
        pending = [
            int(row[0])
            for row in db.execute(
                "SELECT subscriber_id FROM welcome_mails WHERE status = 'pending' "
                "ORDER BY subscriber_id LIMIT ?",
                (BATCH,),
            )
        ]
    for subscriber_id in pending:
        with guard, transaction(db):
            row = db.execute("SELECT email, name FROM subscribers WHERE id = ?", (subscriber_id,)).fetchone()
            claimed = db.execute(
                "UPDATE welcome_mails SET status = 'sending', attempts = attempts + 1, updated_at = ? "
                "WHERE subscriber_id = ? AND status = 'pending'",
                (stamp_at(clock()), subscriber_id),
            ).rowcount
        if claimed and row is not None:  # another sender (thread or process) may have claimed it first
            yield _Claimed(subscriber_id, row["email"], row["name"])


def _deliver(
    config: Config,
    template: MessageTemplate,
    transport: Callable[[], Transport],
    secret: bytes,
    claimed: _Claimed,
) -> tuple[str, str]:
    """Hand one welcome over: the status to record and the provider id or the error."""
    try:
        recipient = recipient_for(
            config,
            secret,
            claimed.subscriber_id,
            claimed.email,
            claimed.name,
            make_msgid(domain=sender_domain(config)),
        )
        envelope = Envelope(
            sender_address(config),
            recipient.email,
            template.build(recipient),
            f"welcome-s{claimed.subscriber_id}",
        )
        return "sent", transport().send(envelope)
    except DeliveryUnknown as error:
        return "sending", f"{error} (may have been delivered: not sent again)"
    except TransportUnavailable:
        raise
    except TransportError as error:
        return ("pending" if error.retryable else "failed"), str(error)
    except NewsletterError as error:  # a subscriber's address or name that cannot go in a header
        return "failed", str(error)


def require_welcome(config: Config) -> Welcome:
    """The welcome mail, for a command that needs one."""
    welcome = load_welcome(config)
    if welcome is None:
        raise SourceError(welcome_path(config), "no such file: without it no welcome mail is sent")
    return welcome


def send_test_welcome(
    config: Config, db: sqlite3.Connection, transport: Transport, secret: bytes, to: str
) -> str:
    """One copy of the welcome to ``to``, as a subscriber who confirms now gets it; nothing is recorded."""
    welcome = require_welcome(config)
    rendered = render_welcome(config, welcome, latest_sent_issue(db), dt.date.today())
    return transport.send(envelope_to(config, db, secret, rendered, to, "welcome-test"))
