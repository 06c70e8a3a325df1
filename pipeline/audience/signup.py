"""Double opt-in as the list sees it: sign-up requests, confirmation and unsubscribe by link.

The web service (``pipeline.web``) decides what to show and mail; these functions make the
state changes, each in one short transaction.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass

from pipeline.audience.subscribers import find, insert, set_status
from pipeline.db import stamp_at, transaction


@dataclass(frozen=True)
class Signup:
    """What a sign-up request led to; ``mail`` says which message to send, if any."""

    subscriber_id: int
    email: str
    status: str
    """The status before: "new" for an address that was not on the list (now pending)."""
    mail: str | None
    """"confirm" (new, pending or coming back after unsubscribing), "already" (active), or None."""
    previous_sent_at: str | None
    """confirmation_sent_at before this request: put back if the mail cannot be sent."""


def _seconds(stamp: str | None) -> float | None:
    return dt.datetime.fromisoformat(stamp).timestamp() if stamp else None


def request_signup(
    db: sqlite3.Connection, email: str, name: str, *, at: float, resend_seconds: float, source: str = "web"
) -> Signup:
    """Record a sign-up (already validated) and decide what to mail, at most once per ``resend_seconds``.

    A new address is added as ``pending``; nobody's status changes here: an unsubscribed
    reader stays unsubscribed until they click the link, so a stranger typing their
    address changes nothing. Bounced and complained addresses are never mailed.
    """
    sent_at = stamp_at(at)
    with transaction(db):
        row = find(db, email)
        if row is None:
            # Added at the moment its link is sent: the link is then not older than the status.
            subscriber_id = insert(db, email, name, "pending", source, stamp=sent_at)
            db.execute(
                "UPDATE subscribers SET confirmation_sent_at = ? WHERE id = ?", (sent_at, subscriber_id)
            )
            return Signup(subscriber_id, email, "new", "confirm", None)
        status, previous = row["status"], row["confirmation_sent_at"]
        mail = {"pending": "confirm", "unsubscribed": "confirm", "active": "already"}.get(status)
        last = _seconds(previous)
        if mail and last is not None and at - last < resend_seconds:
            mail = None
        if mail:
            db.execute("UPDATE subscribers SET confirmation_sent_at = ? WHERE id = ?", (sent_at, row["id"]))
        return Signup(row["id"], row["email"], status, mail, previous)


def undo_signup_mail(db: sqlite3.Connection, signup: Signup, at: float) -> None:
    """The mail could not be sent: let the next request try again instead of waiting out the interval."""
    with transaction(db):
        db.execute(
            "UPDATE subscribers SET confirmation_sent_at = ? WHERE id = ? AND confirmation_sent_at = ?",
            (signup.previous_sent_at, signup.subscriber_id, stamp_at(at)),
        )


def by_id(db: sqlite3.Connection, subscriber_id: int) -> sqlite3.Row | None:
    """The subscriber with this id. For the id of a row merged into another (one mailbox, several
    spellings: see :func:`pipeline.db.merge_mailbox_spellings`), the row it was merged into, with the
    merged row's spelling as ``email``: what the links mailed to it were signed with, so they still work."""
    row: sqlite3.Row | None = db.execute(
        "SELECT * FROM subscribers WHERE id = ?", (subscriber_id,)
    ).fetchone()
    if row is None:
        # sqlite3.Row answers a name with its first column of that name: the merged row's email.
        row = db.execute(
            "SELECT m.email AS email, s.* FROM merged_subscribers m JOIN subscribers s ON s.id = m.subscriber_id"
            " WHERE m.old_id = ?",
            (subscriber_id,),
        ).fetchone()
    return row


def confirm_outcome(row: sqlite3.Row, sent_at: float) -> str:
    """What confirming this subscriber would do, changing nothing: "confirm", "already" (active),
    "refused" (bounced or complained: only the editor may restore them) or "stale".

    ``sent_at`` is when the link being used was sent (signed into it). Only the latest link works
    (its time is ``confirmation_sent_at``), and only when nothing happened to the subscriber since it
    was sent: an old link must not undo a later unsubscribe, even after a stranger typed the address in
    again."""
    status = row["status"]
    if status == "active":
        return "already"
    if status in ("bounced", "complained"):
        return "refused"
    asked, changed = _seconds(row["confirmation_sent_at"]), _seconds(row["status_changed_at"])
    if asked is None or int(sent_at) != int(asked) or changed is None or sent_at < changed:
        return "stale"
    return "confirm"


def confirm(
    db: sqlite3.Connection, subscriber_id: int, cause: str = "confirmed by link", *, sent_at: float
) -> str:
    """Activate a subscriber whose confirmation link checked out. Returns what happened:
    "confirmed", "already" (active before), "refused" (bounced or complained), "stale" (a link
    superseded by a newer one, or older than the subscriber's last status change: see
    :func:`confirm_outcome`), "unknown"."""
    with transaction(db):
        row = by_id(db, subscriber_id)
        if row is None:
            return "unknown"
        outcome = confirm_outcome(row, sent_at)
        if outcome != "confirm":
            return outcome
        set_status(db, subscriber_id, "active", cause)
        return "confirmed"


def unsubscribe(db: sqlite3.Connection, subscriber_id: int, cause: str) -> str:
    """Unsubscribe by link; returns the status before. Twice is harmless, and a bounce or a
    complaint is kept as it is (it already stops the mail, and says more)."""
    with transaction(db):
        row = by_id(db, subscriber_id)
        if row is None:
            return "unknown"
        if row["status"] in ("active", "pending"):
            set_status(db, subscriber_id, "unsubscribed", cause)
        return str(row["status"])
