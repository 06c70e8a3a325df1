"""Errata, end to end: the real ``newsletter`` command, real campaigns into the local maildir, the archive.

Tests marked ``xfail(strict=True)`` pin down bugs found while writing these tests;
each reason says what is wrong. When a bug is fixed, remove the marker.
"""

from __future__ import annotations

import datetime as dt
import email
import re
import signal
import subprocess
import textwrap
import time
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from pipeline.archive.markdown import issue_markdown
from pipeline.errors import ErrataError
from pipeline.issue.errata import Erratum, add_erratum, load_errata, mark_announced
from pipeline.issue.source import read_issue
from tests.archive.test_archive import (
    NEWSLETTER,
    check_feed,
    cli_env,
    import_subscribers,
    ok,
    one_line_error,
    run,
    set_config,
)
from tests.conftest import Newsletter

OLD_URL = "https://example.org/releases/1.42-notes"
NEW_URL = "https://example.org/releases/1.42/notes"
FIX = "The link to the ferrule 1.42 release notes was wrong."
DATES = {1: "2026-11-02", 2: "2026-11-09", 3: "2026-11-16"}


def write_issue(newsletter: Newsletter, number: int) -> Path:
    link = OLD_URL if number == 1 else f"https://example.org/notes/{number}"
    body = f"""\
    Opening paragraph of issue {number}: the week in brief, with [the release notes]({link}).

    ## News

    News of issue {number}.

    ## Releases

    Releases of issue {number}.
    """
    return newsletter.write_issue(number, body, date=DATES[number])


def sent_messages(newsletter: Newsletter, number: int) -> list[EmailMessage]:
    """Every message of issue ``number`` the maildir transport delivered."""
    found = []
    for path in sorted((newsletter.root / "outbox" / "new").iterdir()):
        message = email.message_from_bytes(path.read_bytes(), policy=policy.default)
        if message["Subject"] == f"Issue {number}":
            found.append(message)
    return found  # type: ignore[return-value]


def parts(message: EmailMessage) -> tuple[str, str]:
    html = message.get_body(("html",))
    text = message.get_body(("plain",))
    assert html is not None and text is not None
    # The message is stored with CRLF line ends, as SMTP wants them.
    return html.get_content().replace("\r\n", "\n"), text.get_content().replace("\r\n", "\n")


def built(newsletter: Newsletter, number: int) -> tuple[str, str]:
    ok(run(newsletter, "build", str(number)))
    folder = newsletter.root / "build" / str(number)
    return (folder / "email.html").read_text(encoding="utf-8"), (folder / "email.txt").read_text(
        encoding="utf-8"
    )


def html_errata(html: str) -> str | None:
    """The Errata section of an email's HTML, style attributes removed; None if there is none."""
    match = re.search(r"<h2[^>]*>Errata</h2>.*?</ul>", html, re.DOTALL)
    return re.sub(r' style="[^"]*"', "", match.group(0)) if match else None


def text_errata(text: str) -> str | None:
    """The Errata section of an email's plain text (up to the next heading), whitespace normalised."""
    match = re.search(r"^Errata\n=+\n(.*?)(?=^[^\n]+\n=+$)", text, re.DOTALL | re.MULTILINE)
    return " ".join(match.group(1).split()) if match else None


def check_placement(content: str, number: int, errata_heading: str, first_heading: str) -> None:
    """The Errata section comes after the opening paragraph and before the first section's heading."""
    intro = content.index(f"Opening paragraph of issue {number}")
    errata = content.index(errata_heading)
    news = content.index(first_heading)
    assert intro < errata < news
    assert content.count(errata_heading) == 1


def errata_list(newsletter: Newsletter) -> list[str]:
    return ok(run(newsletter, "errata", "list")).stdout.splitlines()


# --- the acceptance test ---------------------------------------------------------------------


