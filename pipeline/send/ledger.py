"""The campaign ledger: the ``campaigns`` and ``deliveries`` tables, and every SQL statement on them.

The ledger (table ``deliveries``) holds one row per recipient. A row is marked
``sending`` and committed *before* its message is handed to the transport, and
``sent`` (with the provider's id) after. So after any crash, a row still
``sending`` is the only kind whose fate is unknown; it is reported, reconciled
with the transport where it can tell, and never resent unless the editor asks.
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass

from pipeline.config import Config
from pipeline.db import DB_NAME, now, open_db, transaction
from pipeline.errors import CampaignError
from pipeline.issue.render import Rendered
from pipeline.send.transports import Transport

LEDGER_STATUSES = ("queued", "sending", "sent", "failed", "skipped")


def content_hash(rendered: Rendered) -> str:
    digest = hashlib.sha256()
    for part in (rendered.issue.subject, rendered.html, rendered.text):
        digest.update(part.encode("utf-8") + b"\x00")
    return digest.hexdigest()


@dataclass(frozen=True)
class Campaign:
    id: int
    issue: int
    content_hash: str
    status: str
    transport: str


@dataclass
class Preparation:
    campaign: Campaign
    created: bool
    queued: int
    unknown: int
    reconciled: int = 0
    added: int = 0


@dataclass(frozen=True)
class Plan:
    """What ``send`` is about to do, read before anything is written, so the editor can say no."""

    resuming: bool
    recipients: int
    unknown: int


def plan_campaign(
    db: sqlite3.Connection,
    issue: int,
    digest: str,
    *,
    include_new: bool = False,
    retry_failed: bool = False,
    allow_changed: bool = False,
) -> Plan:
    campaign = find_campaign(db, issue)
    if campaign is not None and campaign.content_hash != digest and not allow_changed:
        raise _changed(issue)
    active = "SELECT COUNT(*) FROM subscribers WHERE status = 'active'"
    if campaign is None:
        return Plan(False, int(db.execute(active).fetchone()[0]), 0)
    counts = ledger_counts(db, campaign.id)
    newcomers = 0
    if include_new:
        newcomers = int(
            db.execute(
                active + " AND id NOT IN (SELECT subscriber_id FROM deliveries WHERE campaign_id = ?)",
                (campaign.id,),
            ).fetchone()[0]
        )
    return Plan(
        True, counts["queued"] + newcomers + (counts["failed"] if retry_failed else 0), counts["sending"]
    )


def find_campaign(db: sqlite3.Connection, issue: int) -> Campaign | None:
    row = db.execute(
        "SELECT id, issue, content_hash, status, transport FROM campaigns WHERE issue = ?", (issue,)
    ).fetchone()
    return Campaign(*row) if row else None


def campaign_state(config: Config, number: int) -> str | None:
    """Issue ``number``'s campaign status ('sending', 'paused', 'done'), or None if never started.

    Once a campaign exists its content is pinned, errata included.
    """
    if not (config.paths.state / DB_NAME).exists():
        return None
    db = open_db(config.paths.state)
    try:
        row = db.execute("SELECT status FROM campaigns WHERE issue = ?", (number,)).fetchone()
        return str(row["status"]) if row else None
    finally:
        db.close()


def ledger_counts(db: sqlite3.Connection, campaign_id: int) -> dict[str, int]:
    found = dict(
        db.execute(
            "SELECT status, COUNT(*) FROM deliveries WHERE campaign_id = ? GROUP BY status", (campaign_id,)
        ).fetchall()
    )
    return {status: found.get(status, 0) for status in LEDGER_STATUSES}


def prepare_campaign(
    db: sqlite3.Connection,
    issue: int,
    digest: str,
    transport: Transport,
    *,
    allow_changed: bool = False,
    include_new: bool = False,
    resend_unknown: bool = False,
    retry_failed: bool = False,
) -> Preparation:
    """Create the campaign and its ledger, or pick up the one a previous run left."""
    stamp = now()
    with transaction(db):
        campaign = find_campaign(db, issue)
        created = campaign is None
        added = 0
        if campaign is None:
            cursor = db.execute(
                "INSERT INTO campaigns (issue, content_hash, status, transport, created_at, updated_at)"
                " VALUES (?, ?, 'sending', ?, ?, ?)",
                (issue, digest, transport.name, stamp, stamp),
            )
            campaign_id = int(cursor.lastrowid or 0)
            added = _enqueue_active(db, campaign_id)
        else:
            campaign_id = campaign.id
            if campaign.content_hash != digest:
                if not allow_changed:
                    raise _changed(issue)
                db.execute(
                    "UPDATE campaigns SET content_hash = ?, history = history || ? WHERE id = ?",
                    (digest, f"content changed at {stamp} (--allow-changed); ", campaign_id),
                )
            if include_new:
                added = _enqueue_active(db, campaign_id)
            if retry_failed:
                db.execute(
                    "UPDATE deliveries SET status = 'queued', updated_at = ? WHERE campaign_id = ? AND status = 'failed'",
                    (stamp, campaign_id),
                )
            db.execute(
                "UPDATE campaigns SET status = 'sending', updated_at = ? WHERE id = ?", (stamp, campaign_id)
            )
    campaign = find_campaign(db, issue)
    assert campaign is not None
    reconciled = _reconcile_unknown(db, campaign, transport, resend_unknown)
    counts = ledger_counts(db, campaign.id)
    return Preparation(campaign, created, counts["queued"], counts["sending"], reconciled, added)


def _changed(issue: int) -> CampaignError:
    return CampaignError(
        f"issue {issue} changed since its campaign started: resuming would send different "
        "content to the rest of the list; revert the change, or pass --allow-changed "
        "to send the new version to those not sent yet"
    )


def _enqueue_active(db: sqlite3.Connection, campaign_id: int) -> int:
    cursor = db.execute(
        "INSERT OR IGNORE INTO deliveries (campaign_id, subscriber_id, status, updated_at)"
        " SELECT ?, id, 'queued', ? FROM subscribers WHERE status = 'active'",
        (campaign_id, now()),
    )
    return cursor.rowcount


def _reconcile_unknown(db: sqlite3.Connection, campaign: Campaign, transport: Transport, resend: bool) -> int:
    """Rows left ``sending`` by a crash: ask the transport; requeue them only if the editor said so."""
    rows = db.execute(
        "SELECT subscriber_id FROM deliveries WHERE campaign_id = ? AND status = 'sending'", (campaign.id,)
    ).fetchall()
    settled = 0
    with transaction(db):
        for (subscriber_id,) in rows:
            delivered = (
                transport.was_delivered(delivery_key(campaign, subscriber_id))
                if transport.name == campaign.transport
                else None
            )
            if delivered is True:
                status, note = "sent", "found delivered after an interruption"
            elif delivered is False or resend:
                status, note = "queued", "requeued after an interruption"
            else:
                continue
            db.execute(
                "UPDATE deliveries SET status = ?, last_error = ?, updated_at = ? WHERE campaign_id = ? AND subscriber_id = ?",
                (status, note, now(), campaign.id, subscriber_id),
            )
            settled += 1
    return settled


def delivery_key(campaign: Campaign, subscriber_id: int) -> str:
    return f"nl{campaign.issue}-c{campaign.id}-s{subscriber_id}"


def recent_rate(db: sqlite3.Connection, campaign_id: int, seconds: int = 60) -> float:
    """Messages per second over the last ``seconds``, for ``status`` while a send runs."""
    import datetime as dt

    since = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)).isoformat(timespec="seconds")
    count = db.execute(
        "SELECT COUNT(*) FROM deliveries WHERE campaign_id = ? AND status = 'sent' AND updated_at >= ?",
        (campaign_id, since),
    ).fetchone()[0]
    return count / seconds
