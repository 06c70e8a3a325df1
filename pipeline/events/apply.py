"""SES bounce and complaint events, from the webhook or the SQS queue (:mod:`pipeline.events.sqs`),
applied to the subscriber list.

Every SNS message is verified (:mod:`pipeline.events.sns`) before it is believed, and applied at most once:
its MessageId is stored in ``sns_messages`` in the same transaction as its effect, so a redelivery
(SNS retries, SQS at-least-once) is acknowledged as a duplicate and changes nothing.

What a notification does:

* permanent bounce -> ``bounced``; complaint -> ``complained`` (it may replace ``bounced``);
  unsubscribed, bounced and complained are otherwise final, and nobody is ever re-activated;
* transient or undetermined bounce -> ``subscribers.soft_bounces`` += 1, status unchanged;
* any other SES event (Delivery, Send, Open...) or a non-SES message -> recorded as ``ignored``.

A permanent bounce or a complaint is also counted against the campaign that sent the message, for
its reputation breaker (``[send] max_bounce_rate``): ``mail.messageId`` is SES's id for the message,
which the ledger keeps as the delivery's ``provider_id``, once per recipient and kind, in
``campaign_feedback``. A message no campaign sent (a test copy, another program's) counts for none.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from email.utils import parseaddr
from typing import Any

from pipeline.audience.subscribers import find, set_status
from pipeline.db import now, transaction
from pipeline.errors import NotificationDeferred, NotificationRejected
from pipeline.events.sns import SnsVerifier

log = logging.getLogger(__name__)

# Which current statuses each event may replace: nobody comes back to active, and only a complaint
# (the stronger signal) overrides a bounce.
REPLACEABLE = {"bounced": ("pending", "active"), "complained": ("pending", "active", "bounced")}
PERMANENT_BOUNCE = "Permanent"
DIAGNOSTIC_LIMIT = 300
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


@dataclass
class Applied:
    """What one SNS message did."""

    message_id: str
    kind: str  # "Bounce", "Complaint", "SubscriptionConfirmation", "UnsubscribeConfirmation", "Delivery"...
    outcome: str  # "bounced 1", "complained 1", "soft bounce counted 1", "unknown recipient 1", "ignored"...
    duplicate: bool = False


def handle_sns(
    db: sqlite3.Connection,
    verifier: SnsVerifier,
    body: bytes,
    *,
    db_lock: AbstractContextManager[Any] | None = None,
) -> Applied:
    """Verify an SNS message, confirm a subscription if asked, apply a notification.

    Raises NotificationRejected for bad input (never valid: answer 400, delete from the queue) and its
    sibling NotificationDeferred when it cannot be handled now (certificate host unreachable, database
    busy: answer 503, leave it in the queue). A message already applied is a duplicate, however old.

    ``db_lock`` is held around each use of ``db``, and only then: the network (the signing
    certificate, a SubscribeURL) is never waited on while holding it.
    """
    guard = db_lock if db_lock is not None else nullcontext()
    message = verifier.verify_signature(body)
    try:
        with guard:
            seen = _seen(db, message["MessageId"])
        if seen is not None:
            return seen
        verifier.check_fresh(message)
        kind = message["Type"]
        if kind == "SubscriptionConfirmation":
            verifier.confirm_subscription(message)
            with guard:
                return _record_only(db, message, kind, "confirmed")
        if kind == "UnsubscribeConfirmation":
            log.warning(
                "SNS topic %s unsubscribed this endpoint (message %s)",
                message["TopicArn"],
                message["MessageId"],
            )
            with guard:
                return _record_only(db, message, kind, "acknowledged")
        with guard:
            return apply_notification(db, message)
    except sqlite3.OperationalError as error:
        # "database is locked" and the like: the message is fine, our side is not ready.
        raise NotificationDeferred(
            f"SNS message {message['MessageId']}: state database busy: {error}"
        ) from None
    except UnicodeEncodeError:
        # A lone surrogate ("\\ud800" in the SES event's JSON): no UTF-8 store can hold it, ever.
        raise NotificationRejected(
            f"SNS message {message['MessageId']}: the SES event holds text that is not valid Unicode"
        ) from None


def apply_notification(db: sqlite3.Connection, message: dict[str, str]) -> Applied:
    """Apply one VERIFIED SNS Notification (its Message is the SES event JSON); record its MessageId; idempotent.

    Raises NotificationRejected when an SES Bounce or Complaint lacks its recipients (nothing is recorded).
    """
    message_id = message["MessageId"]
    event = _ses_event(message.get("Message", ""))
    kind = str(event.get("eventType") or event.get("notificationType") or "Notification")
    feedback: str | None = None  # what the sending campaign's breaker counts it as
    if kind == "Bounce":
        bounce = _section(message_id, event, "bounce", "bouncedRecipients")
        permanent = bounce.get("bounceType") == PERMANENT_BOUNCE
        action = _bounce if permanent else _soft_bounce
        feedback = "bounce" if permanent else None
        cause = _bounce_cause(bounce, message_id)
        recipients = bounce["bouncedRecipients"]
    elif kind == "Complaint":
        complaint = _section(message_id, event, "complaint", "complainedRecipients")
        action, cause, recipients = (
            _complain,
            _complaint_cause(complaint, message_id),
            complaint["complainedRecipients"],
        )
        feedback = "complaint"
    else:
        return _record_only(db, message, kind, "ignored")
    with transaction(db):
        seen = _seen(db, message_id)
        if seen is not None:
            return seen
        tally: dict[str, int] = {}
        ses_message_id = _ses_message_id(event) if feedback is not None else ""
        for recipient in recipients:
            address = recipient.get("emailAddress") if isinstance(recipient, dict) else None
            subscriber = _find_recipient(db, address) if isinstance(address, str) else None
            result = "unknown recipient" if subscriber is None else action(db, subscriber, cause, recipient)
            tally[result] = tally.get(result, 0) + 1
            if subscriber is not None and feedback is not None:
                _count_against_campaign(db, subscriber["id"], ses_message_id, feedback)
        outcome = ", ".join(f"{result} {count}" for result, count in tally.items()) or "no recipients"
        _insert(db, message, kind, outcome)
    log.info("SNS message %s: %s: %s", message_id, kind, outcome)
    return Applied(message_id, kind, outcome)


# --- One recipient ---------------------------------------------------------------------------------


def _bounce(db: sqlite3.Connection, subscriber: sqlite3.Row, cause: str, recipient: dict[str, Any]) -> str:
    return _final(db, subscriber, "bounced", _with_diagnostic(cause, recipient))


def _complain(db: sqlite3.Connection, subscriber: sqlite3.Row, cause: str, recipient: dict[str, Any]) -> str:
    return _final(db, subscriber, "complained", cause)


def _final(db: sqlite3.Connection, subscriber: sqlite3.Row, status: str, cause: str) -> str:
    if subscriber["status"] not in REPLACEABLE[status]:
        return f"already {subscriber['status']}"
    set_status(db, subscriber["id"], status, cause)
    return status


def _soft_bounce(
    db: sqlite3.Connection, subscriber: sqlite3.Row, cause: str, recipient: dict[str, Any]
) -> str:
    db.execute("UPDATE subscribers SET soft_bounces = soft_bounces + 1 WHERE id = ?", (subscriber["id"],))
    return "soft bounce counted"


def _find_recipient(db: sqlite3.Connection, reported: str) -> sqlite3.Row | None:
    """The subscriber SES means: "Name <addr>" or a bare address, any spelling of the mailbox (case,
    punycode or not: the list is keyed by :func:`pipeline.audience.addresses.address_key`)."""
    address = parseaddr(reported)[1].strip()
    return find(db, address) if "@" in address else None


def _count_against_campaign(
    db: sqlite3.Connection, subscriber_id: int, ses_message_id: str, kind: str
) -> None:
    """Count a hard bounce or complaint against the campaign whose delivery to this subscriber SES
    knows as ``ses_message_id`` (the ses transport's provider_id; through SES's SMTP interface the
    smtp transport keeps its reply, "Ok <id>"). Campaigns are few, so each is looked up by its key
    (campaign, subscriber): no index on provider_id weighs on the send."""
    if not ses_message_id:
        return
    db.execute(
        "INSERT OR IGNORE INTO campaign_feedback (campaign_id, kind, subscriber_id, received_at)"
        " SELECT d.campaign_id, ?, d.subscriber_id, ? FROM campaigns c CROSS JOIN deliveries d"
        " WHERE d.campaign_id = c.id AND d.subscriber_id = ? AND d.provider_id IN (?, 'Ok ' || ?)",
        (kind, now(), subscriber_id, ses_message_id, ses_message_id),
    )


# --- The SES event ---------------------------------------------------------------------------------


def _ses_message_id(event: dict[str, Any]) -> str:
    mail = event.get("mail")
    found = mail.get("messageId") if isinstance(mail, dict) else None
    return found if isinstance(found, str) else ""


def _ses_event(text: str) -> dict[str, Any]:
    """The SES event in a notification's Message; empty for anything else (not ours to act on)."""
    try:
        event = json.loads(text)
    except (ValueError, RecursionError):  # ValueError: not JSON, or an integer too long to convert
        return {}  # a plain-text message someone published on the topic
    return event if isinstance(event, dict) else {}


