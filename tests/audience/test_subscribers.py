from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import pytest

from pipeline.audience.subscribers import SubscriberError, add, counts, export_csv, find, import_csv, remove
from pipeline.db import MIGRATIONS, open_db
from pipeline.errors import NewsletterError


@pytest.fixture
def db(tmp_path: Path) -> sqlite3.Connection:
    return open_db(tmp_path / "state")


def write(tmp_path: Path, text: str, name: str = "list.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_schema_is_versioned_and_wal(db: sqlite3.Connection, tmp_path: Path) -> None:
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(NewsletterError, match="newer than this program knows"):
        open_db(tmp_path / "state")


def test_import_reports_added_updated_skipped_and_rejected_by_line(
    db: sqlite3.Connection, tmp_path: Path
) -> None:
    add(db, "gone@example.org", status="active")
    db.execute("UPDATE subscribers SET status = 'unsubscribed'")
    path = write(
        tmp_path,
        "email,name,status\n"
        "ada@example.org,Ada,\n"  # line 2
        "not-an-address,X,\n"  # line 3
        "ADA@example.org,Ada Lovelace,\n"  # line 4: same address, other case -> update
        "gone@example.org,,active\n"  # line 5: unsubscribed earlier
        "bob@example.org,,sleeping\n"  # line 6: bad status
        ",nobody,\n"  # line 7
        "carl@example.org,Carl\n",  # line 8: short row, fine
    )
    report = import_csv(db, path)
    assert (report.added, report.updated, report.unchanged) == (2, 1, 0)
    assert [line for line, _ in report.skipped] == [5]
    assert [line for line, _ in report.rejected] == [3, 6, 7]
    assert "An email address must have an @-sign" in report.rejected[0][1]
    assert "unknown status 'sleeping'" in report.rejected[1][1]
    ada = find(db, "ada@EXAMPLE.org")
    assert ada is not None and ada["email"] == "ada@example.org" and ada["name"] == "Ada Lovelace"
    assert find(db, "gone@example.org")["status"] == "unsubscribed"  # type: ignore[index]


def test_force_reactivates_and_history_is_kept(db: sqlite3.Connection, tmp_path: Path) -> None:
    add(db, "gone@example.org")
    db.execute("UPDATE subscribers SET status = 'bounced'")
    report = import_csv(db, write(tmp_path, "email\ngone@example.org\n"), force=True)
    assert report.updated == 1
    history = db.execute("SELECT old_status, new_status, cause FROM status_changes ORDER BY id").fetchall()
    assert [tuple(row) for row in history][-1][:2] == ("bounced", "active")


def test_mailchimp_and_tinyletter_exports(db: sqlite3.Connection, tmp_path: Path) -> None:
    mailchimp = write(
        tmp_path, "Email Address,First Name,Last Name,MEMBER_RATING\nz@example.org,Zoë,Ñuñez,2\n", "mc.csv"
    )
    assert import_csv(db, mailchimp).added == 1
    assert find(db, "z@example.org")["name"] == "Zoë Ñuñez"  # type: ignore[index]
    tinyletter = write(tmp_path, "\ufeffEmail Address,Name,Status\ny@example.org,Y,subscribed\n", "tl.csv")
    assert import_csv(db, tinyletter).added == 1
    assert find(db, "y@example.org")["status"] == "active"  # type: ignore[index]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b"name,status\nx,active\n", r"no 'email' \(or 'Email Address'\) column"),
        ("email\ncaf\u00e9@example.org\n".encode("latin-1"), "not valid UTF-8"),
    ],
)
def test_unusable_files_fail_whole_and_write_nothing(
    db: sqlite3.Connection, tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(SubscriberError, match=message):
        import_csv(db, path)
    assert sum(counts(db).values()) == 0


def test_control_characters_rejected(db: sqlite3.Connection, tmp_path: Path) -> None:
    report = import_csv(
        db, write(tmp_path, 'email,name\n"a@example.org\r\nBcc: x@example.org",A\nb@example.org,"B\x07"\n')
    )
    assert report.added == 0 and len(report.rejected) == 2


def test_add_remove_export(db: sqlite3.Connection) -> None:
    add(db, "a@example.org", "A")
    with pytest.raises(SubscriberError, match="already on the list"):
        add(db, "A@example.org")
    with pytest.raises(SubscriberError, match=r"not a valid|must have"):
        add(db, "nope")
    out = io.StringIO()
    assert export_csv(db, out) == 1
    assert out.getvalue().splitlines()[1].startswith("a@example.org,A,active,cli,")
    remove(db, "a@example.org")
    assert counts(db)["active"] == 0
    with pytest.raises(SubscriberError, match="not on the list"):
        remove(db, "a@example.org")


def test_non_ascii_mailbox_names_are_rejected_domains_accepted(
    db: sqlite3.Connection, tmp_path: Path
) -> None:
    report = import_csv(db, write(tmp_path, "email\nzoë@example.org\nanna@bücher.example\n"))
    assert report.added == 1 and report.rejected[0][0] == 2
