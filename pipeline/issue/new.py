"""``newsletter new``: the next issue's file, its front matter filled in, the last issue's sections as a
skeleton, and the errata it will carry as a reminder (YAML comments: invisible in the email)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from markdown_it import MarkdownIt

from pipeline.config import WEEKDAYS, Config
from pipeline.errors import SourceError
from pipeline.files import write_new
from pipeline.issue.errata import errata_for, errata_path, load_errata
from pipeline.issue.source import available_numbers, issue_path, read_issue

OPENING = "The opening note: what this issue is about."


def next_number(config: Config) -> int:
    return max(available_numbers(config.paths.issues), default=0) + 1


def send_date(send_day: str, today: dt.date, last: dt.date | None = None) -> dt.date:
    """The first ``send_day`` on or after today and after the last issue's date; today without one."""
    if not send_day:
        return today
    earliest = today if last is None or last < today else last + dt.timedelta(days=1)
    return earliest + dt.timedelta(days=(WEEKDAYS.index(send_day) - earliest.weekday()) % 7)


def section_headings(body: str) -> list[str]:
    """The top-level headings of an issue body, as written (``## News``): the sections the email shows."""
    tokens = MarkdownIt("commonmark").parse(body)
    headings = [
        (int(token.tag[1]), tokens[index + 1].content)
        for index, token in enumerate(tokens)
        if token.type == "heading_open" and token.level == 0
    ]
    top = min((level for level, _ in headings), default=0)
    return [f"{'#' * level} {text}" for level, text in headings if level == top]


def new_issue_text(config: Config, number: int, today: dt.date) -> str:
    previous = [n for n in available_numbers(config.paths.issues) if n < number]
    last = read_issue(config.paths.issues, previous[-1]) if previous else None
    date = send_date(config.send_day, today, last.date if last else None)
    title = config.title_pattern.format(name=config.name, number=number)
    lines = [
        "---",
        f"number: {number}",
        f"title: {json.dumps(title, ensure_ascii=False)}",
        f"date: {date.isoformat()}",
        '# subject: "..."      optional: the Subject line, when it is not the title',
        '# preheader: "..."    optional: the line inboxes show after the subject',
        *_errata_reminder(config, number),
        "---",
        "",
        OPENING,
        "",
    ]
    for heading in section_headings(last.body) if last else []:
        lines += [heading, "", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _errata_reminder(config: Config, number: int) -> list[str]:
    carried = errata_for(load_errata(config), number, started=False)
    if not carried:
        return []
    where = errata_path(config).name
    lines = [f"# This issue will carry these errata ({where}), after its opening text:"]
    lines += [f"#   {e.id}. on issue {e.issue}: {' '.join(e.text.split())}" for e in carried]
    return lines


def create_issue(config: Config, number: int | None = None, today: dt.date | None = None) -> Path:
    """Write ``issues/<number>.md`` (by default the next number) and return its path; never overwrites."""
    number = number or next_number(config)
    path = issue_path(config.paths.issues, number)
    if path.exists():
        raise SourceError(path, f"issue {number} already exists: edit it, or remove it first")
    text = new_issue_text(config, number, today or dt.date.today())
    try:
        write_new(path, text.encode("utf-8"))
    except FileExistsError:  # created meanwhile
        raise SourceError(path, f"issue {number} already exists: edit it, or remove it first") from None
    return path
