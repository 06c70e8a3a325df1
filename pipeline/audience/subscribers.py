"""The subscriber list: add, remove, import and export, and every status change with its cause."""

from __future__ import annotations

import csv
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from pipeline.audience.addresses import address_key, check_name
from pipeline.db import now, transaction
from pipeline.errors import StateError, SubscriberError
from pipeline.text_rules import find_forbidden_control, mailbox, visible

STATUSES = ("pending", "active", "unsubscribed", "bounced", "complained")
# Who said no, or whose address failed: an import must not silently mail them again.
OPTED_OUT = ("unsubscribed", "bounced", "complained")
# Status words other tools export, mapped to ours.
STATUS_ALIASES = {
    "subscribed": "active",
    "confirmed": "active",
    "cleaned": "bounced",
    "unconfirmed": "pending",
}
EMAIL_HEADERS = ("email", "email address", "e-mail", "e-mail address", "emailaddress")
EXPORT_COLUMNS = ("email", "name", "status", "source", "created_at", "confirmed_at", "status_changed_at")
# A cell starting with one of these is a formula to a spreadsheet (OWASP, "CSV Injection"): `=IMPORTXML(...)`
# from the sign-up form's name field, or the valid address `=1+1@example.com`.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# An import holds the write lock at most this long per transaction, then lets go for longer than SQLite's
# longest busy-wait sleep (100 ms): every writer waiting (an unsubscribe, a send claiming its next
# round) wakes within the pause and gets its turn, so none waits much more than one batch.
BATCH_SECONDS = 0.2
PAUSE_SECONDS = 0.12


@dataclass(frozen=True)
class Subscriber:
    id: int
    email: str
    name: str
    status: str


def find(db: sqlite3.Connection, email: str) -> sqlite3.Row | None:
    """The subscriber with this mailbox, whichever spelling of it ``email`` is."""
    return _by_key(db, address_key(email))


def _by_key(db: sqlite3.Connection, key: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = db.execute("SELECT * FROM subscribers WHERE email_key = ?", (key,)).fetchone()
    return row


def add(
    db: sqlite3.Connection, email: str, name: str = "", status: str = "active", source: str = "cli"
) -> int:
    try:
        address, name = mailbox(email), check_name(name)
    except ValueError as error:
        raise SubscriberError(f"'{visible(email)}': {error}") from None
    if status not in STATUSES:
        raise SubscriberError(f"unknown status {status!r} (one of {', '.join(STATUSES)})")
    with transaction(db):
        if _by_key(db, address.key) is not None:
            raise SubscriberError(f"{address.address} is already on the list")
        return insert(db, address.address, name, status, source, key=address.key)


def insert(
    db: sqlite3.Connection,
    email: str,
    name: str,
    status: str,
    source: str,
    stamp: str | None = None,
    key: str | None = None,
) -> int:
    """Add a row for an address already validated (``key``: its :func:`address_key`, when known)."""
    stamp = stamp or now()
    cursor = db.execute(
        "INSERT INTO subscribers (email, email_key, name, status, source, created_at, confirmed_at, status_changed_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            email,
            key or address_key(email),
            name,
            status,
            source,
            stamp,
            stamp if status == "active" else None,
            stamp,
        ),
    )
    subscriber_id = int(cursor.lastrowid or 0)
    _log_change(db, subscriber_id, None, status, f"added ({source})", stamp)
    return subscriber_id


def set_status(db: sqlite3.Connection, subscriber_id: int, status: str, cause: str) -> bool:
    """Change a status inside the caller's transaction; returns whether anything changed."""
    row = db.execute("SELECT status FROM subscribers WHERE id = ?", (subscriber_id,)).fetchone()
    if row is None or row["status"] == status:
        return False
    stamp = now()
    db.execute(
        "UPDATE subscribers SET status = ?, status_changed_at = ?,"
        " confirmed_at = CASE WHEN ? = 'active' THEN COALESCE(confirmed_at, ?) ELSE confirmed_at END"
        " WHERE id = ?",
        (status, stamp, status, stamp, subscriber_id),
    )
    _log_change(db, subscriber_id, row["status"], status, cause, stamp)
    return True


