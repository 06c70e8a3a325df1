"""SNS message verification against real signatures and a real certificate server on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pipeline.errors import NotificationDeferred, NotificationRejected
from pipeline.events.sns import (
    DEFERRED_FETCH_SECONDS,
    FAILED_FETCH_SECONDS,
    SnsVerifier,
    is_sns_certificate_url,
    is_sns_host,
)
from tests.support.fakes import OffsetClock
from tests.support.sns import (
    OTHER_TOPIC,
    TOPIC,
    CertServer,
    Signer,
    cert_server,
    confirmation,
    notification,
    ses_bounce,
)


@pytest.fixture(scope="module")
def stranger() -> Signer:
    """Someone else's key and certificate."""
    return Signer()


@pytest.fixture
def server(signer: Signer, stranger: Signer) -> Iterator[CertServer]:
    with cert_server(signer) as running:
        running.files["/stranger.pem"] = stranger.pem
        running.files["/not-a-cert.pem"] = b"hello"
        running.files["/huge.pem"] = b"x" * (65 * 1024)
        yield running


@pytest.fixture
def verifier(server: CertServer) -> SnsVerifier:
    return SnsVerifier(cert_host_allowed=server.allows)


def body(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode("utf-8")


def bounce(server: CertServer, **fields: Any) -> dict[str, Any]:
    return notification(ses_bounce("reader@example.org"), f"{server.url}/cert.pem", **fields)


def rejected(verifier: SnsVerifier, message: dict[str, Any] | bytes) -> str:
    """The one-line reason; never the 'try later' kind."""
    with pytest.raises(NotificationRejected) as caught:
        verifier.verify(message if isinstance(message, bytes) else body(message))
    assert type(caught.value) is NotificationRejected, caught.value
    reason = str(caught.value)
    assert "\n" not in reason
    return reason


# --- Accepted --------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1", "2"])
def test_a_signed_notification_is_accepted(
    verifier: SnsVerifier, server: CertServer, signer: Signer, version: str
) -> None:
    message = signer.sign(bounce(server), version)
    verified = verifier.verify(body(message))
    assert verified["MessageId"] == message["MessageId"]
    assert json.loads(verified["Message"])["bounce"]["bounceType"] == "Permanent"
    assert server.requests == ["/cert.pem"]


@pytest.mark.parametrize("version", ["1", "2"])
def test_a_signed_notification_with_a_subject_is_accepted(
    verifier: SnsVerifier, server: CertServer, signer: Signer, version: str
) -> None:
    message = signer.sign(bounce(server, subject="Amazon SES Email Event Notification"), version)
    assert verifier.verify(body(message))["Subject"] == "Amazon SES Email Event Notification"


def test_a_null_subject_counts_as_no_subject(
    verifier: SnsVerifier, server: CertServer, signer: Signer
) -> None:
    message = signer.sign(bounce(server))
    message["Subject"] = None
    assert "Subject" not in verifier.verify(body(message))


def test_the_certificate_is_fetched_once_for_many_messages(
    verifier: SnsVerifier, server: CertServer, signer: Signer
) -> None:
    for version in ("1", "2", "1"):
        verifier.verify(body(signer.sign(bounce(server), version)))
    assert server.requests == ["/cert.pem"]


def test_the_allowed_topics_are_accepted(server: CertServer, signer: Signer) -> None:
    verifier = SnsVerifier(topic_arns=(OTHER_TOPIC, TOPIC), cert_host_allowed=server.allows)
    assert verifier.verify(body(signer.sign(bounce(server))))["TopicArn"] == TOPIC


# --- Tampered, forged, unsigned ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("Message", ses_bounce("someone-else@example.org")),
        ("Subject", "Something else"),
        ("TopicArn", OTHER_TOPIC),
        ("MessageId", "another-id"),
        ("Timestamp", "2030-01-01T00:00:00.000Z"),
        ("Type", "SubscriptionConfirmation"),
    ],
)
def test_a_tampered_field_is_rejected(
    verifier: SnsVerifier, server: CertServer, signer: Signer, field: str, value: str
) -> None:
    message = signer.sign(bounce(server, subject="Amazon SES Email Event Notification"))
    message[field] = value
    if field == "Type":
        message.update(Token="t", SubscribeURL=f"{server.url}/confirm")
    reason = rejected(verifier, message)
    assert "signature does not match" in reason or "Timestamp" in reason