@pytest.mark.slow  # the console script in a subprocess
def test_erratum_is_announced_once_and_corrects_the_archive(newsletter: Newsletter) -> None:
    config = newsletter.config()
    import_subscribers(newsletter, 2)
    source_1 = write_issue(newsletter, 1)
    write_issue(newsletter, 2)
    write_issue(newsletter, 3)
    ok(run(newsletter, "send", "1"))
    source_1_bytes = source_1.read_bytes()
    archived_1_before = (newsletter.root / "archive" / "1.md").read_text(encoding="utf-8")
    assert OLD_URL in archived_1_before

    result = ok(run(newsletter, "errata", "add", "1", "--text", FIX, "--replace", OLD_URL, NEW_URL))
    assert "erratum 1 recorded against issue 1" in result.stdout
    assert errata_list(newsletter) == [
        f"1. issue 1 ({dt.date.today()}): {FIX} [replace {OLD_URL!r} -> {NEW_URL!r}] (pending)"
    ]

    # Issue B, as the subscribers got it: an Errata section between the opening paragraph and "News".
    result = ok(run(newsletter, "send", "2"))
    assert "issue 2: campaign complete" in result.stdout
    assert errata_list(newsletter)[0].endswith("(announced in issue 2)")
    messages = sent_messages(newsletter, 2)
    assert len(messages) == 2
    expected_html = (
        f'<h2>Errata</h2><ul><li>In <a href="{config.archive_url(1)}">issue 1</a>: {FIX}</li></ul>'
    )
    expected_text = f"- In issue 1 [1]: {FIX} [1] {config.archive_url(1)}"
    for message in messages:
        html, text = parts(message)
        assert html_errata(html) == expected_html
        assert text_errata(text) == expected_text
        check_placement(html, 2, ">Errata</h2>", ">News</h2>")
        check_placement(text, 2, "Errata\n===", "News\n===")

    # B's archive carries the same section, in the same place, linking to A's archived file.
    archive = newsletter.root / "archive"
    archived_2 = (archive / "2.md").read_text(encoding="utf-8")
    assert f"## Errata\n\n- In [issue 1](1.md): {FIX}\n" in archived_2
    check_placement(archived_2, 2, "## Errata", "## News")
    assert (archive / "1.md").is_file()

    # A's archive is corrected and ends with a Corrections note linking to B; A's source is untouched.
    archived_1 = (archive / "1.md").read_text(encoding="utf-8")
    assert OLD_URL not in archived_1 and NEW_URL in archived_1
    head, corrections = archived_1.split("\n\n---\n\n## Corrections\n\n")
    updated = max(dt.date.today(), dt.date.fromisoformat(DATES[1])).isoformat()
    assert head + "\n" == archived_1_before.replace(OLD_URL, NEW_URL).replace(
        f'"updated": "{DATES[1]}"', f'"updated": "{updated}"'
    )
    assert corrections == (
        f"- {FIX} (recorded {dt.date.today()}, announced in [issue 2](2.md)) The archived text above includes the fix.\n"
    )
    assert source_1.read_bytes() == source_1_bytes
    check_feed(archive, {"1.md": "Issue 1", "2.md": "Issue 2"})

    # C carries nothing: the erratum was announced once, by B.
    html_3, text_3 = built(newsletter, 3)
    assert "Errata" not in html_3 and "Errata" not in text_3

    # Rebuilding B shows exactly the section it was sent with.
    html_2, text_2 = built(newsletter, 2)
    sent_html, sent_text = parts(messages[0])
    assert html_errata(html_2) == html_errata(sent_html) == expected_html
    assert text_errata(text_2) == text_errata(sent_text) == expected_text


# --- an erratum recorded while an issue is being sent ------------------------------------------


