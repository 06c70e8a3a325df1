"""The ``newsletter`` command: a thin layer over the library; all logic lives in the modules."""

from __future__ import annotations

import datetime as dt
import gc
import json
import logging
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Self

import click
from click.core import ParameterSource

from pipeline import __version__
from pipeline.config import CONFIG_ENV, MASK, MAX_ISSUE, Config, Environment, Setting, load_config, settings
from pipeline.errors import ArchiveError, CheckFailed, ErrataError, NewsletterError, NotConfirmed, StateError
from pipeline.files import display_path

# Each command imports what it uses when it runs: `build` must not pay for httpx, boto3, starlette,
# uvicorn or rich at start-up (tests/test_cli_imports.py checks it), and a sender process of `send`
# runs this module again (multiprocessing's spawn) and must not pay for the renderer and the checker.
if TYPE_CHECKING:
    from rich.progress import Progress

    from pipeline.check.content import Problem
    from pipeline.publish import SendOptions
    from pipeline.send.delivery import Reputation, ReputationLimits
    from pipeline.send.ledger import Plan
    from pipeline.send.transports.base import Transport
    from pipeline.stop_press import StopPress

ISSUE = click.argument("number", metavar="N", type=click.IntRange(min=1, max=MAX_ISSUE))


class _Group(click.Group):
    """Turn the editor's mistakes into one line on stderr instead of a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except NewsletterError as error:
            _fail(error)
        except sqlite3.OperationalError as error:
            # Locked past the timeout, read-only, disk full: the machine's state, not a bug to trace.
            from pipeline.db import explain

            _fail(StateError(explain(error)))


def _fail(error: NewsletterError) -> NoReturn:
    # Paths relative to where the editor stands are shorter to read and to click.
    message = str(error).replace(f"{Path.cwd()}/", "")
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(error.exit_code)


@click.group(cls=_Group)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=CONFIG_ENV,
    help="Config file (default: ./newsletter.toml, or $NEWSLETTER_CONFIG).",
)
@click.version_option(__version__)
@click.pass_context
def main(ctx: click.Context, config_path: Path | None) -> None:
    """Render, check, preview and publish newsletter issues."""
    logging.basicConfig(format="warning: %(message)s", level=logging.WARNING)
    ctx.obj = config_path


def run() -> None:
    """The ``newsletter`` console script: :func:`main`, in a process of its own."""
    # What is loaded by now (click, the config, this module) lives as long as the process: frozen,
    # the cyclic collector stops scanning it on each of the many collections that the imports of
    # the command itself set off (~12 ms of a ~250 ms `newsletter build`, bench/README.md).
    gc.freeze()
    main()


def _config(ctx: click.Context) -> Config:
    return load_config(ctx.obj)


def _size(size: int) -> str:
    return f"{size:>9,} bytes"


@main.command()
@ISSUE
@click.pass_context
def build(ctx: click.Context, number: int) -> None:
    """Render issue N into build/N/: email.html, email.txt, message.eml."""
    from pipeline.issue.build import build_issue
    from pipeline.send.ledger import campaign_state
    from pipeline.send.message import html_size_as_sent, write_build

    config = _config(ctx)
    result = build_issue(config, number, pinned=campaign_state(config, number) is not None)
    written = write_build(config, result)
    for path in written.values():
        click.echo(f"{_size(path.stat().st_size)}  {_relative(path)}")
    _budget_line(config, html_size_as_sent(written["message.eml"].read_bytes()), "HTML part as sent")


OFFLINE = click.option("--offline", is_flag=True, help="Do not check links over HTTP.")


@main.command()
@ISSUE
@OFFLINE
@click.pass_context
def check(ctx: click.Context, number: int, offline: bool) -> None:
    """Validate issue N and its config, build it, check its links, and fail on what would break it in an inbox."""
    from pipeline.check.gate import check_issue
    from pipeline.send.ledger import campaign_state

    config = _config(ctx)
    pinned = campaign_state(config, number) is not None
    with LinkProgress() as progress:
        result = check_issue(config, number, pinned=pinned, online=not offline, progress=progress)
    summary = _report_problems(
        result.build.rendered.issue.path, result.problems, len(result.build.rendered.document.links)
    )
    _budget_line(config, result.html_sent, "HTML part as sent")
    click.echo(result.links_note)
    click.echo(result.spam_note)
    if any(p.severity == "error" for p in result.problems):
        raise CheckFailed(f"{summary}: fix the errors before sending")
    click.secho(f"{summary}: ready to send", fg="green")


class LinkProgress:
    """A progress bar for long link checks, on a terminal only."""

    def __enter__(self) -> Self:
        self._bar: Progress | None = None
        return self

    def __call__(self, done: int, total: int) -> None:
        if total < 20 or not sys.stderr.isatty():
            return
        if self._bar is None:
            from rich.progress import Progress

            self._bar = Progress(transient=True)
            self._bar.start()
            self._task = self._bar.add_task("checking links", total=total)
        self._bar.update(self._task, completed=done)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


def _report_problems(source: Path, problems: list[Problem], links: int) -> str:
    path = _relative(source)
    for problem in problems:
        colour = "red" if problem.severity == "error" else "yellow"
        click.secho(problem.format(path), fg=colour, err=problem.severity == "error")
    errors = sum(p.severity == "error" for p in problems)
    return f"{path}: {links} links, {errors} error(s), {len(problems) - errors} warning(s)"


@main.command()
@ISSUE
@click.option("--port", default=8000, show_default=True, help="Port on 127.0.0.1 (0 picks a free one).")
@click.option("--open/--no-open", "open_browser", default=False, help="Open the page in a browser.")
@click.pass_context
def preview(ctx: click.Context, number: int, port: int, open_browser: bool) -> None:
    """Serve issue N at phone and desktop width, rebuilding when the source or a template changes."""
    from pipeline.preview import serve_preview

    serve_preview(_config(ctx), number, port=port, open_browser=open_browser)


def _budget_line(config: Config, size: int, what: str = "HTML") -> None:
    share = 100 * size / config.max_html_bytes
    click.echo(f"{what} {size:,} bytes: {share:.0f}% of the {config.max_html_bytes:,}-byte budget")


def _relative(path: Path) -> str:
    return display_path(path)


@main.command()
@ISSUE
@click.option(
    "--to", "address", metavar="ADDRESS", help="Send one test copy to ADDRESS; the campaign is not touched."
)
@click.option(
    "--dry-run", is_flag=True, help="Go through the whole campaign with a transport that sends nothing."
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--resend-unknown", is_flag=True, help="Resend messages whose fate a crash left unknown.")
@click.option("--retry-failed", is_flag=True, help="Try again the recipients a previous run marked failed.")
@click.option(
    "--allow-changed", is_flag=True, help="Resume even though the issue changed since the campaign started."
)
@click.option(
    "--include-new", is_flag=True, help="Also send to subscribers who joined after the campaign started."
)
@click.option("--allow-broken-links", is_flag=True, help="Send even if links are broken over HTTP.")
@click.option(
    "--ignore-breaker",
    is_flag=True,
    help="Go on although the bounce or complaint rate is over [send] max_bounce_rate/max_complaint_rate.",
)
@click.option("--late", is_flag=True, help="Resume a campaign that started over [send] deadline_hours ago.")
@OFFLINE
@click.pass_context
def send(
    ctx: click.Context,
    number: int,
    address: str | None,
    dry_run: bool,
    yes: bool,
    resend_unknown: bool,
    retry_failed: bool,
    allow_changed: bool,
    include_new: bool,
    allow_broken_links: bool,
    ignore_breaker: bool,
    late: bool,
    offline: bool,
) -> None:
    """Check issue N, then send it to every active subscriber (or resume its campaign); archive it when done."""
    from pipeline.publish import SendOptions, checked, send_issue, send_test
    from pipeline.send.progress import ProgressBar

    config = _config(ctx)
    options = SendOptions(
        dry_run=dry_run,
        offline=offline,
        allow_broken_links=allow_broken_links,
        allow_changed=allow_changed,
        include_new=include_new,
        resend_unknown=resend_unknown,
        retry_failed=retry_failed,
        ignore_breaker=ignore_breaker,
        late=late,
    )
    with LinkProgress() as progress:
        result = checked(config, number, options, progress)
    build = result.build
    for problem in result.problems:
        click.secho(problem.format(_relative(build.rendered.issue.path)), fg="yellow")
    if address:
        provider_id = send_test(config, build, address)
        click.secho(
            f"test copy of issue {number} sent to {address} via {config.transport} ({provider_id})",
            fg="green",
        )
        return

    confirm = _confirmer(f"issue {number} ({build.rendered.issue.subject!r})", dry_run, yes, resend_unknown)

    summary = send_issue(config, build, options, confirm=confirm, reporter=ProgressBar(f"issue {number}"))
    if summary.note:  # already complete: nothing was sent, which is not a failure
        click.echo(summary.note + (f"; archive: {summary.archived}" if summary.archived else ""))
        return
    counts = summary.counts
    click.echo(
        f"{'DRY RUN: ' if dry_run else ''}{counts['sent']:,} sent, {counts['failed']:,} failed, {counts['skipped']:,} skipped, "
        f"{counts['queued']:,} still queued, {counts['sending']:,} unknown; "
        f"{summary.handled:,} handled in {summary.elapsed:.1f}s ({summary.rate:.1f}/s)"
    )
    if summary.status != "done":
        from pipeline.errors import CampaignPaused

        # A reason that names its own way on (the reputation breaker's) gets no generic advice after it.
        advice = "" if "`newsletter send" in summary.reason else f"; run `newsletter send {number}` to resume"
        raise CampaignPaused(f"campaign paused: {summary.reason}{advice}")
    if summary.reconciled:
        click.echo(
            f"{summary.reconciled} message(s) left in flight by an interruption were settled with the transport"
        )
    click.secho(f"issue {number}: campaign complete", fg="green")
    if summary.archived:
        click.echo(f"archived: {summary.archived}")
    if summary.archive_error:
        raise ArchiveError(
            f"the issue was sent, but archiving failed: {summary.archive_error}; "
            f"run `newsletter archive {number}` to retry",
        )


def _confirmer(
    what: str, dry_run: bool, yes: bool, resend_unknown: bool
) -> Callable[[Plan, Transport, float | None], bool]:
    """The question every campaign asks before it starts (an issue or a stop press): who, how, how
    fast; never asked for a dry run, with --yes or for the local maildir; refused with no terminal."""

    def confirm(plan: Plan, transport: Transport, rate: float | None) -> bool:
        pace = f"at up to {rate:g}/s" if rate else "as fast as possible"
        verb = "resume" if plan.resuming else "send"
        action = "DRY RUN: would " + verb if dry_run else verb.capitalize()
        click.echo(f"{action} {what} to {plan.recipients:,} recipient(s) via {transport.name} {pace}.")
        if plan.unknown:
            click.secho(
                f"{plan.unknown} message(s) were being handed over when a previous run stopped; "
                + (
                    "they will be resent (--resend-unknown)."
                    if resend_unknown
                    else "unless the transport can tell they arrived, they are not resent (--resend-unknown resends them)."
                ),
                fg="yellow",
            )
        if dry_run or yes or transport.name == "maildir":
            return True
        if not sys.stdin.isatty():
            raise NotConfirmed("refusing to send without confirmation: run it in a terminal or pass --yes")
        return click.confirm("Send now?", default=False)

    return confirm


@main.command()
@ISSUE
@click.pass_context
def status(ctx: click.Context, number: int) -> None:
    """Show the progress of issue N's campaign (also while it runs)."""
    from pipeline.publish import campaign_status

    config = _config(ctx)
    state = campaign_status(config, number)
    if state.campaign is None:
        click.echo(f"issue {number}: not sent yet ({state.active_subscribers:,} active subscribers)")
        return
    counts = state.counts
    total = sum(counts.values())
    done = counts["sent"] + counts["failed"] + counts["skipped"]
    running = "sending now" if state.running else state.campaign.status
    unknown = "in flight" if state.running else "unknown"
    click.echo(
        f"issue {number}: {running}, {done:,}/{total:,} handled via {state.campaign.transport} (updated {state.updated_at})"
    )
    click.echo(
        f"  sent {counts['sent']:,}  failed {counts['failed']:,}  skipped {counts['skipped']:,}  "
        f"queued {counts['queued']:,}  {unknown} {counts['sending']:,}"
    )
    if state.running:
        click.echo(f"  rate over the last minute: {state.rate:.1f}/s")
    click.echo(f"  started {state.started_at}, {_deadline_line(state.deadline, state.campaign.status)}")
    if state.reputation is not None and state.limits is not None:
        click.echo(_reputation_line(state.reputation, state.limits))
    if state.note:
        click.echo(f"  note: {state.note}")
    from pipeline.stop_press import stop_press_statuses

    for press in stop_press_statuses(config, number):
        counts = press.counts
        running = "sending now" if press.running else press.campaign.status
        click.echo(
            f"stop press (erratum {press.erratum}): {running}, "
            f"{counts['sent'] + counts['failed'] + counts['skipped']:,}/{sum(counts.values()):,} handled; "
            f"sent {counts['sent']:,}  failed {counts['failed']:,}  skipped {counts['skipped']:,}  "
            f"queued {counts['queued']:,}  {'in flight' if press.running else 'unknown'} {counts['sending']:,}"
        )


