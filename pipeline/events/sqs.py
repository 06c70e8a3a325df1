"""``newsletter events pull``: SES events from the SQS queue SNS delivers them to, verified and applied
by :mod:`pipeline.events.apply`, then deleted.

A message leaves the queue only once its effect is committed, or when it can never be valid
(NotificationRejected). NotificationDeferred, or any unexpected error, leaves it there for a later pull,
and the pull goes on with the next message: no message can stop it.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from pipeline.config import Config
from pipeline.db import open_db
from pipeline.errors import EventsError, NotificationDeferred, NotificationRejected
from pipeline.events.apply import handle_sns, one_line
from pipeline.events.sns import SnsVerifier

log = logging.getLogger(__name__)

# SQS keeps a message at most 14 days; a queue message is as old as the queue lets it be, and
# replaying into our own queue needs AWS credentials, so only the MessageId guards against it there.
SQS_MAX_AGE_SECONDS = 15 * 24 * 3600.0
SQS_BATCH = 10


@dataclass
class PullReport:
    """What one pull did, message by message."""

    received: int = 0
    applied: int = 0
    duplicates: int = 0
    rejected: int = 0
    left: int = 0  # kept in the queue after a transient failure
    details: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Human lines for the CLI: the counts, then one line per rejected or left message."""
        summary = (
            f"{self.received} received: {self.applied} applied, {self.duplicates} duplicate(s), "
            f"{self.rejected} rejected, {self.left} left in the queue"
        )
        return [summary, *(f"  {detail}" for detail in self.details)]


def pull(
    config: Config,
    *,
    wait_seconds: int = 5,
    most: int | None = None,
    verifier: SnsVerifier | None = None,
    client: object | None = None,
) -> PullReport:
    """`newsletter events pull`: receive from SQS, verify each SNS envelope, apply, then delete.

    A message is deleted only after its effect is committed. One that can never be valid (unsigned,
    tampered, malformed) is logged, counted as rejected and deleted; a transient failure (certificate
    host unreachable, database locked) leaves it in the queue. Loops until a receive returns nothing
    new or ``most`` messages were received. The default verifier accepts messages as old as SQS keeps
    them (the MessageId stops replays). Raises EventsError when events.queue_url is empty or the queue
    is unreachable or credentials are missing.
    """
    queue_url = config.events.queue_url
    if not queue_url:
        raise EventsError(
            f"{config.path}: events.queue_url is empty: set it to the SQS queue SNS delivers SES events to"
        )
    sqs: Any = client if client is not None else _sqs_client(config, wait_seconds)
    verifier = verifier or SnsVerifier(
        topic_arns=config.events.topic_arns, max_age_seconds=SQS_MAX_AGE_SECONDS
    )
    warn_any_topic = not verifier.topic_arns
    report = PullReport()
    deferred: set[str] = set()
    db = open_db(config.paths.state)
    try:
        while most is None or report.received < most:
            batch = min(SQS_BATCH, most - report.received) if most is not None else SQS_BATCH
            messages = _receive(sqs, queue_url, batch, wait_seconds)
            fresh = [m for m in messages if m.get("MessageId") not in deferred]
            if not fresh:
                break  # empty, or only what we already left in the queue (visibility timeout 0)
            if warn_any_topic:
                # The queue is the editor's own: what reaches it, its policy let in. Still, say so once.
                log.warning(
                    "%s: [events] topic_arns is empty: accepting SNS messages from any topic in the queue; "
                    "set it to the ARN of your SES events topic",
                    config.path,
                )
                warn_any_topic = False
            for queued in fresh:
                report.received += 1
                if not _handle_queued(db, sqs, queue_url, verifier, queued, report):
                    deferred.add(queued.get("MessageId", ""))
    finally:
        db.close()
    return report


def _handle_queued(
    db: sqlite3.Connection,
    sqs: Any,
    queue_url: str,
    verifier: SnsVerifier,
    queued: dict[str, Any],
    report: PullReport,
) -> bool:
    """Handle one queue message; whether it was deleted (only when applied, or rejected for good)."""
    body = queued.get("Body")
    try:
        if not isinstance(body, str):
            raise NotificationRejected(f"SQS message {queued.get('MessageId', '?')}: no text body")
        # surrogatepass: a lone surrogate must reach the JSON check and be refused there, not crash here.
        applied = handle_sns(db, verifier, body.encode("utf-8", "surrogatepass"))
    except NotificationDeferred as error:
        report.left += 1
        report.details.append(f"left in the queue: {error}")
        return False
    except NotificationRejected as error:
        report.rejected += 1
        report.details.append(f"rejected: {error}")
    except Exception as error:  # a bug: one message must not stop the pull or every later one
        log.exception("SQS message %s: unexpected error, left in the queue", queued.get("MessageId"))
        report.left += 1
        report.details.append(
            f"left in the queue: unexpected {type(error).__name__} (a bug; see the log): "
            f"{one_line(str(error))}"
        )
        return False
    else:
        if applied.duplicate:
            report.duplicates += 1
        else:
            report.applied += 1
    _delete(sqs, queue_url, queued)
    return True


def _sqs_client(config: Config, wait_seconds: int) -> Any:
    import boto3
    from botocore.config import Config as BotoConfig

    # The read timeout must outlast a long poll; few retries, so an unreachable queue fails in seconds.
    settings = BotoConfig(
        connect_timeout=5, read_timeout=wait_seconds + 15, retries={"max_attempts": 2, "mode": "standard"}
    )
    try:
        # A session of its own: boto3's default one keeps the credentials it found first.
        return boto3.session.Session().client(
            "sqs", region_name=config.events.region or None, config=settings
        )
    except BotoCoreError as error:
        raise EventsError(f"cannot set up the SQS client: {error}") from None


def _receive(sqs: Any, queue_url: str, batch: int, wait_seconds: int) -> list[dict[str, Any]]:
    try:
        answer = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=batch, WaitTimeSeconds=wait_seconds
        )
    except (BotoCoreError, ClientError) as error:
        raise EventsError(f"cannot read the SQS queue {queue_url}: {_aws_reason(error)}") from None
    messages: list[dict[str, Any]] = answer.get("Messages", [])
    return messages


def _delete(sqs: Any, queue_url: str, queued: dict[str, Any]) -> None:
    try:
        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=queued["ReceiptHandle"])
    except (BotoCoreError, ClientError) as error:
        # Its effect is committed: when it comes back it is a duplicate, so carry on.
        log.warning(
            "could not delete SQS message %s (it will come back as a duplicate): %s",
            queued.get("MessageId"),
            _aws_reason(error),
        )


def _aws_reason(error: BotoCoreError | ClientError) -> str:
    if isinstance(error, NoCredentialsError):
        return (
            "no AWS credentials (set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or use a role)"
        )
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        return one_line(f"{details.get('Code', 'error')}: {details.get('Message', '')}".rstrip(": "))
    return one_line(str(error))