@pytest.mark.slow  # the console script in a subprocess
def test_erratum_recorded_while_an_issue_is_being_sent_goes_to_the_next_one(newsletter: Newsletter) -> None:
    config = newsletter.config()
    import_subscribers(newsletter, 6)
    for number in (1, 2, 3):
        write_issue(newsletter, number)
    set_config(newsletter, "send", "max_rate", 100.0)
    ok(run(newsletter, "send", "1"))
    ok(run(newsletter, "errata", "add", "1", "--text", "First correction."))

    # Issue 2's campaign starts, slowly; it is interrupted after its first message.
    set_config(newsletter, "send", "max_rate", 1.0)
    process = subprocess.Popen(
        [str(NEWSLETTER), "send", "2"],
        cwd=newsletter.root,
        env=cli_env(newsletter),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not sent_messages(newsletter, 2):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "issue 2's campaign never started"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1, (stdout, stderr)
    assert "campaign paused: interrupted" in stderr
    assert "issue 2: paused" in ok(run(newsletter, "status", "2")).stdout

    # While issue 2 is being sent, the editor records a second erratum.
    ok(run(newsletter, "errata", "add", "1", "--text", "Second correction."))
    assert [line.rsplit(" (", 1)[1] for line in errata_list(newsletter)] == [
        "announced in issue 2)",
        "pending)",
    ]

    first = f'<li>In <a href="{config.archive_url(1)}">issue 1</a>: First correction.</li>'
    second = f'<li>In <a href="{config.archive_url(1)}">issue 1</a>: Second correction.</li>'
    html_2, _ = built(newsletter, 2)
    assert html_errata(html_2) == f"<h2>Errata</h2><ul>{first}</ul>"
    html_3, text_3 = built(newsletter, 3)
    assert html_errata(html_3) == f"<h2>Errata</h2><ul>{second}</ul>"
    assert "First correction" not in text_3

    # Issue 2 resumes with its pinned content (no --allow-changed needed) and finishes without the newcomer.
    set_config(newsletter, "send", "max_rate", 100.0)
    result = ok(run(newsletter, "send", "2"))
    assert "issue 2: campaign complete" in result.stdout
    messages_2 = sent_messages(newsletter, 2)
    assert len(messages_2) == 6
    assert {html_errata(parts(m)[0]) for m in messages_2} == {f"<h2>Errata</h2><ul>{first}</ul>"}
    assert "Second correction" not in (newsletter.root / "archive" / "2.md").read_text(encoding="utf-8")

    # Issue 3 announces the second one.
    ok(run(newsletter, "send", "3"))
    assert {html_errata(parts(m)[0]) for m in sent_messages(newsletter, 3)} == {
        f"<h2>Errata</h2><ul>{second}</ul>"
    }
    assert [line.rsplit(" (", 1)[1] for line in errata_list(newsletter)] == [
        "announced in issue 2)",
        "announced in issue 3)",
    ]
    archived_1 = (newsletter.root / "archive" / "1.md").read_text(encoding="utf-8")
    assert "First correction. (recorded" in archived_1 and "announced in [issue 2](2.md)" in archived_1
    assert "Second correction. (recorded" in archived_1 and "announced in [issue 3](3.md)" in archived_1


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.slow  # the console script in a subprocess
def test_errata_add_refuses_bad_input_and_leaves_the_file_alone(newsletter: Newsletter) -> None:
    errata_file = newsletter.root / "issues" / "errata.yaml"
    write_issue(newsletter, 1)
    write_issue(newsletter, 2)

    line = one_line_error(run(newsletter, "errata", "add", "1", "--text", "Too early."))
    assert line == "error: issue 1 has not been sent: correct its source instead"
    assert not errata_file.exists()

    import_subscribers(newsletter, 2)
    ok(run(newsletter, "send", "1"))
    ok(run(newsletter, "errata", "add", "1", "--text", FIX, "--replace", OLD_URL, NEW_URL))
    before = errata_file.read_bytes()

    bad = [
        (("2", "--text", "Not sent yet."), "error: issue 2 has not been sent: correct its source instead"),
        (
            ("1", "--text", "x", "--replace", "https://example.org/not-in-issue-1", "y"),
            "error: --replace: 'https://example.org/not-in-issue-1' does not occur in issue 1",
        ),
        (("1", "--text", "   "), "error: --text must not be empty"),
        (("9", "--text", "No such issue."), "error: issues/9.md: no such issue"),
    ]
    for args, expected in bad:
        line = one_line_error(run(newsletter, "errata", "add", *args))
        assert line.startswith(expected), line
        assert errata_file.read_bytes() == before
    assert len(errata_list(newsletter)) == 1


ENTRY = "- id: {id}\n  issue: 1\n  recorded: 2026-11-03\n  text: Fine.\n"
HEADER = "# Corrections to issues already sent.\n# you may edit entries by hand.\n"


@pytest.mark.slow  # the console script in a subprocess
@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        pytest.param(
            ENTRY.format(id=5) + "- id: 7\n  issue: 1\n  recorded: 2026-11-03\n",
            "error: issues/errata.yaml: entry 7: text must be a non-empty string",
            id="missing-text",
        ),
        pytest.param(
            ENTRY.format(id=3) + "  note: typo\n",
            "error: issues/errata.yaml: entry 3: unknown field 'note'",
            id="unknown-field",
        ),
        pytest.param(
            "- id: 4\n  issue: 2\n  recorded: 2026-11-10\n  text: Hm.\n  announced_in: 2\n",
            "error: issues/errata.yaml: entry 4: announced_in must be the number of a later issue",
            id="announced-in-not-after",
        ),
        pytest.param(
            ENTRY.format(id=1) + ENTRY.format(id=2) + ENTRY.format(id=1),
            "error: issues/errata.yaml: entry 1: duplicate id",
            id="duplicate-id",
        ),
        pytest.param(
            ENTRY.format(id=1) + "- id: 2\n  issue: 1\n  text: colons: need quotes\n",
            "error: issues/errata.yaml:9: YAML error: mapping values are not allowed here",
            id="yaml-syntax",
        ),
        pytest.param(
            "- id: 6\n  issue: 1\n  recorded: last tuesday\n  text: x\n",
            "error: issues/errata.yaml: entry 6: recorded must be a date",
            id="bad-date",
        ),
        pytest.param(
            "- id: 8\n  issue: 1\n  recorded: 2026-11-03\n  text: x\n  replace: {old: a}\n",
            "error: issues/errata.yaml: entry 8: replace must be a mapping",
            id="replace-without-new",
        ),
        pytest.param("id: 1\nissue: 1\n", "error: issues/errata.yaml: must be a list", id="not-a-list"),
    ],
)
def test_hand_edited_errata_file_with_a_bad_entry_stops_the_build(
    newsletter: Newsletter, entries: str, expected: str
) -> None:
    write_issue(newsletter, 1)
    write_issue(newsletter, 2)
    errata_file = newsletter.root / "issues" / "errata.yaml"
    errata_file.write_text(HEADER + entries, encoding="utf-8")
    line = one_line_error(run(newsletter, "build", "2"))
    assert line.startswith(expected), line
    assert not (newsletter.root / "build" / "2").exists()