def _log_change(
    db: sqlite3.Connection, subscriber_id: int, old: str | None, new: str, cause: str, stamp: str
) -> None:
    db.execute(
        "INSERT INTO status_changes (subscriber_id, old_status, new_status, cause, changed_at) VALUES (?, ?, ?, ?, ?)",
        (subscriber_id, old, new, cause, stamp),
    )


def remove(db: sqlite3.Connection, email: str) -> None:
    """Erase an address and its history (a data-deletion request)."""
    with transaction(db):
        row = find(db, email)
        if row is None:
            raise SubscriberError(f"{visible(email)} is not on the list")
        # Rows merged into this one (other spellings of the mailbox) are theirs too.
        merged_ids = [
            old
            for (old,) in db.execute(
                "SELECT old_id FROM merged_subscribers WHERE subscriber_id = ?", (row["id"],)
            )
        ]
        for subscriber_id in (row["id"], *merged_ids):
            for table, column in (
                ("merged_subscribers", "subscriber_id"),
                ("deliveries", "subscriber_id"),
                ("status_changes", "subscriber_id"),
                ("subscribers", "id"),
            ):
                db.execute(f"DELETE FROM {table} WHERE {column} = ?", (subscriber_id,))


def counts(db: sqlite3.Connection) -> dict[str, int]:
    found = dict(db.execute("SELECT status, COUNT(*) FROM subscribers GROUP BY status").fetchall())
    return {status: found.get(status, 0) for status in STATUSES}


def listing(db: sqlite3.Connection, status: str | None = None) -> Iterator[sqlite3.Row]:
    query = "SELECT * FROM subscribers" + (" WHERE status = ?" if status else "") + " ORDER BY id"
    yield from db.execute(query, (status,) if status else ())


def merged(db: sqlite3.Connection) -> Iterator[sqlite3.Row]:
    """The rows the upgrade to one form per mailbox merged into another (:func:`pipeline.db.merge_mailbox_spellings`)."""
    yield from db.execute(
        "SELECT m.old_id, m.email AS old_email, m.status AS old_status, m.merged_at, s.id, s.email"
        " FROM merged_subscribers m JOIN subscribers s ON s.id = m.subscriber_id ORDER BY s.id, m.old_id"
    )


def export_csv(db: sqlite3.Connection, out: IO[str], status: str | None = None) -> int:
    """Every subscriber as a CSV row; a cell a spreadsheet would run as a formula gets a leading `'`
    (which :func:`import_csv` takes off again, so an export imports back unchanged)."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    written = 0
    for row in listing(db, status):
        writer.writerow([_guarded(str(row[column] or "")) for column in EXPORT_COLUMNS])
        written += 1
    return written


def _formula_like(cell: str) -> bool:
    # A cell that starts with `'` and then looks like one is guarded too, so unguarding is exact.
    return cell.startswith(FORMULA_START) or (cell.startswith("'") and _formula_like(cell[1:]))


def _guarded(cell: str) -> str:
    return "'" + cell if _formula_like(cell) else cell


def _unguarded(cell: str) -> str:
    return cell[1:] if cell.startswith("'") and _formula_like(cell[1:]) else cell


@dataclass
class ImportReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)


def import_csv(
    db: sqlite3.Connection, path: Path, *, force: bool = False, source: str = "import"
) -> ImportReport:
    """Import every good row; report each bad or skipped one by line.

    The whole file is read and parsed first: an unreadable one changes nothing. Rows are then written
    in short transactions (:data:`BATCH_SECONDS` each, a pause between), so the list stays writable for
    the web service and a running send. When the database fails part way (locked for longer than its
    timeout, read-only, disk full) or the import is interrupted (Ctrl-C), the rows before the batch under
    way are stored and the error says from which line: importing the same file again finishes the job,
    since rows already imported count as unchanged and nobody opted out is re-activated."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            rows = list(_rows(path, handle))
    except FileNotFoundError:
        raise SubscriberError(f"{path}: no such file") from None
    except UnicodeDecodeError as error:
        raise SubscriberError(f"{path}: not valid UTF-8 ({error.reason}); export the file as UTF-8") from None
    report = ImportReport()
    done = 0
    try:
        while done < len(rows):
            if done:
                time.sleep(PAUSE_SECONDS)
            with transaction(db):
                batch_ends = time.monotonic() + BATCH_SECONDS
                position = done
                while position < len(rows) and (position == done or time.monotonic() < batch_ends):
                    _import_row(db, report, *rows[position], force, source)
                    position += 1
            done = position
    except (sqlite3.OperationalError, KeyboardInterrupt) as error:
        # The batch under way was rolled back (by transaction()); the ones before are stored.
        cause = (
            "interrupted" if isinstance(error, KeyboardInterrupt) else f"the state database failed ({error})"
        )
        stored = f"lines up to {rows[done - 1][0]} are imported" if done else "nothing was imported"
        raise StateError(
            f"{path}: import stopped at line {rows[done][0]}: {cause}; {stored}: run the same import again to finish"
        ) from None
    return report


