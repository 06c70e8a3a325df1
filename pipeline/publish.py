"""``newsletter send``: check the issue, then run (or resume) its campaign. Also test sends and status."""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.archive.publish import publish_archive
from pipeline.audience.tokens import load_secret
from pipeline.check.gate import CheckResult, check_issue
from pipeline.config import Config
from pipeline.db import open_db
from pipeline.errors import CheckFailed, NewsletterError, NotConfirmed
from pipeline.issue.build import Build
from pipeline.issue.errata import mark_announced
from pipeline.send.control import campaign_lock, is_locked
from pipeline.send.delivery import Reputation, ReputationLimits, SendSettings
from pipeline.send.fanout import run_in_processes, sender_processes
from pipeline.send.ledger import (
    Campaign,
    Ledger,
    Plan,
    Preparation,
    campaign_state,
    content_hash,
    deadline_of,
    find_campaign,
    plan_campaign,
    prepare_campaign,
    refuse_if_late,
)
from pipeline.send.message import MessageTemplate
from pipeline.send.message import write_build as write_build  # re-exported: the library's API
from pipeline.send.runner import CampaignRunner, Reporter, Summary
from pipeline.send.single import envelope_to
from pipeline.send.transports import open_transport
from pipeline.send.transports.base import Transport


@dataclass(frozen=True)
class SendOptions:
    dry_run: bool = False
    offline: bool = False
    allow_broken_links: bool = False
    allow_changed: bool = False
    include_new: bool = False
    resend_unknown: bool = False
    retry_failed: bool = False
    ignore_breaker: bool = False
    """Go on whatever the bounce and complaint rates (this run only)."""
    late: bool = False
    """Resume a campaign past its ``[send] deadline_hours``."""


def checked(
    config: Config, number: int, options: SendOptions, progress: Callable[[int, int], None] | None = None
) -> CheckResult:
    """``check``, as ``send`` runs it first: any error refuses the issue (broken links unless allowed)."""
    pinned = campaign_state(config, number) is not None
    result = check_issue(config, number, pinned=pinned, online=not options.offline, progress=progress)
    errors = [p for p in result.offline if p.severity == "error"]
    broken = [p for p in result.http if p.severity == "error"]
    if errors or (broken and not options.allow_broken_links):
        what = (
            f"{len(errors)} error(s)"
            if errors
            else f"{len(broken)} broken link(s) (--allow-broken-links sends anyway)"
        )
        raise CheckFailed(f"issue {number} has {what}: nothing was sent")
    return result


def send_rate(config: Config, transport: Transport, dry_run: bool) -> float | None:
    if dry_run:
        return None
    account = transport.max_rate()
    return min(config.send.max_rate, account) if account else config.send.max_rate


def send_issue(
    config: Config,
    build: Build,
    options: SendOptions,
    *,
    confirm: Callable[[Plan, Transport, float | None], bool],
    reporter: Reporter | None = None,
    clock: Callable[[], float] = time.time,
) -> Summary:
    """Run (or resume) the campaign of a built and checked issue; archive it once complete.

    ``clock`` (seconds since the epoch) tells whether a resumed campaign is past its deadline."""
    rendered = build.rendered
    number = rendered.issue.number
    transport = open_transport(config, dry_run=options.dry_run)
    try:
        secret = load_secret(allow_development=config.transport == "maildir" or options.dry_run)
        state = open_db(config.paths.state)
        with campaign_lock(config.paths.state, number):
            # A dry run works on a copy of the database in memory: same code path, nothing recorded.
            db = memory_copy(state) if options.dry_run else state
            if options.dry_run:
                state.close()
            digest = content_hash(rendered)
            plan = plan_campaign(
                db,
                number,
                digest,
                include_new=options.include_new,
                retry_failed=options.retry_failed,
                allow_changed=options.allow_changed,
            )
            if plan.resuming and not plan.recipients and not plan.unknown:
                # Finish what a previous run may have left undone: archiving is idempotent.
                archived = "" if options.dry_run else publish_archive(config, number)
                note = (
                    f"issue {number} was already sent to everyone on its list; nothing to send "
                    "(--include-new also sends it to subscribers who joined since)"
                )
                campaign = find_campaign(db, number)
                counts = Ledger(db, campaign).counts() if campaign else {}
                return Summary(counts, 0.0, 0, "done", note=note, archived=archived)
            if not options.late:
                refuse_if_late(
                    number, plan, config.send.deadline_hours, dt.datetime.fromtimestamp(clock(), dt.UTC)
                )
            rate = send_rate(config, transport, options.dry_run)
            if not confirm(plan, transport, rate):
                raise NotConfirmed("not sent: nothing was changed")
            if not plan.resuming and not options.dry_run:
                # Before the campaign exists: a crash in between leaves the errata announced by an
                # issue whose rebuild still shows them, never an issue pinned without them.
                mark_announced(config, number, build.errata_ids)
            preparation = prepare_campaign(
                db,
                number,
                digest,
                transport,
                allow_changed=options.allow_changed,
                include_new=options.include_new,
                resend_unknown=options.resend_unknown,
                retry_failed=options.retry_failed,
            )
            template = MessageTemplate(config, rendered)
            summary = run_campaign(
                db, config, preparation, template, transport, secret, rate, reporter, options
            )
    finally:
        transport.close()
    archive_when_done(config, number, summary, options)
    return summary


