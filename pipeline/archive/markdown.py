"""The public archive: one GitHub-flavoured Markdown file per issue, an index and an Atom feed.

Each file keeps the body exactly as the editor wrote it (so GitHub shows the
same text), plus the Errata section the issue carried, and a Corrections note
when a later issue corrected it. A one-line HTML comment at the top carries the
issue's metadata, so the index and feed are rebuilt from the archive alone.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from pipeline.archive.corrections import archive_text, correction_note, corrections_of, errata_markdown
from pipeline.config import Config
from pipeline.errors import ArchiveError
from pipeline.files import write_atomically
from pipeline.issue.errata import Erratum, load_errata
from pipeline.issue.markdown import Document, issue_url_resolver, make_url_resolver, render_markdown
from pipeline.issue.source import Issue, read_issue

META = re.compile(r"^<!-- newsletter-archive: (\{.*\}) -->$", re.MULTILINE)
ATOM = "http://www.w3.org/2005/Atom"


@dataclass(frozen=True)
class Entry:
    number: int
    title: str
    date: dt.date
    updated: dt.date
    filename: str


def archive_issue(config: Config, number: int) -> list[Path]:
    """Write issue ``number`` and every issue its errata corrected; then the index and the feed."""
    errata = load_errata(config)
    touched = {number} | {e.issue for e in errata if e.announced_in == number}
    written = [write_issue_file(config, n, errata) for n in sorted(touched)]
    written += write_index(config)
    return written


def write_issue_file(config: Config, number: int, errata: list[Erratum]) -> Path:
    issue = read_issue(config.paths.issues, number)
    path = config.paths.archive / config.archive_name(number)
    write_atomically(path, issue_markdown(config, issue, errata).encode("utf-8"))
    return path


def issue_markdown(config: Config, issue: Issue, errata: list[Erratum]) -> str:
    corrections = corrections_of(errata, issue.number)
    body = issue.body
    for erratum in corrections:
        if erratum.replace_old:
            body = body.replace(erratum.replace_old, erratum.replace_new)
    carried = [e for e in errata if e.announced_in == issue.number]
    if carried:
        body = _insert_after_intro(config, issue, body, carried)
    updated = max([issue.date, *(e.recorded for e in corrections)])
    meta = {
        "number": issue.number,
        "title": issue.title,
        "date": issue.date.isoformat(),
        "updated": updated.isoformat(),
    }
    # '>' escaped: a title containing "-->" must not close the comment and spill JSON onto the page.
    meta_json = json.dumps(meta, ensure_ascii=False).replace(">", "\\u003e")
    byline = f"*{_date_text(issue.date)}{' · ' + issue.author if issue.author else ''}*"
    parts = [f"<!-- newsletter-archive: {meta_json} -->", f"# {issue.title}", byline, body.strip()]
    if corrections:
        notes = "\n".join(
            f"- {archive_text(e.text)} (recorded {e.recorded.isoformat()}, {correction_note(config, e)})"
            + (
                " The archived text above includes the fix."
                if e.replace_old and e.replace_old in issue.body
                else ""
            )
            for e in corrections
        )
        parts.append(f"---\n\n## Corrections\n\n{notes}")
    return "\n\n".join(parts) + "\n"


def _insert_after_intro(config: Config, issue: Issue, body: str, carried: list[Erratum]) -> str:
    sections = render_markdown(issue, issue_url_resolver(config, issue), with_text=False).sections
    lines = body.split("\n")
    cut = sections[1].start if len(sections) > 1 else len(lines)
    heading = "#" * (sections[1].level if len(sections) > 1 else 2)
    return "\n".join([*lines[:cut], errata_markdown(config, carried, heading), *lines[cut:]])


def _date_text(date: dt.date) -> str:
    return f"{date:%d %B %Y}".lstrip("0")


def archived_entries(config: Config, folder: Path | None = None) -> list[Entry]:
    entries = []
    for path in sorted((folder or config.paths.archive).glob("*.md")):
        match = META.search(path.read_text(encoding="utf-8")[:2000])
        if not match:
            continue  # the index itself, or a file someone added by hand
        try:
            meta = json.loads(match.group(1))
            entries.append(
                Entry(
                    int(meta["number"]),
                    str(meta["title"]),
                    dt.date.fromisoformat(meta["date"]),
                    dt.date.fromisoformat(meta.get("updated", meta["date"])),
                    path.name,
                )
            )
        except (ValueError, KeyError, TypeError) as error:
            raise ArchiveError(f"{path}:1: unreadable archive metadata: {error}") from None
    return sorted(entries, key=lambda e: e.number, reverse=True)


def write_index(config: Config, folder: Path | None = None) -> list[Path]:
    """The index (README.md) and feed (feed.xml) of the archive in ``folder`` (default: the archive)."""
    folder = folder or config.paths.archive
    entries = archived_entries(config, folder)
    rows = "\n".join(
        f"| [#{e.number}]({quote(e.filename)}) | {e.date.isoformat()} | {_cell(e.title)} |" for e in entries
    )
    readme = (
        f"# {config.name}: the archive\n\n"
        f"Every issue, newest first. Follow new issues with the [Atom feed]({feed_url(config)}).\n\n"
        f"| Issue | Date | Title |\n|---|---|---|\n{rows}\n"
    )
    index = write_atomically(folder / "README.md", readme.encode("utf-8"))
    feed = write_atomically(folder / "feed.xml", atom_feed(config, entries, folder))
    return [index, feed]


def feed_url(config: Config) -> str:
    """The feed's own address: its raw file (a feed reader given GitHub's /blob/ page gets HTML)."""
    return f"{config.raw_base_url}/feed.xml"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def atom_feed(config: Config, entries: list[Entry], folder: Path | None = None) -> bytes:
    ET.register_namespace("", ATOM)
    feed = ET.Element(f"{{{ATOM}}}feed")
    # Ids derive from the archive's address alone: stable whatever is archived, and in what order.
    base_id = f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, config.archive_base_url)}"
    first_year = min((e.date.year for e in entries), default=dt.date.today().year)

    def add(parent: ET.Element, tag: str, text: str | None = None, **attributes: str) -> ET.Element:
        element = ET.SubElement(parent, f"{{{ATOM}}}{tag}", attributes)
        element.text = text
        return element

    add(feed, "title", config.name)
    add(feed, "id", base_id)
    add(feed, "link", href=config.archive_base_url + "/")
    add(feed, "link", rel="self", href=feed_url(config))
    add(feed, "updated", _timestamp(max((e.updated for e in entries), default=dt.date(first_year, 1, 1))))
    add(add(feed, "author"), "name", config.name)
    for entry in entries:
        item = add(feed, "entry")
        add(item, "title", entry.title)
        add(
            item,
            "id",
            f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{config.archive_base_url}#issue-{entry.number}')}",
        )
        add(item, "link", href=f"{config.archive_base_url}/{quote(entry.filename)}")
        add(item, "published", _timestamp(entry.date))
        add(item, "updated", _timestamp(entry.updated))
        add(item, "content", _entry_html(config, entry, folder), type="html")
    serialised: bytes = ET.tostring(feed, encoding="utf-8", xml_declaration=True)
    return serialised + b"\n"


def _entry_html(config: Config, entry: Entry, folder: Path | None = None) -> str:
    """The archived Markdown, rendered: what a feed reader shows."""
    return "".join(section.html for section in archived_document(config, entry, folder).sections)


def archived_document(config: Config, entry: Entry, folder: Path | None = None) -> Document:
    """Parse an archived file (past its metadata line) as the Markdown it is: its HTML and links (no
    plain text: the feed and the link report do not read it)."""
    path = (folder or config.paths.archive) / entry.filename
    body = path.read_text(encoding="utf-8").split("\n", 1)[1]
    issue = Issue(path, entry.number, entry.title, entry.date, entry.title, "", "", False, body, 2)
    page = f"{config.archive_base_url}/{entry.filename}"
    return render_markdown(
        issue, make_url_resolver(config.archive_base_url, page, config.raw_base_url), with_text=False
    )


def archived_documents(config: Config) -> list[tuple[Entry, Document]]:
    return [(entry, archived_document(config, entry)) for entry in archived_entries(config)]


def _timestamp(date: dt.date) -> str:
    return f"{date.isoformat()}T00:00:00Z"
