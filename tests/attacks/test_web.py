"""The subscriber web service attacked, case by case: each row is what an attacker sends and what the
service must answer (a status, never a 500, never a traceback); after each table nothing in the state
database has changed. The service runs under a real uvicorn on 127.0.0.1 (tests.web.test_web)."""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from typing import Any

import pytest

from pipeline.audience.subscribers import add
from pipeline.audience.tokens import make_token
from pipeline.events.sns import SnsVerifier
from tests.conftest import Newsletter
from tests.support.sns import TOPIC, Signer, cert_server, notification, ses_bounce, wrongly_typed
from tests.web.test_web import LIST_ID, SECRET, running_site
from tests.web.test_web import OTHER_LIST_ID as OTHER


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


# Links made up from a real one (token "<id>.<signature>" for subscriber 1, ada@example.org): each must
# be refused (4xx) by the page, the button and the one-click POST alike.
def made_up_links(subscriber_id: int, address: str) -> list[tuple[str, str]]:
    now = int(time.time())
    ours = SECRET.encode()
    return [
        (
            "for another list, our secret",
            make_token(ours, "unsubscribe", subscriber_id, address, list_id=OTHER),
        ),
        ("another secret", make_token(b"x" * 32, "unsubscribe", subscriber_id, address, list_id=LIST_ID)),
        (
            "for another address",
            make_token(ours, "unsubscribe", subscriber_id, "eve@example.org", list_id=LIST_ID),
        ),
        (
            "a confirmation token",
            make_token(ours, "confirm", subscriber_id, address, now + 99, now, list_id=LIST_ID),
        ),
        (
            "someone else's number",
            make_token(ours, "unsubscribe", subscriber_id + 1, address, list_id=LIST_ID),
        ),
        ("no signature", f"{subscriber_id}."),
        ("digits int() refuses", "\u00b9.abc"),
        ("too many parts", f"{subscriber_id}.1.2.3.abc"),
        ("huge number", "9" * 40 + ".abc"),
    ]


def test_made_up_unsubscribe_links_are_refused_and_change_nothing(newsletter: Newsletter) -> None:
    with running_site(newsletter) as site:
        db = site.db()
        subscriber_id = add(db, "ada@example.org", status="active")
        add(db, "eve@example.org", status="active")
        before = snapshot(db)
        for case, token in made_up_links(subscriber_id, "ada@example.org"):
            target = f"{site.url}/unsubscribe/{token}"
            for answer in (
                site.client.get(target),
                site.client.post(target, data={"confirm": "yes"}),
                site.client.post(target, data={"List-Unsubscribe": "One-Click"}),
            ):
                assert 400 <= answer.status_code < 500, (case, answer.request.method, answer.status_code)
        assert snapshot(db) == before


def test_a_request_head_growing_past_16_kb_is_refused_at_once(newsletter: Newsletter) -> None:
    with running_site(newsletter, header_timeout=60) as site:
        host, port = site.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Padding: " + b"x" * 17_000)  # no end
            answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:80]
        assert site.client.get(f"{site.url}/").status_code == 200