def test_a_removed_subject_is_rejected(verifier: SnsVerifier, server: CertServer, signer: Signer) -> None:
    message = signer.sign(bounce(server, subject="Amazon SES Email Event Notification"))
    del message["Subject"]
    assert "signature does not match" in rejected(verifier, message)


def test_a_signature_from_another_key_is_rejected(
    verifier: SnsVerifier, server: CertServer, stranger: Signer
) -> None:
    message = stranger.sign(bounce(server))  # points at the real certificate
    assert "signature does not match" in rejected(verifier, message)


def test_a_certificate_of_the_signer_on_an_allowed_host_must_also_sign(
    verifier: SnsVerifier, server: CertServer, signer: Signer
) -> None:
    message = signer.sign(notification(ses_bounce("a@example.org"), f"{server.url}/stranger.pem"))
    assert "signature does not match" in rejected(verifier, message)


@pytest.mark.parametrize(
    "missing", ["Signature", "SignatureVersion", "SigningCertURL", "MessageId", "Timestamp"]
)
def test_an_unsigned_or_incomplete_message_is_rejected(
    verifier: SnsVerifier, server: CertServer, signer: Signer, missing: str
) -> None:
    message = signer.sign(bounce(server))
    del message[missing]
    assert f"no {missing}" in rejected(verifier, message)
    assert server.requests == []


def test_a_signature_that_is_not_base64_is_rejected(
    verifier: SnsVerifier, server: CertServer, signer: Signer
) -> None:
    message = signer.sign(bounce(server))
    message["Signature"] = "not base64!"
    assert "not base64" in rejected(verifier, message)


@pytest.mark.parametrize("version", ["3", "", "0", "1.0"])
def test_an_unknown_signature_version_is_rejected(
    verifier: SnsVerifier, server: CertServer, signer: Signer, version: str
) -> None:
    message = signer.sign(bounce(server))
    message["SignatureVersion"] = version
    assert "unknown SignatureVersion" in rejected(verifier, message)
    assert server.requests == []


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"Type": "Surprise"}', "not an SNS message type"),
        (b'{"eventType": "Bounce", "bounce": {}}', "turn raw message delivery off"),
        (b'{"Type": "Notification", "Message": {"a": 1}}', "Message is not a string"),
        # int() refuses more than 4300 digits: json.loads raises a plain ValueError
        (b'{"Type": ' + b"1" * 5000 + b"}", "not JSON"),
        (b'{"MessageId": "x", "Type": "Notification", "n": ' + b"9" * 4301 + b"}", "not JSON"),
        (b"[" * 100_000, "not JSON"),
    ],
)
def test_malformed_bodies_are_rejected(
    verifier: SnsVerifier, server: CertServer, raw: bytes, reason: str
) -> None:
    assert reason in rejected(verifier, raw)
    assert server.requests == []


def test_a_certificate_url_serving_no_certificate_is_rejected(
    verifier: SnsVerifier, server: CertServer, signer: Signer
) -> None:
    for path, reason in (
        ("/not-a-cert.pem", "not a PEM certificate"),
        ("/missing.pem", "HTTP 404"),
        ("/huge.pem", "more than 64 KB"),
    ):
        message = signer.sign(notification(ses_bounce("a@example.org"), f"{server.url}{path}"))
        assert reason in rejected(verifier, message)


# --- Hosts -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example.com/SimpleNotificationService-abc.pem",
        "https://sns.us-east-1.amazonaws.com.evil.com/SimpleNotificationService-abc.pem",
        "https://notsns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
        "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
        "https://sns.s3.amazonaws.com/cert.pem",
    ],
)
def test_a_certificate_on_a_foreign_host_is_never_fetched(signer: Signer, url: str) -> None:
    fetched: list[str] = []
    verifier = SnsVerifier(fetch=lambda u: fetched.append(u) or signer.pem)  # type: ignore[func-returns-value]
    message = signer.sign(notification(ses_bounce("a@example.org"), url))
    assert "is not an https SNS host of AWS" in rejected(verifier, message)
    assert fetched == []