@pytest.mark.slow  # the console script in a subprocess
def test_hand_edited_errata_file_yaml_error_line_is_right(newsletter: Newsletter) -> None:
    """The reported line is the line that is wrong, in the file as the editor sees it."""
    write_issue(newsletter, 2)
    text = HEADER + ENTRY.format(id=1) + "- id: 2\n  issue: 1\n  text: colons: need quotes\n"
    (newsletter.root / "issues" / "errata.yaml").write_text(text, encoding="utf-8")
    line = one_line_error(run(newsletter, "build", "2"))
    number = int(re.match(r"error: issues/errata.yaml:(\d+):", line).group(1))  # type: ignore[union-attr]
    assert text.splitlines()[number - 1] == "  text: colons: need quotes"


# --- the archived Markdown of errata (library level) ---------------------------------------------


def test_archived_errata_heading_matches_the_sections_despite_code_blocks(newsletter: Newsletter) -> None:
    config = newsletter.config()
    newsletter.write_issue(
        2,
        textwrap.dedent(
            """\
            Install it first:

            ```sh
            # one command
            cargo install ferrule
            ```

            ## News

            News.
            """
        ),
    )
    erratum = Erratum(1, 1, dt.date(2026, 11, 24), "A fix.", announced_in=2)
    archived = issue_markdown(config, read_issue(config.paths.issues, 2), [erratum])
    assert "\n## Errata\n" in archived


