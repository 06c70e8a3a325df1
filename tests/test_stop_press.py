"""The stop press, end to end: ``newsletter errata add N --text ... --stop-press`` as the editor runs it.

A correction mailed at once to exactly the readers of a sent issue (its ledger's ``sent`` rows,
minus anyone who left since), as a campaign of its own: exactly once across a kill -9, the
archive copy corrected, and the next issue does not repeat it.
"""

from __future__ import annotations

import email
import os
import re
import signal
import sqlite3
from email import policy
from email.message import EmailMessage

import pytest

from pipeline.audience.subscribers import find, set_status
from pipeline.db import DB_NAME, open_db
from tests.archive.test_archive import cli_env, import_subscribers, ok, one_line_error, run, set_config
from tests.conftest import Newsletter
from tests.issue.test_errata import errata_list, sent_messages, write_issue
from tests.send.test_crash import SmtpSink, smtp_sink, use_smtp  # noqa: F401 (smtp_sink: its fixture)
from tests.support.cli import start_cli, wait_for

pytestmark = pytest.mark.slow  # the console script in a subprocess

FIX = "The release notes of ferrule 1.42 moved; the link now points to them."
OLD_URL = "https://example.org/releases/1.42-notes"
NEW_URL = "https://example.org/releases/1.42/notes"


def corrections(newsletter: Newsletter) -> list[EmailMessage]:
    """Every correction mail the maildir transport delivered."""
    found = []
    for path in sorted((newsletter.root / "outbox" / "new").iterdir()):
        message = email.message_from_bytes(path.read_bytes(), policy=policy.default)
        if str(message["Subject"]).startswith("[Correction]"):
            found.append(message)
    return found  # type: ignore[return-value]


def recipients(messages: list[EmailMessage]) -> list[str]:
    return sorted(message["To"].addresses[0].addr_spec for message in messages)


