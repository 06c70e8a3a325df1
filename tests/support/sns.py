"""Signed SNS messages and a local certificate server, as SNS would send and serve them.

The canonical string is built here from the AWS documentation on its own, not with
``pipeline.events.sns.canonical_string``, so a mistake there makes the tests fail.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

TOPIC = "arn:aws:sns:us-east-1:123456789012:ses-events"
OTHER_TOPIC = "arn:aws:sns:us-east-1:999999999999:someone-else"


class Signer:
    """An RSA key and its self-signed certificate (PEM), like the one SNS signs with."""

    def __init__(self, common_name: str = "sns.amazonaws.com") -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        start = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=30))
            .sign(self.key, hashes.SHA256())
        )
        self.pem = certificate.public_bytes(serialization.Encoding.PEM)

    def sign(self, message: dict[str, Any], version: str = "1") -> dict[str, Any]:
        """``message`` with SignatureVersion and Signature set, as SNS signs it."""
        digest = {"1": hashes.SHA1(), "2": hashes.SHA256()}[version]
        signed = dict(message, SignatureVersion=version)
        signature = self.key.sign(canonical(signed).encode("utf-8"), padding.PKCS1v15(), digest)
        signed["Signature"] = base64.b64encode(signature).decode("ascii")
        return signed


def canonical(message: dict[str, Any]) -> str:
    if message["Type"] == "Notification":
        names = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
    else:
        names = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
    return "".join(f"{name}\n{message[name]}\n" for name in names if name in message)


def timestamp(seconds_ago: float = 0.0) -> str:
    """SNS's format: 2026-11-23T10:00:00.123Z."""
    moment = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds_ago)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def notification(
    message: str,
    cert_url: str,
    *,
    topic: str = TOPIC,
    subject: str | None = None,
    seconds_ago: float = 0.0,
    message_id: str | None = None,
) -> dict[str, Any]:
    envelope: dict[str, Any] = {
        "Type": "Notification",
        "MessageId": message_id or str(uuid.uuid4()),
        "TopicArn": topic,
        "Message": message,
        "Timestamp": timestamp(seconds_ago),
        "SigningCertURL": cert_url,
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=x",
    }
    if subject is not None:
        envelope["Subject"] = subject
    return envelope


def confirmation(
    cert_url: str, subscribe_url: str, *, topic: str = TOPIC, kind: str = "SubscriptionConfirmation"
) -> dict[str, Any]:
    return {
        "Type": kind,
        "MessageId": str(uuid.uuid4()),
        "Token": "2336412f37fb687f5d51e6e2425a8a58",
        "TopicArn": topic,
        "Message": f"You have chosen to subscribe to the topic {topic}.",
        "SubscribeURL": subscribe_url,
        "Timestamp": timestamp(),
        "SigningCertURL": cert_url,
    }


def ses_bounce(
    *recipients: str,
    bounce_type: str = "Permanent",
    subtype: str = "General",
    field: str = "eventType",
    diagnostic: str = "smtp; 550 5.1.1 user unknown",
    ses_message_id: str = "ses-message-id",
) -> str:
    """An SES Bounce event, from a configuration set (eventType) or an identity (notificationType)."""
    return json.dumps(
        {
            field: "Bounce",
            "bounce": {
                "bounceType": bounce_type,
                "bounceSubType": subtype,
                "bouncedRecipients": [
                    {
                        "emailAddress": address,
                        "action": "failed",
                        "status": "5.1.1",
                        "diagnosticCode": diagnostic,
                    }
                    for address in recipients
                ],
                "timestamp": timestamp(),
                "feedbackId": "0100017-feedback",
            },
            "mail": {
                "messageId": ses_message_id,
                "source": "editor@example.org",
                "destination": list(recipients),
            },
        }
    )


def ses_complaint(
    *recipients: str,
    field: str = "eventType",
    feedback: str | None = "abuse",
    ses_message_id: str = "ses-message-id",
) -> str:
    complaint: dict[str, Any] = {
        "complainedRecipients": [{"emailAddress": address} for address in recipients],
        "timestamp": timestamp(),
        "feedbackId": "0100017-complaint",
    }
    if feedback:
        complaint["complaintFeedbackType"] = feedback
    return json.dumps({field: "Complaint", "complaint": complaint, "mail": {"messageId": ses_message_id}})


# A field of an SNS envelope and a value of the wrong JSON type (or one no UTF-8 encoder takes).
WRONG_TYPES: tuple[tuple[str, Any], ...] = (
    ("Type", ["Notification"]),  # unhashable: `in` a dict raises TypeError
    ("Type", {"Notification": 1}),
    ("Type", 7),
    ("Type", None),
    ("MessageId", 12345),
    ("Message", {"eventType": "Bounce"}),
    ("Signature", ["abc"]),
    ("SignatureVersion", 1),
    ("SigningCertURL", None),
    ("Timestamp", 1700000000),
    ("TopicArn", [TOPIC]),
    ("Message", "\ud800"),  # a lone surrogate once JSON decodes the escape
    ("MessageId", "\udfff"),
)


def wrongly_typed(envelope: dict[str, Any]) -> list[str]:
    """JSON bodies: ``envelope`` (signed, so only the odd field is wrong) with each of WRONG_TYPES."""
    return [json.dumps({**envelope, name: value}) for name, value in WRONG_TYPES]


class CertServer:
    """A real HTTP server on 127.0.0.1 serving fixed bodies by path, recording every request."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def allows(self, url: str) -> bool:
        """The relaxed host rule the tests give the verifier: this server, nothing else."""
        return url.startswith(self.url + "/")

    def start(self) -> CertServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                body = server.files.get(self.path.split("?")[0])
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        # Same port on a restart, so URLs already signed into messages point here again.
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join(5)
            self._server = None


class Tarpit:
    """A certificate host that accepts connections and never answers, as a slow or hostile one does;
    ``release`` closes them all (a fetch waiting on one fails at once) and stops accepting."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.held: list[socket.socket] = []
        self.first = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return  # released
            self.held.append(connection)
            self.first.set()

    def release(self) -> None:
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone may not)
        except OSError:
            pass
        self._listener.close()
        self._thread.join(5)
        for connection in self.held:
            connection.close()


@contextmanager
def tarpit() -> Iterator[Tarpit]:
    pit = Tarpit()
    try:
        yield pit
    finally:
        pit.release()


@contextmanager
def cert_server(signer: Signer) -> Iterator[CertServer]:
    server = CertServer()
    server.files["/cert.pem"] = signer.pem
    server.start()
    try:
        yield server
    finally:
        server.stop()
