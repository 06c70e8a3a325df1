"""``newsletter send``: check the issue, then run (or resume) its campaign. Also test sends and status."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import make_msgid

from .build import Build, build_issue, check_build
from .campaign import (
    Campaign,
    CampaignRunner,
    Preparation,
    Reporter,
    SendSettings,
    Summary,
    campaign_lock,
    content_hash,
    find_campaign,
    is_locked,
    ledger_counts,
    prepare_campaign,
    recent_rate,
)
from .check import Problem
from .config import Config
from .db import open_db
from .errors import CheckFailed, NewsletterError
from .message import MessageTemplate, Recipient, check_header_value, sender_domain
from .subscribers import check_address, find
from .tokens import load_secret, make_token
from .transports import Envelope, Transport, open_transport


class NothingToSend(NewsletterError):
    exit_code = 0


@dataclass(frozen=True)
class SendOptions:
    dry_run: bool = False
    allow_changed: bool = False
    include_new: bool = False
    resend_unknown: bool = False


def checked_build(config: Config, number: int) -> tuple[Build, list[Problem]]:
    """Build and check; raise CheckFailed when an error would break the issue in an inbox."""
    build = build_issue(config, number)
    problems = check_build(config, build)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise CheckFailed(f"issue {number} has {len(errors)} error(s) (run `newsletter check {number}`): nothing was sent")
    return build, problems


def send_rate(config: Config, transport: Transport, dry_run: bool) -> float | None:
    if dry_run:
        return None
    account = transport.max_rate()
    return min(config.send.max_rate, account) if account else config.send.max_rate


def send_issue(
    config: Config,
    number: int,
    options: SendOptions,
    *,
    confirm: Callable[[Preparation, Transport, float | None], bool],
    reporter: Reporter | None = None,
) -> Summary:
    build, _ = checked_build(config, number)
    rendered = build.rendered
    transport = open_transport(config, dry_run=options.dry_run)
    try:
        secret = load_secret(allow_development=config.transport == "maildir" or options.dry_run)
        state = open_db(config.paths.state)
        with campaign_lock(config.paths.state, number):
            # A dry run works on a copy of the database in memory: same code path, nothing recorded.
            db = _memory_copy(state) if options.dry_run else state
            if options.dry_run:
                state.close()
            preparation = prepare_campaign(
                db,
                number,
                content_hash(rendered),
                transport,
                allow_changed=options.allow_changed,
                include_new=options.include_new,
                resend_unknown=options.resend_unknown,
            )
            if preparation.queued == 0 and preparation.unknown == 0 and not preparation.created:
                raise NothingToSend(
                    f"issue {number} was already sent to everyone on its list; nothing to do "
                    "(--include-new also sends it to subscribers who joined since)"
                )
            rate = send_rate(config, transport, options.dry_run)
            if preparation.queued and not confirm(preparation, transport, rate):
                raise NewsletterError("not sent: the editor said no")
            runner = CampaignRunner(
                db,
                config,
                preparation.campaign,
                MessageTemplate(config, rendered),
                transport,
                secret,
                SendSettings(
                    concurrency=config.send.concurrency,
                    max_rate=rate,
                    max_attempts=config.send.max_attempts,
                    max_consecutive_failures=config.send.max_consecutive_failures,
                ),
                reporter,
            )
            return runner.run()
    finally:
        transport.close()


def _memory_copy(db: sqlite3.Connection) -> sqlite3.Connection:
    copy = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    copy.row_factory = sqlite3.Row
    db.backup(copy)
    return copy


def send_test(config: Config, number: int, address: str) -> str:
    """One copy to ``address``, exactly as a subscriber would get it; the ledger is not touched."""
    try:
        address = check_address(address)
    except ValueError as error:
        raise NewsletterError(f"--to {address!r}: {error}") from None
    build, _ = checked_build(config, number)
    transport = open_transport(config)
    try:
        secret = load_secret(allow_development=config.transport == "maildir")
        db = open_db(config.paths.state)
        row = find(db, address)
        subscriber_id, name = (row["id"], row["name"]) if row else (0, "")
        check_header_value(name, "name")
        token = make_token(secret, "unsubscribe", subscriber_id, address)
        recipient = Recipient(
            email=address,
            name=name,
            unsubscribe_url=f"{config.public_url}/unsubscribe/{token}",
            message_id=make_msgid(domain=sender_domain(config)),
        )
        data = MessageTemplate(config, build.rendered).build(recipient)
        key = f"test{number}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S%f}"
        from email.utils import parseaddr

        return transport.send(Envelope(parseaddr(config.sender)[1], address, data, key))
    finally:
        transport.close()


@dataclass(frozen=True)
class CampaignStatus:
    campaign: Campaign | None
    counts: dict[str, int]
    running: bool
    rate: float
    note: str
    active_subscribers: int
    updated_at: str


def campaign_status(config: Config, number: int) -> CampaignStatus:
    db = open_db(config.paths.state)
    active = int(db.execute("SELECT COUNT(*) FROM subscribers WHERE status = 'active'").fetchone()[0])
    campaign = find_campaign(db, number)
    if campaign is None:
        return CampaignStatus(None, {}, False, 0.0, "", active, "")
    row = db.execute("SELECT note, updated_at FROM campaigns WHERE id = ?", (campaign.id,)).fetchone()
    return CampaignStatus(
        campaign,
        ledger_counts(db, campaign.id),
        is_locked(config.paths.state, number),
        recent_rate(db, campaign.id),
        row["note"],
        active,
        row["updated_at"],
    )
