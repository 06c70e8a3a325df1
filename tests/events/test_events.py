"""SES bounce and complaint events applied to a real state database, from signed SNS messages,
through moto's SQS server and through the real console script."""

from __future__ import annotations

import email
import email.policy
import json
import logging
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from pipeline.audience.subscribers import add, set_status
from pipeline.db import DB_NAME, open_db
from pipeline.errors import EventsError, NotificationDeferred, NotificationRejected
from pipeline.events.apply import Applied, apply_notification, handle_sns
from pipeline.events.sns import DEFERRED_FETCH_SECONDS, SnsVerifier, http_get
from pipeline.events.sqs import PullReport, pull
from tests.conftest import Newsletter
from tests.support.aws import REGION, aws_cli_env
from tests.support.cli import clean_env, run_cli
from tests.support.sns import (
    TOPIC,
    CertServer,
    Signer,
    cert_server,
    confirmation,
    notification,
    ses_bounce,
    ses_complaint,
    wrongly_typed,
)


@pytest.fixture
def server(signer: Signer) -> Iterator[CertServer]:
    with cert_server(signer) as running:
        running.files["/confirm"] = b"<ConfirmSubscriptionResponse/>"
        yield running


@pytest.fixture
def verifier(server: CertServer) -> SnsVerifier:
    return SnsVerifier(cert_host_allowed=server.allows)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = open_db(tmp_path / "state")
    yield connection
    connection.close()


def signed(signer: Signer, server: CertServer, ses_event: str, version: str = "1", **fields: Any) -> bytes:
    return json.dumps(
        signer.sign(notification(ses_event, f"{server.url}/cert.pem", **fields), version)
    ).encode()


def subscriber(db: sqlite3.Connection, address: str) -> sqlite3.Row:
    row: sqlite3.Row = db.execute("SELECT * FROM subscribers WHERE email = ?", (address,)).fetchone()
    return row


def history(db: sqlite3.Connection, address: str) -> list[tuple[str | None, str, str]]:
    rows = db.execute(
        "SELECT old_status, new_status, cause FROM status_changes WHERE subscriber_id = ? ORDER BY id",
        (subscriber(db, address)["id"],),
    )
    return [tuple(row) for row in rows]


def recorded(db: sqlite3.Connection) -> list[tuple[str, str, str, str]]:
    return [tuple(row) for row in db.execute("SELECT message_id, topic_arn, kind, outcome FROM sns_messages")]


def message_id(body: bytes) -> str:
    return str(json.loads(body)["MessageId"])


# --- Applying one message -------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["eventType", "notificationType"])
def test_a_permanent_bounce_marks_the_subscriber_bounced_with_its_cause(
    db: sqlite3.Connection, verifier: SnsVerifier, signer: Signer, server: CertServer, field: str
) -> None:
    add(db, "reader@example.org")
    add(db, "other@example.org")
    body = signed(signer, server, ses_bounce("reader@example.org", field=field))
    applied = handle_sns(db, verifier, body)
    assert applied == Applied(message_id(body), "Bounce", "bounced 1")
    assert subscriber(db, "reader@example.org")["status"] == "bounced"
    assert subscriber(db, "other@example.org")["status"] == "active"
    assert history(db, "reader@example.org")[-1] == (
        "active",
        "bounced",
        f"SES permanent bounce (General): smtp; 550 5.1.1 user unknown, SNS message {message_id(body)}",
    )
    assert recorded(db) == [(message_id(body), TOPIC, "Bounce", "bounced 1")]


@pytest.mark.parametrize("field", ["eventType", "notificationType"])
def test_a_complaint_marks_the_subscriber_complained(
    db: sqlite3.Connection, verifier: SnsVerifier, signer: Signer, server: CertServer, field: str
) -> None:
    add(db, "reader@example.org")
    body = signed(signer, server, ses_complaint("reader@example.org", field=field), version="2")
    assert handle_sns(db, verifier, body).outcome == "complained 1"
    assert subscriber(db, "reader@example.org")["status"] == "complained"
    assert history(db, "reader@example.org")[-1] == (
        "active",
        "complained",
        f"SES complaint (abuse), SNS message {message_id(body)}",
    )


@pytest.mark.parametrize("bounce_type", ["Transient", "Undetermined"])
def test_a_transient_bounce_is_only_counted(
    db: sqlite3.Connection, verifier: SnsVerifier, signer: Signer, server: CertServer, bounce_type: str
) -> None:
    add(db, "reader@example.org")
    body = signed(
        signer, server, ses_bounce("reader@example.org", bounce_type=bounce_type, subtype="MailboxFull")
    )
    assert handle_sns(db, verifier, body).outcome == "soft bounce counted 1"
    row = subscriber(db, "reader@example.org")
    assert (row["status"], row["soft_bounces"]) == ("active", 1)
    assert len(history(db, "reader@example.org")) == 1  # only "added"
    handle_sns(
        db, verifier, signed(signer, server, ses_bounce("reader@example.org", bounce_type=bounce_type))
    )
    assert subscriber(db, "reader@example.org")["soft_bounces"] == 2


