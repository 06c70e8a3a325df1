"""The state database: one SQLite file, WAL mode, schema versioned by ``PRAGMA user_version``.

Subscribers and campaign ledgers live here, so a crashed send resumes from
what was committed, and ``newsletter status`` can read while a send runs.
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import StateError
from pipeline.text_rules import mailbox_key

log = logging.getLogger(__name__)

DB_NAME = "newsletter.sqlite3"

# A migration is SQL, or a function for what SQL cannot do alone; either runs in the upgrade's transaction.
Migration = str | Callable[[sqlite3.Connection], None]


def merge_mailbox_spellings(db: sqlite3.Connection) -> None:
    """Re-key every subscriber by :func:`pipeline.text_rules.mailbox_key` and merge the rows that turn out
    to be one mailbox (``u@bücher.example``, ``u@xn--bcher-kva.example``, a decomposed spelling): they
    were several subscribers and got several copies.

    The oldest row stays, with its spelling (links already mailed to it keep working). It takes the
    status most recently set on any of them (the mailbox owner's latest word; at the same second, the
    one that mails least; a pending row only when all are), the others' history and deliveries, and a
    status change saying what merged. Each row merged away is kept in ``merged_subscribers`` (its id,
    spelling and status): the lasting report of what merged, which also lets a link mailed to it work.

    The keys are computed in SQL (a function registered for this) into a temporary table, so a list of
    a million needs no more memory than the groups to merge."""
    db.execute(
        "CREATE TABLE merged_subscribers (old_id INTEGER PRIMARY KEY, subscriber_id INTEGER NOT NULL,"
        " email TEXT NOT NULL, status TEXT NOT NULL, merged_at TEXT NOT NULL)"
    )
    db.create_function("mailbox_key", 1, mailbox_key, deterministic=True)
    db.execute("CREATE TEMP TABLE new_keys (id INTEGER PRIMARY KEY, key TEXT NOT NULL)")
    db.execute("INSERT INTO new_keys SELECT id, mailbox_key(email) FROM subscribers")
    db.execute("CREATE INDEX temp.new_keys_by_key ON new_keys (key, id)")
    rows = db.cursor()
    rows.row_factory = sqlite3.Row  # whatever the connection's own (a plain one in the upgrade tests)
    stamp = now()
    for (key,) in db.execute("SELECT key FROM new_keys GROUP BY key HAVING COUNT(*) > 1").fetchall():
        group = rows.execute(
            "SELECT s.id, s.email, s.status, s.status_changed_at, s.confirmed_at FROM new_keys k"
            " JOIN subscribers s ON s.id = k.id WHERE k.key = ? ORDER BY s.id",
            (key,),
        ).fetchall()
        _merge(db, group, stamp)
    # Every key freed first: a row's new key may be another row's old one.
    db.execute("UPDATE subscribers SET email_key = '#' || id")
    db.execute(
        "UPDATE subscribers SET email_key = (SELECT key FROM new_keys WHERE new_keys.id = subscribers.id)"
    )
    db.execute("DROP TABLE temp.new_keys")


def _merge(db: sqlite3.Connection, group: list[sqlite3.Row], stamp: str) -> None:
    """Merge the rows of one mailbox into the first (the oldest)."""
    kept, others = group[0], group[1:]
    mails_least = ("complained", "bounced", "unsubscribed", "pending", "active")
    # Pending is nobody's word (anyone can type an address in): it decides only when all are pending.
    decided = [r for r in group if r["status"] != "pending"] or group
    final = max(decided, key=lambda r: (r["status_changed_at"], -mails_least.index(r["status"])))
    for other in others:
        db.execute(
            "INSERT INTO merged_subscribers (old_id, subscriber_id, email, status, merged_at) VALUES (?, ?, ?, ?, ?)",
            (other["id"], kept["id"], other["email"], other["status"], stamp),
        )
        db.execute(
            "UPDATE status_changes SET subscriber_id = ? WHERE subscriber_id = ?", (kept["id"], other["id"])
        )
        db.execute(
            "UPDATE OR IGNORE deliveries SET subscriber_id = ? WHERE subscriber_id = ?",
            (kept["id"], other["id"]),
        )
        # One mailbox, one welcome mail and one count per campaign for the breaker: the kept row's wins.
        for table in ("welcome_mails", "campaign_feedback"):
            db.execute(
                f"UPDATE OR IGNORE {table} SET subscriber_id = ? WHERE subscriber_id = ?",
                (kept["id"], other["id"]),
            )
            db.execute(f"DELETE FROM {table} WHERE subscriber_id = ?", (other["id"],))
        # What stays under the old id is a campaign that had both: never send the merged one again.
        db.execute(
            "UPDATE deliveries SET status = 'skipped', last_error = ? WHERE subscriber_id = ? AND status = 'queued'",
            (f"merged into subscriber {kept['id']}", other["id"]),
        )
        db.execute("DELETE FROM subscribers WHERE id = ?", (other["id"],))
    if final["status"] != kept["status"]:
        db.execute(
            "UPDATE subscribers SET status = ?, status_changed_at = ?, confirmed_at = COALESCE(confirmed_at, ?)"
            " WHERE id = ?",
            (final["status"], stamp, final["confirmed_at"], kept["id"]),
        )
    merged = ", ".join(f"s{o['id']} {o['email']} ({o['status']})" for o in others)
    db.execute(
        "INSERT INTO status_changes (subscriber_id, old_status, new_status, cause, changed_at) VALUES (?, ?, ?, ?, ?)",
        (kept["id"], kept["status"], final["status"], f"merged spellings of one mailbox: {merged}", stamp),
    )
    log.warning("merged subscribers %s into s%d %s: one mailbox", merged, kept["id"], kept["email"])


# Append only: a migration that has shipped is never edited, a new one is added.
MIGRATIONS: list[Migration] = [
    """
    CREATE TABLE subscribers (
        id INTEGER PRIMARY KEY,
        email TEXT NOT NULL,
        email_key TEXT NOT NULL UNIQUE,           -- casefolded: unique case-insensitively
        name TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL CHECK (status IN ('pending', 'active', 'unsubscribed', 'bounced', 'complained')),
        source TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL,
        confirmed_at TEXT,
        status_changed_at TEXT NOT NULL
    );
    CREATE INDEX subscribers_by_status ON subscribers (status, id);
    CREATE TABLE status_changes (
        id INTEGER PRIMARY KEY,
        subscriber_id INTEGER NOT NULL,
        old_status TEXT,
        new_status TEXT NOT NULL,
        cause TEXT NOT NULL,
        changed_at TEXT NOT NULL
    );
    CREATE INDEX status_changes_by_subscriber ON status_changes (subscriber_id);
    CREATE TABLE campaigns (
        id INTEGER PRIMARY KEY,
        issue INTEGER NOT NULL UNIQUE,
        content_hash TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('sending', 'paused', 'done')),
        transport TEXT NOT NULL,
        note TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        finished_at TEXT
    );
    CREATE TABLE deliveries (
        campaign_id INTEGER NOT NULL REFERENCES campaigns (id),
        subscriber_id INTEGER NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('queued', 'sending', 'sent', 'failed', 'skipped')),
        provider_id TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        updated_at TEXT,
        PRIMARY KEY (campaign_id, subscriber_id)
    ) WITHOUT ROWID;
    CREATE INDEX deliveries_by_status ON deliveries (campaign_id, status, subscriber_id);
    """,
    """
    CREATE TABLE IF NOT EXISTS link_cache (
        url TEXT PRIMARY KEY,
        ok INTEGER NOT NULL,
        status INTEGER,
        final_url TEXT,
        permanent_redirect INTEGER NOT NULL,
        error TEXT,
        checked_at TEXT NOT NULL
    );
    """,
    # Ids are never reused (AUTOINCREMENT): a delivery key made from a deleted subscriber's id
    # must not pass for a newcomer's. And campaigns keep a history of content changes.
    """
    CREATE TABLE subscribers_v3 (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        email TEXT NOT NULL,
        email_key TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL CHECK (status IN ('pending', 'active', 'unsubscribed', 'bounced', 'complained')),
        source TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL,
        confirmed_at TEXT,
        status_changed_at TEXT NOT NULL
    );
    INSERT INTO subscribers_v3 SELECT * FROM subscribers;
    DROP TABLE subscribers;
    ALTER TABLE subscribers_v3 RENAME TO subscribers;
    CREATE INDEX subscribers_by_status ON subscribers (status, id);
    DELETE FROM sqlite_sequence WHERE name = 'subscribers';
    INSERT INTO sqlite_sequence (name, seq)
        SELECT 'subscribers', MAX(COALESCE((SELECT MAX(id) FROM subscribers), 0),
                                  COALESCE((SELECT MAX(subscriber_id) FROM deliveries), 0),
                                  COALESCE((SELECT MAX(subscriber_id) FROM status_changes), 0));
    ALTER TABLE campaigns ADD COLUMN history TEXT NOT NULL DEFAULT '';
    """,
    # The subscriber web service: when a confirmation was last mailed (resend interval), transient
    # bounces counted, and every SNS message applied, by id, so a redelivery changes nothing.
    """
    ALTER TABLE subscribers ADD COLUMN confirmation_sent_at TEXT;
    ALTER TABLE subscribers ADD COLUMN soft_bounces INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE sns_messages (
        message_id TEXT PRIMARY KEY,
        topic_arn TEXT NOT NULL,
        kind TEXT NOT NULL,
        outcome TEXT NOT NULL,
        received_at TEXT NOT NULL
    );
    """,
    # Stop presses: a correction mailed to the readers of a sent issue is a campaign of its own,
    # keyed by (issue, erratum); the issue's own campaign has erratum 0. SQLite cannot drop the old
    # UNIQUE (issue), so the table is rebuilt; deliveries' foreign key is checked at COMMIT
    # (deferred), once every campaign row is back under the same id.
    """
    PRAGMA defer_foreign_keys = ON;
    CREATE TABLE campaigns_before_stop_press AS SELECT * FROM campaigns;
    DROP TABLE campaigns;
    CREATE TABLE campaigns (
        id INTEGER PRIMARY KEY,
        issue INTEGER NOT NULL,
        erratum INTEGER NOT NULL DEFAULT 0,       -- 0: the issue itself; else the erratum's stop press
        content_hash TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('sending', 'paused', 'done')),
        transport TEXT NOT NULL,
        note TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        finished_at TEXT,
        history TEXT NOT NULL DEFAULT '',
        UNIQUE (issue, erratum)
    );
    INSERT INTO campaigns (id, issue, content_hash, status, transport, note, created_at, updated_at, finished_at, history)
        SELECT id, issue, content_hash, status, transport, note, created_at, updated_at, finished_at, history
        FROM campaigns_before_stop_press;
    DROP TABLE campaigns_before_stop_press;
    """,
    # The welcome mail (pipeline/send/welcome.py): one row per subscriber who confirmed while a
    # welcome.md existed, marked 'sending' before the message is handed over, so it goes out at most once.
    """
    CREATE TABLE welcome_mails (
        subscriber_id INTEGER PRIMARY KEY,
        status TEXT NOT NULL CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'skipped')),
        attempts INTEGER NOT NULL DEFAULT 0,
        provider_id TEXT,
        last_error TEXT,
        queued_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX welcome_mails_by_status ON welcome_mails (status, subscriber_id);
    """,
    # The reputation breaker's counts: each hard bounce and complaint traced to the campaign that sent
    # the message (SES's mail.messageId is that delivery's provider_id), at most once per recipient and
    # kind. The key starts with the campaign and kind, so counting one campaign's bounces reads a range.
    """
    CREATE TABLE campaign_feedback (
        campaign_id INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('bounce', 'complaint')),
        subscriber_id INTEGER NOT NULL,
        received_at TEXT NOT NULL,
        PRIMARY KEY (campaign_id, kind, subscriber_id)
    ) WITHOUT ROWID;
    """,
    merge_mailbox_spellings,
]


def now() -> str:
    return stamp_at(time.time())


def stamp_at(seconds: float) -> str:
    """How every time is stored: UTC, ISO 8601, to the second."""
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds")


def open_db(state_dir: Path) -> sqlite3.Connection:
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / DB_NAME
    try:
        # isolation_level=None: we write BEGIN/COMMIT ourselves, so batches are explicit.
        connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA journal_mode = WAL")
        # FULL: a committed "sending" mark survives a power cut, so nobody is mailed twice.
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute("PRAGMA foreign_keys = ON")
        migrate(connection)
    except sqlite3.DatabaseError as error:
        hint = ": are it and its folder writable?" if "unable to open" in str(error) else ""
        raise StateError(f"{path}: cannot open the state database: {error}{hint}") from None
    return connection


def explain(error: sqlite3.OperationalError) -> str:
    """One line for an environment fault met while using the state database, saying what to do.
    SQLite undoes the transaction that failed, so nothing is ever half-written."""
    text = str(error)
    if "locked" in text or "busy" in text:
        return f"the state database is locked ({text}): another process held it too long; try again"
    if "readonly" in text or "read-only" in text:
        return (
            f"the state database is read-only ({text}): make {DB_NAME}, its -wal and -shm files "
            "and their folder writable for this user"
        )
    if "full" in text:
        return f"the disk holding the state database is full ({text}): free some space and try again"
    return f"the state database failed ({text})"


def migrate(connection: sqlite3.Connection) -> None:
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise StateError(
            f"the state database has schema version {version}, newer than this program knows "
            f"({len(MIGRATIONS)}): upgrade the pipeline"
        )
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        with transaction(connection):
            if callable(script):
                script(connection)
            else:
                for statement in _statements(script):
                    connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {number}")


def _statements(script: str) -> Iterator[str]:
    # executescript() would COMMIT on its own; run statement by statement inside our transaction.
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line.split("--", 1)[0] + ("\n" if "--" in line else "")
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""


@contextmanager
def transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    try:
        connection.execute("BEGIN IMMEDIATE")
        yield connection
        connection.execute("COMMIT")
    except BaseException:
        # Also when an interrupt lands between BEGIN and the body: never leave a transaction open.
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
