"""Amazon SNS message verification: signatures, signing-certificate hosts, topics, age.

SES reports bounces and complaints through SNS, either to our webhook (HTTP) or into an SQS
queue. Anyone can POST a JSON body that looks like an SNS message, so nothing in one is believed
before its signature checks out against a certificate fetched from an SNS host of amazonaws.com.

The checks that need no network are pure functions (:func:`parse_message`, :func:`canonical_string`,
:func:`verify`, :func:`check_age`); :class:`Certificates` fetches signing certificates and remembers
them, and the failures, for a while; :class:`SnsVerifier` puts them together for the webhook and
``events pull``, and logs each refusal.

Failures raise :class:`~pipeline.errors.NotificationRejected` with a one-line reason: the message
is bad and never will be good (answer 400, delete it from the queue). Its sibling
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from pipeline.errors import NotificationDeferred, NotificationError, NotificationRejected
from pipeline.events.cache import TTLCache

log = logging.getLogger(__name__)

FETCH_TIMEOUT = 10.0
MAX_FETCH_BYTES = 64 * 1024
CACHED_CERTIFICATES = 16
# SNS rotates its signing certificate rarely, under a new URL; a day bounds how long one is believed.
CERTIFICATE_SECONDS = 24 * 3600.0
# A certificate URL that failed for good (404, not a certificate) is not asked again for a minute, so a
# stream of forged messages naming it costs one fetch a minute, not one each. One that failed for now
# (unreachable, 5xx) only for a few seconds: SNS retries a 503 three times, 20 seconds apart, and
# each retry must be asked afresh or a short outage would lose the notification.
FAILED_FETCH_SECONDS = 60.0
DEFERRED_FETCH_SECONDS = 10.0
REMEMBERED_FAILURES = 256
# Signing certificates fetched at once. SNS signs with one certificate for months, fetched once and
# cached, so more than one fetch at a time means forged messages naming certificates of their own: past
# this many, a message is deferred at once (SNS retries a 503) instead of waiting for a fetch slot.
MAX_CONCURRENT_FETCHES = 4
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


# --- The message, checked without the network ------------------------------------------------------


def parse_message(body: bytes) -> dict[str, str]:
    """The SNS message in a webhook or queue body, its format checked: a known Type, every field it
    signs and the envelope's present and strings, a known SignatureVersion, a base64 Signature.
    NotificationRejected otherwise. Nothing in it is believed yet: see :func:`verify`."""
    try:
        raw: Any = json.loads(body)
    except (ValueError, RecursionError):  # ValueError: also an integer too long to convert
        raise _rejected("?", "body is not JSON") from None
    if not isinstance(raw, dict):
        raise _rejected("?", "body is not a JSON object")
    message_id = raw["MessageId"] if _is_text(raw.get("MessageId")) else "?"
    kind = raw.get("Type")
    # isinstance first: a list or an object is unhashable, and `in` a dict would raise TypeError.
    if not isinstance(kind, str) or kind not in SIGNED_FIELDS:
        if "eventType" in raw or "notificationType" in raw:
            # SES JSON straight in the body: raw message delivery is on for the subscription.
            raise _rejected(
                message_id, "an SES event without its SNS envelope (turn raw message delivery off)"
            )
        raise _rejected(message_id, f"Type {_show(kind)} is not an SNS message type")
    message: dict[str, str] = {}
    for name, value in raw.items():
        if name in OPTIONAL_FIELDS and value is None:
            continue  # a null Subject is no Subject
        if _is_text(value):
            message[name] = value
        elif name in SIGNED_FIELDS[kind] or name in ENVELOPE_FIELDS:
            raise _rejected(message_id, f"{name} is not a string of Unicode text")
    for name in (*SIGNED_FIELDS[kind], *ENVELOPE_FIELDS):
        if name not in message and name not in OPTIONAL_FIELDS:
            raise _rejected(message_id, f"unsigned or incomplete: no {name}")
    _hash_of(message)
    _signature_of(message)
    return message


def _is_text(value: object) -> bool:
    """A JSON string we can sign, store and print: JSON's "\\ud800" escapes decode to lone surrogates,
    which no UTF-8 encoder (the signature check, SQLite, the terminal) accepts."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def canonical_string(message: dict[str, str]) -> str:
    """The text SNS signs: "Name\\nvalue\\n" for each signed field present, in AWS's order."""
    return "".join(f"{name}\n{message[name]}\n" for name in SIGNED_FIELDS[message["Type"]] if name in message)