def test_corrections_note_does_not_claim_a_fix_that_was_not_applied(newsletter: Newsletter) -> None:
    config = newsletter.config()
    write_issue(newsletter, 1)
    erratum = Erratum(
        1, 1, dt.date(2026, 11, 24), "A fix.", "https://example.org/not-there", NEW_URL, announced_in=2
    )
    archived = issue_markdown(config, read_issue(config.paths.issues, 1), [erratum])
    assert "includes the fix" not in archived or NEW_URL in archived


def test_marking_errata_announced_keeps_the_editors_comments(newsletter: Newsletter) -> None:
    config = newsletter.config()
    errata_file = newsletter.root / "issues" / "errata.yaml"
    errata_file.write_text(
        HEADER + "# Ada confirmed the new URL on 3 November.\n" + ENTRY.format(id=1), encoding="utf-8"
    )
    mark_announced(config, 2, [1])
    text = errata_file.read_text(encoding="utf-8")
    assert "announced_in: 2" in text
    assert "# Ada confirmed the new URL on 3 November." in text


# --- one YAML library: what is written is read back as written ----------------------------------

# Each would come back as something else under YAML 1.1 (PyYAML): a boolean, None, a number or a date.
YAML_1_1_SURPRISES = [
    "on",
    "off",
    "yes",
    "no",
    "y",
    "n",
    "True",
    "null",
    "~",
    "1.0",
    "1e3",
    "0x1F",
    "0o17",
    "2026-01-01",
    "12:30",
    "",
]


@pytest.mark.parametrize("value", YAML_1_1_SURPRISES)
def test_replacement_text_round_trips_through_errata_yaml(newsletter: Newsletter, value: str) -> None:
    config = newsletter.config()
    source_body = "The flag was OLD-FLAG."
    add_erratum(config, 1, f"The flag is {value or 'gone'}.", ("OLD-FLAG", value), source_body)
    [erratum] = load_errata(config)
    assert (erratum.replace_old, erratum.replace_new) == ("OLD-FLAG", value)


@pytest.mark.parametrize("value", YAML_1_1_SURPRISES[:-1])
def test_erratum_text_round_trips_through_errata_yaml(newsletter: Newsletter, value: str) -> None:
    config = newsletter.config()
    add_erratum(config, 1, value, None, "")
    mark_announced(config, 2, [1])  # a second write, a second read
    [erratum] = load_errata(config)
    assert (erratum.text, erratum.announced_in) == (value, 2)


def test_hand_written_yaml_1_1_booleans_are_read_as_words(newsletter: Newsletter) -> None:
    (newsletter.root / "issues" / "errata.yaml").write_text(
        HEADER + "- id: 1\n  issue: 1\n  recorded: 2026-11-03\n  text: yes\n  replace: {old: on, new: off}\n",
        encoding="utf-8",
    )
    [erratum] = load_errata(newsletter.config())
    assert (erratum.text, erratum.replace_old, erratum.replace_new) == ("yes", "on", "off")


# --- errata text in the archive: it cannot change the page around it ---------------------------


