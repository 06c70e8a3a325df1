"""``newsletter new``: the next issue's file, dated on the send day, titled by the pattern, with the last
issue's sections and a reminder of the errata it will carry; never over an existing file."""

from __future__ import annotations

import datetime as dt

import pytest
import yaml

from pipeline.config import WEEKDAYS
from pipeline.issue.new import section_headings, send_date
from pipeline.issue.source import read_issue
from tests.conftest import Newsletter
from tests.support.cli import invoke_cli, one_line, run_cli

LAST = """\
Opening words.

## News

### A subsection, not a section

```
## a heading inside code: not one either
```

## Releases

## And Finally...
"""


def configure(newsletter: Newsletter, **newsletter_keys: str) -> None:
    text = newsletter.config_path.read_text(encoding="utf-8")
    lines = "".join(f'{key} = "{value}"\n' for key, value in newsletter_keys.items())
    newsletter.config_path.write_text(
        text.replace("[newsletter]\n", "[newsletter]\n" + lines, 1), encoding="utf-8"
    )


def front_matter(text: str) -> dict[str, object]:
    head = text.split("---\n")[1]
    loaded = yaml.safe_load(head)
    assert isinstance(loaded, dict)
    return loaded


@pytest.mark.slow  # the console script in a subprocess
def test_new_writes_the_next_issue_which_builds(newsletter: Newsletter) -> None:
    newsletter.write_issue(1)
    newsletter.write_issue(2, LAST, date="2020-01-06")
    configure(newsletter, send_day="Thursday", title_pattern="{name} weekly, no. {number}")
    result = run_cli(newsletter.root, "new")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "issues/3.md\n"

    text = (newsletter.root / "issues" / "3.md").read_text(encoding="utf-8")
    fields = front_matter(text)
    assert fields["number"] == 3 and fields["title"] == "Crate Notes weekly, no. 3"
    date = fields["date"]
    assert isinstance(date, dt.date) and WEEKDAYS[date.weekday()] == "thursday"
    assert dt.date.today() <= date < dt.date.today() + dt.timedelta(days=7)
    # The last issue's top-level sections, in order, nothing else.
    assert [line for line in text.splitlines() if line.startswith("#") and not line.startswith("# ")] == [
        "## News",
        "## Releases",
        "## And Finally...",
    ]
    built = run_cli(newsletter.root, "build", "3")
    assert built.returncode == 0, built.stderr
    assert read_issue(newsletter.config().paths.issues, 3).title == "Crate Notes weekly, no. 3"


def test_new_reminds_of_the_errata_the_issue_will_carry(newsletter: Newsletter) -> None:
    newsletter.write_issue(1)
    newsletter.write_issue(2)
    (newsletter.root / "issues" / "errata.yaml").write_text(
        "- id: 1\n  issue: 1\n  recorded: 2026-11-20\n  text: The link to the benchmark was wrong.\n"
        "- id: 2\n  issue: 1\n  recorded: 2026-11-21\n  text: Already announced.\n  announced_in: 2\n",
        encoding="utf-8",
    )
    result = invoke_cli(newsletter.config_path, "new")
    assert result.returncode == 0, result.stderr
    text = (newsletter.root / "issues" / "3.md").read_text(encoding="utf-8")
    head = text.split("---\n")[1]
    assert "#   1. on issue 1: The link to the benchmark was wrong." in head
    assert "Already announced" not in text
    # A reminder only: comments in the front matter, nothing a reader sees.
    assert "benchmark" not in read_issue(newsletter.config().paths.issues, 3).body


def test_the_first_issue_of_a_new_newsletter_is_number_one_dated_today(newsletter: Newsletter) -> None:
    result = invoke_cli(newsletter.config_path, "new")
    assert result.returncode == 0, result.stderr
    issue = read_issue(newsletter.config().paths.issues, 1)
    assert (issue.number, issue.title, issue.date) == (1, "Crate Notes #1", dt.date.today())


def test_new_refuses_an_existing_file_and_changes_nothing(newsletter: Newsletter) -> None:
    path = newsletter.write_issue(1, "My draft.\n")
    before = path.read_bytes()
    result = invoke_cli(newsletter.config_path, "new", "--number", "1")
    assert result.returncode == 2
    assert one_line(result.stderr).endswith(
        "issues/1.md: issue 1 already exists: edit it, or remove it first"
    )
    assert path.read_bytes() == before
    assert sorted(p.name for p in (newsletter.root / "issues").iterdir()) == ["1.md"]


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("send_day", "someday", "newsletter.send_day must be a day of the week"),
        ("title_pattern", "{name} #{issue}", "newsletter.title_pattern may only use {name} and {number}"),
        ("title_pattern", "{name} weekly", "newsletter.title_pattern must contain {number}"),
    ],
)
def test_a_bad_send_day_or_title_pattern_is_one_line(
    newsletter: Newsletter, key: str, value: str, expected: str
) -> None:
    configure(newsletter, **{key: value})
    result = invoke_cli(newsletter.config_path, "new")
    assert result.returncode == 2 and expected in one_line(result.stderr)
    assert list((newsletter.root / "issues").iterdir()) == []


def test_a_broken_last_issue_is_one_line_and_nothing_is_written(newsletter: Newsletter) -> None:
    (newsletter.root / "issues" / "1.md").write_text("no front matter\n", encoding="utf-8")
    result = invoke_cli(newsletter.config_path, "new")
    assert result.returncode == 2 and "issues/1.md:1: must start with YAML front matter" in one_line(
        result.stderr
    )
    assert not (newsletter.root / "issues" / "2.md").exists()


@pytest.mark.parametrize(
    ("today", "last", "expected"),
    [
        (dt.date(2026, 12, 2), None, dt.date(2026, 12, 7)),  # a Wednesday: the coming Monday
        (dt.date(2026, 12, 7), dt.date(2026, 11, 30), dt.date(2026, 12, 7)),  # Monday, not yet sent: today
        (
            dt.date(2026, 12, 7),
            dt.date(2026, 12, 7),
            dt.date(2026, 12, 14),
        ),  # Monday's issue exists: next week
        (dt.date(2026, 12, 2), dt.date(2026, 12, 14), dt.date(2026, 12, 21)),  # written ahead: after the last
    ],
)
def test_send_date_is_the_next_send_day_after_the_last_issue(
    today: dt.date, last: dt.date | None, expected: dt.date
) -> None:
    assert send_date("monday", today, last) == expected
    assert send_date("", today, last) == today


def test_section_headings_are_the_top_level_ones() -> None:
    assert section_headings("Intro.\n\n### Only level three\n\n### Another\n") == [
        "### Only level three",
        "### Another",
    ]
    assert section_headings("No headings at all.\n") == []