def verify(message: dict[str, str], public_key: rsa.RSAPublicKey) -> None:
    """Check the Signature of a parsed ``message`` against ``public_key`` (that of the certificate at its
    SigningCertURL); NotificationRejected when it does not match."""
    signature, algorithm = _signature_of(message), _hash_of(message)
    try:
        public_key.verify(signature, canonical_string(message).encode("utf-8"), padding.PKCS1v15(), algorithm)
    except InvalidSignature:
        raise _rejected(
            message.get("MessageId", "?"), "signature does not match (tampered, or signed with another key)"
        ) from None


def check_age(message: dict[str, str], now: float, max_age_seconds: float) -> None:
    """Refuse a message whose Timestamp is older than ``max_age_seconds`` at ``now`` (a replay), or
    well in the future."""
    message_id = message.get("MessageId", "?")
    try:
        stamp = dt.datetime.fromisoformat(message["Timestamp"])
    except (KeyError, ValueError):
        raise _rejected(message_id, f"Timestamp {_show(message.get('Timestamp'))} is not a date") from None
    if stamp.tzinfo is None:
        raise _rejected(message_id, f"Timestamp {_show(message['Timestamp'])} has no time zone")
    age = now - stamp.timestamp()
    if age > max_age_seconds:
        raise _rejected(
            message_id, f"Timestamp {message['Timestamp']} is {age / 60:.0f} minutes old (a replay?)"
        )
    if age < -FUTURE_SKEW_SECONDS:
        raise _rejected(message_id, f"Timestamp {message['Timestamp']} is in the future")


def load_public_key(pem: bytes, url: str) -> rsa.RSAPublicKey:
    """The RSA public key of the PEM certificate fetched from ``url``; NotificationRejected otherwise."""
    try:
        key = x509.load_pem_x509_certificate(pem).public_key()
    except ValueError:
        raise NotificationRejected(f"{_show(url)} is not a PEM certificate") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise NotificationRejected(f"{_show(url)} holds no RSA key")
    return key


def _signature_of(message: dict[str, str]) -> bytes:
    try:
        return base64.b64decode(message["Signature"], validate=True)
    except (binascii.Error, ValueError):
        raise _rejected(message.get("MessageId", "?"), "Signature is not base64") from None


def _hash_of(message: dict[str, str]) -> hashes.HashAlgorithm:
    version = message["SignatureVersion"]
    if version not in HASHES:
        raise _rejected(message.get("MessageId", "?"), f"unknown SignatureVersion {_show(version)}")
    return HASHES[version]()


# --- Signing certificates --------------------------------------------------------------------------


class Certificates:
    """The public keys of the signing certificates fetched so far, by URL. Thread-safe.

    ``fetch`` GETs a URL and returns the body; it may raise NotificationRejected / NotificationDeferred,
    and an OSError from it counts as deferred. A certificate that could not be had is not fetched again
    for ``FAILED_FETCH_SECONDS`` (``DEFERRED_FETCH_SECONDS`` when deferred): asking again at once
    answers the same failure. A deferred failure (the host unreachable, slow or failing) is remembered
    for its host too, so forged messages naming ever new certificates on one dead host cost one fetch,
    not one each; a failure for good (404, not a certificate) only for its URL, since the host may
    well serve the real certificate. At most ``MAX_CONCURRENT_FETCHES`` fetches run at once: past them
    a certificate is deferred at once, not queued. The memories are bounded in size; errors carry no
    message id.
    """

    def __init__(self, fetch: Callable[[str], bytes], clock: Callable[[], float]) -> None:
        self.fetch = fetch
        self._keys: TTLCache[str, rsa.RSAPublicKey] = TTLCache(
            CACHED_CERTIFICATES, CERTIFICATE_SECONDS, clock
        )
        self._failures: TTLCache[str, NotificationError] = TTLCache(
            REMEMBERED_FAILURES, FAILED_FETCH_SECONDS, clock
        )
        self._host_failures: TTLCache[str, NotificationError] = TTLCache(
            REMEMBERED_FAILURES, DEFERRED_FETCH_SECONDS, clock
        )
        self._fetch_slots = threading.BoundedSemaphore(MAX_CONCURRENT_FETCHES)

    def public_key(self, url: str) -> rsa.RSAPublicKey:
        key = self._keys.get(url)
        if key is not None:
            return key
        host = _host(url)
        failure = self._failures.get(url) or self._host_failures.get(host)
        if failure is not None:
            raise type(failure)(f"{failure} (a moment ago; not fetched again yet)")
        if not self._fetch_slots.acquire(blocking=False):
            raise NotificationDeferred(
                f"{MAX_CONCURRENT_FETCHES} signing certificates are being fetched already; "
                f"{_show(url)} not fetched now"
            )
        try:
            key = load_public_key(self._fetch(url), url)
        except NotificationError as error:
            if isinstance(error, NotificationDeferred):
                self._failures.put(url, error, DEFERRED_FETCH_SECONDS)
                self._host_failures.put(host, error)
            else:
                self._failures.put(url, error)
            raise
        finally:
            self._fetch_slots.release()
        self._keys.put(url, key)
        return key

    def _fetch(self, url: str) -> bytes:
        try:
            return self.fetch(url)
        except OSError as error:
            raise NotificationDeferred(f"cannot fetch {_show(url)}: {error}") from None