def test_errata_text_cannot_add_structure_or_html_to_the_archive(newsletter: Newsletter) -> None:
    config = newsletter.config()
    write_issue(newsletter, 1)
    write_issue(newsletter, 2)
    hostile = "# Pwned\n<script>alert(1)</script>\n---\n> quoted\n<!-- hide the rest"
    erratum = Erratum(1, 1, dt.date(2026, 11, 24), hostile, announced_in=2)
    archived_2 = issue_markdown(config, read_issue(config.paths.issues, 2), [erratum])
    archived_1 = issue_markdown(config, read_issue(config.paths.issues, 1), [erratum])
    for archived in (archived_1, archived_2):
        assert "<script" not in archived and "<!--" not in archived.split("\n", 1)[1]
        lines = [line for line in archived.splitlines() if "Pwned" in line]
        assert len(lines) == 1 and lines[0].startswith("- ")  # one list item, no heading, rule or quote
    assert (
        "- \\# Pwned &lt;script&gt;alert(1)&lt;/script&gt; --- &gt; quoted &lt;!-- hide the rest (recorded"
        in archived_1
    )
    # Without the erratum, the headings of issue 2 are those of its source, plus "Errata".
    headings = [line for line in archived_2.splitlines() if line.startswith("#")]
    assert headings == ["# Issue 2", "## Errata", "## News", "## Releases"]


@pytest.mark.parametrize(
    ("text", "replace", "expected"),
    [
        ("Hi %%email%%", None, "--text: '%%email%%' is a per-recipient placeholder"),
        ("See %%unsubscribe_url%%", None, "--text: '%%unsubscribe_url%%' is a per-recipient placeholder"),
        ("Fix.", ("OLD-FLAG", "%%email%%"), "--replace NEW: '%%email%%' is a per-recipient placeholder"),
        (
            "Fix.",
            ("OLD-FLAG", "<script>x</script>"),
            "--replace NEW: raw HTML would change the archived page",
        ),
        (
            "Fix.",
            ("OLD-FLAG", "a\n## Injected"),
            "--replace NEW: a line break would change the archived page",
        ),
        ("Bad \x1b[2J", None, "--text: U+001B (escape) at character 5 is not allowed; delete it"),
        ("Bidi \u202e", None, "--text: U+202E (right-to-left override) at character 6"),
        ("Nel \x85", None, "--text: U+0085 (next line) at character 5"),
        ("Fix.", ("OLD\u2066", "x"), "--replace OLD: U+2066 (left-to-right isolate) at character 4"),
    ],
)
def test_errata_add_refuses_what_would_be_filled_per_reader_or_break_later_builds(
    newsletter: Newsletter, text: str, replace: tuple[str, str] | None, expected: str
) -> None:
    with pytest.raises(ErrataError) as caught:
        add_erratum(newsletter.config(), 1, text, replace, "The flag was OLD-FLAG.")
    assert str(caught.value).startswith(expected), str(caught.value)
    assert not (newsletter.root / "issues" / "errata.yaml").exists()


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ('  text: "Bad \\e[2J"\n', "issues/errata.yaml:6:9: entry 1: text: U+001B (escape) at character 5"),
        ('  text: "\\u202Eevil"\n', "issues/errata.yaml:6:9: entry 1: text: U+202E (right-to-left override)"),
        ("  text: Dear %%email%%\n", "issues/errata.yaml:6:9: entry 1: text: '%%email%%' is a per-recipient"),
        (
            "  text: Fix.\n  replace:\n    old: a\n    new: <script>alert(1)</script>\n",
            "issues/errata.yaml:9:10: entry 1: replace new: raw HTML would change the archived page",
        ),
        (
            "  text: Bad \x1b[2J\n",
            "issues/errata.yaml:6: YAML error: special characters are not allowed: U+001B",
        ),
    ],
)
def test_hand_edited_errata_with_control_characters_or_placeholders_name_line_and_column(
    newsletter: Newsletter, entry: str, expected: str
) -> None:
    path = newsletter.root / "issues" / "errata.yaml"
    path.write_text(HEADER + "- id: 1\n  issue: 1\n  recorded: 2026-11-03\n" + entry, encoding="utf-8")
    with pytest.raises(ErrataError) as caught:
        load_errata(newsletter.config())
    message = str(caught.value).replace(f"{newsletter.root}/", "")
    assert message.startswith(expected), message
