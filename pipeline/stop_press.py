"""``newsletter errata add N --text ... --stop-press``: mail a correction now to issue N's readers.

A stop press is a campaign like an issue's, run by the same engine (ledger, runner, rate limit,
resume), with its own row in ``campaigns`` (keyed by the erratum) and a ledger filled from the
issue's: every subscriber the issue was *sent* to who is still active. The erratum is recorded
(``stop_press``: the date) just before its campaign is created, so a crash in between leaves an
erratum whose stop press the same command resumes, and never a mail without its erratum.
Running the same command again (same issue, same text) resumes the stop press, or says it was
sent; it never records the erratum twice. The archive copy of the issue is corrected at the end.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.archive.corrections import archive_text
from pipeline.archive.publish import publish_archive
from pipeline.audience.tokens import load_secret
from pipeline.config import Config
from pipeline.db import open_db
from pipeline.errors import ErrataError, NotConfirmed
from pipeline.issue.build import Build
from pipeline.issue.errata import Erratum, add_erratum, check_request, load_errata, new_erratum
from pipeline.issue.render import Rendered, render_issue, sample_recipient
from pipeline.issue.source import Issue, read_issue
from pipeline.publish import SendOptions, archive_when_done, memory_copy, run_campaign, send_rate, send_test
from pipeline.send.control import campaign_lock, is_locked
from pipeline.send.ledger import (
    Campaign,
    Ledger,
    Plan,
    content_hash,
    find_campaign,
    plan_stop_press,
    prepare_stop_press,
    stop_presses_of,
)
from pipeline.send.message import MessageTemplate
from pipeline.send.runner import Reporter, Summary
from pipeline.send.transports import open_transport
from pipeline.send.transports.base import Transport
from pipeline.text_rules import FORBIDDEN_CONTROL

LOCK_KIND = "stop-press"


@dataclass(frozen=True)
class StopPress:
    """What the editor asked for: a correction to ``issue``, mailed to its readers."""

    issue: int
    text: str
    replace: tuple[str, str] | None = None
    subject: str | None = None


@dataclass
class StopPressResult:
    erratum: Erratum
    summary: Summary


def correction_message(config: Config, issue: Issue, erratum: Erratum, subject: str | None) -> Build:
    """The correction mail, through the issue templates: header, the correction and a link to the
    corrected archive copy, the footer with the unsubscribe link. Dated by the stop press, so a
    resume on another day renders (and hashes) the same."""
    date = erratum.stop_press or dt.date.today()
    archive_url = config.archive_url(issue.number)
    sent_on = f"{issue.date:%d %B %Y}".lstrip("0")
    fix = (
        f"\n\nIn the archived issue, “{archive_text(erratum.replace_old)}” now reads "
        f"“{archive_text(erratum.replace_new)}”."
        if erratum.replace_old
        else ""
    )
    body = (
        f"A correction to issue {issue.number}, sent on {sent_on}:\n\n"
        f"**{archive_text(erratum.text)}**{fix}\n\n"
        f"[Read the corrected issue in the archive]({archive_url}).\n"
    )
    correction = Issue(
        path=issue.path,
        number=issue.number,
        title=f"Correction: {issue.title}",
        date=date,
        subject=subject or f"[Correction] {issue.subject}",
        preheader=erratum.text[:120],
        author="",
        allow_html=False,
        body=body,
        body_line=1,
    )
    rendered: Rendered = render_issue(config, correction)
    html, text = rendered.personalise(sample_recipient(config))
    return Build(rendered, html, text)


def _check_subject(subject: str | None) -> None:
    if subject is None:
        return
    if not subject.strip() or "\n" in subject or FORBIDDEN_CONTROL.search(subject):
        raise ErrataError("--subject must be one line of text")


def _sent_campaign(config: Config, number: int) -> Campaign:
    """Issue ``number``'s finished campaign; anything else is refused (never sent, still running)."""
    db = open_db(config.paths.state)
    try:
        campaign = find_campaign(db, number)
    finally:
        db.close()
    if campaign is None:
        raise ErrataError(f"issue {number} was never sent: there is nobody to send a stop press to")
    if campaign.status != "done" or is_locked(config.paths.state, number):
        raise ErrataError(
            f"issue {number}'s campaign is still running ({campaign.status}): finish it with "
            f"`newsletter send {number}` before a stop press"
        )
    return campaign