def _rows(path: Path, handle: IO[str]) -> Iterator[tuple[int, str, str | None, str | None]]:
    reader = csv.reader(handle)
    try:
        header = next(reader)
    except StopIteration:
        raise SubscriberError(f"{path}: the file is empty") from None
    except csv.Error as error:
        raise SubscriberError(f"{path}:1: {error}") from None
    columns = {name.strip().lower(): index for index, name in enumerate(header)}
    email_column = next((columns[h] for h in EMAIL_HEADERS if h in columns), None)
    if email_column is None:
        raise SubscriberError(f"{path}:1: no 'email' (or 'Email Address') column in the header row")
    name_columns = _name_columns(columns)
    status_column = columns.get("status")
    while True:
        line = reader.line_num + 1  # where the record starts: a quoted cell may span several lines
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            yield line, "", None, f"!{error}"
            continue
        if not any(cell.strip() for cell in record):
            continue
        name = " ".join(filter(None, (_cell(record, i) for i in name_columns))) if name_columns else None
        status = _cell(record, status_column) if status_column is not None else None
        yield line, _cell(record, email_column), name, status or None


def _cell(record: list[str], index: int | None) -> str:
    if index is None or index >= len(record):
        return ""
    cell = record[index]
    # Trimmed (spreadsheets leave spaces and no-break spaces), unless it holds a control character:
    # str.strip() would drop U+0085 and U+001C-U+001F at the edges, which must be refused, not hidden.
    return _unguarded(cell if find_forbidden_control(cell) else cell.strip())


def _name_columns(columns: dict[str, int]) -> list[int]:
    if "name" in columns:
        return [columns["name"]]
    return [columns[h] for h in ("first name", "last name") if h in columns]


def _import_row(
    db: sqlite3.Connection,
    report: ImportReport,
    line: int,
    email: str,
    name: str | None,
    status: str | None,
    force: bool,
    source: str,
) -> None:
    if status and status.startswith("!"):
        report.rejected.append((line, f"unreadable CSV row: {status[1:]}"))
        return
    try:
        if not email:
            raise ValueError("no email address")
        address = mailbox(email)  # validated once a row: it is most of an import's work
        name = check_name(name) if name is not None else None
    except ValueError as error:
        report.rejected.append((line, f"{visible(email) or '(empty)'}: {error}"))
        return
    email = address.address
    if status is not None:
        status = STATUS_ALIASES.get(status.lower(), status.lower())
        if status not in STATUSES:
            report.rejected.append(
                (line, f"{email}: unknown status {visible(status)!r} (one of {', '.join(STATUSES)})")
            )
            return
    existing = _by_key(db, address.key)
    if existing is None:
        insert(db, email, name or "", status or "active", source, key=address.key)
        report.added += 1
        return
    new_status = status or "active"  # a row with no status is a subscriber, as for new rows
    if existing["status"] in OPTED_OUT and new_status not in OPTED_OUT and not force:
        report.skipped.append(
            (line, f"{email}: {existing['status']} earlier; not re-activated without --force")
        )
        return
    changed = False
    if name is not None and name != existing["name"]:
        db.execute("UPDATE subscribers SET name = ? WHERE id = ?", (name, existing["id"]))
        changed = True
    changed = set_status(db, existing["id"], new_status, f"import ({source})") or changed
    if changed:
        report.updated += 1
    else:
        report.unchanged += 1


def describe(report: ImportReport) -> Iterable[str]:
    yield (
        f"{report.added} added, {report.updated} updated, {report.unchanged} unchanged, "
        f"{len(report.skipped)} skipped, {len(report.rejected)} rejected"
    )
    for line, reason in report.skipped:
        yield f"  line {line}: skipped: {reason}"
    for line, reason in report.rejected:
        yield f"  line {line}: rejected: {reason}"
