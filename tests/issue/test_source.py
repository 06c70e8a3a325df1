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
        (BASE.replace("number: 5", "number: five"), "number: must be a whole number from 1 to", 2),
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


# --- one YAML: 1.2, as errata.yaml is read and written ------------------------------------------


def test_yaml_1_1_booleans_are_text_in_front_matter() -> None:
    """PyYAML (YAML 1.1) read ``title: on`` as True and refused it; in YAML 1.2 it is the word."""
    issue = parse(
        BASE.replace("title: T", "title: on").replace("date: 2026-11-23", "date: 2026-11-23\nsubject: no")
    )
    assert (issue.title, issue.subject) == ("on", "no")


def test_yaml_1_1_yes_is_not_a_boolean_for_allow_html() -> None:
    with pytest.raises(SourceError, match=r"issues/5.md:5: allow_html: must be true or false, got 'yes'"):
        parse(BASE.replace("date: 2026-11-23", "date: 2026-11-23\nallow_html: yes"))


# --- control characters: refused where they were typed ------------------------------------------


@pytest.mark.parametrize(
    ("character", "name"),
    [
        ("\x1b", "U+001B (escape)"),
        ("\x00", "U+0000 (null)"),
        ("\r", "U+000D"),
        ("\x7f", "U+007F (delete)"),
        ("\x85", "U+0085 (next line)"),
        ("\x9b", "U+009B (csi)"),
        ("\u202a", "U+202A (left-to-right embedding)"),
        ("\u202e", "U+202E (right-to-left override)"),
        ("\u2066", "U+2066 (left-to-right isolate)"),
        ("\u2069", "U+2069 (pop directional isolate)"),
    ],
)
def test_control_character_in_the_body_is_refused_with_line_and_column(character: str, name: str) -> None:
    before = "A line with \tcolour: "
    text = BASE.replace("Body\n", "Body\n\n" + before + character + "[31mred\n")
    with pytest.raises(SourceError) as caught:
        parse(text)
    # File line 8: "---" is line 1, the body starts on line 6 ("Body"), then a blank line.
    assert str(caught.value).startswith(f"{PATH}:8:{len(before) + 1}: {name}"), str(caught.value)
    assert "\n" not in str(caught.value)


def test_tabs_and_newlines_in_the_body_are_fine() -> None:
    assert "\tindented" in parse(BASE.replace("Body\n", "Body\n\n\tindented\n")).body  # type: ignore[attr-defined]


@pytest.mark.parametrize("escape", ["\\e", "\\x85", "\\u202E", "\\u2066", "\\t"])
def test_control_character_in_a_one_line_field_is_refused(escape: str) -> None:
    with pytest.raises(SourceError, match=r"issues/5.md:3: title: must be a single line of text"):
        parse(BASE.replace("title: T", f'title: "Weekly{escape}news"'))


def test_literal_control_character_in_front_matter_names_the_line() -> None:
    with pytest.raises(SourceError, match=r"issues/5.md:5: YAML error in front matter: .*U\+001B"):
        parse(BASE.replace("date: 2026-11-23", "date: 2026-11-23\nauthor: A\x1bB"))


def test_an_issue_number_past_the_cap_is_refused_naming_the_field(tmp_path: Path) -> None:
    from pipeline.config import MAX_ISSUE

    data = f'---\nnumber: {2**63}\ntitle: "T"\ndate: 2026-12-04\n---\n\nBody.\n'.encode()
    with pytest.raises(SourceError, match=f"number: must be a whole number from 1 to {MAX_ISSUE:,}"):
        parse_issue(tmp_path / "9.md", data)
