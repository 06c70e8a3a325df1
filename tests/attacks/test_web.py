"""The subscriber web service attacked, case by case: each row is what an attacker sends and what the
service must answer (a status, never a 500, never a traceback); after each table nothing in the state
database has changed. The service runs under a real uvicorn on 127.0.0.1 (tests.web.test_web)."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest

from pipeline.audience.subscribers import add
from pipeline.events.sns import SnsVerifier
from tests.conftest import Newsletter
from tests.support.sns import TOPIC, Signer, cert_server, notification, ses_bounce, wrongly_typed
from tests.web.test_web import running_site


def snapshot(db: sqlite3.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Everything an attack could change: the subscribers, their history, the SNS messages applied."""
    tables = ("subscribers", "status_changes", "sns_messages")
    return {
        table: [tuple(row) for row in db.execute(f"SELECT * FROM {table} ORDER BY 1")] for table in tables
    }


# (method, path, headers): requests that once made the service emit a URL built from the Host header.
HOST_ATTACKS: list[tuple[str, str, dict[str, str]]] = [
    ("GET", "/subscribe/", {"Host": "evil.example"}),
    ("GET", "/subscribe/", {"Host": "evil.example", "X-Forwarded-Host": "evil.example"}),
    ("GET", "/healthz/", {"Host": "evil.example:8443"}),
    ("GET", "/unsubscribe/1.abc/", {"Host": "evil.example"}),
    ("GET", "/confirm/1.2.3.abc/", {"Host": "evil.example"}),
    ("GET", "//evil.example/subscribe/", {}),
    ("POST", "/subscribe/", {"Host": "evil.example"}),
]


def test_no_url_the_service_emits_comes_from_the_host_header(newsletter: Newsletter) -> None:
    with running_site(newsletter) as site:
        before = snapshot(site.db())
        for method, path, headers in HOST_ATTACKS:
            answer = site.client.request(method, f"{site.url}{path}", headers=headers)
            case = f"{method} {path} {headers}"
            assert answer.status_code in (404, 405), case
            assert "location" not in answer.headers, case
            assert "evil.example" not in answer.text, case
        # The real pages still work, and their links come from public_url.
        page = site.client.get(f"{site.url}/subscribe", headers={"Host": "evil.example"})
        assert page.status_code == 200 and "evil.example" not in page.text
        assert snapshot(site.db()) == before


# Webhook bodies that are not SNS messages, whatever JSON they hold (each is answered 400).
NOT_SNS: list[bytes] = [
    b"[]",
    b'"Notification"',
    b"null",
    b"12",
    b'{"Type": ["Notification"]}',
    b'{"Type": {"a": 1}}',
    b'{"Type": "Notification", "MessageId": ["x"]}',
    b'{"Type": "\\ud800"}',
    b'{"MessageId": "\\ud800", "Type": 1}',
    b'{"Type": "Notification"' + b', "Message": "x"' * 2 + b"}",
    b"\xff\xfe{}",
    b'{"Type": 1e999}',
]


def test_the_webhook_answers_400_to_any_field_of_the_wrong_json_type(
    newsletter: Newsletter, signer: Signer
) -> None:
    with cert_server(signer) as certificates:
        verifier = SnsVerifier(topic_arns=(TOPIC,), cert_host_allowed=certificates.allows)
        with running_site(newsletter, verifier=verifier) as site:
            add(site.db(), "ada@example.org", status="active")
            before = snapshot(site.db())
            envelope = signer.sign(
                notification(ses_bounce("ada@example.org"), f"{certificates.url}/cert.pem")
            )
            hook = f"{site.url}/webhooks/ses"
            for body in [*NOT_SNS, *(text.encode() for text in wrongly_typed(envelope))]:
                answer = site.client.post(hook, content=body, headers={"Content-Type": "text/plain"})
                assert (answer.status_code, answer.text) == (400, "rejected\n"), body[:120]
            assert snapshot(site.db()) == before
            # The envelope as signed is applied: the refusals above were about the odd field alone.
            assert site.client.post(hook, content=json.dumps(envelope)).status_code == 200
            assert site.status("ada@example.org") == "bounced"


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()