def test_a_redelivered_message_is_a_duplicate_and_changes_nothing(
    db: sqlite3.Connection, verifier: SnsVerifier, signer: Signer, server: CertServer
) -> None:
    add(db, "reader@example.org")
    body = signed(signer, server, ses_bounce("reader@example.org", bounce_type="Transient"))
    first = handle_sns(db, verifier, body)
    again = handle_sns(db, verifier, body)
    assert not first.duplicate
    assert again == Applied(message_id(body), "Bounce", "duplicate", duplicate=True)
    assert subscriber(db, "reader@example.org")["soft_bounces"] == 1
    assert recorded(db) == [(message_id(body), TOPIC, "Bounce", "soft bounce counted 1")]
    # Even once it is too old to be accepted anew, a message already applied is acknowledged.
    later = SnsVerifier(cert_host_allowed=server.allows, clock=lambda: time.time() + 7200)
    assert handle_sns(db, later, body).duplicate
    with pytest.raises(NotificationRejected, match="minutes old"):
        handle_sns(
            db, later, signed(signer, server, ses_bounce("reader@example.org", bounce_type="Transient"))
        )
    assert subscriber(db, "reader@example.org")["soft_bounces"] == 1


def test_a_duplicate_applied_directly_changes_nothing(db: sqlite3.Connection) -> None:
    add(db, "reader@example.org")
    message = notification(ses_bounce("reader@example.org"), "https://unused", message_id="m-1")
    assert apply_notification(db, message).outcome == "bounced 1"
    set_status(db, subscriber(db, "reader@example.org")["id"], "active", "test: back by hand")
    assert apply_notification(db, message).duplicate
    assert subscriber(db, "reader@example.org")["status"] == "active"


def test_an_unknown_recipient_is_recorded_and_harmless(
    db: sqlite3.Connection, verifier: SnsVerifier, signer: Signer, server: CertServer
) -> None:
    add(db, "reader@example.org")
    body = signed(signer, server, ses_bounce("stranger@example.org", "not an address"))
    assert handle_sns(db, verifier, body).outcome == "unknown recipient 2"
    assert subscriber(db, "reader@example.org")["status"] == "active"
    assert recorded(db) == [(message_id(body), TOPIC, "Bounce", "unknown recipient 2")]


def test_recipients_match_by_case_display_name_and_punycode(db: sqlite3.Connection) -> None:
    add(db, "Reader@Example.org")
    add(db, "leser@bücher.example")
    add(db, "third@example.org")
    event = ses_bounce(
        '"Reader" <READER@example.ORG>', "Leser@XN--BCHER-KVA.example", "Third <third@example.org>"
    )
    applied = apply_notification(db, notification(event, "https://unused"))
    assert applied.outcome == "bounced 3"
    assert {row["status"] for row in db.execute("SELECT status FROM subscribers")} == {"bounced"}


def test_opt_outs_are_final_except_that_a_complaint_replaces_a_bounce(db: sqlite3.Connection) -> None:
    for address, status in (
        ("gone@example.org", "unsubscribed"),
        ("bounced@example.org", "bounced"),
        ("complained@example.org", "complained"),
        ("new@example.org", "pending"),
    ):
        add(db, address, status=status)
    bounce = apply_notification(
        db,
        notification(
            ses_bounce(
                "gone@example.org", "bounced@example.org", "complained@example.org", "new@example.org"
            ),
            "x",
        ),
    )
    assert bounce.outcome == "already unsubscribed 1, already bounced 1, already complained 1, bounced 1"
    complaint = apply_notification(
        db,
        notification(ses_complaint("gone@example.org", "bounced@example.org", "complained@example.org"), "x"),
    )
    assert complaint.outcome == "already unsubscribed 1, complained 1, already complained 1"
    statuses = dict(db.execute("SELECT email, status FROM subscribers").fetchall())
    assert statuses == {
        "gone@example.org": "unsubscribed",
        "bounced@example.org": "complained",
        "complained@example.org": "complained",
        "new@example.org": "bounced",
    }
    assert history(db, "gone@example.org") == [(None, "unsubscribed", "added (cli)")]


