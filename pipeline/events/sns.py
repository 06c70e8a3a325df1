"""Amazon SNS message verification: signatures, signing-certificate hosts, topics, age.

SES reports bounces and complaints through SNS, either to our webhook (HTTP) or into an SQS
queue. Anyone can POST a JSON body that looks like an SNS message, so nothing in one is believed
before its signature checks out against a certificate fetched from an SNS host of amazonaws.com.

Failures raise :class:`~pipeline.errors.NotificationRejected` with a one-line reason: the message
is bad and never will be good (answer 400, delete it from the queue). The subclass
:class:`~pipeline.errors.NotificationDeferred` means it could not be checked *now* (the certificate
host is unreachable or answered 5xx): answer 503 so SNS retries, or leave it in the queue.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from pipeline.errors import NotificationDeferred, NotificationError, NotificationRejected

log = logging.getLogger(__name__)

FETCH_TIMEOUT = 10.0
MAX_FETCH_BYTES = 64 * 1024
CACHED_CERTIFICATES = 16
# A certificate URL that failed for good (404, not a certificate) is not asked again for a minute, so a
# stream of forged messages naming it costs one fetch a minute, not one each. One that failed for now
# (unreachable, 5xx) only for a few seconds: SNS retries a 503 three times, 20 seconds apart, and
# each retry must be asked afresh or a short outage would lose the notification.
FAILED_FETCH_SECONDS = 60.0
DEFERRED_FETCH_SECONDS = 10.0
REMEMBERED_FAILURES = 256
# SNS sends Timestamp in UTC; a little clock skew the other way is not a forgery.
FUTURE_SKEW_SECONDS = 300.0

# The fields each message type signs, in the order AWS documents (alphabetical).
_CONFIRMATION_FIELDS = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
SIGNED_FIELDS: dict[str, tuple[str, ...]] = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": _CONFIRMATION_FIELDS,
    "UnsubscribeConfirmation": _CONFIRMATION_FIELDS,
}
OPTIONAL_FIELDS = frozenset({"Subject"})
ENVELOPE_FIELDS = ("SignatureVersion", "Signature", "SigningCertURL")
HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}

# A region is letters-letters-digit (us-east-1, us-gov-west-1, cn-north-1). It must not be looser:
# "sns.<anything>.amazonaws.com" would accept "sns.s3.amazonaws.com", an S3 bucket named "sns"
# that anyone can create and fill with a certificate of their own.
_SNS_HOST = re.compile(r"sns\.[a-z]{2}(?:-[a-z]+)+-\d+\.amazonaws\.com(?:\.cn)?")
# Characters that different URL parsers split differently ("\\", "@", whitespace): a URL holding one
# is refused, so the host we check is the host httpx connects to.
_AMBIGUOUS = re.compile(r"[\\@\s\x00-\x1f\x7f]")
# The path of every signing certificate SNS uses: /SimpleNotificationService-<hex>.pem. Any other file on
# an SNS host (there are none to speak of, but the rule costs nothing) is not a signing certificate.
_CERTIFICATE_PATH = re.compile(r"/SimpleNotificationService-[0-9a-f]+\.pem")


def is_sns_host(url: str) -> bool:
    """Whether ``url`` is https on an SNS host of AWS (``sns.<region>.amazonaws.com[.cn]``), default port."""
    if _AMBIGUOUS.search(url):
        return False
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    host = parts.hostname or ""
    return parts.scheme == "https" and port in (None, 443) and _SNS_HOST.fullmatch(host) is not None


def is_sns_certificate_url(url: str) -> bool:
    """Whether ``url`` is where SNS keeps a signing certificate: https on an SNS host of AWS (see
    :func:`is_sns_host`), path ``/SimpleNotificationService-<hex>.pem``, no query or fragment."""
    if not is_sns_host(url):
        return False
    return _CERTIFICATE_PATH.fullmatch(urlsplit(url).path) is not None and "?" not in url and "#" not in url


def http_get(url: str) -> bytes:
    """GET ``url`` with a timeout, no redirects and a size cap; 200 only.

    Network errors, 429 and 5xx raise NotificationDeferred (try later); anything else NotificationRejected.
    """
    try:
        with httpx.stream("GET", url, timeout=FETCH_TIMEOUT, follow_redirects=False) as response:
            if response.status_code != 200:
                temporary = response.status_code == 429 or response.status_code >= 500
                error = NotificationDeferred if temporary else NotificationRejected
                raise error(f"{_show(url)} answered HTTP {response.status_code}")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_FETCH_BYTES:
                    raise NotificationRejected(f"{_show(url)} sent more than {MAX_FETCH_BYTES // 1024} KB")
            return bytes(body)
    except httpx.InvalidURL as error:
        raise NotificationRejected(f"{_show(url)}: invalid URL ({error})") from None
    except httpx.HTTPError as error:
        raise NotificationDeferred(
            f"cannot fetch {_show(url)}: {str(error) or type(error).__name__}"
        ) from None


class SnsVerifier:
    """Checks SNS messages; keeps the signing certificates it fetched (by URL) in memory. Thread-safe.

    By default a SigningCertURL must pass :func:`is_sns_certificate_url` (an SNS host of AWS, the path
    of an SNS signing certificate) and a SubscribeURL :func:`is_sns_host`. ``cert_host_allowed``, when
    given, decides instead for both; it is the only way to relax those rules (tests serve certificates
    from 127.0.0.1). ``fetch`` GETs a URL and returns the body; it may raise NotificationRejected /
    NotificationDeferred, and an OSError from it counts as deferred. A certificate that could not be
    had is not fetched again for ``FAILED_FETCH_SECONDS`` (``DEFERRED_FETCH_SECONDS`` when deferred). ``max_age_seconds`` refuses older messages
    (replays). ``topic_arns`` empty accepts every topic: the caller decides whether that is acceptable.
    """

    def __init__(
        self,
        *,
        topic_arns: tuple[str, ...] = (),
        cert_host_allowed: Callable[[str], bool] | None = None,
        fetch: Callable[[str], bytes] | None = None,
        max_age_seconds: float = 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.topic_arns = tuple(topic_arns)
        self.cert_host_allowed = cert_host_allowed
        self.fetch = fetch or http_get
        self.max_age_seconds = max_age_seconds
        self.clock = clock
        self._keys: dict[str, rsa.RSAPublicKey] = {}
        # URL -> (until when, the failure): answered again without a fetch until then.
        self._failures: dict[str, tuple[float, NotificationRejected]] = {}
        self._lock = threading.Lock()

    def verify(self, body: bytes) -> dict[str, str]:
        """Parse the JSON body and verify it; return the SNS message dict; raise NotificationRejected
        (one-line reason) otherwise, NotificationDeferred when the certificate cannot be fetched now."""
        message = self.verify_signature(body)
        self.check_fresh(message)
        return message

    def verify_signature(self, body: bytes) -> dict[str, str]:
        """Everything :meth:`verify` checks except the age: format, topic, certificate host, signature.

        Split out so a caller can acknowledge an old redelivery of a message it already applied.
        """
        message = self._parse(body)
        message_id = message["MessageId"]
        if self.topic_arns and message["TopicArn"] not in self.topic_arns:
            raise self._rejected(
                message_id, f"topic {_show(message['TopicArn'])} is not in events.topic_arns"
            )
        cert_url = message["SigningCertURL"]
        problem = self._certificate_url_problem(cert_url)
        if problem:
            raise self._rejected(message_id, f"SigningCertURL {_show(cert_url)} {problem}")
        try:
            signature = base64.b64decode(message["Signature"], validate=True)
        except (binascii.Error, ValueError):
            raise self._rejected(message_id, "Signature is not base64") from None
        key = self._public_key(message_id, cert_url)
        algorithm = HASHES[message["SignatureVersion"]]()
        try:
            key.verify(signature, canonical_string(message).encode("utf-8"), padding.PKCS1v15(), algorithm)
        except InvalidSignature:
            raise self._rejected(
                message_id, "signature does not match (tampered, or signed with another key)"
            ) from None
        return message

    def check_fresh(self, message: dict[str, str]) -> None:
        """Refuse a message whose Timestamp is older than ``max_age_seconds`` (or well in the future)."""
        message_id = message.get("MessageId", "?")
        try:
            stamp = dt.datetime.fromisoformat(message["Timestamp"])
        except (KeyError, ValueError):
            raise self._rejected(
                message_id, f"Timestamp {_show(message.get('Timestamp'))} is not a date"
            ) from None
        if stamp.tzinfo is None:
            raise self._rejected(message_id, f"Timestamp {_show(message['Timestamp'])} has no time zone")
        age = self.clock() - stamp.timestamp()
        if age > self.max_age_seconds:
            raise self._rejected(
                message_id, f"Timestamp {message['Timestamp']} is {age / 60:.0f} minutes old (a replay?)"
            )
        if age < -FUTURE_SKEW_SECONDS:
            raise self._rejected(message_id, f"Timestamp {message['Timestamp']} is in the future")

    def confirm_subscription(self, message: dict[str, str]) -> None:
        """GET the SubscribeURL of a verified SubscriptionConfirmation (host checked with cert_host_allowed)."""
        message_id = message.get("MessageId", "?")
        url = message.get("SubscribeURL", "")
        allowed = self.cert_host_allowed or is_sns_host
        if not allowed(url):
            raise self._rejected(message_id, f"SubscribeURL {_show(url)} is not an https SNS host of AWS")
        if not self.topic_arns:
            # Without a topic list, anyone's topic (signed by SNS all the same) can subscribe us.
            log.warning(
                "confirming a subscription to %s with events.topic_arns empty: any topic is accepted",
                message.get("TopicArn"),
            )
        self._get(message_id, url)
        log.info("confirmed the SNS subscription to %s", message.get("TopicArn"))

    def _parse(self, body: bytes) -> dict[str, str]:
        try:
            raw: Any = json.loads(body)
        except (ValueError, RecursionError):  # ValueError: also an integer too long to convert
            raise self._rejected("?", "body is not JSON") from None
        if not isinstance(raw, dict):
            raise self._rejected("?", "body is not a JSON object")
        message_id = raw["MessageId"] if isinstance(raw.get("MessageId"), str) else "?"
        kind = raw.get("Type")
        if kind not in SIGNED_FIELDS:
            if "eventType" in raw or "notificationType" in raw:
                # SES JSON straight in the body: raw message delivery is on for the subscription.
                raise self._rejected(
                    message_id, "an SES event without its SNS envelope (turn raw message delivery off)"
                )
            raise self._rejected(message_id, f"Type {_show(kind)} is not an SNS message type")
        message: dict[str, str] = {}
        for name, value in raw.items():
            if name in OPTIONAL_FIELDS and value is None:
                continue  # a null Subject is no Subject
            if isinstance(value, str):
                message[name] = value
            elif name in SIGNED_FIELDS[kind] or name in ENVELOPE_FIELDS:
                raise self._rejected(message_id, f"{name} is not a string")
        for name in (*SIGNED_FIELDS[kind], *ENVELOPE_FIELDS):
            if name not in message and name not in OPTIONAL_FIELDS:
                raise self._rejected(message_id, f"unsigned or incomplete: no {name}")
        if message["SignatureVersion"] not in HASHES:
            raise self._rejected(message_id, f"unknown SignatureVersion {_show(message['SignatureVersion'])}")
        return message

    def _certificate_url_problem(self, url: str) -> str | None:
        if self.cert_host_allowed is not None:
            return None if self.cert_host_allowed(url) else "is not an https SNS host of AWS"
        if not is_sns_host(url):
            return "is not an https SNS host of AWS"
        if not is_sns_certificate_url(url):
            return "is not an SNS signing certificate (/SimpleNotificationService-<hex>.pem)"
        return None

    def _public_key(self, message_id: str, url: str) -> rsa.RSAPublicKey:
        with self._lock:
            cached = self._keys.get(url)
            failed = self._failures.get(url)
            if failed is not None and failed[0] <= self.clock():
                del self._failures[url]
                failed = None
        if cached is not None:
            return cached
        if failed is not None:
            error = failed[1]
            deferred = isinstance(error, NotificationDeferred)
            raise self._rejected(
                message_id, f"{error} (a moment ago; not fetched again yet)", deferred=deferred
            )
        try:
            key = self._load_key(url)
        except NotificationError as error:
            deferred = isinstance(error, NotificationDeferred)
            remember = DEFERRED_FETCH_SECONDS if deferred else FAILED_FETCH_SECONDS
            with self._lock:
                while len(self._failures) >= REMEMBERED_FAILURES:
                    del self._failures[next(iter(self._failures))]  # oldest first
                self._failures[url] = (self.clock() + remember, error)
            raise self._rejected(message_id, str(error), deferred=deferred) from None
        with self._lock:
            while len(self._keys) >= CACHED_CERTIFICATES:
                del self._keys[next(iter(self._keys))]  # oldest first: SNS rotates rarely
            self._keys[url] = key
        return key

    def _load_key(self, url: str) -> rsa.RSAPublicKey:
        """The public key of the certificate at ``url``; NotificationRejected (or Deferred) without message id."""
        try:
            pem = self.fetch(url)
        except NotificationError:
            raise
        except OSError as error:
            raise NotificationDeferred(f"cannot fetch {_show(url)}: {error}") from None
        try:
            key = x509.load_pem_x509_certificate(pem).public_key()
        except ValueError:
            raise NotificationRejected(f"{_show(url)} is not a PEM certificate") from None
        if not isinstance(key, rsa.RSAPublicKey):
            raise NotificationRejected(f"{_show(url)} holds no RSA key")
        return key

    def _get(self, message_id: str, url: str) -> bytes:
        try:
            return self.fetch(url)
        except NotificationDeferred as error:
            raise self._rejected(message_id, str(error), deferred=True) from None
        except NotificationRejected as error:
            raise self._rejected(message_id, str(error)) from None
        except OSError as error:
            raise self._rejected(message_id, f"cannot fetch {_show(url)}: {error}", deferred=True) from None

    @staticmethod
    def _rejected(message_id: str, reason: str, *, deferred: bool = False) -> NotificationError:
        text = f"SNS message {_show(message_id, 80, quote=False)}: {reason}"
        if deferred:
            log.warning("deferred %s", text)
            return NotificationDeferred(text)
        log.warning("rejected %s", text)
        return NotificationRejected(text)


def canonical_string(message: dict[str, str]) -> str:
    """The text SNS signs: "Name\\nvalue\\n" for each signed field present, in AWS's order."""
    return "".join(f"{name}\n{message[name]}\n" for name in SIGNED_FIELDS[message["Type"]] if name in message)


def _show(value: object, limit: int = 120, *, quote: bool = True) -> str:
    """A value from the message, safe for a one-line error: no line breaks, bounded length."""
    text = repr(value) if quote else str(value)
    text = re.sub(r"[\x00-\x1f\x7f]", "?", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