def _deadline_line(deadline: dt.datetime | None, status: str) -> str:
    if deadline is None:
        return "no deadline ([send] deadline_hours = 0)"
    shown = deadline.isoformat(timespec="seconds")
    if status != "done" and dt.datetime.now(dt.UTC) >= deadline:
        return f"deadline {shown}, passed: `newsletter send` resumes it only with --late"
    return f"deadline {shown}"


def _reputation_line(reputation: Reputation, limits: ReputationLimits) -> str:
    line = (
        f"  hard-bounce rate {reputation.percent(reputation.bounces):.2f} % ({reputation.bounces:,} of "
        f"{reputation.sent:,} sent; pauses over {limits.max_bounce_rate:g} %), complaint rate "
        f"{reputation.percent(reputation.complaints):.2f} % ({reputation.complaints:,}; "
        f"pauses over {limits.max_complaint_rate:g} %)"
    )
    if reputation.sent < limits.min_sent:
        line += f"; counted from {limits.min_sent:,} sent"
    return line


@main.group()
def subscribers() -> None:
    """Manage the subscriber list."""


def _db(ctx: click.Context):  # type: ignore[no-untyped-def]
    from pipeline.db import open_db

    return open_db(_config(ctx).paths.state)


@subscribers.command("import")
@click.argument("csv_file", metavar="FILE.csv", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--force", is_flag=True, help="Re-activate addresses that unsubscribed, bounced or complained.")
@click.pass_context
def subscribers_import(ctx: click.Context, csv_file: Path, force: bool) -> None:
    """Import subscribers from a CSV file with an 'email' (or 'Email Address') column."""
    from pipeline.audience.subscribers import describe, import_csv

    report = import_csv(_db(ctx), csv_file, force=force, source=f"import:{csv_file.name}")
    for line in describe(report):
        click.echo(line)


@subscribers.command("export")
@click.option("--status", type=click.Choice(["pending", "active", "unsubscribed", "bounced", "complained"]))
@click.option(
    "--output",
    "-o",
    type=click.File("w", encoding="utf-8"),
    default="-",
    help="File to write (default: stdout).",
)
@click.pass_context
def subscribers_export(ctx: click.Context, status: str | None, output) -> None:  # type: ignore[no-untyped-def]
    """Export subscribers as CSV."""
    from pipeline.audience.subscribers import export_csv

    count = export_csv(_db(ctx), output, status)
    if output is not sys.stdout:
        click.echo(f"{count:,} subscriber(s) written to {output.name}", err=True)


@subscribers.command("add")
@click.argument("email")
@click.option("--name", default="", help="The subscriber's name.")
@click.option("--status", default="active", type=click.Choice(["pending", "active"]), show_default=True)
@click.pass_context
def subscribers_add(ctx: click.Context, email: str, name: str, status: str) -> None:
    """Add one subscriber."""
    from pipeline.audience.subscribers import add

    add(_db(ctx), email, name, status, source="cli")
    click.echo(f"added {email} ({status})")


@subscribers.command("remove")
@click.argument("email")
@click.pass_context
def subscribers_remove(ctx: click.Context, email: str) -> None:
    """Erase one subscriber and their history (for a deletion request)."""
    from pipeline.audience.subscribers import remove

    remove(_db(ctx), email)
    click.echo(f"removed {email}")


@subscribers.command("count")
@click.pass_context
def subscribers_count(ctx: click.Context) -> None:
    """Count subscribers by status."""
    from pipeline.audience.subscribers import counts

    found = counts(_db(ctx))
    for status, count in found.items():
        click.echo(f"{status:<13}{count:>9,}")
    click.echo(f"{'total':<13}{sum(found.values()):>9,}")


@subscribers.command("merged")
@click.pass_context
def subscribers_merged(ctx: click.Context) -> None:
    """List the subscribers merged because they were spellings of one mailbox (done once, on upgrade)."""
    from pipeline.audience.subscribers import merged
    from pipeline.text_rules import visible

    for row in merged(_db(ctx)):
        click.echo(
            f"s{row['old_id']} {visible(row['old_email'])} ({row['old_status']}) merged into "
            f"s{row['id']} {visible(row['email'])} on {row['merged_at']}"
        )


@subscribers.command("list")
@click.option("--status", type=click.Choice(["pending", "active", "unsubscribed", "bounced", "complained"]))
@click.pass_context
def subscribers_list(ctx: click.Context, status: str | None) -> None:
    """List subscribers: email, name, status, since."""
    from pipeline.audience.subscribers import listing
    from pipeline.text_rules import visible

    for row in listing(_db(ctx), status):
        # visible(): a name stored before control characters were refused must not drive the terminal.
        fields = (row["email"], row["name"], row["status"], row["status_changed_at"])
        click.echo("\t".join(visible(str(field)) for field in fields))


@main.command()
@ISSUE
@click.pass_context
def archive(ctx: click.Context, number: int) -> None:
    """Write issue N into the Markdown archive (with index and feed) and push it to archive.remote."""
    from pipeline.archive.publish import publish_archive

    click.echo(f"archived: {publish_archive(_config(ctx), number)}")


@main.command()
@click.argument("number", metavar="N", type=click.IntRange(min=1, max=MAX_ISSUE), required=False)
@click.option(
    "--archive", "whole_archive", is_flag=True, help="Re-check every archived issue; suggest errata."
)
@click.pass_context
def links(ctx: click.Context, number: int | None, whole_archive: bool) -> None:
    """Check the links of issue N over HTTP, or of every archived issue (--archive)."""
    from pipeline.check.report import check_archive_links, check_issue_links
    from pipeline.send.ledger import campaign_state

    config = _config(ctx)
    if whole_archive == (number is not None):
        raise click.UsageError("give an issue number N, or --archive")
    with LinkProgress() as progress:
        if whole_archive:
            lines, failed = check_archive_links(config, progress)
        else:
            pinned = campaign_state(config, number or 0) is not None
            lines, failed = check_issue_links(config, number or 0, progress, pinned=pinned)
    for line in lines:
        click.echo(line)
    if failed:
        raise CheckFailed(f"{failed} broken link(s)")


@main.group()
def errata() -> None:
    """Record corrections to sent issues; the next issue announces them."""


@errata.command("add")
@ISSUE
@click.option("--text", required=True, help="The correction, as readers will see it.")
@click.option("--replace", nargs=2, metavar="OLD NEW", help="Also fix the archived copy: replace OLD by NEW.")
@click.option("--stop-press", is_flag=True, help="Mail the correction now to everyone issue N was sent to.")
@click.option("--subject", help="The stop press's subject (default: '[Correction] <issue subject>').")
@click.option("--to", "address", metavar="ADDRESS", help="Send one test copy of the stop press to ADDRESS.")
@click.option(
    "--dry-run", is_flag=True, help="Go through the stop press with a transport that sends nothing."
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--resend-unknown", is_flag=True, help="Resend stop press mails whose fate a crash left unknown."
)
@click.option(
    "--allow-changed", is_flag=True, help="Resume a stop press whose message changed since it started."
)
@click.option(
    "--ignore-breaker", is_flag=True, help="Resume a stop press the bounce/complaint breaker paused."
)
@click.pass_context
def errata_add(
    ctx: click.Context,
    number: int,
    text: str,
    replace: tuple[str, str] | None,
    stop_press: bool,
    subject: str | None,
    address: str | None,
    dry_run: bool,
    yes: bool,
    resend_unknown: bool,
    allow_changed: bool,
    ignore_breaker: bool,
) -> None:
    """Record a correction to issue N (which must have been sent); --stop-press also mails it now."""
    from pipeline.issue.errata import add_erratum
    from pipeline.issue.source import read_issue
    from pipeline.send.ledger import campaign_state

    config = _config(ctx)
    if stop_press:
        from pipeline.publish import SendOptions
        from pipeline.stop_press import StopPress

        options = SendOptions(
            dry_run=dry_run,
            resend_unknown=resend_unknown,
            allow_changed=allow_changed,
            ignore_breaker=ignore_breaker,
        )
        _stop_press(config, StopPress(number, text, replace or None, subject), options, address, yes)
        return
    if subject or address or dry_run or yes or resend_unknown or allow_changed or ignore_breaker:
        raise ErrataError(
            "--subject, --to, --dry-run, --yes, --resend-unknown, --allow-changed and --ignore-breaker"
            " go with --stop-press"
        )
    issue = read_issue(config.paths.issues, number)
    if campaign_state(config, number) != "done":
        raise ErrataError(f"issue {number} has not been sent: correct its source instead")
    erratum = add_erratum(config, number, text, replace or None, issue.body)
    click.echo(f"erratum {erratum.id} recorded against issue {number}; the next issue sent will announce it")


def _stop_press(
    config: Config, request: StopPress, options: SendOptions, address: str | None, yes: bool
) -> None:
    from pipeline.errors import CampaignPaused
    from pipeline.send.progress import ProgressBar
    from pipeline.stop_press import send_stop_press, stop_press_test

    number, dry_run = request.issue, options.dry_run
    if address:
        provider_id = stop_press_test(config, request, address)
        click.secho(
            f"test copy of the stop press sent to {address} via {config.transport} ({provider_id})",
            fg="green",
        )
        return
    confirm = _confirmer(
        f"a stop press for issue {number} (a correction)", dry_run, yes, options.resend_unknown
    )
    result = send_stop_press(config, request, options, confirm=confirm, reporter=ProgressBar("stop press"))
    summary = result.summary
    if summary.note:
        click.echo(summary.note + (f"; archive: {summary.archived}" if summary.archived else ""))
        return
    counts = summary.counts
    click.echo(
        f"{'DRY RUN: ' if dry_run else ''}{counts['sent']:,} sent, {counts['failed']:,} failed, "
        f"{counts['skipped']:,} skipped, {counts['queued']:,} still queued, {counts['sending']:,} unknown; "
        f"{summary.handled:,} handled in {summary.elapsed:.1f}s ({summary.rate:.1f}/s)"
    )
    if summary.status != "done":
        raise CampaignPaused(f"stop press paused: {summary.reason}; run the same command again to resume")
    if dry_run:
        return
    click.secho(
        f"erratum {result.erratum.id} recorded against issue {number} and mailed to its readers (stop press); "
        "the next issue will not repeat it",
        fg="green",
    )
    if summary.archived:
        click.echo(f"archived: {summary.archived}")
    if summary.archive_error:
        raise ArchiveError(
            f"the stop press was sent, but archiving failed: {summary.archive_error}; "
            f"run `newsletter archive {number}` to retry",
        )


@errata.command("list")
@click.pass_context
def errata_list(ctx: click.Context) -> None:
    """List recorded errata: pending ones and where each was announced."""
    from pipeline.issue.errata import load_errata

    for e in load_errata(_config(ctx)):
        where = (
            f"announced in issue {e.announced_in}"
            if e.announced_in
            else f"stop press on {e.stop_press}"
            if e.stop_press
            else "pending"
        )
        fix = f" [replace {e.replace_old!r} -> {e.replace_new!r}]" if e.replace_old else ""
        click.echo(f"{e.id}. issue {e.issue} ({e.recorded}): {e.text}{fix} ({where})")


@main.command()
@click.option("--host", help="Address to listen on (default: serve.host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(min=0, max=65535), help="Port (default: serve.port, 8025).")
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Run the subscriber web service: sign-up, confirmation, unsubscribe, SES bounce/complaint webhook."""
    from pipeline.send.welcome import load_welcome
    from pipeline.web.app import serve as run_server

    config = _config(ctx)
    load_welcome(config)  # a broken welcome.md stops the start with its line, not each confirmation later
    run_server(config, host or config.serve.host, config.serve.port if port is None else port)


@main.group()
def events() -> None:
    """SES bounce and complaint notifications."""


@events.command("pull")
@click.option(
    "--wait",
    "wait_seconds",
    default=5,
    show_default=True,
    type=click.IntRange(0, 20),
    help="Seconds to wait for messages when the queue is empty (SQS long polling).",
)
@click.option("--max", "most", type=click.IntRange(min=1), help="Stop after this many messages.")
@click.pass_context
def events_pull(ctx: click.Context, wait_seconds: int, most: int | None) -> None:
    """Read SES notifications from the SQS queue (events.queue_url), apply them, then delete them."""
    from pipeline.events.sqs import pull

    report = pull(_config(ctx), wait_seconds=wait_seconds, most=most)
    for line in report.lines():
        click.echo(line)


@main.group("config")
def config_group() -> None:
    """The configuration: newsletter.toml and the environment."""


# Where --config came from, in the words `config show` uses for every value.
_CONFIG_FILE_SOURCES: dict[ParameterSource | None, str] = {
    ParameterSource.COMMANDLINE: "option",
    ParameterSource.ENVIRONMENT: "env",
}


@config_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: each key with its value, source and help.")
@click.pass_context
def config_show(ctx: click.Context, as_json: bool) -> None:
    """Print every key with its effective value and where it came from (file, env, default); secrets masked."""
    config = _config(ctx)
    file_source = _CONFIG_FILE_SOURCES.get(ctx.find_root().get_parameter_source("config_path"), "default")
    shown = [*settings(config), *Environment.from_os(config.smtp.password_env).settings()]
    if as_json:
        document: dict[str, Any] = {"config_file": {"value": str(config.path), "source": file_source}}
        for setting in shown:
            name = setting.name if setting.section == "environment" else f"{setting.section}.{setting.name}"
            document[name] = {"value": _plain(setting.value), "source": setting.source, "help": setting.help}
        click.echo(json.dumps(document, indent=2, ensure_ascii=False))
        return
    click.echo(f"# config file: {config.path} ({file_source})")
    width = max(len(setting.name) for setting in shown)
    section = ""
    for setting in shown:
        if setting.section != section:
            section = setting.section
            click.echo(f"\n[{section}]")
        click.echo(f"{setting.name:<{width}} = {_shown(setting)} ({setting.source})")


def _plain(value: object) -> object:
    """A value as JSON holds it: paths as text, tuples as lists."""
    return str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value


def _shown(setting: Setting) -> str:
    # As TOML writes it (quoted, escaped): a value with spaces or line breaks still reads as one.
    return MASK if setting.value == MASK else json.dumps(_plain(setting.value), ensure_ascii=False)


# --- Starting issues and newsletters, welcoming subscribers -----------------------------------------


@main.command("new")
@click.option(
    "--number",
    type=click.IntRange(min=1, max=MAX_ISSUE),
    help="The issue's number (default: one more than the last).",
)
@click.pass_context
def new_issue(ctx: click.Context, number: int | None) -> None:
    """Start the next issue: issues/<next number>.md, dated, titled, with the last issue's sections."""
    from pipeline.issue.new import create_issue

    click.echo(_relative(create_issue(_config(ctx), number)))


@main.command("welcome")
@click.option(
    "--to", "address", metavar="ADDRESS", help="Send one test copy to ADDRESS; nothing is recorded."
)
@click.option("--pending", is_flag=True, help="Send the welcomes a failing transport left pending.")
@click.pass_context
def welcome(ctx: click.Context, address: str | None, pending: bool) -> None:
    """The welcome mail (email_templates/welcome.md): a test copy, the pending ones, or where they stand."""
    from pipeline.audience.tokens import load_secret
    from pipeline.db import open_db
    from pipeline.send.transports import open_transport
    from pipeline.send.welcome import (
        load_welcome,
        require_welcome,
        send_pending_welcomes,
        send_test_welcome,
        welcome_counts,
        welcome_path,
    )

    config = _config(ctx)
    if address and pending:
        raise click.UsageError("give --to ADDRESS or --pending, not both")
    # A missing or broken welcome.md is one line here, before anything is opened.
    found = require_welcome(config) if address else load_welcome(config)
    db = open_db(config.paths.state)
    if not (address or pending):
        counts = welcome_counts(db)
        state = f"subject {found.subject!r}" if found else "absent: no welcome mail is sent"
        click.echo(f"{_relative(welcome_path(config))}: {state}")
        click.echo("  ".join(f"{status} {count:,}" for status, count in counts.items()))
        return
    secret = load_secret(allow_development=config.transport == "maildir")
    transport = open_transport(config)
    try:
        if address:
            provider_id = send_test_welcome(config, db, transport, secret, address)
            click.secho(f"test welcome sent to {address} via {config.transport} ({provider_id})", fg="green")
            return
        report = send_pending_welcomes(config, db, lambda: transport, secret)
    finally:
        transport.close()
    click.echo(
        f"{len(report.sent)} welcome(s) sent, {len(report.retry)} still pending, {len(report.failed)} failed, "
        f"{len(report.unknown)} unknown, {report.skipped} skipped (no longer subscribed)"
    )
    if report.unavailable is not None:
        raise report.unavailable


@main.command("init")
@click.argument("folder", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", help="The newsletter's name.")
@click.option("--from", "sender", help="The sender, 'Name <address>'.")
@click.option("--postal-address", help="The postal address printed in every issue.")
@click.option("--public-url", help="The public URL of the subscriber pages (https://...).")
@click.option("--archive-remote", help="The archive's git remote (empty: the archive stays local).")
@click.option("--archive-url", help="Where readers browse the archive (default: from a GitHub remote).")
@click.option("--force", is_flag=True, help="Also in a folder that is not empty; no file is overwritten.")
def init(folder: Path, force: bool, **given: str | None) -> None:
    """Start a newsletter of your own in DIR: config, first issue, templates, Makefile. Asks what is not given."""
    from pipeline.errors import QuickstartError
    from pipeline.quickstart import OPTIONAL, QUESTIONS, Answers, check_answer, init_newsletter

    values: dict[str, str] = {}
    for field, (_, _, question) in QUESTIONS.items():
        value = given[field]
        if value is None and field != "archive_url":  # the archive's URL follows from the remote
            try:
                value = click.prompt(
                    question,
                    default="" if field in OPTIONAL else None,
                    show_default=False,
                    value_proc=_checked_answer(field),
                )
            except click.Abort:  # the input ended: there is nobody to ask
                missing = [
                    flag for f, (flag, _, _) in QUESTIONS.items() if f not in OPTIONAL and f not in values
                ]
                if field not in OPTIONAL:
                    raise QuickstartError(
                        f"missing {', '.join(missing)}: give them as options, or answer in a terminal"
                    ) from None
        values[field] = check_answer(field, value or "")
    written, kept = init_newsletter(folder, Answers(**values), force=force)
    for path in kept:
        click.echo(f"kept     {_relative(path)}")
    click.echo(
        f"wrote {len(written)} file(s) into {_relative(folder)}; next: cd {_relative(folder)} && newsletter build 1"
    )


def _checked_answer(field: str) -> Any:
    from pipeline.errors import QuickstartError
    from pipeline.quickstart import check_answer

    def check(value: str) -> str:
        try:
            return check_answer(field, value)
        except QuickstartError as error:
            raise click.UsageError(str(error)) from None  # click asks again

    return check