def _section(message_id: str, event: dict[str, Any], name: str, recipients: str) -> dict[str, Any]:
    section = event.get(name)
    if not isinstance(section, dict) or not isinstance(section.get(recipients), list):
        log.warning("rejected SNS message %s: SES %s event without %s.%s", message_id, name, name, recipients)
        raise NotificationRejected(
            f"SNS message {message_id}: SES {name} event without a {name}.{recipients} list"
        )
    return section


def _bounce_cause(bounce: dict[str, Any], message_id: str) -> str:
    kind = one_line(str(bounce.get("bounceType") or "unknown")).lower()
    subtype = one_line(str(bounce.get("bounceSubType") or "unknown"))
    return f"SES {kind} bounce ({subtype}), SNS message {message_id}"


def _complaint_cause(complaint: dict[str, Any], message_id: str) -> str:
    feedback = complaint.get("complaintFeedbackType")
    detail = f" ({one_line(str(feedback))})" if feedback else ""
    return f"SES complaint{detail}, SNS message {message_id}"


def _with_diagnostic(cause: str, recipient: dict[str, Any]) -> str:
    diagnostic = recipient.get("diagnosticCode") or recipient.get("status")
    if not diagnostic:
        return cause
    head, _, tail = cause.partition(", SNS message ")
    return f"{head}: {one_line(str(diagnostic))}, SNS message {tail}"