@pytest.mark.parametrize(
    "url, expected",
    [
        (
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-9c6465fa7f48f5cacd23014631ec1136.pem",
            True,
        ),
        ("https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-0123abcd.pem", True),
        ("https://sns.us-east-1.amazonaws.com/x.pem", False),
        ("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-.pem", False),
        ("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-ABCDEF.pem", False),
        ("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem.evil", False),
        ("https://sns.us-east-1.amazonaws.com/bucket/SimpleNotificationService-abc.pem", False),
        ("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem?x=1", False),
        ("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem?", False),
        ("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem#x", False),
        ("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc%2epem", False),
        ("http://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem", False),
        ("https://sns.s3.amazonaws.com/SimpleNotificationService-abc.pem", False),
        ("https://evil.example/SimpleNotificationService-abc.pem", False),
    ],
)
def test_is_sns_certificate_url(url: str, expected: bool) -> None:
    assert is_sns_certificate_url(url) is expected


def test_the_default_rule_fetches_only_sns_certificate_paths(signer: Signer) -> None:
    fetched: list[str] = []

    def fetch(url: str) -> bytes:
        fetched.append(url)
        return signer.pem

    verifier = SnsVerifier(fetch=fetch)
    for path in ("/x.pem", "/SimpleNotificationService-xyz.pem", "/a/SimpleNotificationService-ab.pem"):
        message = signer.sign(
            notification(ses_bounce("a@example.org"), f"https://sns.us-east-1.amazonaws.com{path}")
        )
        assert "is not an SNS signing certificate" in rejected(verifier, message)
    assert fetched == []
    good = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem"
    assert verifier.verify(body(signer.sign(notification(ses_bounce("a@example.org"), good))))
    assert fetched == [good]


def test_a_failed_certificate_is_not_fetched_again_for_a_minute(server: CertServer, signer: Signer) -> None:
    clock = OffsetClock()
    verifier = SnsVerifier(cert_host_allowed=server.allows, clock=clock)
    for path, reason in (("/missing.pem", "HTTP 404"), ("/not-a-cert.pem", "not a PEM certificate")):
        message = signer.sign(notification(ses_bounce("a@example.org"), f"{server.url}{path}"))
        for _ in range(5):  # a stream of forged messages naming it
            assert reason in rejected(verifier, message)
    assert server.requests == ["/missing.pem", "/not-a-cert.pem"]
    clock.advance(FAILED_FETCH_SECONDS - 1)
    assert "HTTP 404" in rejected(
        verifier, signer.sign(notification(ses_bounce("a@example.org"), f"{server.url}/missing.pem"))
    )
    assert len(server.requests) == 2
    clock.advance(2)
    server.files["/missing.pem"] = signer.pem  # it is there now
    assert verifier.verify(
        body(signer.sign(notification(ses_bounce("a@example.org"), f"{server.url}/missing.pem")))
    )
    assert server.requests[2:] == ["/missing.pem"]


def test_the_default_rule_refuses_the_local_server_without_asking_it(
    server: CertServer, signer: Signer
) -> None:
    message = signer.sign(bounce(server))
    assert "SigningCertURL" in rejected(SnsVerifier(), message)
    assert server.requests == []


def test_the_relaxed_rule_allows_only_its_own_server(
    verifier: SnsVerifier, server: CertServer, signer: Signer
) -> None:
    elsewhere = f"http://127.0.0.1:{server.port + 1}/cert.pem"
    assert "SigningCertURL" in rejected(
        verifier, signer.sign(notification(ses_bounce("a@example.org"), elsewhere))
    )