@pytest.mark.parametrize(
    "ses_event, kind",
    [
        (
            json.dumps({"eventType": "Delivery", "delivery": {"recipients": ["reader@example.org"]}}),
            "Delivery",
        ),
        (json.dumps({"eventType": "Open", "open": {}}), "Open"),
        (
            json.dumps({"notificationType": "AmazonSnsSubscriptionSucceeded", "message": "ok"}),
            "AmazonSnsSubscriptionSucceeded",
        ),
        ("Hello from the SNS console", "Notification"),
        ("[1, 2]", "Notification"),
    ],
)
def test_other_events_are_acknowledged_and_ignored(
    db: sqlite3.Connection,
    verifier: SnsVerifier,
    signer: Signer,
    server: CertServer,
    ses_event: str,
    kind: str,
) -> None:
    add(db, "reader@example.org")
    body = signed(signer, server, ses_event)
    assert handle_sns(db, verifier, body) == Applied(message_id(body), kind, "ignored")
    assert recorded(db) == [(message_id(body), TOPIC, kind, "ignored")]
    assert subscriber(db, "reader@example.org")["status"] == "active"
    assert handle_sns(db, verifier, body).duplicate


@pytest.mark.parametrize(
    "ses_event",
    [
        json.dumps({"eventType": "Bounce", "bounce": {"bounceType": "Permanent"}}),
        json.dumps({"eventType": "Complaint", "complaint": "nope"}),
    ],
)
def test_a_bounce_without_recipients_is_rejected_and_not_recorded(
    db: sqlite3.Connection, verifier: SnsVerifier, signer: Signer, server: CertServer, ses_event: str
) -> None:
    with pytest.raises(NotificationRejected, match="event without a"):
        handle_sns(db, verifier, signed(signer, server, ses_event))
    assert recorded(db) == []


@pytest.mark.parametrize(
    "ses_event",
    [
        ses_bounce("\ud800@example.org"),  # json.dumps escapes it; decoding the Message brings it back
        ses_bounce("ada@example.org", diagnostic="smtp; 550 \udfff"),
        ses_complaint("ada@example.org", feedback="\ud800"),
    ],
    ids=["address", "diagnostic", "feedback"],
)
def test_an_ses_event_holding_a_lone_surrogate_is_rejected_and_changes_nothing(
    db: sqlite3.Connection, verifier: SnsVerifier, signer: Signer, server: CertServer, ses_event: str
) -> None:
    add(db, "ada@example.org")
    with pytest.raises(NotificationRejected, match="not valid Unicode"):
        handle_sns(db, verifier, signed(signer, server, ses_event))
    assert recorded(db) == []
    assert subscriber(db, "ada@example.org")["status"] == "active"


