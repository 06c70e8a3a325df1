"""The SNS checks that need no network, and the certificate memory, each on its own: real RSA
signatures from tests/support/sns.py, no server, an injected clock."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from pipeline.errors import NotificationDeferred, NotificationRejected
from pipeline.events.sns import (
    DEFERRED_FETCH_SECONDS,
    FAILED_FETCH_SECONDS,
    MAX_CONCURRENT_FETCHES,
    Certificates,
    canonical_string,
    check_age,
    load_public_key,
    parse_message,
    verify,
)
from tests.support.fakes import ManualClock
from tests.support.sns import Signer, canonical, confirmation, notification, ses_bounce

CERT_URL = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem"


@pytest.fixture(scope="module")
def key(signer: Signer) -> rsa.RSAPublicKey:
    return load_public_key(signer.pem, CERT_URL)


def parsed(message: dict[str, Any]) -> dict[str, str]:
    return parse_message(json.dumps(message).encode())


@pytest.mark.parametrize("version", ["1", "2"])
def test_a_good_signature_verifies(signer: Signer, key: rsa.RSAPublicKey, version: str) -> None:
    for message in (
        notification(ses_bounce("a@example.org"), CERT_URL, subject="SES"),
        confirmation(CERT_URL, "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription"),
    ):
        verify(parsed(signer.sign(message, version)), key)


@pytest.mark.parametrize("field", ["Message", "MessageId", "Subject", "Timestamp", "TopicArn"])
def test_a_tampered_field_does_not_verify(signer: Signer, key: rsa.RSAPublicKey, field: str) -> None:
    message = parsed(signer.sign(notification(ses_bounce("a@example.org"), CERT_URL, subject="SES")))
    message[field] += "x"
    with pytest.raises(NotificationRejected, match="signature does not match"):
        verify(message, key)


def test_another_key_does_not_verify(signer: Signer) -> None:
    message = parsed(signer.sign(notification(ses_bounce("a@example.org"), CERT_URL)))
    with pytest.raises(NotificationRejected, match=f"SNS message {message['MessageId']}: signature does not"):
        verify(message, load_public_key(Signer().pem, CERT_URL))


def test_the_canonical_string_is_what_aws_documents(signer: Signer) -> None:
    for message in (
        notification("hello", CERT_URL),
        notification("hello", CERT_URL, subject="Subject"),
        confirmation(CERT_URL, "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription"),
    ):
        signed = signer.sign(message)
        assert canonical_string(parsed(signed)) == canonical(signed)
    # Fields SNS does not sign (the envelope, UnsubscribeURL) are not in it.
    assert "SigningCertURL" not in canonical_string(parsed(signer.sign(notification("x", CERT_URL))))


def test_parsing_refuses_what_cannot_be_verified(signer: Signer) -> None:
    message = signer.sign(notification("x", CERT_URL))
    with pytest.raises(NotificationRejected, match="Signature is not base64"):
        parsed({**message, "Signature": "not base64!"})
    with pytest.raises(NotificationRejected, match="unknown SignatureVersion"):
        parsed({**message, "SignatureVersion": "3"})
    with pytest.raises(NotificationRejected, match="no Signature"):
        parsed({name: value for name, value in message.items() if name != "Signature"})


def test_age_is_judged_at_the_time_given(signer: Signer) -> None:
    message = parsed(signer.sign(notification("x", CERT_URL)))
    at = dt.datetime.fromisoformat(message["Timestamp"]).timestamp()
    check_age(message, at + 3600, 3600)
    with pytest.raises(NotificationRejected, match="minutes old"):
        check_age(message, at + 3601, 3600)
    with pytest.raises(NotificationRejected, match="in the future"):
        check_age(message, at - 301, 3600)


def test_certificates_are_fetched_once_and_failures_remembered_per_url(signer: Signer) -> None:
    clock = ManualClock(1000.0)
    fetched: list[str] = []
    down = {"yes": True}
    missing, flaky = CERT_URL.replace("0123", "dead"), CERT_URL.replace("0123", "beef")

    def fetch(url: str) -> bytes:
        fetched.append(url)
        if url == missing:
            raise NotificationRejected(f"{url} answered HTTP 404")
        if url == flaky and down["yes"]:
            raise ConnectionRefusedError("refused")
        return signer.pem

    certificates = Certificates(fetch, clock)
    assert certificates.public_key(CERT_URL) is certificates.public_key(CERT_URL)
    for _ in range(3):
        with pytest.raises(NotificationRejected, match="HTTP 404"):
            certificates.public_key(missing)
        with pytest.raises(NotificationDeferred, match="refused"):
            certificates.public_key(flaky)
    assert fetched == [CERT_URL, missing, flaky]
    down["yes"] = False
    clock.now += DEFERRED_FETCH_SECONDS  # a failure for now is soon asked again ...
    certificates.public_key(flaky)
    with pytest.raises(NotificationRejected, match="not fetched again yet"):
        certificates.public_key(missing)  # ... one for good only after a minute
    clock.now += FAILED_FETCH_SECONDS
    with pytest.raises(NotificationRejected, match=r"HTTP 404$"):
        certificates.public_key(missing)
    assert fetched == [CERT_URL, missing, flaky, flaky, missing]


def test_a_host_that_failed_for_now_is_not_asked_for_other_certificates(signer: Signer) -> None:
    clock = ManualClock(1000.0)
    fetched: list[str] = []
    elsewhere = CERT_URL.replace("us-east-1", "eu-west-1")
    missing = elsewhere.replace("0123", "dead")

    def fetch(url: str) -> bytes:
        fetched.append(url)
        if "us-east-1" in url:
            raise TimeoutError("timed out")
        if url == missing:
            raise NotificationRejected(f"{url} answered HTTP 404")
        return signer.pem

    certificates = Certificates(fetch, clock)
    with pytest.raises(NotificationDeferred, match="timed out"):
        certificates.public_key(CERT_URL)
    for number in range(50):  # forged messages, each naming a certificate of its own on that host
        with pytest.raises(NotificationDeferred, match="not fetched again yet"):
            certificates.public_key(CERT_URL.replace("0123456789abcdef", f"{number:016x}"))
    # A failure for good is its URL's alone: the host may serve the real certificate.
    with pytest.raises(NotificationRejected, match="HTTP 404"):
        certificates.public_key(missing)
    certificates.public_key(elsewhere)
    assert fetched == [CERT_URL, missing, elsewhere]
    clock.now += DEFERRED_FETCH_SECONDS  # the host is asked again soon (SNS retries a 503)
    with pytest.raises(NotificationDeferred, match="timed out"):
        certificates.public_key(CERT_URL.replace("0123", "4567"))
    assert len(fetched) == 4


def test_certificate_fetches_are_capped_and_the_rest_deferred_at_once(signer: Signer) -> None:
    entered = threading.Semaphore(0)
    release = threading.Event()

    def slow_fetch(url: str) -> bytes:
        entered.release()
        release.wait(30)
        return signer.pem

    certificates = Certificates(slow_fetch, ManualClock(1000.0))
    urls = [CERT_URL.replace("us-east-1", f"us-east-{n + 2}") for n in range(MAX_CONCURRENT_FETCHES + 1)]
    with ThreadPoolExecutor(MAX_CONCURRENT_FETCHES) as pool:
        waiting = [pool.submit(certificates.public_key, url) for url in urls[:-1]]
        for _ in waiting:
            assert entered.acquire(timeout=30)
        start = time.monotonic()
        with pytest.raises(NotificationDeferred, match="being fetched already"):
            certificates.public_key(urls[-1])
        assert time.monotonic() - start < 1.0  # refused, not queued behind the slow fetches
        release.set()
        assert all(isinstance(future.result(30), rsa.RSAPublicKey) for future in waiting)
    certificates.public_key(urls[-1])  # a free slot again: fetched now