@pytest.mark.parametrize(
    "url, expected",
    [
        (
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-9c6465fa7f48f5cacd23014631ec1136.pem",
            True,
        ),
        ("https://sns.eu-west-1.amazonaws.com/x.pem", True),
        ("https://sns.us-gov-west-1.amazonaws.com/x.pem", True),
        ("https://sns.ap-southeast-2.amazonaws.com/x.pem", True),
        ("https://SNS.US-EAST-1.AMAZONAWS.COM/x.pem", True),
        ("https://sns.cn-north-1.amazonaws.com.cn/x.pem", True),
        ("https://sns.us-east-1.amazonaws.com:443/x.pem", True),
        ("https://sns.us-east-1.amazonaws.com:8443/x.pem", False),
        ("http://sns.us-east-1.amazonaws.com/x.pem", False),
        ("https://sns.amazonaws.com/x.pem", False),
        ("https://sns.us-east-1.amazonaws.com.evil.com/x.pem", False),
        ("https://notsns.us-east-1.amazonaws.com/x.pem", False),
        ("https://sns.s3.amazonaws.com/x.pem", False),  # an S3 bucket named "sns"
        ("https://sns.evil.us-east-1.amazonaws.com/x.pem", False),
        ("https://evil.com@sns.us-east-1.amazonaws.com/x.pem", False),
        ("https://sns.us-east-1.amazonaws.com@evil.com/x.pem", False),
        ("https://evil.com\\@sns.us-east-1.amazonaws.com/x.pem", False),
        ("https://sns.us-east-1.amazonaws.com\\.evil.com/x.pem", False),
        ("https://sns.us-east-1.amazonaws.com.cn.evil.com/x.pem", False),
        ("https://sns.us-east-1.amazonaws.com /x.pem", False),
        ("https://sns.us-east-1.amazonaws.com:bad/x.pem", False),
        ("https://sns.us-east-1.amazonaws.com./x.pem", False),
        ("file:///etc/passwd", False),
        ("", False),
        ("sns.us-east-1.amazonaws.com/x.pem", False),
    ],
)
def test_is_sns_host(url: str, expected: bool) -> None:
    assert is_sns_host(url) is expected


# --- Topic, age ------------------------------------------------------------------------------------


def test_a_topic_outside_the_allowed_list_is_rejected_before_fetching(
    server: CertServer, signer: Signer
) -> None:
    verifier = SnsVerifier(topic_arns=(OTHER_TOPIC,), cert_host_allowed=server.allows)
    assert "is not in events.topic_arns" in rejected(verifier, signer.sign(bounce(server)))
    assert server.requests == []


def test_an_old_message_is_rejected(verifier: SnsVerifier, server: CertServer, signer: Signer) -> None:
    assert "minutes old" in rejected(verifier, signer.sign(bounce(server, seconds_ago=3601)))
    assert verifier.verify(body(signer.sign(bounce(server, seconds_ago=3500))))


def test_the_age_limit_and_the_clock_are_the_callers(server: CertServer, signer: Signer) -> None:
    message = body(signer.sign(bounce(server)))
    later = SnsVerifier(cert_host_allowed=server.allows, clock=lambda: time.time() + 7200)
    assert "minutes old" in rejected(later, message)
    patient = SnsVerifier(
        cert_host_allowed=server.allows, clock=lambda: time.time() + 7200, max_age_seconds=86400
    )
    assert patient.verify(message)


def test_a_message_from_the_future_is_rejected(
    verifier: SnsVerifier, server: CertServer, signer: Signer
) -> None:
    assert "in the future" in rejected(verifier, signer.sign(bounce(server, seconds_ago=-3600)))


# --- Certificate host down: try later ----------------------------------------------------------------


def test_an_unreachable_certificate_host_defers(signer: Signer) -> None:
    down = CertServer().start()
    down.stop()  # a port nobody listens on now
    clock = OffsetClock()
    verifier = SnsVerifier(cert_host_allowed=down.allows, clock=clock)
    message = signer.sign(notification(ses_bounce("a@example.org"), f"{down.url}/cert.pem"))
    with pytest.raises(NotificationDeferred, match="cannot fetch"):
        verifier.verify(body(message))
    down.files["/cert.pem"] = signer.pem
    down.start()
    try:
        # The failure is remembered a few seconds (not asked again at once) ...
        with pytest.raises(NotificationDeferred, match="not fetched again yet"):
            verifier.verify(body(message))
        assert down.requests == []
        # ... less than SNS waits between retries; then the same message verifies: nothing bad was kept.
        assert DEFERRED_FETCH_SECONDS < 20
        clock.advance(DEFERRED_FETCH_SECONDS + 0.1)
        assert verifier.verify(body(message))["MessageId"] == message["MessageId"]
        assert down.requests == ["/cert.pem"]
    finally:
        down.stop()


