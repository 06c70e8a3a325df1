"""The campaign ledger: the ``campaigns`` and ``deliveries`` tables, and every SQL statement on them.

The ledger (table ``deliveries``) holds one row per recipient. A row is marked
``sending`` and committed *before* its message is handed to the transport, and
``sent`` (with the provider's id) after. So after any crash, a row still
``sending`` is the only kind whose fate is unknown; it is reported, reconciled
with the transport where it can tell, and never resent unless the editor asks.

A row becomes ``sending`` only by :meth:`Ledger.record_and_claim`, whose UPDATE itself
requires the subscriber to be active still: whatever was read before, nobody who left is mailed.
Nothing else in the pipeline writes SQL for these tables (the one exception: erasing a
subscriber on request, in :mod:`pipeline.audience.subscribers`, deletes their rows too).
The bounces and complaints the reputation breaker counts are written by :mod:`pipeline.events.apply`
into ``campaign_feedback``, which finds the campaign by the delivery's ``provider_id``; they are
read here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.config import Config
from pipeline.db import DB_NAME, now, open_db, transaction
from pipeline.errors import CampaignError
from pipeline.send.delivery import Outcome, Reputation, ReputationLimits
from pipeline.send.transports import Transport

if TYPE_CHECKING:  # not at run time: a sender process needs no renderer (mjml, premailer)
    from pipeline.issue.render import Rendered

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
class Candidate:
    """A queued delivery, with the address it goes to: read before it is claimed."""

    subscriber_id: int
    attempts: int
    email: str
    name: str


@dataclass(frozen=True)
class Closing:
    """How a run left the campaign: 'done' or 'paused' (and why), and the ledger's counts then."""

    status: str
    reason: str
    counts: dict[str, int]


@dataclass(frozen=True)
class Notes:
    """What ``status`` shows about a campaign besides its counts."""

    note: str
    history: str
    updated_at: str
    started_at: str


@dataclass(frozen=True)
class Plan:
    """What ``send`` is about to do, read before anything is written, so the editor can say no."""

    resuming: bool
    recipients: int
    unknown: int
    started_at: str = ""
    """When the campaign being resumed started (UTC, ISO 8601)."""


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
    counts = Ledger(db, campaign).counts()
    newcomers = 0
    if include_new:
        newcomers = int(
            db.execute(
                active + " AND id NOT IN (SELECT subscriber_id FROM deliveries WHERE campaign_id = ?)",
                (campaign.id,),
            ).fetchone()[0]
        )
    started_at = db.execute("SELECT created_at FROM campaigns WHERE id = ?", (campaign.id,)).fetchone()[0]
    return Plan(
        True,
        counts["queued"] + newcomers + (counts["failed"] if retry_failed else 0),
        counts["sending"],
        started_at,
    )


def deadline_of(started_at: str, deadline_hours: float) -> dt.datetime | None:
    """When a campaign started at ``started_at`` becomes late; None when ``[send] deadline_hours`` is 0."""
    if not deadline_hours:
        return None
    return dt.datetime.fromisoformat(started_at) + dt.timedelta(hours=deadline_hours)


def refuse_if_late(issue: int, plan: Plan, deadline_hours: float, now: dt.datetime) -> None:
    """A campaign past its deadline is not resumed without ``--late``: news meant for Friday should
    not land on Tuesday by accident. Raises CampaignError, before anything is written."""
    deadline = deadline_of(plan.started_at, deadline_hours) if plan.resuming else None
    if deadline is None or now < deadline:
        return
    age = now - dt.datetime.fromisoformat(plan.started_at)
    raise CampaignError(
        f"issue {issue}'s campaign started {_duration(age)} ago ({plan.started_at}), past [send] "
        f"deadline_hours = {deadline_hours:g}: its news may be stale; nothing was sent. "
        f"Pass --late to send it to the {plan.recipients:,} recipient(s) left anyway"
    )