# --- The verifier ----------------------------------------------------------------------------------


class SnsVerifier:
    """Checks SNS messages, with their signing certificates from :class:`Certificates`; logs every
    refusal. Thread-safe.

    By default a SigningCertURL must pass :func:`is_sns_certificate_url` (an SNS host of AWS, the path
    of an SNS signing certificate) and a SubscribeURL :func:`is_sns_host`. ``cert_host_allowed``, when
    given, decides instead for both; it is the only way to relax those rules (tests serve certificates
    from 127.0.0.1). ``fetch`` GETs a URL (see :class:`Certificates`). ``max_age_seconds`` refuses older
    messages (replays). ``topic_arns`` empty accepts every topic: the caller decides whether that is
    acceptable.
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
        self.certificates = Certificates(self.fetch, clock)

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
        with _logged():
            message = parse_message(body)
            message_id = message["MessageId"]
            if self.topic_arns and message["TopicArn"] not in self.topic_arns:
                raise _rejected(message_id, f"topic {_show(message['TopicArn'])} is not in events.topic_arns")
            cert_url = message["SigningCertURL"]
            problem = self._certificate_url_problem(cert_url)
            if problem:
                raise _rejected(message_id, f"SigningCertURL {_show(cert_url)} {problem}")
            try:
                key = self.certificates.public_key(cert_url)
            except NotificationError as error:
                raise _with_id(message_id, error) from None
            verify(message, key)
        return message

    def check_fresh(self, message: dict[str, str]) -> None:
        """Refuse a message whose Timestamp is older than ``max_age_seconds`` (or well in the future)."""
        with _logged():
            check_age(message, self.clock(), self.max_age_seconds)

    def confirm_subscription(self, message: dict[str, str]) -> None:
        """GET the SubscribeURL of a verified SubscriptionConfirmation (host checked with cert_host_allowed)."""
        message_id = message.get("MessageId", "?")
        url = message.get("SubscribeURL", "")
        allowed = self.cert_host_allowed or is_sns_host
        with _logged():
            if not allowed(url):
                raise _rejected(message_id, f"SubscribeURL {_show(url)} is not an https SNS host of AWS")
            if not self.topic_arns:
                # Without a topic list, anyone's topic (signed by SNS all the same) can subscribe us.
                log.warning(
                    "confirming a subscription to %s with events.topic_arns empty: any topic is accepted",
                    message.get("TopicArn"),
                )
            try:
                self.fetch(url)
            except NotificationError as error:
                raise _with_id(message_id, error) from None
            except OSError as error:
                raise _with_id(
                    message_id, NotificationDeferred(f"cannot fetch {_show(url)}: {error}")
                ) from None
        log.info("confirmed the SNS subscription to %s", message.get("TopicArn"))

    def _certificate_url_problem(self, url: str) -> str | None:
        if self.cert_host_allowed is not None:
            return None if self.cert_host_allowed(url) else "is not an https SNS host of AWS"
        if not is_sns_host(url):
            return "is not an https SNS host of AWS"
        if not is_sns_certificate_url(url):
            return "is not an SNS signing certificate (/SimpleNotificationService-<hex>.pem)"
        return None


@contextmanager
def _logged() -> Iterator[None]:
    """Log the NotificationError leaving the block, once, as it goes to the caller."""
    try:
        yield
    except NotificationError as error:
        log.warning("%s %s", "deferred" if isinstance(error, NotificationDeferred) else "rejected", error)
        raise


def _host(url: str) -> str:
    """The host and port of a URL as the fetch would connect to them (the URL passed the host checks)."""
    try:
        return urlsplit(url).netloc.lower()
    except ValueError:
        return url


def _rejected(message_id: str, reason: str) -> NotificationRejected:
    return NotificationRejected(f"SNS message {_show(message_id, 80, quote=False)}: {reason}")


def _with_id(message_id: str, error: NotificationError) -> NotificationError:
    """``error`` (from a fetch, which knows no message), of the same kind, saying which message it is about."""
    return type(error)(f"SNS message {_show(message_id, 80, quote=False)}: {error}")


def _show(value: object, limit: int = 120, *, quote: bool = True) -> str:
    """A value from the message, safe for a one-line error: no line breaks, bounded length."""
    text = repr(value) if quote else str(value)
    text = re.sub(r"[\x00-\x1f\x7f]", "?", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