def _erratum_for(config: Config, request: StopPress) -> tuple[Erratum, bool]:
    """The stop press's erratum: one recorded by an earlier run of the same command (resume), or
    the one this run will record. The flag says whether it is recorded already."""
    errata = load_errata(config)
    old, new = request.replace or ("", "")
    for erratum in errata:
        if (
            erratum.issue == request.issue
            and erratum.stop_press is not None
            and (erratum.text, erratum.replace_old, erratum.replace_new) == (request.text.strip(), old, new)
        ):
            return erratum, True
    return new_erratum(errata, request.issue, request.text, request.replace, dt.date.today()), False


def prepare_request(config: Config, request: StopPress) -> tuple[Issue, Campaign, Erratum, bool]:
    """Every refusal before anything is written: bad text, unknown issue, never sent, still running."""
    issue = read_issue(config.paths.issues, request.issue)
    check_request(request.text, request.replace, request.issue, issue.body)
    _check_subject(request.subject)
    campaign = _sent_campaign(config, request.issue)
    erratum, recorded = _erratum_for(config, request)
    return issue, campaign, erratum, recorded


def send_stop_press(
    config: Config,
    request: StopPress,
    options: SendOptions,
    *,
    confirm: Callable[[Plan, Transport, float | None], bool],
    reporter: Reporter | None = None,
) -> StopPressResult:
    issue, issue_campaign, erratum, recorded = prepare_request(config, request)
    build = correction_message(config, issue, erratum, request.subject)
    digest = content_hash(build.rendered)
    transport = open_transport(config, dry_run=options.dry_run)
    try:
        secret = load_secret(allow_development=config.transport == "maildir" or options.dry_run)
        state = open_db(config.paths.state)
        with campaign_lock(config.paths.state, request.issue, LOCK_KIND):
            db = memory_copy(state) if options.dry_run else state
            if options.dry_run:
                state.close()
            plan = plan_stop_press(db, issue_campaign, erratum.id)
            done = find_campaign(db, issue.number, erratum.id) if plan.resuming else None
            if done is not None and not plan.recipients and not plan.unknown:
                counts = Ledger(db, done).counts()
                # Finish what a previous run may have left undone: archiving is idempotent.
                archived = "" if options.dry_run else publish_archive(config, issue.number)
                note = f"the stop press of erratum {erratum.id} was already sent to issue {issue.number}'s readers"
                return StopPressResult(erratum, Summary(counts, 0.0, 0, "done", note=note, archived=archived))
            rate = send_rate(config, transport, options.dry_run)
            if not confirm(plan, transport, rate):
                raise NotConfirmed("not sent: nothing was changed")
            if not recorded and not options.dry_run:
                erratum = add_erratum(
                    config,
                    issue.number,
                    request.text,
                    request.replace,
                    issue.body,
                    stop_press=erratum.stop_press,
                )
            preparation = prepare_stop_press(
                db,
                issue_campaign,
                erratum.id,
                digest,
                transport,
                allow_changed=options.allow_changed,
                resend_unknown=options.resend_unknown,
            )
            template = MessageTemplate(config, build.rendered)
            resume = f"newsletter errata add {issue.number} --text … --stop-press"  # the same command again
            summary = run_campaign(
                db,
                config,
                preparation,
                template,
                transport,
                secret,
                rate,
                reporter,
                options,
                resume_command=resume,
            )
    finally:
        transport.close()
    archive_when_done(config, issue.number, summary, options)
    return StopPressResult(erratum, summary)


def stop_press_test(config: Config, request: StopPress, address: str) -> str:
    """One copy of the correction mail to ``address``; nothing is recorded."""
    issue, _, erratum, _ = prepare_request(config, request)
    return send_test(config, correction_message(config, issue, erratum, request.subject), address)


@dataclass(frozen=True)
class StopPressStatus:
    erratum: int
    campaign: Campaign
    counts: dict[str, int]
    running: bool


def stop_press_statuses(config: Config, number: int) -> list[StopPressStatus]:
    """Every stop press of issue ``number``, for ``newsletter status``."""
    db = open_db(config.paths.state)
    try:
        return [
            StopPressStatus(
                erratum,
                campaign,
                Ledger(db, campaign).counts(),
                is_locked(config.paths.state, number, LOCK_KIND),
            )
            for erratum, campaign in stop_presses_of(db, number)
        ]
    finally:
        db.close()
