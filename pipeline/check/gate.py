"""The send gate: everything ``check`` does to an issue before anyone is mailed it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pipeline.check.content import Problem, Severity, check_rendered, http_problems, image_problems
from pipeline.check.spam import SpamScore, spam_score
from pipeline.config import Config
from pipeline.db import open_db
from pipeline.issue.build import Build, build_issue
from pipeline.issue.markdown import Link
from pipeline.send.message import html_size_as_sent, sample_as_sent


@dataclass(frozen=True)
class CheckResult:
    build: Build
    offline: list[Problem]
    """Problems found in the source and the rendered email."""
    http: list[Problem]
    """Problems found by checking the links over HTTP."""
    links_note: str
    """How the links were checked over HTTP, or why they were not."""
    spam_note: str = ""
    """The SpamAssassin score and its top rules, or why there is none."""
    html_sent: int = 0
    """Bytes of the HTML part as sent (quoted-printable), what the clip budget counts."""

    @property
    def problems(self) -> list[Problem]:
        return sorted({*self.offline, *self.http})


def check_issue(
    config: Config,
    number: int,
    *,
    pinned: bool = False,
    online: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> CheckResult:
    """Everything ``check`` does: build, offline checks, and (unless offline) links over HTTP."""
    build = build_issue(config, number, pinned=pinned)
    message = sample_as_sent(config, build.rendered)
    sent = html_size_as_sent(message)
    spam, spam_note = spam_problems(config, message)
    offline = sorted({*check_build(config, build, sent), *spam})
    http, links_note = _links_over_http(config, build, online, progress)
    return CheckResult(build, offline, http, links_note, spam_note, sent)


def _links_over_http(
    config: Config, build: Build, online: bool, progress: Callable[[int, int], None] | None
) -> tuple[list[Problem], str]:
    """The problems found by fetching the links, and how they were checked (or why they were not)."""
    if not online:
        return [], "links not checked over HTTP (--offline)"
    if not config.links.enabled:
        return [], "links not checked over HTTP (links.enabled = false)"
    from pipeline.check.links import check_urls  # httpx and asyncio: only when links go over HTTP

    links = checkable_links(config, build)
    db = open_db(config.paths.state)
    try:
        report = check_urls([link.href for link in links], config.links, db, progress=progress)
    finally:
        db.close()
    found = http_problems(links, report.results)  # cached results count even when the rest was skipped
    if report.skipped:
        return [*found, Problem(0, "warning", report.skipped)], report.skipped
    broken = sum(not r.ok for r in report.results.values())
    return found, f"{len(report.results)} link(s) checked over HTTP, {broken} broken"


def checkable_links(config: Config, build: Build) -> list[Link]:
    """Links worth fetching: not those into this issue's own archive page, which exists only once it is sent."""
    own_page = config.archive_url(build.rendered.issue.number)
    return [link for link in build.rendered.document.links if link.href.split("#", 1)[0] != own_page]


def check_build(config: Config, build: Build, html_sent: int | None = None) -> list[Problem]:
    """The offline checks of a build; ``html_sent``: the HTML part's size as sent, if already measured."""
    sent = html_sent if html_sent is not None else html_size_as_sent(sample_as_sent(config, build.rendered))
    return sorted(
        {
            *check_rendered(build.rendered, sent, config.max_html_bytes),
            *image_problems(config, build.rendered),
        }
    )


def spam_problems(config: Config, message: bytes) -> tuple[list[Problem], str]:
    """SpamAssassin's score: a warning above ``spam_warn``, an error above ``spam_fail``; and one line for check."""
    if not config.spamassassin:
        return [], "spam score not checked (check.spamassassin = false)"
    result = spam_score(message)
    if not isinstance(result, SpamScore):
        return [], result
    note = (
        f"SpamAssassin score {result.score:.1f} (warn above {config.spam_warn:g}, fail above "
        f"{config.spam_fail:g}); top rules: {result.top()}"
    )
    limits: tuple[tuple[Severity, float], ...] = (("error", config.spam_fail), ("warning", config.spam_warn))
    for severity, limit in limits:
        if result.score > limit:
            return [
                Problem(0, severity, f"spam score {result.score:.1f} is over {limit:g}: {result.top()}")
            ], note
    return [], note
