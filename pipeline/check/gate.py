"""The send gate: everything ``check`` does to an issue before anyone is mailed it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pipeline.check.content import Problem, check_rendered, http_problems
from pipeline.config import Config
from pipeline.db import open_db
from pipeline.issue.build import Build, build_issue
from pipeline.issue.markdown import Link


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
    config: Config,
    number: int,
    *,
    pinned: bool = False,
    online: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> CheckResult:
    """Everything ``check`` does: build, offline checks, and (unless offline) links over HTTP."""
    build = build_issue(config, number, pinned=pinned)
    offline = check_build(config, build)
    links = checkable_links(config, build)
    if not online:
        return CheckResult(build, offline, [], "links not checked over HTTP (--offline)")
    if not config.links.enabled:
        return CheckResult(build, offline, [], "links not checked over HTTP (links.enabled = false)")
    from pipeline.check.links import check_urls  # httpx and asyncio: only when links go over HTTP

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


def check_build(config: Config, build: Build) -> list[Problem]:
    return check_rendered(build.rendered, build.html_size, config.max_html_bytes)
