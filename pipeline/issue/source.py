"""Read an issue source: ``issues/<N>.md``, YAML front matter + Markdown body.

Every error names the file and, where there is one, the line, so the editor
can jump straight to it.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import MAX_ISSUE
from pipeline.errors import SourceError
from pipeline.issue.yaml12 import YamlProblem, load_yaml
from pipeline.text_rules import FORBIDDEN_CONTROL, locate_forbidden_control

REQUIRED_FIELDS = ("number", "title", "date")
OPTIONAL_FIELDS = ("subject", "preheader", "author", "allow_html")
ONE_LINE_FIELDS = ("title", "subject", "preheader", "author")
_DATE_SHAPED = re.compile(r":\s*['\"]?\d{4}-\d{1,2}-\d{1,2}")
_LINE_BREAKS = re.compile("[\t\n\u2028\u2029]")
_FRONT_MATTER_BOUNDARY = re.compile(r"^-{3,}\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Issue:
    path: Path
    number: int
    title: str
    date: dt.date
    subject: str
    preheader: str
    author: str
    allow_html: bool
    body: str
    body_line: int
    """The file line (1-based) of the body's first line, to report body problems by file line."""


def issue_path(issues_dir: Path, number: int) -> Path:
    return issues_dir / f"{number}.md"


def available_numbers(issues_dir: Path) -> list[int]:
    return sorted(int(p.stem) for p in issues_dir.glob("*.md") if p.stem.isdigit())


def read_issue(issues_dir: Path, number: int) -> Issue:
    path = issue_path(issues_dir, number)
    if not path.is_file():
        known = ", ".join(map(str, available_numbers(issues_dir))) or "none"
        raise SourceError(path, f"no such issue (issues in {issues_dir}: {known})")
    return parse_issue(path, path.read_bytes())


@dataclass(frozen=True)
class FrontMatter:
    """A Markdown file with YAML front matter, split: issues and the welcome mail are written so."""

    meta: dict[str, Any]
    head_lines: list[str]
    """The front matter's lines; ``head_lines[i]`` is file line ``i + 1`` (the first is the opening '---')."""
    body: str
    body_line: int
    """The file line (1-based) of the body's first line."""

    def line_of(self, field: str) -> int | None:
        return _field_line(self.head_lines, field)