def test_a_tampered_message_changes_nothing(
    db: sqlite3.Connection,
    verifier: SnsVerifier,
    signer: Signer,
    server: CertServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    add(db, "reader@example.org")
    message = json.loads(signed(signer, server, ses_bounce("someone@example.org")))
    message["Message"] = ses_bounce("reader@example.org")
    with (
        caplog.at_level(logging.WARNING),
        pytest.raises(NotificationRejected, match="signature does not match"),
    ):
        handle_sns(db, verifier, json.dumps(message).encode())
    assert subscriber(db, "reader@example.org")["status"] == "active"
    assert recorded(db) == []
    assert "rejected SNS message" in caplog.text


def test_a_subscription_confirmation_is_confirmed_once(
    db: sqlite3.Connection, verifier: SnsVerifier, signer: Signer, server: CertServer
) -> None:
    subscribe = f"{server.url}/confirm?Action=ConfirmSubscription&Token=2336412f"
    body = json.dumps(signer.sign(confirmation(f"{server.url}/cert.pem", subscribe))).encode()
    assert handle_sns(db, verifier, body) == Applied(
        message_id(body), "SubscriptionConfirmation", "confirmed"
    )
    assert handle_sns(db, verifier, body).duplicate
    assert server.requests == ["/cert.pem", subscribe.removeprefix(server.url)]
    assert recorded(db) == [(message_id(body), TOPIC, "SubscriptionConfirmation", "confirmed")]


def test_a_failed_confirmation_is_not_recorded(
    db: sqlite3.Connection, verifier: SnsVerifier, signer: Signer, server: CertServer
) -> None:
    body = json.dumps(
        signer.sign(confirmation(f"{server.url}/cert.pem", "https://evil.example.com/c"))
    ).encode()
    with pytest.raises(NotificationRejected, match="SubscribeURL"):
        handle_sns(db, verifier, body)
    assert recorded(db) == []


def test_an_unsubscribe_confirmation_is_acknowledged_and_logged(
    db: sqlite3.Connection,
    verifier: SnsVerifier,
    signer: Signer,
    server: CertServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    message = confirmation(f"{server.url}/cert.pem", f"{server.url}/confirm", kind="UnsubscribeConfirmation")
    body = json.dumps(signer.sign(message, "2")).encode()
    with caplog.at_level(logging.WARNING, logger="pipeline.events.apply"):
        assert handle_sns(db, verifier, body).outcome == "acknowledged"
    assert "unsubscribed this endpoint" in caplog.text
    assert server.requests == ["/cert.pem"]  # no GET of its SubscribeURL


def test_a_busy_database_defers(
    db: sqlite3.Connection, verifier: SnsVerifier, signer: Signer, server: CertServer, tmp_path: Path
) -> None:
    add(db, "reader@example.org")
    db.execute("PRAGMA busy_timeout = 50")
    other = sqlite3.connect(tmp_path / "state" / DB_NAME, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    body = signed(signer, server, ses_bounce("reader@example.org"))
    try:
        with pytest.raises(NotificationDeferred, match="database busy"):
            handle_sns(db, verifier, body)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert handle_sns(db, verifier, body).outcome == "bounced 1"


class WatchedLock:
    """A lock that tells whether it is held right now."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.entered = 0

    def __enter__(self) -> None:
        self._lock.acquire()
        self.entered += 1

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def held(self) -> bool:
        return self._lock.locked()


@pytest.mark.parametrize("kind", ["Notification", "SubscriptionConfirmation"])
def test_the_database_lock_is_not_held_while_fetching(
    db: sqlite3.Connection, signer: Signer, server: CertServer, kind: str
) -> None:
    lock = WatchedLock()
    held_while_fetching: list[bool] = []

    def fetch(url: str) -> bytes:
        held_while_fetching.append(lock.held())
        return http_get(url)

    verifier = SnsVerifier(cert_host_allowed=server.allows, fetch=fetch)
    add(db, "reader@example.org")
    if kind == "Notification":
        body = signed(signer, server, ses_bounce("reader@example.org"))
        outcome = "bounced 1"
    else:
        subscribe = f"{server.url}/confirm?Action=ConfirmSubscription&Token=2336412f"
        body = json.dumps(signer.sign(confirmation(f"{server.url}/cert.pem", subscribe))).encode()
        outcome = "confirmed"
    assert handle_sns(db, verifier, body, db_lock=lock).outcome == outcome
    assert held_while_fetching == [False] * len(server.requests) and held_while_fetching
    assert lock.entered >= 2 and not lock.held()  # the lock was used for the database work
    assert handle_sns(db, verifier, body, db_lock=lock).duplicate


def test_a_message_with_an_integer_json_cannot_read_is_ignored(db: sqlite3.Connection) -> None:
    add(db, "reader@example.org")
    event = '{"eventType": "Bounce", "n": ' + "9" * 5000 + "}"  # json.loads: ValueError, not JSONDecodeError
    applied = apply_notification(db, notification(event, "x"))
    assert applied.outcome == "ignored"
    assert subscriber(db, "reader@example.org")["status"] == "active"


# --- A bounced subscriber gets no more issues -----------------------------------------------------


def cli_env(**changes: str) -> dict[str, str]:
    return aws_cli_env(clean_env()) | changes


def run(newsletter: Newsletter, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_cli(newsletter.root, *args, env=cli_env(**env))


@pytest.mark.slow  # the console script in a subprocess
def test_a_bounced_subscriber_is_not_sent_the_next_issue(newsletter: Newsletter) -> None:
    config = newsletter.config()
    db = open_db(config.paths.state)
    for name in ("ada", "bob", "cy"):
        add(db, f"{name}@example.org")
    apply_notification(db, notification(ses_bounce("bob@example.org"), "x"))
    apply_notification(db, notification(ses_complaint("cy@example.org"), "x"))
    db.close()
    newsletter.write_issue(1)
    result = run(newsletter, "send", "1")
    assert result.returncode == 0, result.stderr
    assert "1 sent" in result.stdout
    mailed = [
        email.message_from_bytes(path.read_bytes(), policy=email.policy.default)["To"]
        for path in (newsletter.root / "outbox" / "new").iterdir()
    ]
    assert [str(to) for to in mailed] == ["ada@example.org"]


# --- SQS through moto's server -------------------------------------------------------------------


class Queue:
    def __init__(self, endpoint: str, visibility: int = 30) -> None:
        self.sqs = boto3.client("sqs", endpoint_url=endpoint, region_name=REGION)
        name = f"ses-events-{uuid.uuid4().hex[:12]}"
        self.url = self.sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": str(visibility)})[
            "QueueUrl"
        ]

    def put(self, body: bytes | str) -> None:
        self.sqs.send_message(
            QueueUrl=self.url, MessageBody=body.decode() if isinstance(body, bytes) else body
        )

    def count(self) -> int:
        """Messages still in the queue, visible or not."""
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        found = self.sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=names)["Attributes"]
        return sum(int(found[name]) for name in names)


def configure_events(newsletter: Newsletter, queue_url: str, **settings: str) -> None:
    lines = ["", "[events]", f'queue_url = "{queue_url}"', f'region = "{REGION}"']
    lines += [f'{key} = "{value}"' for key, value in settings.items()]
    text = newsletter.config_path.read_text(encoding="utf-8")
    newsletter.config_path.write_text(text + "\n".join(lines) + "\n", encoding="utf-8")


def statuses(newsletter: Newsletter) -> dict[str, tuple[str, int]]:
    db = open_db(newsletter.config().paths.state)
    try:
        return {
            row["email"]: (row["status"], row["soft_bounces"])
            for row in db.execute("SELECT * FROM subscribers")
        }
    finally:
        db.close()


def add_readers(newsletter: Newsletter, *addresses: str) -> None:
    db = open_db(newsletter.config().paths.state)
    for address in addresses:
        add(db, address)
    db.close()


def test_pull_applies_signed_messages_rejects_forgeries_and_empties_the_queue(
    newsletter: Newsletter, sqs_env: str, verifier: SnsVerifier, signer: Signer, server: CertServer
) -> None:
    queue = Queue(sqs_env)
    configure_events(newsletter, queue.url)
    add_readers(newsletter, "ada@example.org", "bob@example.org", "cy@example.org", "dee@example.org")
    bounce = signed(signer, server, ses_bounce("ada@example.org"))
    tampered = json.loads(signed(signer, server, ses_bounce("nobody@example.org")))
    tampered["Message"] = ses_bounce("dee@example.org")
    unsigned = json.loads(signed(signer, server, ses_complaint("dee@example.org")))
    del unsigned["Signature"]
    for body in (
        bounce,
        signed(signer, server, ses_complaint("bob@example.org"), version="2"),
        signed(signer, server, ses_bounce("cy@example.org", bounce_type="Transient")),
        signed(signer, server, json.dumps({"eventType": "Delivery", "delivery": {}})),
        bounce,  # SQS delivers at least once
        json.dumps(tampered),
        json.dumps(unsigned),
        "not json at all",
    ):
        queue.put(body)
    report = pull(newsletter.config(), wait_seconds=0, verifier=verifier)
    assert (report.received, report.applied, report.duplicates, report.rejected, report.left) == (
        8,
        4,
        1,
        3,
        0,
    )
    assert statuses(newsletter) == {
        "ada@example.org": ("bounced", 0),
        "bob@example.org": ("complained", 0),
        "cy@example.org": ("active", 1),
        "dee@example.org": ("active", 0),
    }
    assert queue.count() == 0
    lines = report.lines()
    assert lines[0] == "8 received: 4 applied, 1 duplicate(s), 3 rejected, 0 left in the queue"
    assert sum("rejected: SNS message" in line for line in lines) == 3
    assert server.requests == ["/cert.pem"]


def test_pull_leaves_a_message_it_cannot_verify_now_in_the_queue(
    newsletter: Newsletter, sqs_env: str, signer: Signer
) -> None:
    down = CertServer()
    down.files["/cert.pem"] = signer.pem
    down.start().stop()  # its port, with nobody listening
    queue = Queue(sqs_env, visibility=0)  # the message is back at once: pull must still stop
    configure_events(newsletter, queue.url)
    add_readers(newsletter, "ada@example.org")
    queue.put(signed(signer, down, ses_bounce("ada@example.org")))
    later = [0.0]
    verifier = SnsVerifier(cert_host_allowed=down.allows, clock=lambda: time.time() + later[0])
    report = pull(
        newsletter.config(), wait_seconds=0, verifier=verifier, most=50
    )  # most: no hang if it loops
    assert (report.received, report.applied, report.rejected, report.left) == (1, 0, 0, 1)
    assert "left in the queue: SNS message" in report.lines()[1] and "cannot fetch" in report.lines()[1]
    assert queue.count() == 1
    assert statuses(newsletter)["ada@example.org"] == ("active", 0)
    down.start()  # the certificate host is back
    later[0] = DEFERRED_FETCH_SECONDS + 1  # and the failure is no longer remembered
    try:
        report = pull(newsletter.config(), wait_seconds=0, verifier=verifier)
    finally:
        down.stop()
    assert (report.received, report.applied, report.left) == (1, 1, 0)
    assert queue.count() == 0
    assert statuses(newsletter)["ada@example.org"] == ("bounced", 0)


@pytest.mark.parametrize(
    "failure",
    [sqlite3.OperationalError("database is locked"), NotificationDeferred("state database busy")],
    ids=["database-locked", "deferred"],
)
def test_pull_leaves_a_message_it_cannot_apply_now_in_the_queue(
    newsletter: Newsletter,
    sqs_env: str,
    verifier: SnsVerifier,
    signer: Signer,
    server: CertServer,
    monkeypatch: pytest.MonkeyPatch,
    failure: Exception,
) -> None:
    """Verified, but the database cannot take it now: never deleted, never counted as rejected."""
    queue = Queue(sqs_env, visibility=0)
    configure_events(newsletter, queue.url)
    add_readers(newsletter, "ada@example.org")
    queue.put(signed(signer, server, ses_bounce("ada@example.org")))

    def busy(db: sqlite3.Connection, message: dict[str, str]) -> Applied:
        raise failure

    with monkeypatch.context() as patch:
        patch.setattr("pipeline.events.apply.apply_notification", busy)
        report = pull(newsletter.config(), wait_seconds=0, verifier=verifier, most=50)
    assert (report.received, report.applied, report.rejected, report.left) == (1, 0, 0, 1)
    assert report.lines()[1].startswith("  left in the queue: ")
    assert queue.count() == 1
    assert statuses(newsletter)["ada@example.org"] == ("active", 0)
    report = pull(newsletter.config(), wait_seconds=0, verifier=verifier)
    assert (report.received, report.applied, report.left) == (1, 1, 0)
    assert queue.count() == 0


def test_pull_rejects_and_deletes_a_body_json_cannot_read(
    newsletter: Newsletter, sqs_env: str, verifier: SnsVerifier
) -> None:
    queue = Queue(sqs_env)
    configure_events(newsletter, queue.url)
    queue.put('{"Type": ' + "1" * 5000 + "}")  # json.loads raises ValueError: too many digits for int()
    report = pull(newsletter.config(), wait_seconds=0, verifier=verifier)
    assert (report.received, report.rejected, report.left) == (1, 1, 0)
    assert "not JSON" in report.lines()[1]
    assert queue.count() == 0


def test_pull_rejects_fields_of_the_wrong_json_type_and_goes_on(
    newsletter: Newsletter, sqs_env: str, verifier: SnsVerifier, signer: Signer, server: CertServer
) -> None:
    queue = Queue(sqs_env)
    configure_events(newsletter, queue.url)
    add_readers(newsletter, "ada@example.org", "bob@example.org")
    bad = wrongly_typed(json.loads(signed(signer, server, ses_bounce("ada@example.org"))))
    for body in [*bad, signed(signer, server, ses_bounce("bob@example.org")).decode()]:
        queue.put(body)
    report = pull(newsletter.config(), wait_seconds=0, verifier=verifier)
    assert (report.received, report.applied, report.rejected, report.left) == (len(bad) + 1, 1, len(bad), 0)
    assert all(line.startswith("  rejected: SNS message") for line in report.lines()[1:]), report.lines()
    assert statuses(newsletter) == {"ada@example.org": ("active", 0), "bob@example.org": ("bounced", 0)}
    assert queue.count() == 0


def test_pull_goes_on_past_a_message_that_raises_an_unexpected_error(
    newsletter: Newsletter, sqs_env: str, server: CertServer, signer: Signer
) -> None:
    class Buggy(SnsVerifier):
        def verify_signature(self, body: bytes) -> dict[str, str]:
            if b"ada@example.org" in body:
                raise KeyError("a bug")
            return super().verify_signature(body)

    queue = Queue(sqs_env)
    configure_events(newsletter, queue.url)
    add_readers(newsletter, "ada@example.org", "bob@example.org")
    queue.put(signed(signer, server, ses_bounce("ada@example.org")))
    queue.put(signed(signer, server, ses_bounce("bob@example.org")))
    report = pull(newsletter.config(), wait_seconds=0, verifier=Buggy(cert_host_allowed=server.allows))
    assert (report.received, report.applied, report.rejected, report.left) == (2, 1, 0, 1)
    assert "left in the queue: unexpected KeyError (a bug; see the log)" in report.lines()[1]
    assert statuses(newsletter) == {"ada@example.org": ("active", 0), "bob@example.org": ("bounced", 0)}
    assert queue.count() == 1  # kept for a fixed version to apply, never deleted unapplied


def test_pull_accepts_any_topic_while_topic_arns_is_empty_but_says_so(
    newsletter: Newsletter,
    sqs_env: str,
    signer: Signer,
    server: CertServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = Queue(sqs_env)
    configure_events(newsletter, queue.url)
    add_readers(newsletter, "ada@example.org", "bob@example.org")
    queue.put(signed(signer, server, ses_bounce("ada@example.org"), topic="arn:aws:sns:us-east-1:1:any"))
    queue.put(signed(signer, server, ses_bounce("bob@example.org")))
    with caplog.at_level(logging.WARNING, logger="pipeline.events.sqs"):
        report = pull(
            newsletter.config(), wait_seconds=0, verifier=SnsVerifier(cert_host_allowed=server.allows)
        )
    assert (report.received, report.applied) == (2, 2)
    warnings = [r.getMessage() for r in caplog.records if r.name == "pipeline.events.sqs"]
    assert len(warnings) == 1 and "[events] topic_arns is empty" in warnings[0], warnings
    # With a topic list: no warning, and only those topics.
    caplog.clear()
    queue.put(signed(signer, server, ses_bounce("ada@example.org"), topic="arn:aws:sns:us-east-1:1:any"))
    with caplog.at_level(logging.WARNING, logger="pipeline.events.sqs"):
        report = pull(
            newsletter.config(),
            wait_seconds=0,
            verifier=SnsVerifier(topic_arns=(TOPIC,), cert_host_allowed=server.allows),
        )
    assert report.rejected == 1
    assert not [r for r in caplog.records if r.name == "pipeline.events.sqs"]


def test_pull_stops_after_most(
    newsletter: Newsletter, sqs_env: str, verifier: SnsVerifier, signer: Signer, server: CertServer
) -> None:
    queue = Queue(sqs_env)
    configure_events(newsletter, queue.url)
    for _ in range(3):
        queue.put(signed(signer, server, ses_bounce("nobody@example.org")))
    report = pull(newsletter.config(), wait_seconds=0, most=2, verifier=verifier)
    assert (report.received, report.applied) == (2, 2)
    assert queue.count() == 1


def test_pull_without_a_queue_url_is_one_line(newsletter: Newsletter) -> None:
    with pytest.raises(EventsError, match=r"events\.queue_url is empty"):
        pull(newsletter.config(), wait_seconds=0)


def test_pull_from_a_missing_queue_or_without_credentials_is_one_line(
    newsletter: Newsletter, sqs_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = Queue(sqs_env)
    configure_events(newsletter, queue.url + "-missing")
    with pytest.raises(EventsError, match=r"cannot read the SQS queue .*-missing: .*NonExistentQueue"):
        pull(newsletter.config(), wait_seconds=0)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(EventsError, match="no AWS credentials"):
        pull(newsletter.config(), wait_seconds=0)


def test_pull_from_an_unreachable_endpoint_is_one_line(
    newsletter: Newsletter, sqs_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = CertServer().start()
    closed.stop()
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", closed.url)
    configure_events(newsletter, f"{closed.url}/123456789012/ses-events")
    started = time.monotonic()
    with pytest.raises(EventsError, match="cannot read the SQS queue"):
        pull(newsletter.config(), wait_seconds=0)
    assert time.monotonic() - started < 10


def test_pull_with_a_given_client(
    newsletter: Newsletter, sqs_env: str, verifier: SnsVerifier, signer: Signer, server: CertServer
) -> None:
    queue = Queue(sqs_env)
    configure_events(newsletter, queue.url)
    queue.put(signed(signer, server, ses_bounce("nobody@example.org")))
    report = pull(newsletter.config(), wait_seconds=0, verifier=verifier, client=queue.sqs)
    assert isinstance(report, PullReport) and report.applied == 1 and queue.count() == 0


# --- The console script ---------------------------------------------------------------------------


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.slow  # the console script in a subprocess
def test_cli_pull_without_a_queue_url_fails_in_one_line(newsletter: Newsletter) -> None:
    line = one_line_error(run(newsletter, "events", "pull", "--wait", "0"))
    assert line.startswith("error: ") and "events.queue_url is empty" in line


@pytest.mark.slow  # the console script in a subprocess
def test_cli_pull_rejects_and_deletes_forgeries(
    newsletter: Newsletter, sqs_env: str, signer: Signer, server: CertServer
) -> None:
    queue = Queue(sqs_env)
    configure_events(newsletter, queue.url)
    add_readers(newsletter, "ada@example.org")
    local = signed(signer, server, ses_bounce("ada@example.org"))  # validly signed, but not by an SNS host
    unsigned = json.loads(signed(signer, server, ses_bounce("ada@example.org")))
    del unsigned["Signature"]
    queue.put(local)
    queue.put(json.dumps(unsigned))
    endpoint = {"AWS_ENDPOINT_URL_SQS": sqs_env}
    result = run(newsletter, "events", "pull", "--wait", "0", **endpoint)
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.splitlines()[0]
        == "2 received: 0 applied, 0 duplicate(s), 2 rejected, 0 left in the queue"
    )
    assert "is not an https SNS host of AWS" in result.stdout and "no Signature" in result.stdout
    assert server.requests == []
    assert queue.count() == 0
    assert statuses(newsletter)["ada@example.org"] == ("active", 0)
    again = run(newsletter, "events", "pull", "--wait", "0", **endpoint)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [
        "0 received: 0 applied, 0 duplicate(s), 0 rejected, 0 left in the queue"
    ]


@pytest.mark.slow  # the console script in a subprocess
def test_cli_pull_from_a_missing_queue_fails_in_one_line(newsletter: Newsletter, sqs_env: str) -> None:
    configure_events(newsletter, f"{sqs_env}/123456789012/no-such-queue")
    line = one_line_error(run(newsletter, "events", "pull", "--wait", "0", AWS_ENDPOINT_URL_SQS=sqs_env))
    assert "cannot read the SQS queue" in line and "no-such-queue" in line


# --- Bounces and complaints counted against the campaign that sent the message ---------------------


def sent_campaign(db: sqlite3.Connection, issue: int, provider_ids: dict[str, str]) -> int:
    """A campaign of ``issue`` whose messages to each address went out with SES's id ``provider_ids[address]``."""
    stamp = "2026-11-23T10:00:00+00:00"
    campaign_id = int(
        db.execute(
            "INSERT INTO campaigns (issue, content_hash, status, transport, created_at, updated_at)"
            " VALUES (?, 'x', 'sending', 'ses', ?, ?)",
            (issue, stamp, stamp),
        ).lastrowid
        or 0
    )
    for address, provider_id in provider_ids.items():
        db.execute(
            "INSERT INTO deliveries (campaign_id, subscriber_id, status, provider_id, attempts, updated_at)"
            " VALUES (?, ?, 'sent', ?, 1, ?)",
            (campaign_id, subscriber(db, address)["id"], provider_id, stamp),
        )
    return campaign_id


def feedback(db: sqlite3.Connection) -> set[tuple[int, str, str]]:
    rows = db.execute(
        "SELECT f.campaign_id, f.kind, s.email FROM campaign_feedback f JOIN subscribers s ON s.id = f.subscriber_id"
    )
    return {tuple(row) for row in rows}  # type: ignore[misc]


def test_hard_bounces_and_complaints_count_against_the_campaign_whose_message_it_was(
    db: sqlite3.Connection, verifier: SnsVerifier, signer: Signer, server: CertServer
) -> None:
    for name in ("ada", "bob", "cy", "dee", "eve"):
        add(db, f"{name}@example.org")
    first = sent_campaign(db, 1, {f"{n}@example.org": f"ses-1-{n}" for n in ("ada", "bob", "cy", "dee")})
    second = sent_campaign(db, 2, {"ada@example.org": "ses-2-ada", "eve@example.org": "Ok ses-2-eve"})
    bodies = [
        signed(signer, server, ses_bounce("ada@example.org", ses_message_id="ses-1-ada")),
        signed(signer, server, ses_complaint("bob@example.org", ses_message_id="ses-1-bob"), version="2"),
        signed(
            signer, server, ses_bounce("cy@example.org", bounce_type="Transient", ses_message_id="ses-1-cy")
        ),
        # Through SES's SMTP interface the ledger keeps the reply, "Ok <id>".
        signed(signer, server, ses_complaint("eve@example.org", ses_message_id="ses-2-eve")),
        # No campaign sent this one (a test copy, another program): it counts for none.
        signed(signer, server, ses_bounce("dee@example.org", ses_message_id="ses-test-copy")),
    ]
    for body in bodies:
        handle_sns(db, verifier, body)
    expected = {
        (first, "bounce", "ada@example.org"),
        (first, "complaint", "bob@example.org"),
        (second, "complaint", "eve@example.org"),
    }
    assert feedback(db) == expected
    # SNS redelivers, and SES may report one message twice (a bounce, then a complaint counts as both).
    handle_sns(db, verifier, bodies[0])
    handle_sns(
        db, verifier, signed(signer, server, ses_bounce("ada@example.org", ses_message_id="ses-1-ada"))
    )
    handle_sns(
        db, verifier, signed(signer, server, ses_complaint("ada@example.org", ses_message_id="ses-1-ada"))
    )
    assert feedback(db) == expected | {(first, "complaint", "ada@example.org")}


def test_a_rejected_notification_counts_for_no_campaign(
    db: sqlite3.Connection, verifier: SnsVerifier, signer: Signer, server: CertServer
) -> None:
    add(db, "ada@example.org")
    sent_campaign(db, 1, {"ada@example.org": "ses-1-ada"})
    tampered = json.loads(signed(signer, server, ses_bounce("nobody@example.org", ses_message_id="x")))
    tampered["Message"] = ses_bounce("ada@example.org", ses_message_id="ses-1-ada")
    with pytest.raises(NotificationRejected):
        handle_sns(db, verifier, json.dumps(tampered).encode())
    assert feedback(db) == set()