def _duration(age: dt.timedelta) -> str:
    hours = int(age.total_seconds() // 3600)
    days, hours = divmod(hours, 24)
    return f"{days} day(s) {hours} hour(s)" if days else f"{hours} hour(s)"


def find_campaign(db: sqlite3.Connection, issue: int, erratum: int = 0) -> Campaign | None:
    """Issue ``issue``'s own campaign, or with ``erratum`` the campaign of that erratum's stop press."""
    row = db.execute(
        "SELECT id, issue, content_hash, status, transport FROM campaigns WHERE issue = ? AND erratum = ?",
        (issue, erratum),
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
        campaign = find_campaign(db, number)
        return campaign.status if campaign else None
    finally:
        db.close()


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
    return _prepare(
        db,
        (issue, 0),
        digest,
        transport,
        enqueue=lambda campaign_id: _enqueue_active(db, campaign_id),
        changed=_changed(issue),
        allow_changed=allow_changed,
        include_new=include_new,
        resend_unknown=resend_unknown,
        retry_failed=retry_failed,
    )


def _prepare(
    db: sqlite3.Connection,
    key: tuple[int, int],
    digest: str,
    transport: Transport,
    *,
    enqueue: Callable[[int], int],
    changed: CampaignError,
    allow_changed: bool,
    resend_unknown: bool,
    include_new: bool = False,
    retry_failed: bool = False,
) -> Preparation:
    """Create campaign ``key`` (issue, erratum: 0 for the issue itself) with the rows ``enqueue`` adds,
    or pick up the one a previous run left; ``changed`` is raised if its content changed since."""
    stamp = now()
    with transaction(db):
        campaign = find_campaign(db, *key)
        created = campaign is None
        added = 0
        if campaign is None:
            cursor = db.execute(
                "INSERT INTO campaigns (issue, erratum, content_hash, status, transport, created_at, updated_at)"
                " VALUES (?, ?, ?, 'sending', ?, ?, ?)",
                (*key, digest, transport.name, stamp, stamp),
            )
            added = enqueue(int(cursor.lastrowid or 0))
        else:
            if campaign.content_hash != digest:
                if not allow_changed:
                    raise changed
                db.execute(
                    "UPDATE campaigns SET content_hash = ?, history = history || ? WHERE id = ?",
                    (digest, f"content changed at {stamp} (--allow-changed); ", campaign.id),
                )
            if include_new:
                added = enqueue(campaign.id)
            if retry_failed:
                db.execute(
                    "UPDATE deliveries SET status = 'queued', updated_at = ? WHERE campaign_id = ? AND status = 'failed'",
                    (stamp, campaign.id),
                )
            db.execute(
                "UPDATE campaigns SET status = 'sending', updated_at = ? WHERE id = ?", (stamp, campaign.id)
            )
    campaign = find_campaign(db, *key)
    assert campaign is not None
    ledger = Ledger(db, campaign)
    reconciled = ledger.reconcile_unknown(transport, resend_unknown)
    counts = ledger.counts()
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


def delivery_key(campaign: Campaign, subscriber_id: int) -> str:
    return f"nl{campaign.issue}-c{campaign.id}-s{subscriber_id}"


# What an outcome leaves its row as: sent, failed and skipped are final; an unknown fate stays
# "sending" (never resent blindly); anything else goes back to the queue for a later run.
_ROW_STATUS = {"sent": "sent", "failed": "failed", "skipped": "skipped", "unknown": "sending"}


class Ledger:
    """One campaign's rows in ``deliveries`` (and its row in ``campaigns``), on one connection."""

    def __init__(self, db: sqlite3.Connection, campaign: Campaign) -> None:
        self.db = db
        self.campaign = campaign

    def counts(self) -> dict[str, int]:
        found = dict(
            self.db.execute(
                "SELECT status, COUNT(*) FROM deliveries WHERE campaign_id = ? GROUP BY status",
                (self.campaign.id,),
            ).fetchall()
        )
        return {status: found.get(status, 0) for status in LEDGER_STATUSES}

    def progress(self) -> tuple[int, int]:
        """(all rows, rows handled for good): where a progress bar starts."""
        counts = self.counts()
        return sum(counts.values()), counts["sent"] + counts["failed"] + counts["skipped"]

    def recent_rate(self, seconds: int = 60) -> float:
        """Messages per second over the last ``seconds``, for ``status`` while a send runs."""
        since = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)).isoformat(timespec="seconds")
        count = self.db.execute(
            "SELECT COUNT(*) FROM deliveries WHERE campaign_id = ? AND status = 'sent' AND updated_at >= ?",
            (self.campaign.id, since),
        ).fetchone()[0]
        return float(count) / seconds

    def notes(self) -> Notes:
        row = self.db.execute(
            "SELECT note, history, updated_at, created_at FROM campaigns WHERE id = ?", (self.campaign.id,)
        ).fetchone()
        return Notes(row["note"], row["history"], row["updated_at"], row["created_at"])

    def reputation(self, limits: ReputationLimits | None = None) -> Reputation:
        """Messages sent, and the hard bounces and complaints SES reported for them so far: index range
        counts, no write (the campaign loop calls this between rounds). With ``limits``, sent messages are
        counted only as far as they can matter (:meth:`ReputationLimits.sent_worth_counting`): a
        million-row campaign's full count takes over 100 ms on a busy machine."""
        feedback = dict(
            self.db.execute(
                "SELECT kind, COUNT(*) FROM campaign_feedback WHERE campaign_id = ? GROUP BY kind",
                (self.campaign.id,),
            ).fetchall()
        )
        bounces, complaints = int(feedback.get("bounce", 0)), int(feedback.get("complaint", 0))
        most = -1 if limits is None else limits.sent_worth_counting(bounces, complaints)  # -1: no limit
        sent = self.db.execute(
            "SELECT COUNT(*) FROM (SELECT 1 FROM deliveries WHERE campaign_id = ? AND status = 'sent' LIMIT ?)",
            (self.campaign.id, most),
        ).fetchone()[0]
        return Reputation(int(sent), bounces, complaints)

    def reconcile_unknown(self, transport: Transport, resend: bool) -> int:
        """Rows left ``sending`` by a crash: ask the transport; requeue them only if the editor said so."""
        campaign = self.campaign
        in_doubt = [
            subscriber_id
            for (subscriber_id,) in self.db.execute(
                "SELECT subscriber_id FROM deliveries WHERE campaign_id = ? AND status = 'sending'",
                (campaign.id,),
            )
        ]
        settled: list[tuple[str, str, int]] = []
        for subscriber_id in in_doubt:  # asked before the transaction: the transport may take a while
            delivered = (
                transport.was_delivered(delivery_key(campaign, subscriber_id))
                if transport.name == campaign.transport
                else None
            )
            if delivered is True:
                settled.append(("sent", "found delivered after an interruption", subscriber_id))
            elif delivered is False or resend:
                settled.append(("queued", "requeued after an interruption", subscriber_id))
        stamp = now()
        with transaction(self.db):
            for status, note, subscriber_id in settled:
                self.db.execute(
                    "UPDATE deliveries SET status = ?, last_error = ?, updated_at = ? WHERE campaign_id = ? AND subscriber_id = ?",
                    (status, note, stamp, campaign.id, subscriber_id),
                )
        return len(settled)

    def queued(self, *, after: int, limit: int, partition: tuple[int, int] = (0, 1)) -> list[Candidate]:
        """The next ``limit`` queued rows after subscriber ``after``, in id order, of share ``k`` of
        ``n`` (``subscriber_id % n == k``). Only read: :meth:`record_and_claim` decides who is sent."""
        share, shares = partition
        rows = self.db.execute(
            "SELECT d.subscriber_id, d.attempts, s.email, s.name FROM deliveries d"
            " JOIN subscribers s ON s.id = d.subscriber_id"
            " WHERE d.campaign_id = ? AND d.status = 'queued' AND d.subscriber_id > ? AND d.subscriber_id % ? = ?"
            " ORDER BY d.subscriber_id LIMIT ?",
            (self.campaign.id, after, shares, share, limit),
        ).fetchall()
        return [Candidate(*row) for row in rows]

    def record_and_claim(
        self, outcomes: Sequence[Outcome], candidates: Sequence[Candidate] = ()
    ) -> list[Candidate]:
        """Record what finished and claim what starts, in one short write transaction (one fsync a round).

        A candidate is claimed (marked ``sending``) only if its row is still queued and its subscriber
        still active, checked by the very statement that marks it: an unsubscribe committed after
        :meth:`queued` read the candidate is never ignored. The others are marked ``skipped``. Returns
        the claimed candidates: from now on, these may be handed to the transport.
        """
        stamp = now()
        campaign_id = self.campaign.id
        claimed = []
        with transaction(self.db):
            for outcome in outcomes:
                self.db.execute(
                    "UPDATE deliveries SET status = ?, provider_id = ?, attempts = ?, last_error = ?, updated_at = ?"
                    " WHERE campaign_id = ? AND subscriber_id = ?",
                    (
                        _ROW_STATUS.get(outcome.kind, "queued"),
                        outcome.provider_id or None,
                        outcome.attempts,
                        outcome.error or None,
                        stamp,
                        campaign_id,
                        outcome.subscriber_id,
                    ),
                )
            for candidate in candidates:
                marked = self.db.execute(
                    "UPDATE deliveries SET status = 'sending', last_error = NULL, updated_at = ?"
                    " WHERE campaign_id = ? AND subscriber_id = ? AND status = 'queued'"
                    " AND EXISTS (SELECT 1 FROM subscribers WHERE id = ? AND status = 'active')",
                    (stamp, campaign_id, candidate.subscriber_id, candidate.subscriber_id),
                )
                if marked.rowcount:
                    claimed.append(candidate)
                    continue
                # Unsubscribed or bounced since the campaign started: never mail them.
                self.db.execute(
                    "UPDATE deliveries SET status = 'skipped', updated_at = ?,"
                    " last_error = 'subscriber is ' || (SELECT status FROM subscribers WHERE id = ?)"
                    " WHERE campaign_id = ? AND subscriber_id = ? AND status = 'queued'",
                    (stamp, candidate.subscriber_id, campaign_id, candidate.subscriber_id),
                )
        return claimed

    def close(self, pause_reason: str) -> Closing:
        """Record whether the campaign is done or paused (and why), from what the ledger now says."""
        counts = self.counts()
        if not pause_reason and counts["queued"]:
            pause_reason = (
                f"{counts['queued']} message(s) could not be sent yet (temporary errors); run again to retry"
            )
        if not pause_reason and counts["sending"]:
            pause_reason = f"{counts['sending']} message(s) in an unknown state"
        status = "paused" if pause_reason else "done"
        stamp = now()
        with transaction(self.db):
            self.db.execute(
                "UPDATE campaigns SET status = ?, note = ?, updated_at = ?,"
                " finished_at = CASE WHEN ? = 'done' THEN ? ELSE NULL END WHERE id = ?",
                (status, pause_reason, stamp, status, stamp, self.campaign.id),
            )
        return Closing(status, pause_reason, counts)