def text_of(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def outbox(newsletter: Newsletter) -> set[str]:
    folder = newsletter.root / "outbox" / "new"
    return {path.name for path in folder.iterdir()} if folder.is_dir() else set()


def set_subscriber(newsletter: Newsletter, address: str, status: str) -> None:
    db = open_db(newsletter.config().paths.state)
    try:
        row = find(db, address)
        assert row is not None
        set_status(db, row["id"], status, "test")
    finally:
        db.close()


def test_stop_press_reaches_the_issues_readers_only_corrects_the_archive_and_is_not_repeated(
    newsletter: Newsletter,
) -> None:
    config = newsletter.config()
    import_subscribers(newsletter, 4)
    for number in (1, 2):
        write_issue(newsletter, number)
    ok(run(newsletter, "send", "1"))
    readers = recipients(sent_messages(newsletter, 1))
    assert len(readers) == 4
    # Since issue 1: one reader unsubscribed, one bounced, and a newcomer joined.
    set_subscriber(newsletter, readers[0], "unsubscribed")
    set_subscriber(newsletter, readers[1], "bounced")
    ok(run(newsletter, "subscribers", "add", "newcomer@example.org"))

    result = ok(
        run(newsletter, "errata", "add", "1", "--text", FIX, "--replace", OLD_URL, NEW_URL, "--stop-press")
    )
    assert "2 sent, 0 failed" in result.stdout
    assert "erratum 1 recorded against issue 1 and mailed to its readers (stop press)" in result.stdout

    mails = corrections(newsletter)
    assert recipients(mails) == readers[2:]
    for mail in mails:
        assert mail["Subject"] == "[Correction] Issue 1"
        assert str(mail["List-Unsubscribe"]).strip().startswith(f"<{config.public_url}/unsubscribe/")
        text = text_of(mail)
        assert FIX in text and config.archive_url(1) in text
        assert re.search(rf"{re.escape(OLD_URL)}\S*\s+now\s+reads\s+\S*{re.escape(NEW_URL)}", text), text
        assert "Unsubscribe: " in text

    # The archive copy of issue 1 is corrected and tells of the stop press, with its date.
    archived = (newsletter.root / "archive" / "1.md").read_text(encoding="utf-8")
    assert OLD_URL not in archived and NEW_URL in archived
    stop_press_date = errata_list(newsletter)[0].rsplit("stop press on ", 1)[1].rstrip(")")
    assert f"mailed to this issue's readers as a stop press on {stop_press_date}" in archived

    # The next issue does not repeat it.
    ok(run(newsletter, "send", "2"))
    for message in sent_messages(newsletter, 2):
        assert "Errata" not in text_of(message) and FIX not in text_of(message)

    # `status` shows the stop press beside the issue's campaign.
    status = ok(run(newsletter, "status", "1")).stdout
    assert "stop press (erratum 1): done, 2/2 handled; sent 2" in status

    # Running the same command again sends nothing and records nothing.
    again = ok(
        run(newsletter, "errata", "add", "1", "--text", FIX, "--replace", OLD_URL, NEW_URL, "--stop-press")
    )
    assert "already sent" in again.stdout
    assert len(corrections(newsletter)) == 2 and len(errata_list(newsletter)) == 1


def test_stop_press_subject_test_copy_and_dry_run_change_nothing(newsletter: Newsletter) -> None:
    import_subscribers(newsletter, 2)
    write_issue(newsletter, 1)
    ok(run(newsletter, "send", "1"))
    errata_file = newsletter.root / "issues" / "errata.yaml"

    dry = ok(run(newsletter, "errata", "add", "1", "--text", FIX, "--stop-press", "--dry-run"))
    assert "DRY RUN: would send a stop press for issue 1 (a correction) to 2 recipient(s)" in dry.stdout
    assert not corrections(newsletter) and not errata_file.exists()

    ok(
        run(
            newsletter, "errata", "add", "1", "--text", FIX, "--stop-press", "--subject", "Oops",
            "--to", "editor@example.org",
        )
    )  # fmt: skip
    assert not corrections(newsletter)  # --subject replaced "[Correction] Issue 1"
    copies = [
        email.message_from_bytes(p.read_bytes(), policy=policy.default)
        for p in (newsletter.root / "outbox" / "new").iterdir()
    ]
    test_copy = [m for m in copies if m["Subject"] == "Oops"]
    assert len(test_copy) == 1 and test_copy[0]["To"] == "editor@example.org"
    assert not errata_file.exists()
    db = sqlite3.connect(newsletter.root / "state" / DB_NAME)
    try:
        assert db.execute("SELECT COUNT(*) FROM campaigns WHERE erratum > 0").fetchone()[0] == 0
    finally:
        db.close()


def test_stop_press_bad_input_is_one_line_and_changes_nothing(newsletter: Newsletter) -> None:
    import_subscribers(newsletter, 2)
    for number in (1, 2, 3):
        write_issue(newsletter, number)
    ok(run(newsletter, "send", "1"))
    ok(run(newsletter, "send", "3"))
    # Issue 3's campaign is left paused, as an interruption leaves it.
    db = sqlite3.connect(newsletter.root / "state" / DB_NAME)
    db.execute("UPDATE campaigns SET status = 'paused' WHERE issue = 3")
    db.commit()
    db.close()
    errata_file = newsletter.root / "issues" / "errata.yaml"
    archive_before = (newsletter.root / "archive" / "1.md").read_bytes()
    mailed = outbox(newsletter)

    cases = [
        (("1", "--text", "   ", "--stop-press"), "error: --text must not be empty"),
        (("9", "--text", FIX, "--stop-press"), "error: issues/9.md: no such issue"),
        (
            ("2", "--text", FIX, "--stop-press"),
            "error: issue 2 was never sent: there is nobody to send a stop press to",
        ),
        (
            ("3", "--text", FIX, "--stop-press"),
            "error: issue 3's campaign is still running (paused): finish it with `newsletter send 3` before a stop press",
        ),
        (("1", "--text", FIX, "--stop-press", "--subject", " "), "error: --subject must be one line of text"),
        (("1", "--text", FIX, "--subject", "x"), "error: --subject, --to, --dry-run, --yes"),
        (("1", "--text", "\x1b[31mred", "--stop-press"), "error: --text: U+001B (escape) at character 1"),
    ]
    for args, expected in cases:
        line = one_line_error(run(newsletter, "errata", "add", *args))
        assert line.startswith(expected), line
        assert not errata_file.exists()
        assert outbox(newsletter) == mailed
        assert (newsletter.root / "archive" / "1.md").read_bytes() == archive_before


def test_stop_press_killed_part_way_resumes_and_mails_each_reader_exactly_once(
    newsletter: Newsletter,
) -> None:
    import_subscribers(newsletter, 12)
    write_issue(newsletter, 1)
    ok(run(newsletter, "send", "1"))
    set_config(newsletter, "send", "max_rate", 3.0)
    set_config(newsletter, "send", "concurrency", 1)
    args = ("errata", "add", "1", "--text", FIX, "--stop-press")
    sender = start_cli(newsletter.root, *args, env=cli_env(newsletter))
    try:
        wait_for(lambda: len(corrections(newsletter)) >= 2, "two correction mails", sender)
        os.kill(sender.pid, signal.SIGKILL)
        sender.communicate(timeout=60)
    finally:
        if sender.poll() is None:
            sender.kill()
    assert sender.returncode == -signal.SIGKILL
    before = len(corrections(newsletter))
    assert before < 12, "the kill came too late: nothing left to send"

    set_config(newsletter, "send", "max_rate", 100.0)
    result = ok(run(newsletter, *args))
    assert "erratum 1 recorded against issue 1" in result.stdout
    mails = corrections(newsletter)
    assert recipients(mails) == recipients(sent_messages(newsletter, 1))  # all 12, none twice
    assert len(errata_list(newsletter)) == 1


def test_stop_press_through_smtp_asks_like_send_and_reaches_the_readers(
    newsletter: Newsletter,
    smtp_sink: SmtpSink,  # noqa: F811 (the fixture imported above)
) -> None:
    import_subscribers(newsletter, 3)
    write_issue(newsletter, 1)
    ok(run(newsletter, "send", "1"))
    readers = recipients(sent_messages(newsletter, 1))
    use_smtp(newsletter, smtp_sink)
    errata_file = newsletter.root / "issues" / "errata.yaml"

    # No terminal and no --yes: refused as `send` refuses, before anything is recorded.
    line = one_line_error(run(newsletter, "errata", "add", "1", "--text", FIX, "--stop-press"))
    assert line == "error: refusing to send without confirmation: run it in a terminal or pass --yes"
    assert not errata_file.exists() and smtp_sink.total() == 0

    result = ok(run(newsletter, "errata", "add", "1", "--text", FIX, "--stop-press", "--yes"))
    assert "Send a stop press for issue 1 (a correction) to 3 recipient(s) via smtp" in result.stdout
    wait_for(lambda: smtp_sink.total() == 3, "three messages at the SMTP server")
    assert sorted(smtp_sink.snapshot()) == readers and max(smtp_sink.snapshot().values()) == 1
