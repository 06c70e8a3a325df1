"""``newsletter links``: check one issue's links, or the whole archive's, and say what to do."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from urllib.parse import unquote

from pipeline.archive.markdown import archived_documents
from pipeline.check.content import http_problems
from pipeline.check.gate import checkable_links
from pipeline.check.links import check_urls
from pipeline.config import Config
from pipeline.db import open_db
from pipeline.files import display_path
from pipeline.issue.build import build_issue
from pipeline.issue.errata import Erratum, load_errata
from pipeline.issue.markdown import Link

Progress = Callable[[int, int], None]


def check_issue_links(
    config: Config, number: int, progress: Progress | None = None, *, pinned: bool = False
) -> tuple[list[str], int]:
    build = build_issue(config, number, pinned=pinned)
    links = checkable_links(config, build)
    db = open_db(config.paths.state)
    try:
        report = check_urls([link.href for link in links], config.links, db, progress=progress)
    finally:
        db.close()
    path = display_path(build.rendered.issue.path)
    lines = [problem.format(path) for problem in http_problems(links, report.results)]
    if report.skipped:
        return [*lines, f"warning: {report.skipped}"], sum(not r.ok for r in report.results.values())
    broken = sum(not r.ok for r in report.results.values())
    moved = sum(r.ok and r.permanent_redirect for r in report.results.values())
    lines.append(f"{len(report.results)} link(s) checked: {broken} broken, {moved} moved permanently")
    return lines, broken


def check_archive_links(config: Config, progress: Progress | None = None) -> tuple[list[str], int]:
    """Every archived issue's links; for each that broke since it was sent, a ready-to-run erratum."""
    documents = archived_documents(config)
    errata = load_errata(config)
    urls = [link.href for _, document in documents for link in document.links]
    db = open_db(config.paths.state)
    try:
        # No cache: "broken since it was sent" needs today's answer, not yesterday's.
        report = check_urls(urls, config.links, db, progress=progress, use_cache=False)
    finally:
        db.close()
    if report.skipped:
        return [f"warning: {report.skipped}"], 0
    lines: list[str] = []
    broken = 0
    for entry, document in documents:
        source = (config.paths.archive / entry.filename).read_text(encoding="utf-8")
        for link in document.links:
            result = report.results.get(link.href)
            if result is None or (result.ok and not result.permanent_redirect):
                continue
            if _already_corrected(errata, entry.number, link):
                continue
            broken += not result.ok
            lines.append(f"{entry.filename}:{link.line}: {result.describe()}: {link.href}")
            lines.append(
                "  " + suggest_erratum(entry.number, link, result.final_url if result.ok else "", source)
            )
    lines.append(
        f"{len(report.results)} link(s) in {len(documents)} archived issue(s) checked: {broken} broken"
    )
    return lines, broken


def _already_corrected(errata: list[Erratum], number: int, link: Link) -> bool:
    """A link named in an erratum (its text, or what it replaces) has been dealt with."""
    targets = {link.href, link.raw, unquote(link.raw)} - {""}
    return any(
        e.issue == number and any(t in e.text or t == e.replace_old for t in targets) for e in errata
    ) or any(link.href in e.text for e in errata if e.announced_in == number)


def suggest_erratum(number: int, link: Link, new_url: str, source: str = "") -> str:
    label = link.text if link.text and link.text not in (link.href, link.raw) else ""
    what = f"“{label}”" if label else "a link"
    # --replace must name the URL as written in the issue, or it will not be found there.
    written = next((c for c in (link.raw, unquote(link.raw), link.href) if c and c in source), "")
    if new_url and written:
        text = f"The link to {what} has moved to `{new_url}`."
        return shlex.join(
            ["newsletter", "errata", "add", str(number), "--text", text, "--replace", written, new_url]
        )
    # The URL in backticks: shown as text in the errata section, not as one more link to check.
    text = f"The link to {what} (`{link.href}`) no longer works."
    return shlex.join(["newsletter", "errata", "add", str(number), "--text", text])