def run_campaign(
    db: sqlite3.Connection,
    config: Config,
    preparation: Preparation,
    template: MessageTemplate,
    transport: Transport,
    secret: bytes,
    rate: float | None,
    reporter: Reporter | None,
    options: SendOptions,
    *,
    resume_command: str = "",
) -> Summary:
    """Send a prepared campaign's queue, in one process or several: issues and stop presses alike.
    The bounce and complaint limits pause it unless ``options.ignore_breaker``; ``resume_command``
    is what the pause tells the editor to run (default: ``newsletter send N``)."""
    settings = SendSettings(
        concurrency=config.send.concurrency,
        max_rate=rate,
        max_attempts=config.send.max_attempts,
        max_consecutive_failures=config.send.max_consecutive_failures,
        reputation=None if options.ignore_breaker else reputation_limits(config),
        resume_command=resume_command,
    )
    processes = sender_processes(config, preparation.queued, dry_run=options.dry_run)
    if processes > 1:
        summary = run_in_processes(
            db, config, preparation.campaign, template, secret, settings, processes, reporter
        )
    else:
        summary = CampaignRunner(
            db, config, preparation.campaign, template, transport, secret, settings, reporter
        ).run()
    summary.reconciled = preparation.reconciled
    return summary


def archive_when_done(config: Config, number: int, summary: Summary, options: SendOptions) -> None:
    """Once a campaign is complete (not a dry run), bring issue ``number``'s archive copy up to date:
    the mail went out, so a failure here is reported on the summary, not raised."""
    if summary.status == "done" and not options.dry_run:
        try:
            summary.archived = publish_archive(config, number)
        except NewsletterError as error:
            summary.archive_error = str(error)


def reputation_limits(config: Config) -> ReputationLimits:
    return ReputationLimits(
        config.send.max_bounce_rate, config.send.max_complaint_rate, config.send.breaker_min_sent
    )


def memory_copy(db: sqlite3.Connection) -> sqlite3.Connection:
    copy = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    copy.row_factory = sqlite3.Row
    db.backup(copy)
    return copy


def send_test(config: Config, build: Build, address: str) -> str:
    """One copy to ``address``, exactly as a subscriber would get it; the ledger is not touched."""
    secret = load_secret(allow_development=config.transport == "maildir")
    db = open_db(config.paths.state)
    try:
        envelope = envelope_to(
            config, db, secret, build.rendered, address, f"test{build.rendered.issue.number}"
        )
    finally:
        db.close()
    transport = open_transport(config)
    try:
        return transport.send(envelope)
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
    started_at: str = ""
    deadline: dt.datetime | None = None
    """When the campaign becomes late (``[send] deadline_hours`` after it started); None: never."""
    reputation: Reputation | None = None
    limits: ReputationLimits | None = None


def campaign_status(config: Config, number: int) -> CampaignStatus:
    db = open_db(config.paths.state)
    active = int(db.execute("SELECT COUNT(*) FROM subscribers WHERE status = 'active'").fetchone()[0])
    campaign = find_campaign(db, number)
    if campaign is None:
        return CampaignStatus(None, {}, False, 0.0, "", active, "")
    ledger = Ledger(db, campaign)
    notes = ledger.notes()
    return CampaignStatus(
        campaign,
        ledger.counts(),
        is_locked(config.paths.state, number),
        ledger.recent_rate(),
        " ".join(filter(None, (notes.note, notes.history.strip()))),
        active,
        notes.updated_at,
        notes.started_at,
        deadline_of(notes.started_at, config.send.deadline_hours),
        ledger.reputation(),
        reputation_limits(config),
    )