# --- Stop presses: a correction mailed to the readers of a sent issue -----------------------------
# Its own campaign row (``erratum`` set) and ledger, sent by the same runner; its recipients are
# those the issue's campaign sent to, minus anyone who left since.


def stop_presses_of(db: sqlite3.Connection, issue: int) -> list[tuple[int, Campaign]]:
    """(erratum id, campaign) of every stop press of ``issue``, oldest first."""
    rows = db.execute(
        "SELECT erratum, id, issue, content_hash, status, transport FROM campaigns"
        " WHERE issue = ? AND erratum > 0 ORDER BY id",
        (issue,),
    ).fetchall()
    return [(row[0], Campaign(*row[1:])) for row in rows]


_ISSUE_READERS = (
    "SELECT d.subscriber_id FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id"
    " WHERE d.campaign_id = ? AND d.status = 'sent' AND s.status = 'active'"
)


def plan_stop_press(db: sqlite3.Connection, issue: Campaign, erratum: int) -> Plan:
    """Who a stop press of ``issue`` would reach now: its readers still subscribed, or what is left."""
    campaign = find_campaign(db, issue.issue, erratum)
    if campaign is None:
        count = db.execute(f"SELECT COUNT(*) FROM ({_ISSUE_READERS})", (issue.id,)).fetchone()[0]
        return Plan(False, int(count), 0)
    counts = Ledger(db, campaign).counts()
    return Plan(True, counts["queued"], counts["sending"])


def prepare_stop_press(
    db: sqlite3.Connection,
    issue: Campaign,
    erratum: int,
    digest: str,
    transport: Transport,
    *,
    allow_changed: bool = False,
    resend_unknown: bool = False,
) -> Preparation:
    """Create the stop press's campaign, its ledger filled from the issue's, or pick it up again."""

    def issue_readers(campaign_id: int) -> int:
        return db.execute(
            "INSERT INTO deliveries (campaign_id, subscriber_id, status, updated_at)"
            f" SELECT ?, subscriber_id, 'queued', ? FROM ({_ISSUE_READERS})",
            (campaign_id, now(), issue.id),
        ).rowcount

    changed = CampaignError(
        f"the stop press of erratum {erratum} changed since it started (issue {issue.issue}'s "
        "source or the templates): revert the change, or pass --allow-changed"
    )
    return _prepare(
        db,
        (issue.issue, erratum),
        digest,
        transport,
        enqueue=issue_readers,
        changed=changed,
        allow_changed=allow_changed,
        resend_unknown=resend_unknown,
    )
