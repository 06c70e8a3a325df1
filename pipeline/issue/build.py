"""Read, render and write one issue: ``build/<N>/email.html``, ``email.txt``, ``message.eml``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.check.content import Problem, check_rendered, http_problems
from pipeline.check.links import check_urls
from pipeline.config import Config
from pipeline.db import DB_NAME, open_db
from pipeline.files import write_atomically
from pipeline.issue.errata import errata_for, errata_html, load_errata
from pipeline.issue.markdown import Link
from pipeline.issue.render import Rendered, render_issue, sample_recipient
from pipeline.issue.source import read_issue
from pipeline.send.message import build_message, message_bytes


@dataclass(frozen=True)
class Build:
    rendered: Rendered
    html: str
    """The HTML as a sample recipient gets it."""
    text: str
    errata_ids: list[int] = field(default_factory=list)
    """The errata this issue carries; marked announced when its campaign starts."""

    @property
    def html_size(self) -> int:
        return len(self.html.encode("utf-8"))


def build_issue(config: Config, number: int) -> Build:
    issue = read_issue(config.paths.issues, number)
    carried = errata_for(load_errata(config), number, started=campaign_state(config, number) is not None)
    rendered = render_issue(config, issue, after_intro=[errata_html(config, carried)] if carried else [])
    html, text = rendered.personalise(sample_recipient(config))
    return Build(rendered, html, text, [e.id for e in carried])


def sample_message(config: Config, build: Build, now: dt.datetime | None = None) -> bytes:
    """A complete MIME message to the sample recipient, for opening in a mail client."""
    message = build_message(
        config,
        to=sample_recipient(config)["email"],
        subject=build.rendered.issue.subject,
        html=build.html,
        text=build.text,
        date=now or dt.datetime.now(dt.UTC),
    )
    return message_bytes(message)


@dataclass(frozen=True)
class CheckResult:
    build: Build
    offline: list[Problem]
    """Problems found in the source and the rendered email."""
    http: list[Problem]
    """Problems found by checking the links over HTTP."""
    links_note: str
    """How the links were checked over HTTP, or why they were not."""

    @property
    def problems(self) -> list[Problem]:
        return sorted({*self.offline, *self.http})


def check_issue(
    config: Config, number: int, *, online: bool = True, progress: Callable[[int, int], None] | None = None
) -> CheckResult:
    """Everything ``check`` does: build, offline checks, and (unless offline) links over HTTP."""
    build = build_issue(config, number)
    offline = check_build(config, build)
    links = checkable_links(config, build)
    if not online:
        return CheckResult(build, offline, [], "links not checked over HTTP (--offline)")
    if not config.links.enabled:
        return CheckResult(build, offline, [], "links not checked over HTTP (links.enabled = false)")
    db = open_db(config.paths.state)
    try:
        report = check_urls([link.href for link in links], config.links, db, progress=progress)
    finally:
        db.close()
    found = http_problems(links, report.results)  # cached results count even when the rest was skipped
    if report.skipped:
        return CheckResult(build, offline, [*found, Problem(0, "warning", report.skipped)], report.skipped)
    broken = sum(not r.ok for r in report.results.values())
    return CheckResult(
        build, offline, found, f"{len(report.results)} link(s) checked over HTTP, {broken} broken"
    )


def checkable_links(config: Config, build: Build) -> list[Link]:
    """Links worth fetching: not those into this issue's own archive page, which exists only once it is sent."""
    own_page = config.archive_url(build.rendered.issue.number)
    return [link for link in build.rendered.document.links if link.href.split("#", 1)[0] != own_page]


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


def check_build(config: Config, build: Build) -> list[Problem]:
    return check_rendered(build.rendered, build.html_size, config.max_html_bytes)


def write_build(config: Config, build: Build) -> dict[str, Path]:
    """Write the three files, each atomically: a reader never sees half a file."""
    folder = config.paths.build / str(build.rendered.issue.number)
    folder.mkdir(parents=True, exist_ok=True)
    outputs = {
        "email.html": build.html.encode("utf-8"),
        "email.txt": build.text.encode("utf-8"),
        "message.eml": sample_message(config, build),
    }
    written = {}
    for name, data in outputs.items():
        written[name] = write_atomically(folder / name, data)
    return written
