"""``newsletter links``: check one issue's links, or the whole archive's, and say what to do."""

from __future__ import annotations

import shlex
from collections.abc import Callable

from .archive import archived_documents
from .build import build_issue
from .check import http_problems
from .config import Config
from .db import open_db
from .linkcheck import check_urls
from .markdown import Link

Progress = Callable[[int, int], None]


def check_issue_links(config: Config, number: int, progress: Progress | None = None) -> tuple[list[str], int]:
    build = build_issue(config, number)
    links = build.rendered.document.links
    db = open_db(config.paths.state)
    try:
        report = check_urls([link.href for link in links], config.links, db, progress=progress)
    finally:
        db.close()
    if report.skipped:
        return [f"warning: {report.skipped}"], 0
    path = str(build.rendered.issue.path)
    lines = [problem.format(path) for problem in http_problems(links, report.results)]
    broken = sum(not r.ok for r in report.results.values())
    moved = sum(r.ok and r.permanent_redirect for r in report.results.values())
    lines.append(f"{len(report.results)} link(s) checked: {broken} broken, {moved} moved permanently")
    return lines, broken


def check_archive_links(config: Config, progress: Progress | None = None) -> tuple[list[str], int]:
    """Every archived issue's links; for each that broke since it was sent, a ready-to-run erratum."""
    documents = archived_documents(config)
    urls = [link.href for _, document in documents for link in document.links]
    db = open_db(config.paths.state)
    try:
        report = check_urls(urls, config.links, db, progress=progress)
    finally:
        db.close()
    if report.skipped:
        return [f"warning: {report.skipped}"], 0
    lines: list[str] = []
    broken = 0
    for entry, document in documents:
        for link in document.links:
            result = report.results.get(link.href)
            if result is None or (result.ok and not result.permanent_redirect):
                continue
            broken += not result.ok
            lines.append(f"{entry.filename}:{link.line}: {result.describe()}: {link.href}")
            lines.append("  " + suggest_erratum(entry.number, link, result.final_url if result.ok else ""))
    lines.append(f"{len(report.results)} link(s) in {len(documents)} archived issue(s) checked: {broken} broken")
    return lines, broken


def suggest_erratum(number: int, link: Link, new_url: str) -> str:
    label = link.text if link.text and link.text != link.href else link.href
    if new_url:
        text = f"The link to “{label}” has moved to {new_url}."
        return shlex.join(["newsletter", "errata", "add", str(number), "--text", text, "--replace", link.href, new_url])
    text = f"The link to “{label}” ({link.href}) no longer works."
    return shlex.join(["newsletter", "errata", "add", str(number), "--text", text])