def read_front_matter(path: Path, data: bytes, *, missing: str) -> FrontMatter:
    """Decode ``data`` (UTF-8, a BOM and CRLF tolerated) and split it; ``missing`` is the message when
    it does not start with a '---' line. Every problem is one SourceError naming the file line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise SourceError(
            path, f"not valid UTF-8 (byte 0x{data[error.start]:02x}); save the file as UTF-8", line
        ) from None
    text = text.removeprefix("\ufeff").replace("\r\n", "\n")

    if not _FRONT_MATTER_BOUNDARY.match(text):
        raise SourceError(path, missing, 1)
    try:
        _, head, body = _FRONT_MATTER_BOUNDARY.split(text, 2)
    except ValueError:
        raise SourceError(path, "front matter is not closed by a '---' line", 1) from None
    # head starts on the file's first line (just after the opening '---').
    head_lines = head.split("\n")
    body_line = text.count("\n", 0, len(text) - len(body)) + 1
    return FrontMatter(_load_yaml(path, head, head_lines), head_lines, body, body_line)


def is_one_line(text: str) -> bool:
    """Text a one-line field (a title, a subject) may hold: no line break, no control character."""
    return not (_LINE_BREAKS.search(text.strip()) or FORBIDDEN_CONTROL.search(text))


def parse_issue(path: Path, data: bytes) -> Issue:
    front = read_front_matter(path, data, missing="must start with YAML front matter between '---' lines")
    meta, head_lines, body, body_line = front.meta, front.head_lines, front.body, front.body_line
    fields = _validate_fields(path, meta, head_lines)

    if fields["number"] != _number_from_name(path):
        raise SourceError(
            path,
            f"number: {fields['number']} does not match the file name (expected {path.stem})",
            _field_line(head_lines, "number"),
        )
    if not body.strip():
        closing_line = len(head_lines)
        raise SourceError(path, "the body is empty: write the issue below the front matter", closing_line + 1)
    _refuse_control_characters(path, body, body_line)

    return Issue(
        path=path,
        number=fields["number"],
        title=fields["title"],
        date=fields["date"],
        subject=fields.get("subject") or fields["title"],
        preheader=fields.get("preheader", ""),
        author=fields.get("author", ""),
        allow_html=fields.get("allow_html", False),
        body=body,
        body_line=body_line,
    )


def _load_yaml(path: Path, head: str, head_lines: list[str]) -> dict[str, Any]:
    try:
        meta = load_yaml(head)
    except YamlProblem as error:
        raise SourceError(path, f"YAML error in front matter: {error.message}", error.line) from None
    except ValueError as error:
        # Raised for values shaped like a date that is not one (2026-13-01).
        line = next((i + 1 for i, text in enumerate(head_lines) if _DATE_SHAPED.search(text)), None)
        field = head_lines[line - 1].split(":", 1)[0] if line else "front matter"
        raise SourceError(path, f"{field}: not a valid date ({error})", line) from None
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise SourceError(path, "front matter must be a mapping of 'field: value' lines", 1)
    return meta


def _refuse_control_characters(path: Path, body: str, body_line: int) -> None:
    """An ESC, a C1 control or a bidi override in the body would fail the MJML compiler later,
    naming nothing: refuse it here, where the editor can find it."""
    found = locate_forbidden_control(body)
    if found:
        raise SourceError(
            path,
            f"{found.describe()} is not allowed in an issue; delete it",
            body_line + found.line - 1,
            found.column,
        )


def _validate_fields(path: Path, meta: dict[str, Any], head_lines: list[str]) -> dict[str, Any]:
    def fail(field: str, message: str) -> SourceError:
        return SourceError(path, f"{field}: {message}", _field_line(head_lines, field))

    for field in meta:
        if field not in REQUIRED_FIELDS + OPTIONAL_FIELDS:
            known = ", ".join(REQUIRED_FIELDS + OPTIONAL_FIELDS)
            raise fail(str(field), f"unknown field (known fields: {known})")
    for field in REQUIRED_FIELDS:
        if meta.get(field) in (None, ""):
            raise SourceError(path, f"missing required field '{field}'")

    number = meta["number"]
    if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= MAX_ISSUE:
        raise fail("number", f"must be a whole number from 1 to {MAX_ISSUE:,}, got {number!r}")

    date = meta["date"]
    if isinstance(date, dt.datetime) or not isinstance(date, dt.date):
        raise fail("date", f"must be a date written YYYY-MM-DD, got {date!r}")

    for field in ONE_LINE_FIELDS:
        if field not in meta:
            continue
        value = meta[field]
        if not isinstance(value, str):
            raise fail(field, f"must be text, got {value!r} (quote it)")
        if not is_one_line(value):
            raise fail(field, "must be a single line of text, without control characters")
        meta[field] = value.strip()
        _reject_swallowed_comment(path, field, head_lines)

    if "allow_html" in meta and not isinstance(meta["allow_html"], bool):
        raise fail("allow_html", f"must be true or false, got {meta['allow_html']!r}")
    return meta


def _reject_swallowed_comment(path: Path, field: str, head_lines: list[str]) -> None:
    """``title: Weekly #42`` silently loses ``#42`` as a YAML comment; make the editor quote it."""
    line_number = _field_line(head_lines, field)
    if line_number is None:
        return
    value = head_lines[line_number - 1].split(":", 1)[1].strip()
    if value[:1] not in ("'", '"') and re.search(r"\s#", value):
        raise SourceError(
            path, f"{field}: text after ' #' is read as a YAML comment; put the value in quotes", line_number
        )


def _field_line(head_lines: list[str], field: str) -> int | None:
    pattern = re.compile(rf"^{re.escape(field)}\s*:")
    for index, line in enumerate(head_lines):
        if pattern.match(line):
            return index + 1
    return None


def _number_from_name(path: Path) -> int | None:
    return int(path.stem) if path.stem.isdigit() else None
