"""Reading what a send left behind: the ledger (campaigns and deliveries tables) and the maildir.

Everything here opens its own connection and closes it, so it can be called while a send runs in
another process (the database is in WAL mode: readers never block the writer).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from pipeline.db import DB_NAME
from tests.support.newsletter import Newsletter

STATUSES = ("queued", "sending", "sent", "failed", "skipped")


def state_path(newsletter: Newsletter) -> Path:
    return newsletter.root / "state" / DB_NAME


def state_db(newsletter: Newsletter) -> sqlite3.Connection:
    """A writable connection to the folder's state database (the caller closes it)."""
    return sqlite3.connect(state_path(newsletter), timeout=30)


def read_only(newsletter: Newsletter) -> sqlite3.Connection:
    """A read-only connection, rows by name: a test that only looks can never change the ledger."""
    db = sqlite3.connect(f"file:{state_path(newsletter)}?mode=ro", uri=True, timeout=30)
    db.row_factory = sqlite3.Row
    return db


def statuses_by_subscriber(newsletter: Newsletter, issue: int = 1) -> dict[str, set[int]]:
    """Subscriber ids by delivery status for ``issue``'s campaign (every status present, maybe empty)."""
    db = state_db(newsletter)
    try:
        rows = db.execute(
            "SELECT d.status, d.subscriber_id FROM deliveries d JOIN campaigns c ON c.id = d.campaign_id"
            " WHERE c.issue = ?",
            (issue,),
        ).fetchall()
    finally:
        db.close()
    found: dict[str, set[int]] = {status: set() for status in STATUSES}
    for status, subscriber in rows:
        found[status].add(subscriber)
    return found


def deliveries_by_address(newsletter: Newsletter, issue: int = 1) -> dict[str, sqlite3.Row]:
    """``issue``'s delivery rows (and the subscriber's email), by address."""
    db = read_only(newsletter)
    try:
        rows = db.execute(
            "SELECT s.email, d.* FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id"
            " JOIN campaigns c ON c.id = d.campaign_id WHERE c.issue = ?",
            (issue,),
        ).fetchall()
    finally:
        db.close()
    return {row["email"]: row for row in rows}


def delivery_count(newsletter: Newsletter, status: str = "sent") -> int:
    """How many deliveries (all campaigns) have ``status``; 0 before the database exists."""
    if not state_path(newsletter).exists():
        return 0
    db = read_only(newsletter)
    try:
        return int(db.execute("SELECT COUNT(*) FROM deliveries WHERE status = ?", (status,)).fetchone()[0])
    except sqlite3.OperationalError:  # the send has not created the tables yet
        return 0
    finally:
        db.close()


def outbox(newsletter: Newsletter) -> Path:
    return newsletter.root / "outbox"


def maildir_count(newsletter: Newsletter) -> int:
    """Messages in the outbox maildir, read (cur/) or not (new/); tmp/ (half written) not counted."""
    total = 0
    for folder in ("new", "cur"):
        try:
            total += len(os.listdir(outbox(newsletter) / folder))
        except FileNotFoundError:
            pass
    return total
