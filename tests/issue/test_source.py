from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from pipeline.errors import SourceError
from pipeline.issue.source import parse_issue, read_issue

PATH = Path("issues/5.md")


def parse(text: str | bytes) -> object:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return parse_issue(PATH, data)


def test_fields_defaults_and_body_line() -> None:
    issue = parse("---\nnumber: 5\ntitle: 'Weekly #5'\ndate: 2026-11-23\n---\n\nFirst line.\n")
    assert issue.number == 5
    assert issue.title == issue.subject == "Weekly #5"
    assert issue.date == dt.date(2026, 11, 23)
    assert (issue.preheader, issue.author, issue.allow_html) == ("", "", False)
    # The body's first line (blank) is file line 6, so "First line." is file line 7.
    assert issue.body_line + issue.body.split("\n").index("First line.") == 7


def test_optional_fields_crlf_and_bom() -> None:
    text = "\ufeff---\r\nnumber: 5\r\ntitle: T\r\ndate: 2026-11-23\r\nsubject: S\r\npreheader: P\r\nauthor: A\r\nallow_html: true\r\n---\r\nBody\r\n"
    issue = parse(text)
    assert (issue.subject, issue.preheader, issue.author, issue.allow_html) == ("S", "P", "A", True)
    assert "\r" not in issue.body


BASE = "---\nnumber: 5\ntitle: T\ndate: 2026-11-23\n---\nBody\n"


@pytest.mark.parametrize(
    ("text", "message", "line"),
    [
        (BASE.replace("title: T\n", ""), "missing required field 'title'", None),
        (BASE.replace("date: 2026-11-23\n", ""), "missing required field 'date'", None),
        (BASE.replace("title: T", "titel: T"), "titel: unknown field", 3),
        (BASE.replace("number: 5", "number: 6"), "number: 6 does not match the file name", 2),
        (BASE.replace("number: 5", "number: five"), "number: must be a positive whole number", 2),
        (BASE.replace("2026-11-23", "2026-13-01"), "date: not a valid date", 4),
        (BASE.replace("2026-11-23", "23/11/2026"), "date: must be a date written YYYY-MM-DD", 4),
        (BASE.replace("2026-11-23", "2026-11-23 10:00:00"), "date: must be a date written YYYY-MM-DD", 4),
        (BASE.replace("title: T", "title: [unclosed"), "YAML error in front matter", 4),
        (BASE.replace("title: T", "title: Weekly #5"), "title: text after ' #' is read as a YAML comment", 3),
        (BASE.replace("title: T", "title: 42"), "title: must be text", 3),
        (BASE.replace("title: T", 'title: "two\\nlines"'), "title: must be a single line", 3),
        (
            BASE.replace("date: 2026-11-23", "date: 2026-11-23\nallow_html: yes please"),
            "allow_html: must be true or false",
            5,
        ),
        (BASE.replace("Body\n", "\n   \n"), "the body is empty", 6),
        ("number: 5\n\nBody\n", "must start with YAML front matter", 1),
        ("---\nnumber: 5\ntitle: T\n", "front matter is not closed", 1),
        ("---\n- a\n- b\n---\nBody\n", "front matter must be a mapping", 1),
    ],
)
def test_bad_source_is_one_clear_line(text: str, message: str, line: int | None) -> None:
    with pytest.raises(SourceError) as caught:
        parse(text)
    error = caught.value
    assert message in str(error)
    assert str(error).startswith(f"{PATH}:{line}:" if line else f"{PATH}:")
    assert error.line == line
    assert "\n" not in str(error)


def test_not_utf8_names_the_line() -> None:
    with pytest.raises(SourceError, match=r"issues/5.md:7: not valid UTF-8 \(byte 0xe9\)"):
        parse(BASE.encode() + "Caf\u00e9".encode("latin-1"))


def test_unknown_issue_lists_what_exists(tmp_path: Path) -> None:
    (tmp_path / "3.md").write_text(BASE.replace("number: 5", "number: 3"))
    with pytest.raises(SourceError, match=r"9.md: no such issue \(issues in .*: 3\)"):
        read_issue(tmp_path, 9)