def test_a_server_error_defers_and_a_fetch_oserror_defers(signer: Signer) -> None:
    def broken(url: str) -> bytes:
        raise ConnectionResetError("reset by peer")

    verifier = SnsVerifier(cert_host_allowed=lambda url: True, fetch=broken)
    message = signer.sign(
        notification(ses_bounce("a@example.org"), "https://sns.us-east-1.amazonaws.com/x.pem")
    )
    with pytest.raises(NotificationDeferred, match="reset by peer"):
        verifier.verify(body(message))


# --- Subscription confirmation -----------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1", "2"])
def test_a_subscription_confirmation_gets_its_subscribe_url(
    verifier: SnsVerifier, server: CertServer, signer: Signer, version: str
) -> None:
    subscribe = f"{server.url}/confirm?Action=ConfirmSubscription&TopicArn={TOPIC}&Token=2336412f"
    server.files["/confirm"] = b"<ConfirmSubscriptionResponse/>"
    message = verifier.verify(body(signer.sign(confirmation(f"{server.url}/cert.pem", subscribe), version)))
    verifier.confirm_subscription(message)
    assert server.requests == ["/cert.pem", subscribe.removeprefix(server.url)]


def test_a_tampered_subscribe_url_is_rejected(
    verifier: SnsVerifier, server: CertServer, signer: Signer
) -> None:
    message = signer.sign(confirmation(f"{server.url}/cert.pem", f"{server.url}/confirm?Token=1"))
    message["SubscribeURL"] = f"{server.url}/confirm?Token=2"
    assert "signature does not match" in rejected(verifier, message)


@pytest.mark.parametrize(
    "subscribe",
    [
        "https://evil.example.com/confirm",
        "https://sns.us-east-1.amazonaws.com.evil.com/?Action=ConfirmSubscription",
    ],
)
def test_a_subscribe_url_on_a_foreign_host_is_not_fetched(
    verifier: SnsVerifier, server: CertServer, signer: Signer, subscribe: str
) -> None:
    message = verifier.verify(body(signer.sign(confirmation(f"{server.url}/cert.pem", subscribe))))
    with pytest.raises(NotificationRejected, match=r"SubscribeURL .* is not an https SNS host"):
        verifier.confirm_subscription(message)
    assert server.requests == ["/cert.pem"]


def test_the_default_rule_refuses_a_local_subscribe_url(server: CertServer, signer: Signer) -> None:
    fetched: list[str] = []
    verifier = SnsVerifier(fetch=lambda url: fetched.append(url) or b"")  # type: ignore[func-returns-value]
    message = signer.sign(confirmation("https://sns.us-east-1.amazonaws.com/x.pem", f"{server.url}/confirm"))
    with pytest.raises(NotificationRejected, match="SubscribeURL"):
        verifier.confirm_subscription(message)
    assert fetched == [] and server.requests == []


def test_a_subscribe_url_answering_an_error_is_reported(
    verifier: SnsVerifier, server: CertServer, signer: Signer
) -> None:
    message = verifier.verify(body(signer.sign(confirmation(f"{server.url}/cert.pem", f"{server.url}/gone"))))
    with pytest.raises(NotificationRejected, match="HTTP 404"):
        verifier.confirm_subscription(message)


def test_rejections_are_logged(
    verifier: SnsVerifier, server: CertServer, signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    message = signer.sign(bounce(server))
    message["Message"] = "changed"
    with caplog.at_level(logging.WARNING, logger="pipeline.events.sns"):
        rejected(verifier, message)
    assert [r.name for r in caplog.records] == ["pipeline.events.sns"]
    assert message["MessageId"] in caplog.text and "signature does not match" in caplog.text
