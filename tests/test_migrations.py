"""Upgrading a state database written by an older version of the program.

For every past schema version k, a database is built the way that version left it (migrations
1..k, ``PRAGMA user_version = k``) and filled with rows of the kinds that version had. The current
``open_db`` must then upgrade it: every row still there, unchanged, and a schema identical to that
of a database created fresh today.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import unicodedata
from pathlib import Path

import pytest

from pipeline.db import DB_NAME, MIGRATIONS, open_db
from tests.support.cli import invoke_cli
from tests.support.newsletter import Newsletter

STAMP = "2025-01-02T03:04:05+00:00"


def build_old(state: Path, version: int) -> None:
    """A database as version ``version`` of the schema left it."""
    state.mkdir(parents=True)
    db = sqlite3.connect(state / DB_NAME)
    try:
        for script in MIGRATIONS[:version]:
            if callable(script):
                script(db)  # a data migration: a function of the connection
            else:
                db.executescript(script)
        db.execute(f"PRAGMA user_version = {version}")
        db.commit()
    finally:
        db.close()


def fill(state: Path, version: int) -> None:
    """Rows of every table ``version`` has: the ones the upgrade must carry over."""
    db = sqlite3.connect(state / DB_NAME)
    try:
        db.executemany(
            "INSERT INTO subscribers (id, email, email_key, name, status, source, created_at, confirmed_at,"
            " status_changed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (1, "Ada@Example.org", "ada@example.org", "Ada", "active", "csv", STAMP, STAMP, STAMP),
                (
                    2,
                    "zoë@exämple.org",
                    "zoë@exämple.org",
                    "Zoë Ñuñez",
                    "unsubscribed",
                    "web",
                    STAMP,
                    None,
                    STAMP,
                ),
                (3, "cy@example.org", "cy@example.org", "", "bounced", "", STAMP, STAMP, STAMP),
                (4, "new@example.org", "new@example.org", "", "pending", "web", STAMP, None, STAMP),
            ],
        )
        # Subscribers 5 and 6 came and were deleted (6 after being mailed): their ids must never be given
        # to a newcomer (v3 made ids AUTOINCREMENT, seeded from the highest id ever referenced).
        db.executemany(
            "INSERT INTO subscribers (id, email, email_key, status, created_at, status_changed_at)"
            " VALUES (?, ?, ?, 'active', ?, ?)",
            [(n, f"gone{n}@example.org", f"gone{n}@example.org", STAMP, STAMP) for n in (5, 6)],
        )
        db.execute("DELETE FROM subscribers WHERE id IN (5, 6)")
        db.executemany(
            "INSERT INTO status_changes (subscriber_id, old_status, new_status, cause, changed_at)"
            " VALUES (?, ?, ?, ?, ?)",
            [(2, "active", "unsubscribed", "link", STAMP), (3, "active", "bounced", "ses", STAMP)],
        )
        db.execute(
            "INSERT INTO campaigns (id, issue, content_hash, status, transport, note, created_at, updated_at,"
            " finished_at) VALUES (1, 17, 'abc123', 'paused', 'ses', 'interrupted', ?, ?, NULL)",
            (STAMP, STAMP),
        )
        db.executemany(
            "INSERT INTO deliveries (campaign_id, subscriber_id, status, provider_id, attempts, last_error,"
            " updated_at) VALUES (1, ?, ?, ?, ?, ?, ?)",
            [
                (1, "sent", "0100-abc", 1, None, STAMP),
                (3, "failed", None, 3, "550 no such user", STAMP),
                (4, "queued", None, 0, None, None),
                (6, "sending", None, 1, None, STAMP),
            ],
        )
        if version >= 2:
            db.execute(
                "INSERT INTO link_cache (url, ok, status, final_url, permanent_redirect, error, checked_at)"
                " VALUES ('https://example.org/', 1, 301, 'https://example.org/new', 1, NULL, ?)",
                (STAMP,),
            )
        if version >= 3:
            db.execute("UPDATE campaigns SET history = 'abc000 -> abc123' WHERE id = 1")
        # Tables added later, by name (not by version: migrations from parallel branches merge in any order).
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "sns_messages" in tables:
            db.execute(
                "INSERT INTO sns_messages (message_id, topic_arn, kind, outcome, received_at)"
                " VALUES ('m-1', 'arn:aws:sns:us-east-1:123456789012:ses', 'Bounce', 'bounced', ?)",
                (STAMP,),
            )
        if "welcome_mails" in tables:
            db.execute(
                "INSERT INTO welcome_mails (subscriber_id, status, attempts, provider_id, queued_at, updated_at)"
                " VALUES (1, 'sent', 1, 'welcome-s1', ?, ?)",
                (STAMP, STAMP),
            )
        if "campaign_feedback" in tables:
            db.execute(
                "INSERT INTO campaign_feedback (campaign_id, kind, subscriber_id, received_at)"
                " VALUES (1, 'bounce', 3, ?)",
                (STAMP,),
            )
        if "merged_subscribers" in tables:
            db.execute(
                "INSERT INTO merged_subscribers (old_id, subscriber_id, email, status, merged_at)"
                " VALUES (6, 1, 'ada@EXAMPLE.org', 'active', ?)",
                (STAMP,),
            )
        db.commit()
    finally:
        db.close()


def contents(db: sqlite3.Connection, tables: dict[str, list[str]]) -> dict[str, list[tuple[object, ...]]]:
    """Every row of ``tables``, only the columns listed (those the old version had), in a stable order."""
    return {
        table: [tuple(row) for row in db.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY 1, 2")]
        for table, columns in tables.items()
    }


def columns_of(db: sqlite3.Connection) -> dict[str, list[str]]:
    tables = [
        name
        for (name,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    return {table: [row[1] for row in db.execute(f"PRAGMA table_info({table})")] for table in tables}


def schema(db: sqlite3.Connection) -> set[tuple[str, str, str]]:
    """sqlite_master, normalised: comments, quotes around names and spacing do not count."""

    def normal(sql: str | None) -> str:
        sql = re.sub(r"--[^\n]*", "", sql or "")
        sql = re.sub(r'"(\w+)"', r"\1", sql)
        return re.sub(r"\s+", " ", re.sub(r"\s*([(),])\s*", r"\1", sql)).strip()

    rows = db.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_autoindex%'")
    return {(kind, name, normal(sql)) for kind, name, sql in rows}


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> tuple[set[tuple[str, str, str]], int]:
    db = open_db(tmp_path_factory.mktemp("fresh") / "state")
    try:
        return schema(db), db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


def test_the_current_version_is_the_number_of_migrations(
    fresh: tuple[set[tuple[str, str, str]], int],
) -> None:
    assert fresh[1] == len(MIGRATIONS)


@pytest.mark.parametrize("version", range(1, len(MIGRATIONS)), ids=lambda v: f"from-v{v}")
def test_an_old_database_is_upgraded_keeping_every_row(
    tmp_path: Path, version: int, fresh: tuple[set[tuple[str, str, str]], int]
) -> None:
    state = tmp_path / "state"
    build_old(state, version)
    fill(state, version)
    old = sqlite3.connect(state / DB_NAME)
    try:
        old_columns = columns_of(old)
        before = contents(old, old_columns)
        max_id = max(old.execute("SELECT MAX(subscriber_id) FROM deliveries").fetchone()[0], 4)
    finally:
        old.close()
    assert all(before.values()), "every table of the old version should have rows to carry over"

    db = open_db(state)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert contents(db, old_columns) == before, "rows changed or lost in the upgrade"
        assert schema(db) == fresh[0], "the upgraded schema differs from a fresh database's"
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # Columns added since: their defaults, for the old rows.
        new_columns = {
            t: [c for c in cs if c not in old_columns.get(t, [])] for t, cs in columns_of(db).items()
        }
        if "soft_bounces" in new_columns["subscribers"]:
            assert {n for (n,) in db.execute("SELECT soft_bounces FROM subscribers")} == {0}
        if "history" in new_columns["campaigns"]:
            assert db.execute("SELECT history FROM campaigns").fetchone()[0] == ""
        # A newcomer never gets the id of someone deleted who was mailed (AUTOINCREMENT, seeded in v3).
        db.execute(
            "INSERT INTO subscribers (email, email_key, status, created_at, status_changed_at)"
            " VALUES ('late@example.org', 'late@example.org', 'active', ?, ?)",
            (STAMP, STAMP),
        )
        newcomer = db.execute("SELECT id FROM subscribers WHERE email_key = 'late@example.org'").fetchone()[0]
        assert newcomer > max_id
    finally:
        db.close()
    # And opening it again changes nothing.
    again = open_db(state)
    try:
        assert schema(again) == fresh[0]
        assert again.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    finally:
        again.close()


def test_a_database_newer_than_the_program_is_refused(tmp_path: Path) -> None:
    from pipeline.errors import StateError

    state = tmp_path / "state"
    build_old(state, len(MIGRATIONS))
    db = sqlite3.connect(state / DB_NAME)
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(StateError, match="newer than this program knows"):
        open_db(state)


def test_spellings_of_one_mailbox_are_merged_into_the_oldest_row_keeping_history(
    newsletter: Newsletter, caplog: pytest.LogCaptureFixture
) -> None:
    from pipeline.audience.signup import by_id
    from pipeline.audience.tokens import make_token, verify_token
    from pipeline.db import merge_mailbox_spellings

    state = newsletter.config().paths.state
    build_old(state, MIGRATIONS.index(merge_mailbox_spellings))
    decomposed = unicodedata.normalize("NFD", "u@bücher.example")
    later, latest = "2025-02-01T00:00:00+00:00", "2025-03-01T00:00:00+00:00"
    db = sqlite3.connect(state / DB_NAME)
    # Keyed the old way (casefold only): three subscribers for one mailbox, plus an unrelated one.
    db.executemany(
        "INSERT INTO subscribers (id, email, email_key, name, status, created_at, confirmed_at, status_changed_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (1, "u@bücher.example", "u@bücher.example", "U", "active", STAMP, STAMP, STAMP),
            (
                2,
                "U@xn--bcher-kva.example",
                "u@xn--bcher-kva.example",
                "",
                "unsubscribed",
                later,
                later,
                latest,
            ),
            (3, decomposed, decomposed, "", "pending", latest, None, latest),
            (4, "other@example.org", "other@example.org", "", "active", STAMP, STAMP, STAMP),
        ],
    )
    db.executemany(
        "INSERT INTO status_changes (subscriber_id, old_status, new_status, cause, changed_at) VALUES (?, ?, ?, ?, ?)",
        [(1, None, "active", "import", STAMP), (2, "active", "unsubscribed", "link", latest)],
    )
    db.execute(
        "INSERT INTO campaigns (id, issue, content_hash, status, transport, created_at, updated_at)"
        " VALUES (1, 17, 'abc', 'paused', 'ses', ?, ?)",
        (STAMP, STAMP),
    )
    db.executemany(
        "INSERT INTO deliveries (campaign_id, subscriber_id, status) VALUES (1, ?, ?)",
        [(1, "sent"), (2, "queued"), (4, "queued")],
    )
    db.commit()
    db.close()

    with caplog.at_level(logging.WARNING):
        db = open_db(state)
    rows = [
        tuple(r) for r in db.execute("SELECT id, email, email_key, name, status FROM subscribers ORDER BY id")
    ]
    assert rows == [
        # The oldest row stays, with its spelling; the mailbox owner's latest word (unsubscribed) holds.
        (1, "u@bücher.example", "u@xn--bcher-kva.example", "U", "unsubscribed"),
        (4, "other@example.org", "other@example.org", "", "active"),
    ]
    merged = [
        tuple(r) for r in db.execute("SELECT old_id, subscriber_id, email, status FROM merged_subscribers")
    ]
    assert merged == [(2, 1, "U@xn--bcher-kva.example", "unsubscribed"), (3, 1, decomposed, "pending")]
    merged_at = db.execute("SELECT merged_at FROM merged_subscribers").fetchone()[0]
    history = [
        tuple(r)
        for r in db.execute("SELECT subscriber_id, new_status, cause FROM status_changes ORDER BY id")
    ]
    assert history[:2] == [(1, "active", "import"), (1, "unsubscribed", "link")]
    assert history[2][:2] == (1, "unsubscribed") and history[2][2].startswith(
        "merged spellings of one mailbox: s2"
    )
    # Both had a delivery in campaign 1: the merged one's stays (history) but is never sent.
    deliveries = [tuple(r) for r in db.execute("SELECT subscriber_id, status FROM deliveries ORDER BY 1")]
    assert deliveries == [(1, "sent"), (2, "skipped"), (4, "queued")]
    reported = [r.getMessage() for r in caplog.records if "merged subscribers" in r.getMessage()]
    assert len(reported) == 1 and "s2 U@xn--bcher-kva.example (unsubscribed)" in reported[0]
    # An unsubscribe link mailed to a merged row still verifies, and acts on the row it merged into.
    secret = b"a-secret-for-the-test-only"
    list_id = "Crate Notes <crate-notes.example.org>"
    token = make_token(secret, "unsubscribe", 2, "U@xn--bcher-kva.example", list_id=list_id)
    row = by_id(db, 2)
    assert row is not None and row["id"] == 1
    assert verify_token(secret, "unsubscribe", token, row["email"], list_id=list_id)
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    db.close()
    # The lasting report, for the editor.
    listed = invoke_cli(newsletter.config_path, "subscribers", "merged")
    assert listed.stdout.splitlines() == [
        f"s2 U@xn--bcher-kva.example (unsubscribed) merged into s1 u@bücher.example on {merged_at}",
        f"s3 {decomposed} (pending) merged into s1 u@bücher.example on {merged_at}",
    ]
    # A deletion request for the mailbox, in any spelling, erases the merged rows' traces too.
    from pipeline.audience.subscribers import remove

    remove(open_db(state), "U@XN--BCHER-KVA.example")
    db = open_db(state)
    for table, column in (
        ("merged_subscribers", "subscriber_id"),
        ("deliveries", "subscriber_id"),
        ("status_changes", "subscriber_id"),
    ):
        left = {n for (n,) in db.execute(f"SELECT DISTINCT {column} FROM {table}")}
        assert left <= {4}, (table, left)  # only the unrelated subscriber's
    assert db.execute("SELECT COUNT(*) FROM merged_subscribers").fetchone()[0] == 0
    db.close()