def one_line(text: str) -> str:
    """``text`` on one line, at most DIAGNOSTIC_LIMIT characters: diagnostics and AWS errors are remote
    servers' words, and end up in the status history and in one-line reports."""
    text = _CONTROL.sub(" ", text).strip()
    return text if len(text) <= DIAGNOSTIC_LIMIT else text[: DIAGNOSTIC_LIMIT - 1] + "…"


# --- sns_messages ----------------------------------------------------------------------------------


def _seen(db: sqlite3.Connection, message_id: str) -> Applied | None:
    row = db.execute("SELECT kind FROM sns_messages WHERE message_id = ?", (message_id,)).fetchone()
    if row is None:
        return None
    log.info("SNS message %s: duplicate, already applied", message_id)
    return Applied(message_id, row["kind"], "duplicate", duplicate=True)


def _record_only(db: sqlite3.Connection, message: dict[str, str], kind: str, outcome: str) -> Applied:
    with transaction(db):
        seen = _seen(db, message["MessageId"])
        if seen is not None:
            return seen
        _insert(db, message, kind, outcome)
    log.info("SNS message %s: %s: %s", message["MessageId"], kind, outcome)
    return Applied(message["MessageId"], kind, outcome)


def _insert(db: sqlite3.Connection, message: dict[str, str], kind: str, outcome: str) -> None:
    db.execute(
        "INSERT INTO sns_messages (message_id, topic_arn, kind, outcome, received_at) VALUES (?, ?, ?, ?, ?)",
        (message["MessageId"], message.get("TopicArn", ""), kind, outcome, now()),
    )
