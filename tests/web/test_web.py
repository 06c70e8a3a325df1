"""The subscriber web service under a real uvicorn on 127.0.0.1, driven over HTTP with httpx.

Each test gets its own newsletter folder (state database, maildir outbox) and its own server;
``public_url`` points at that server, so the links in the mails it sends (and in a real
campaign's List-Unsubscribe header) lead back to it. Time is an injected clock: expiry, the
resend interval and the rate limits are tested by moving it, never by sleeping.
"""

from __future__ import annotations

import base64
import email
import hashlib
import logging
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.audience.subscribers import add, find, set_status
from pipeline.audience.tokens import make_token, verify_token
from pipeline.config import Config
from pipeline.db import open_db, transaction
from pipeline.errors import NotificationDeferred, ServeError
from pipeline.web.app import bind, create_app, make_server, serve
from pipeline.web.security import MAX_WEBHOOK_BYTES
from tests.conftest import Newsletter
from tests.support.fakes import OffsetClock

SECRET = "web-test-secret-0123456789"
LIST_ID = "Crate Notes <crate-notes.example.org>"  # what the test newsletter's mails say
OTHER_LIST_ID = "Other Notes <other-notes.example.org>"
NEWSLETTER = Path(sys.executable).with_name("newsletter")
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
CHECK_INBOX = "Check your inbox"


@dataclass
class Site:
    url: str
    config: Config
    newsletter: Newsletter
    clock: OffsetClock
    service: Any
    client: httpx.Client
    dbs: list[sqlite3.Connection] = field(default_factory=list)

    def db(self) -> sqlite3.Connection:
        db = open_db(self.config.paths.state)
        self.dbs.append(db)
        return db

    def sign_up(self, address: str, name: str = "", **extra: str) -> httpx.Response:
        return self.client.post(f"{self.url}/subscribe", data={"email": address, "name": name, **extra})

    def wait_handled(self, count: int) -> None:
        """Until ``count`` sign-ups have finished their work after the response (the background task)."""
        wait_until(lambda: self.service.signups_handled >= count, f"{count} sign-up(s) handled")
        assert self.service.signups_handled == count

    def mails(self) -> list[EmailMessage]:
        folder = self.config.maildir / "new"
        paths = sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime_ns) if folder.exists() else []
        return [email.message_from_bytes(p.read_bytes(), policy=policy.default) for p in paths]  # type: ignore[misc]

    def mails_to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.mails() if address in str(m["To"])]

    def status(self, address: str) -> str:
        row = find(self.db(), address)
        return "absent" if row is None else str(row["status"])

    def changes(self, address: str) -> list[tuple[str | None, str, str]]:
        db = self.db()
        row = find(db, address)
        assert row is not None
        return [
            (r["old_status"], r["new_status"], r["cause"])
            for r in db.execute(
                "SELECT * FROM status_changes WHERE subscriber_id = ? ORDER BY id", (row["id"],)
            )
        ]


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def configure(newsletter: Newsletter, url: str, serve: dict[str, object]) -> None:
    text = newsletter.config_path.read_text(encoding="utf-8")
    text, count = re.subn(r"(?m)^public_url\s*=.*$", f'public_url = "{url}"', text)
    assert count == 1, "newsletter.toml has no public_url line to point at the test server"
    settings = {"signups_per_ip_per_hour": 1000, "signups_per_address_per_day": 1000, **serve}
    text += "\n[serve]\n" + "".join(f"{key} = {value}\n" for key, value in settings.items())
    newsletter.config_path.write_text(text, encoding="utf-8")


@contextmanager
def running_site(
    newsletter: Newsletter,
    verifier: Any = None,
    *,
    secret: bytes = SECRET.encode(),
    previous_secret: bytes | None = None,
    **serve: object,
) -> Iterator[Site]:
    """The service on a free 127.0.0.1 port, under the same uvicorn settings ``newsletter serve`` uses."""
    sock = bind("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    configure(newsletter, url, serve)
    config = newsletter.config()
    clock = OffsetClock()
    app = create_app(config, secret=secret, previous_secret=previous_secret, verifier=verifier, clock=clock)
    server = make_server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    site = None
    try:
        wait_until(lambda: server.started, "the server to start")
        with httpx.Client(timeout=10, follow_redirects=False) as client:
            site = Site(url, config, newsletter, clock, app.state.service, client)
            yield site
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        for db in site.dbs if site else []:
            db.close()
    assert not thread.is_alive(), "the server did not stop"


@pytest.fixture
def site(newsletter: Newsletter) -> Iterator[Site]:
    with running_site(newsletter) as site:
        yield site


def link_in(message: EmailMessage, path: str) -> str:
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    links = re.findall(r"https?://\S+/" + path + r"/\S+", text)
    assert len(links) == 1, text
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert f'href="{links[0]}"' in html
    return str(links[0])


def token_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def press_confirm(site: Site, link: str) -> httpx.Response:
    """What a reader does with a confirmation link: open it (a page, nothing changes), press its button."""
    page = site.client.get(link)
    if page.status_code != 200 or "<form" not in page.text:
        return page
    action = re.search(r'<form method="post" action="([^"]+)"', page.text)
    assert action and f"{site.url}{action.group(1)}" == link
    return site.client.post(link)


# --- Sign-up and confirmation -------------------------------------------------------------------


def test_sign_up_mails_a_confirmation_whose_link_activates(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pipeline.web")
    page = site.client.get(f"{site.url}/")
    assert page.status_code == 200 and 'action="/subscribe"' in page.text
    answer = site.sign_up("ada@example.org", "Ada Lovelace")
    assert answer.status_code == 200 and CHECK_INBOX in answer.text
    site.wait_handled(1)
    db = site.db()
    row = find(db, "ada@example.org")
    assert row is not None
    assert (row["status"], row["name"], row["source"]) == ("pending", "Ada Lovelace", "web")
    assert row["confirmation_sent_at"] is not None

    [message] = site.mails()
    assert message["From"] == site.config.sender
    assert message["To"] == "ada@example.org"  # the name is whatever the visitor typed: not in our mail
    assert "Lovelace" not in message.as_string()
    assert message["Subject"] == "Confirm your subscription to Crate Notes"
    assert message.get_content_type() == "multipart/alternative"
    assert {part.get_content_charset() for part in message.iter_parts()} == {"utf-8"}
    link = link_in(message, "confirm")
    assert link.startswith(f"{site.url}/confirm/{row['id']}.")

    # Opening the link (as a mail scanner does, several times) shows one button and changes nothing.
    for _ in range(3):
        page = site.client.get(link)
        assert page.status_code == 200 and "Confirm my subscription" in page.text
    assert page.text.count("<form") == 1 and page.text.count("<button") == 1
    action = re.search(r'<form method="post" action="([^"]+)"', page.text)
    assert action and f"{site.url}{action.group(1)}" == link
    assert site.status("ada@example.org") == "pending"
    assert len(site.changes("ada@example.org")) == 1

    confirmed = site.client.post(link)
    assert confirmed.status_code == 200 and "subscribed" in confirmed.text
    assert site.status("ada@example.org") == "active"
    assert site.changes("ada@example.org") == [
        (None, "pending", "added (web)"),
        ("pending", "active", "confirmed by link"),
    ]
    # A second press is the same success, and changes nothing; the link now says it is done.
    again = site.client.post(link)
    assert again.status_code == 200 and again.text == confirmed.text
    assert site.client.get(link).text == confirmed.text
    assert len(site.changes("ada@example.org")) == 2
    # The log tells what happened, never a whole token.
    assert "confirm: s1: confirmed" in caplog.text
    assert token_of(link) not in caplog.text and token_of(link)[:14] not in caplog.text


def test_same_answer_whatever_the_address_is(site: Site) -> None:
    db = site.db()
    for address, status in [
        ("pending@example.org", "pending"),
        ("active@example.org", "active"),
        ("gone@example.org", "unsubscribed"),
        ("bounced@example.org", "bounced"),
        ("angry@example.org", "complained"),
    ]:
        add(db, address, status=status, source="cli")
    addresses = [
        "new@example.org",
        "pending@example.org",
        "active@example.org",
        "gone@example.org",
        "bounced@example.org",
        "angry@example.org",
    ]
    answers = [site.sign_up(address) for address in addresses]
    first = answers[0]
    assert first.status_code == 200 and CHECK_INBOX in first.text
    for address, answer in zip(addresses, answers, strict=True):
        assert answer.status_code == first.status_code, address
        assert answer.content == first.content, address
        assert sorted((k, v) for k, v in answer.headers.items() if k != "date") == sorted(
            (k, v) for k, v in first.headers.items() if k != "date"
        ), address
    site.wait_handled(len(addresses))

    mailed = {address: [m["Subject"] for m in site.mails_to(address)] for address in addresses}
    assert mailed == {
        "new@example.org": ["Confirm your subscription to Crate Notes"],
        "pending@example.org": ["Confirm your subscription to Crate Notes"],
        "active@example.org": ["You are already subscribed to Crate Notes"],
        "gone@example.org": ["Confirm your subscription to Crate Notes"],
        "bounced@example.org": [],
        "angry@example.org": [],
    }
    # Nobody's status changed by someone typing their address.
    assert [site.status(a) for a in addresses] == [
        "pending",
        "pending",
        "active",
        "unsubscribed",
        "bounced",
        "complained",
    ]
    # Coming back after unsubscribing takes the click.
    link = link_in(site.mails_to("gone@example.org")[0], "confirm")
    assert press_confirm(site, link).status_code == 200
    assert site.status("gone@example.org") == "active"
    assert site.changes("gone@example.org")[-1] == ("unsubscribed", "active", "confirmed by link")
    # The "already subscribed" note carries a working unsubscribe link, nothing else.
    note = site.mails_to("active@example.org")[0]
    assert link_in(note, "unsubscribe").startswith(f"{site.url}/unsubscribe/")


def test_honeypot_gets_the_same_answer_and_nothing_happens(site: Site) -> None:
    normal = site.sign_up("person@example.org")
    bot = site.sign_up("bot@example.org", website="http://spam.example")
    assert bot.status_code == normal.status_code == 200 and bot.content == normal.content
    site.wait_handled(1)  # only the person's sign-up had anything to do
    assert site.status("bot@example.org") == "absent"
    assert [str(m["To"]) for m in site.mails()] == ["person@example.org"]


def test_sign_up_form_hides_the_honeypot_from_people(site: Site) -> None:
    page = site.client.get(f"{site.url}/subscribe").text
    honeypot = re.search(r'<div class="hp"[^>]*>.*?</div>', page, re.DOTALL)
    assert honeypot and 'aria-hidden="true"' in honeypot.group(0)
    assert re.search(r'<input[^>]*name="website"[^>]*tabindex="-1"[^>]*autocomplete="off"', honeypot.group(0))
    assert re.search(r"\.hp\s*\{\s*display:\s*none", page)
    for field_id in ("email", "name"):
        assert f'<label for="{field_id}">' in page and f'id="{field_id}"' in page


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("", "Enter your email address."),
        ("not-an-address", "That is not a valid email address"),
        ('"><script>alert(1)</script>@example.org', "That is not a valid email address"),
        ("two@@example.org", "That is not a valid email address"),
    ],
)
def test_a_malformed_address_gets_the_form_again_with_the_reason(
    site: Site, address: str, message: str
) -> None:
    answer = site.sign_up(address, "Someone")
    assert answer.status_code == 400
    assert message in answer.text and 'aria-invalid="true"' in answer.text
    assert "<script" not in answer.text.lower()  # the input comes back escaped, in the field
    assert 'value="Someone"' in answer.text
    assert site.service.signups_handled == 0 and not find(site.db(), address)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("Claim your prize: http://evil.example/x", "cannot contain a web or email address"),
        ("Prize at www.evil.example", "cannot contain a web or email address"),
        ("Prize at evil.example", "cannot contain a web or email address"),
        ("bit.ly/prize", "cannot contain a web or email address"),
        ("Write to prize@evil.example", "cannot contain a web or email address"),
        ("@prizes", "cannot contain a web or email address"),
        ("x" * 101, "100 characters or fewer"),
    ],
)
def test_a_name_with_a_link_or_an_address_gets_the_form_again(site: Site, name: str, problem: str) -> None:
    answer = site.sign_up("ada@example.org", name)
    assert answer.status_code == 400 and problem in answer.text
    assert 'id="name-error"' in answer.text and 'aria-describedby="name-error"' in answer.text
    assert 'value="ada@example.org"' in answer.text
    # Not a pause: a good sign-up after it, once handled, proves background work has had its turn.
    assert site.sign_up("probe@example.org").status_code == 200
    site.wait_handled(1)  # the probe only: the refused one was never handled
    assert site.status("ada@example.org") == "absent"
    assert [str(mail["To"]) for mail in site.mails()] == ["probe@example.org"]


@pytest.mark.parametrize(
    "name", ["J.R.R. Tolkien", "Dr. Who", "A.Smith", "Zoë  Ünal", "Mary-Ann O'Neil", "x" * 100]
)
def test_ordinary_names_are_kept_but_never_mailed(site: Site, name: str) -> None:
    assert site.sign_up("ada@example.org", name).status_code == 200
    site.wait_handled(1)
    row = find(site.db(), "ada@example.org")
    assert row is not None and row["name"] == " ".join(name.split())
    [message] = site.mails()
    assert message["To"] == "ada@example.org"
    assert " ".join(name.split()) not in message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert message.get_body(("plain",)).get_content().splitlines()[0] == "Hello,"  # type: ignore[union-attr]


def test_per_ip_limit_answers_429_with_retry_after(newsletter: Newsletter) -> None:
    with running_site(newsletter, signups_per_ip_per_hour=3) as site:
        for index in range(3):
            assert site.sign_up(f"reader{index}@example.org").status_code == 200
        refused = site.sign_up("reader3@example.org")
        assert refused.status_code == 429
        assert 0 < int(refused.headers["Retry-After"]) <= 3600
        assert "Too many" in refused.text
        # Behind the reverse proxy (a peer on 127.0.0.1), each client has its own count.
        proxied = site.client.post(
            f"{site.url}/subscribe",
            data={"email": "far@example.org"},
            headers={"X-Forwarded-For": "203.0.113.9"},
        )
        assert proxied.status_code == 200
        site.clock.advance(3601)
        assert site.sign_up("reader3@example.org").status_code == 200
        site.wait_handled(5)
        assert site.status("reader3@example.org") == "pending"


def test_per_ip_limit_counts_an_ipv6_client_by_its_64(newsletter: Newsletter) -> None:
    with running_site(newsletter, signups_per_ip_per_hour=2) as site:

        def from_(client: str, address: str) -> int:
            headers = {"X-Forwarded-For": client}
            return site.client.post(
                f"{site.url}/subscribe", data={"email": address}, headers=headers
            ).status_code

        # One end network rotating through its /64 is one client.
        assert from_("2001:db8:1:2::1", "a@example.org") == 200
        assert from_("2001:db8:1:2:ffff:ffff:ffff:fffe", "b@example.org") == 200
        assert from_("2001:db8:1:2:abcd::9", "c@example.org") == 429
        # The next /64 is someone else.
        assert from_("2001:db8:1:3::1", "d@example.org") == 200
        site.wait_handled(3)


def test_a_flood_for_one_address_mails_it_once_per_resend_interval(newsletter: Newsletter) -> None:
    with running_site(newsletter, resend_minutes=15, signups_per_address_per_day=4) as site:
        answers = [site.sign_up("victim@example.org") for _ in range(3)]
        site.wait_handled(3)
        assert len(site.mails()) == 1
        site.clock.advance(16 * 60)
        answers.append(site.sign_up("Victim@Example.org"))  # the same address, however written
        site.wait_handled(4)
        assert len(site.mails()) == 2
        # Over the daily cap: dropped, with the very same answer (a different one would tell).
        site.clock.advance(16 * 60)
        answers += [site.sign_up("victim@example.org") for _ in range(3)]
        # Not a pause: a sign-up for someone else, once handled, proves the three had their turn.
        site.sign_up("probe@example.org")
        site.wait_handled(5)  # four for the victim and the probe: the three over the cap were dropped
        assert len(site.mails_to("victim@example.org")) == 2
        assert {(a.status_code, a.content) for a in answers} == {(200, answers[0].content)}
        assert site.status("victim@example.org") == "pending"


def test_an_expired_link_says_so_and_a_new_sign_up_works(site: Site) -> None:
    site.sign_up("late@example.org")
    site.wait_handled(1)
    old = link_in(site.mails()[0], "confirm")
    site.clock.advance(site.config.serve.confirm_hours * 3600 + 1)
    for expired in (site.client.get(old), site.client.post(old)):
        assert expired.status_code == 410
        assert "expired" in expired.text and 'action="/subscribe"' in expired.text
        assert 'value="late@example.org"' in expired.text
    assert site.status("late@example.org") == "pending"

    site.sign_up("late@example.org")
    site.wait_handled(2)
    new = link_in(site.mails()[-1], "confirm")
    assert new != old
    assert press_confirm(site, new).status_code == 200
    assert site.status("late@example.org") == "active"


def test_an_old_confirmation_link_does_not_undo_an_unsubscribe(site: Site) -> None:
    site.clock.advance(-10)  # the sign-up happened a little before the unsubscribe
    site.sign_up("fickle@example.org")
    site.wait_handled(1)
    link = link_in(site.mails()[0], "confirm")
    make_status(site, "fickle@example.org", "unsubscribed")
    for stale in (site.client.get(link), site.client.post(link)):
        assert stale.status_code == 410 and "no longer valid" in stale.text
    assert site.status("fickle@example.org") == "unsubscribed"


def test_an_old_link_does_not_resubscribe_after_a_stranger_types_the_address_in_again(site: Site) -> None:
    site.sign_up("ada@example.org")
    site.wait_handled(1)
    first = link_in(site.mails()[0], "confirm")
    assert press_confirm(site, first).status_code == 200 and site.status("ada@example.org") == "active"
    row = find(site.db(), "ada@example.org")
    assert row is not None
    unsubscribe = make_token(SECRET.encode(), "unsubscribe", row["id"], "ada@example.org", list_id=LIST_ID)
    assert (
        site.client.post(f"{site.url}/unsubscribe/{unsubscribe}", data={"confirm": "yes"}).status_code == 200
    )
    assert site.status("ada@example.org") == "unsubscribed"
    # Twenty minutes later someone else signs her up: she is mailed a new link, and clicks nothing.
    site.clock.advance(20 * 60)
    site.sign_up("ada@example.org")
    site.wait_handled(2)
    assert len(site.mails()) == 2
    # The old link (still within its 48 hours) is no longer valid: only the latest one is.
    for stale in (site.client.get(first), site.client.post(first)):
        assert stale.status_code == 410 and "no longer valid" in stale.text
    assert site.status("ada@example.org") == "unsubscribed"


def test_only_the_latest_confirmation_link_works(newsletter: Newsletter) -> None:
    with running_site(newsletter, resend_minutes=15) as site:
        site.sign_up("ada@example.org")
        site.wait_handled(1)
        first = link_in(site.mails()[0], "confirm")
        site.clock.advance(16 * 60)
        site.sign_up("ada@example.org")
        site.wait_handled(2)
        second = link_in(site.mails()[1], "confirm")
        assert first != second
        for stale in (site.client.get(first), site.client.post(first)):
            assert stale.status_code == 410 and "no longer valid" in stale.text
        assert site.status("ada@example.org") == "pending"
        # A link of the former kind (no sending time signed in) cannot be told to be the latest.
        row = find(site.db(), "ada@example.org")
        assert row is not None
        old_kind = make_token(
            SECRET.encode(), "confirm", row["id"], "ada@example.org", int(time.time()) + 3600, list_id=LIST_ID
        )
        for stale in (
            site.client.get(f"{site.url}/confirm/{old_kind}"),
            site.client.post(f"{site.url}/confirm/{old_kind}"),
        ):
            assert stale.status_code == 410 and "no longer valid" in stale.text
        assert site.status("ada@example.org") == "pending"
        assert press_confirm(site, second).status_code == 200
        assert site.status("ada@example.org") == "active"


def test_a_bounced_address_is_not_reactivated_by_its_link(site: Site) -> None:
    site.sign_up("bouncy@example.org")
    site.wait_handled(1)
    link = link_in(site.mails()[0], "confirm")
    make_status(site, "bouncy@example.org", "bounced")
    for refused in (site.client.get(link), site.client.post(link)):
        assert refused.status_code == 403 and "editor@example.org" in refused.text
    assert site.status("bouncy@example.org") == "bounced"


def make_status(site: Site, address: str, status: str) -> None:
    db = site.db()
    row = find(db, address)
    assert row is not None
    with transaction(db):
        set_status(db, row["id"], status, "test")


def forgeries(token: str, email_address: str) -> list[str]:
    """Every way a link can be damaged or made up, given a good token."""
    subscriber_id, rest = token.split(".", 1)
    signature = rest.rsplit(".", 1)[-1]
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    found = [
        token[:-1] + ("A" if token[-1] != "A" else "B"),  # one character changed
        token[:-4],  # truncated, as a mail client may cut a long line
        token[: len(subscriber_id) + 1],  # only the id
        f"{int(subscriber_id) + 1}.{rest}",  # moved to another subscriber
        f"999.{rest}",  # nobody
        make_token(
            b"some-other-secret-entirely",
            "confirm",
            int(subscriber_id),
            email_address,
            int(time.time()) + 99,
            list_id=LIST_ID,
        ),
        make_token(
            b"some-other-secret-entirely", "unsubscribe", int(subscriber_id), email_address, list_id=LIST_ID
        ),
        # Made by us, with our secret, for the same subscriber and address: but for another list's mail.
        make_token(
            SECRET.encode(),
            "confirm",
            int(subscriber_id),
            email_address,
            int(time.time()) + 99,
            issued=int(time.time()),
            list_id=OTHER_LIST_ID,
        ),
        make_token(SECRET.encode(), "unsubscribe", int(subscriber_id), email_address, list_id=OTHER_LIST_ID),
        "abc",
        "1",
        "1..",
        "-1.abc",
        "%00",
        "1.2.3.4",
    ]
    if rest.count(".") == 2:  # a confirmation token: move its times, or drop them
        issued, expires = rest.split(".")[:2]
        found += [
            f"{subscriber_id}.{issued}.{int(expires) + 3600}.{signature}",  # expiry pushed out
            f"{subscriber_id}.{int(issued) + 60}.{expires}.{signature}",  # sent later (after an unsubscribe)
            f"{subscriber_id}.{expires}.{signature}",  # no sending time
            f"{subscriber_id}.{issued}.{signature}",
            f"{subscriber_id}.{signature}",
            f"{subscriber_id}.{issued}.{expires}.{flipped}",
            f"{subscriber_id}.\u00b2.{expires}.{signature}",  # a digit to str.isdigit, not to int()
        ]
    return found


def test_forged_confirmation_links_change_nothing(site: Site) -> None:
    site.sign_up("careful@example.org")
    add(site.db(), "other@example.org", status="pending", source="cli")
    site.wait_handled(1)
    token = token_of(link_in(site.mails()[0], "confirm"))
    unsubscribe_token = make_token(
        SECRET.encode(), "unsubscribe", int(token.split(".")[0]), "careful@example.org", list_id=LIST_ID
    )
    for forged in [*forgeries(token, "careful@example.org"), unsubscribe_token]:
        for answer in (
            site.client.get(f"{site.url}/confirm/{forged}"),
            site.client.post(f"{site.url}/confirm/{forged}"),
        ):
            assert 400 <= answer.status_code < 500 and answer.status_code != 410, (forged, answer.status_code)
    assert site.status("careful@example.org") == "pending" and site.status("other@example.org") == "pending"
    assert len(site.changes("careful@example.org")) == 1


def test_links_with_digits_int_cannot_read_are_refused_not_a_server_error(site: Site) -> None:
    add(site.db(), "reader@example.org")
    for path in (
        "/unsubscribe/%C2%B2.abc",
        "/unsubscribe/1.%C2%B9%C2%B2",
        "/confirm/%C2%B2.1.2.x",
        "/confirm/1.%C2%B2.abc",
        "/confirm/1.%C2%B2.2.abc",
        "/confirm/1.1.%C2%B2.abc",
    ):
        for method in ("GET", "POST"):
            answer = site.client.request(method, f"{site.url}{path}")
            assert 400 <= answer.status_code < 500, (method, path, answer.status_code)
            assert "default-src 'none'" in answer.headers["Content-Security-Policy"]
    assert site.status("reader@example.org") == "active"


# --- Unsubscribe -----------------------------------------------------------------------------


def active_reader(site: Site, address: str = "reader@example.org") -> str:
    """An active subscriber's unsubscribe URL, as the campaign puts it in each issue."""
    subscriber_id = add(site.db(), address, status="active")
    token = make_token(SECRET.encode(), "unsubscribe", subscriber_id, address, list_id=LIST_ID)
    return f"{site.url}/unsubscribe/{token}"


def test_get_shows_one_button_and_changes_nothing(site: Site) -> None:
    url = active_reader(site)
    for _ in range(3):  # a mail scanner following the link, several times
        page = site.client.get(url)
        assert page.status_code == 200
    assert page.text.count("<form") == 1 and page.text.count("<button") == 1
    action = re.search(r'<form method="post" action="([^"]+)"', page.text)
    assert action and f"{site.url}{action.group(1)}" == url
    assert "reader@example.org" in page.text
    assert site.status("reader@example.org") == "active"


def test_the_button_unsubscribes_and_twice_is_harmless(site: Site) -> None:
    url = active_reader(site)
    done = site.client.post(url, data={"confirm": "yes"})
    assert done.status_code == 200 and "unsubscribed" in done.text
    assert site.status("reader@example.org") == "unsubscribed"
    assert site.changes("reader@example.org")[-1] == ("active", "unsubscribed", "unsubscribe page")
    again = site.client.post(url, data={"confirm": "yes"})
    assert again.status_code == 200 and len(site.changes("reader@example.org")) == 2
    # And the link now says it is done, with no button.
    assert "<button" not in site.client.get(url).text


def test_forged_unsubscribe_links_change_nothing(site: Site) -> None:
    url = active_reader(site)
    active_reader(site, "neighbour@example.org")
    token = token_of(url)
    confirm_token = make_token(
        SECRET.encode(),
        "confirm",
        int(token.split(".")[0]),
        "reader@example.org",
        int(time.time()) + 99,
        list_id=LIST_ID,
    )
    for forged in [*forgeries(token, "reader@example.org"), confirm_token]:
        target = f"{site.url}/unsubscribe/{forged}"
        for answer in (
            site.client.get(target),
            site.client.post(target, data={"confirm": "yes"}),
            site.client.post(target, content=b"List-Unsubscribe=One-Click", headers=FORM),
        ):
            assert 400 <= answer.status_code < 500, (forged, answer.request.method, answer.status_code)
    assert site.status("reader@example.org") == "active" and site.status("neighbour@example.org") == "active"


def test_links_mailed_before_a_secret_rotation_keep_working(newsletter: Newsletter) -> None:
    old, new = SECRET.encode(), b"the-rotated-in-secret-0123456789"
    with running_site(newsletter, secret=new, previous_secret=old) as site:
        mailed = active_reader(site)  # signed with the old secret, as in every issue already sent
        assert site.client.post(mailed, data={"List-Unsubscribe": "One-Click"}).status_code == 200
        assert site.status("reader@example.org") == "unsubscribed"
        # What the service mails now is signed with the new secret alone.
        site.sign_up("fresh@example.org")
        site.wait_handled(1)
        token = token_of(link_in(site.mails_to("fresh@example.org")[0], "confirm"))
        assert verify_token(new, "confirm", token, "fresh@example.org", now=0, list_id=LIST_ID)
        assert not verify_token(old, "confirm", token, "fresh@example.org", now=0, list_id=LIST_ID)


def test_serve_takes_the_previous_secret_from_the_environment(
    newsletter: Newsletter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET", "n" * 32)
    monkeypatch.setenv("NEWSLETTER_SECRET_PREVIOUS", "p" * 32)
    service = create_app(newsletter.config()).state.service
    assert (service.secret, service.previous_secret) == (b"n" * 32, b"p" * 32)
    service.close()


def send_issue_one(newsletter: Newsletter, monkeypatch: pytest.MonkeyPatch) -> None:
    """``newsletter send 1``, in process: the real campaign, into the maildir."""
    from pipeline.issue.build import build_issue
    from pipeline.publish import SendOptions, send_issue

    monkeypatch.setenv("NEWSLETTER_SECRET", SECRET)
    newsletter.write_issue(1, "Hello, readers.\n")
    config = newsletter.config()
    summary = send_issue(config, build_issue(config, 1), SendOptions(offline=True), confirm=lambda *_: True)
    assert summary.status == "done"


def list_unsubscribe(message: EmailMessage) -> str:
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    urls = re.findall(r"<([^>]+)>", str(message["List-Unsubscribe"]))
    https = [url for url in urls if not url.startswith("mailto:")]
    assert len(https) == 1, urls
    return https[0]


@pytest.mark.slow  # the console script in a subprocess
def test_one_click_from_a_real_campaign_message(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    for address in ("one@example.org", "two@example.org", "three@example.org"):
        add(site.db(), address, status="active")
    send_issue_one(site.newsletter, monkeypatch)
    messages = {str(m["To"]): m for m in site.mails()}
    assert sorted(messages) == ["one@example.org", "three@example.org", "two@example.org"]

    # Exactly what a mail provider sends (RFC 8058): a form POST with one field, no cookies, no page.
    url = list_unsubscribe(messages["one@example.org"])
    assert url.startswith(f"{site.url}/unsubscribe/")
    for _ in range(2):  # providers retry; the second is harmless
        answer = httpx.post(url, content=b"List-Unsubscribe=One-Click", headers=FORM, timeout=10)
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/plain") and len(answer.content) < 100
    assert site.status("one@example.org") == "unsubscribed"
    assert site.changes("one@example.org") == [
        (None, "active", "added (cli)"),
        ("active", "unsubscribed", "one-click (RFC 8058)"),
    ]

    # Some providers send it as multipart/form-data.
    url = list_unsubscribe(messages["two@example.org"])
    boundary = "----provider7MA4YWxkTrZu0gW"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="List-Unsubscribe"\r\n\r\nOne-Click\r\n--{boundary}--\r\n'
    ).encode()
    answer = httpx.post(
        url, content=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert answer.status_code == 200
    assert site.status("two@example.org") == "unsubscribed"
    assert site.changes("two@example.org")[-1][2] == "one-click (RFC 8058)"
    assert site.status("three@example.org") == "active"


# --- Webhook ---------------------------------------------------------------------------------


@pytest.fixture
def sns() -> Any:
    """tests/support/sns.py (signed SNS messages): part of the suite, so missing is a failure."""
    from tests.support import sns as sns_support

    return sns_support


def test_webhook_applies_a_signed_bounce_once_and_refuses_forgeries(newsletter: Newsletter, sns: Any) -> None:
    from pipeline.events.sns import SnsVerifier

    signer = sns.Signer()
    cert_url = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem"
    reachable = {"yes": True}
    fetched: list[str] = []

    def fetch(url: str) -> bytes:  # the certificate host, without the network
        fetched.append(url)
        if not reachable["yes"]:
            raise NotificationDeferred(f"cannot fetch {url}: timed out")
        return signer.pem if url == cert_url else b""

    verifier = SnsVerifier(topic_arns=(sns.TOPIC,), fetch=fetch)
    with running_site(newsletter, verifier=verifier) as site:
        add(site.db(), "gone@example.org", status="active")
        hook = f"{site.url}/webhooks/ses"
        plain = {"Content-Type": "text/plain; charset=UTF-8", "x-amz-sns-message-type": "Notification"}
        signed = signer.sign(sns.notification(sns.ses_bounce("gone@example.org"), cert_url))
        body = _json(signed)
        assert site.client.post(hook, content=body, headers=plain).status_code == 200
        assert site.status("gone@example.org") == "bounced"
        assert site.client.post(hook, content=body, headers=plain).status_code == 200  # SNS redelivers
        assert len(site.changes("gone@example.org")) == 2

        add(site.db(), "stays@example.org", status="active")
        tampered = dict(signer.sign(sns.notification(sns.ses_complaint("other@example.org"), cert_url)))
        tampered["Message"] = sns.ses_complaint("stays@example.org")
        for forged in (_json(tampered), b"not json", b"{}", b""):
            answer = site.client.post(hook, content=forged, headers=plain)
            assert answer.status_code == 400, forged[:40]
        assert site.status("stays@example.org") == "active"

        too_big = b"{" + b" " * MAX_WEBHOOK_BYTES + b"}"
        assert site.client.post(hook, content=too_big, headers=plain).status_code == 413

        # The certificate host is unreachable: not the sender's fault, SNS should retry.
        reachable["yes"] = False
        other_cert = cert_url.replace("0123456789abcdef", "fedcba9876543210")
        later = _json(signer.sign(sns.notification(sns.ses_complaint("stays@example.org"), other_cert)))
        assert site.client.post(hook, content=later, headers=plain).status_code == 503
        assert site.status("stays@example.org") == "active"
        assert site.client.get(hook).status_code == 405


@pytest.mark.parametrize("verifier_given", [True, False], ids=["given-verifier", "default-verifier"])
def test_webhook_refuses_every_message_while_topic_arns_is_empty(
    newsletter: Newsletter, sns: Any, caplog: pytest.LogCaptureFixture, verifier_given: bool
) -> None:
    from pipeline.events.sns import SnsVerifier

    signer = sns.Signer()
    cert_url = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem"
    fetched: list[str] = []

    def fetch(url: str) -> bytes:
        fetched.append(url)
        return signer.pem

    subscribe = f"https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn={sns.OTHER_TOPIC}"
    messages = [
        signer.sign(sns.confirmation(cert_url, subscribe, topic=sns.OTHER_TOPIC)),  # someone else's topic
        signer.sign(sns.notification(sns.ses_bounce("victim@example.org"), cert_url, topic=sns.OTHER_TOPIC)),
        signer.sign(sns.notification(sns.ses_bounce("victim@example.org"), cert_url)),
    ]
    # The configuration's topic list is empty (the default); so is the verifier built from it.
    assert newsletter.config().events.topic_arns == ()
    verifier = SnsVerifier(topic_arns=(), fetch=fetch) if verifier_given else None
    with running_site(newsletter, verifier=verifier) as site:
        add(site.db(), "victim@example.org")
        for message in [*messages, {"Type": "Notification"}]:
            caplog.clear()
            with caplog.at_level(logging.WARNING):
                answer = site.client.post(f"{site.url}/webhooks/ses", content=_json(message))
            assert answer.status_code == 403
            assert "Content-Security-Policy" in answer.headers
            [record] = caplog.records  # one line per request, saying what to do
            assert "[events] topic_arns is empty" in record.getMessage() and "set it" in record.getMessage()
            assert "\n" not in record.getMessage()
        assert site.status("victim@example.org") == "active"
        assert site.db().execute("SELECT COUNT(*) FROM sns_messages").fetchone()[0] == 0
    assert fetched == []  # neither a certificate nor a SubscribeURL was fetched


def test_webhook_checks_signatures_outside_the_database_lock(newsletter: Newsletter, sns: Any) -> None:
    from pipeline.events.sns import SnsVerifier

    signer = sns.Signer()
    known = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0a0a.pem"
    slow = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0b0b.pem"
    waiting, release = threading.Event(), threading.Event()

    def fetch(url: str) -> bytes:
        if url == slow:  # a certificate host that takes its time, then fails
            waiting.set()
            release.wait(15)
            raise NotificationDeferred(f"cannot fetch {url}: timed out")
        return signer.pem

    verifier = SnsVerifier(topic_arns=(sns.TOPIC,), fetch=fetch)
    with running_site(newsletter, verifier=verifier) as site:
        for address in ("a@example.org", "b@example.org"):
            add(site.db(), address)
        hook = f"{site.url}/webhooks/ses"

        def bounce(address: str, cert: str) -> bytes:
            return _json(signer.sign(sns.notification(sns.ses_bounce(address), cert)))

        assert site.client.post(hook, content=bounce("a@example.org", known)).status_code == 200
        held: dict[str, httpx.Response] = {}
        thread = threading.Thread(
            target=lambda: held.update(
                answer=httpx.post(hook, content=bounce("a@example.org", slow), timeout=30)
            )
        )
        thread.start()
        try:
            assert waiting.wait(10), "the slow certificate was never fetched"
            started = time.monotonic()
            for body in (bounce("b@example.org", known), b"not json"):
                answer = site.client.post(hook, content=body)
                assert answer.status_code in (200, 400)
            assert time.monotonic() - started < 5, "the webhook waited for another request's certificate"
            assert site.status("b@example.org") == "bounced"
        finally:
            release.set()
            thread.join(30)
        assert held["answer"].status_code == 503


@pytest.mark.parametrize(
    "failure",
    [sqlite3.OperationalError("database is locked"), NotificationDeferred("state database busy")],
    ids=["database-locked", "deferred"],
)
def test_webhook_answers_503_to_a_message_it_cannot_apply_now(
    newsletter: Newsletter, sns: Any, monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    """Verified, but the database cannot take it now: SNS must retry it (503), not drop it (400)."""
    from pipeline.events.sns import SnsVerifier

    signer = sns.Signer()
    cert_url = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem"
    verifier = SnsVerifier(topic_arns=(sns.TOPIC,), fetch=lambda url: signer.pem)

    def busy(db: sqlite3.Connection, message: dict[str, str]) -> None:
        raise failure

    with running_site(newsletter, verifier=verifier) as site:
        add(site.db(), "gone@example.org", status="active")
        hook = f"{site.url}/webhooks/ses"
        body = _json(signer.sign(sns.notification(sns.ses_bounce("gone@example.org"), cert_url)))
        with monkeypatch.context() as patch:
            patch.setattr("pipeline.events.apply.apply_notification", busy)
            answer = site.client.post(hook, content=body)
        assert (answer.status_code, answer.text) == (503, "try again later\n")
        assert site.status("gone@example.org") == "active"
        assert site.client.post(hook, content=body).status_code == 200  # SNS's retry
        assert site.status("gone@example.org") == "bounced"


def test_webhook_answers_400_to_bodies_json_cannot_read(newsletter: Newsletter, sns: Any) -> None:
    from pipeline.events.sns import SnsVerifier

    verifier = SnsVerifier(topic_arns=(sns.TOPIC,), fetch=lambda url: b"")
    with running_site(newsletter, verifier=verifier) as site:
        for body in (
            b'{"Type": ' + b"1" * 5000 + b"}",  # int() refuses more than 4300 digits: a ValueError
            b'{"MessageId": "x", "Type": "Notification", "n": ' + b"9" * 4301 + b"}",
            b"\xff\xfe" + "{}".encode("utf-16-le"),
            b"[" * 100_000,
        ):
            answer = site.client.post(f"{site.url}/webhooks/ses", content=body)
            assert answer.status_code == 400, body[:30]
            assert answer.text == "rejected\n" and "Content-Security-Policy" in answer.headers


def _json(message: dict[str, Any]) -> bytes:
    import json

    return json.dumps(message).encode()


# --- The pages themselves ------------------------------------------------------------------


def confirm_page(site: Site) -> str:
    """A pending subscriber's confirmation link, as the sign-up mails it."""
    subscriber_id = add(site.db(), "pending@example.org", status="pending")
    sent = int(site.clock())
    site.db().execute(
        "UPDATE subscribers SET confirmation_sent_at = ?, status_changed_at = ? WHERE id = ?",
        (_stamp(sent), _stamp(sent - 1), subscriber_id),
    )
    token = make_token(
        SECRET.encode(),
        "confirm",
        subscriber_id,
        "pending@example.org",
        sent + 3600,
        issued=sent,
        list_id=LIST_ID,
    )
    return f"{site.url}/confirm/{token}"


def _stamp(seconds: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds")


def test_every_page_has_strict_security_headers_and_no_script(site: Site) -> None:
    reader = active_reader(site)
    pages = [
        site.client.get(f"{site.url}/"),
        site.client.get(f"{site.url}/subscribe"),
        site.sign_up("x@example.org"),
        site.sign_up("nope"),
        site.client.get(f"{site.url}/confirm/1.2.abc"),
        site.client.get(confirm_page(site)),
        site.client.get(reader),
        site.client.post(reader, data={"confirm": "yes"}),
        site.client.get(f"{site.url}/no/such/page"),
    ]
    for page in pages:
        where = f"{page.request.method} {page.request.url.path}"
        csp = page.headers["Content-Security-Policy"]
        for directive in ("default-src 'none'", "form-action 'self'", "frame-ancestors 'none'"):
            assert directive in csp, where
        assert "unsafe" not in csp and "script-src" not in csp
        assert page.headers["X-Content-Type-Options"] == "nosniff"
        assert page.headers["Referrer-Policy"] == "no-referrer"
        assert "server" not in page.headers
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        text = page.text
        assert "<script" not in text.lower() and not re.search(
            r"<[^>]*\son[a-z]+\s*=", text, re.IGNORECASE
        ), where
        assert (
            '<html lang="en">' in text
            and 'name="viewport" content="width=device-width, initial-scale=1"' in text
        )
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), (
            f"{where} loads something from elsewhere"
        )
        # The one style block is exactly what the policy allows, by hash.
        [style] = re.findall(r"<style>(.*?)</style>", text, re.DOTALL)
        digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
        assert f"style-src 'sha256-{digest}'" in csp, where
        assert ' style="' not in text, f"{where}: inline style attributes are blocked by the policy"
    assert pages[-1].status_code == 404
    assert site.client.get(f"{site.url}/healthz").text == "ok\n"


def test_a_server_error_is_a_plain_page_with_the_security_headers(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("internal detail /srv/letter/state")

    monkeypatch.setattr("pipeline.web.links.check_link", broken)
    # Each on a connection of its own: uvicorn closes the connection after an exception.
    for method, path in (("GET", "/unsubscribe/1.abc"), ("POST", "/confirm/1.2.3.abc")):
        answer = httpx.request(method, f"{site.url}{path}", timeout=10)
        assert answer.status_code == 500
        assert answer.text == "Something went wrong on our side. Please try again later.\n"
        assert "Traceback" not in answer.text and "internal detail" not in answer.text
        csp = answer.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["Referrer-Policy"] == "no-referrer"
        assert answer.headers["Cache-Control"] == "no-store"
        assert "server" not in answer.headers


def test_links_in_mails_come_from_public_url_not_the_host_header(site: Site) -> None:
    answer = site.client.post(
        f"{site.url}/subscribe", data={"email": "host@example.org"}, headers={"Host": "evil.example"}
    )
    assert answer.status_code == 200
    site.wait_handled(1)
    link = link_in(site.mails()[0], "confirm")
    assert link.startswith(f"{site.url}/confirm/") and "evil" not in site.mails()[0].as_string()


def test_an_oversized_form_is_refused(site: Site) -> None:
    answer = site.client.post(f"{site.url}/subscribe", content=b"email=" + b"a" * 20_000, headers=FORM)
    assert answer.status_code == 413
    assert site.service.signups_handled == 0


# --- Starting the server ---------------------------------------------------------------------


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_serve_on_a_taken_port_is_one_line(newsletter: Newsletter, taken_port: int) -> None:
    with pytest.raises(ServeError) as caught:
        serve(newsletter.config(), "127.0.0.1", taken_port)
    message = str(caught.value)
    assert message.startswith(f"cannot listen on 127.0.0.1:{taken_port}: ") and "\n" not in message
    with pytest.raises(ServeError, match=r"cannot listen on no-such-host.invalid:8025"):
        serve(newsletter.config(), "no-such-host.invalid", 8025)


def cli(newsletter: Newsletter, *args: str) -> tuple[list[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if k not in ("NEWSLETTER_CONFIG", "NEWSLETTER_SECRET")}
    return [str(NEWSLETTER), "--config", str(newsletter.config_path), *args], env


@pytest.mark.slow  # the console script in a subprocess
def test_cli_serve_on_a_taken_port_exits_with_one_line(newsletter: Newsletter, taken_port: int) -> None:
    command, env = cli(newsletter, "serve", "--port", str(taken_port))
    result = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    expected = (
        f"error: cannot listen on 127.0.0.1:{taken_port}: Address already in use "
        "(another server is running there; choose one with --port)"
    )
    assert result.stderr.strip().splitlines() == [expected]


@pytest.mark.slow  # the console script in a subprocess
def test_cli_serve_answers_and_stops_cleanly_on_ctrl_c(newsletter: Newsletter) -> None:
    import signal

    command, env = cli(newsletter, "serve", "--port", "0")
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        lines: list[str] = []
        while not any("listening on" in line for line in lines):
            line = process.stderr.readline()
            assert line, f"the server ended before listening: {''.join(lines)}"
            lines.append(line)
        url = re.search(r"listening on (http://127\.0\.0\.1:\d+)/", lines[-1])
        assert url, lines
        # [events] topic_arns is empty in the test newsletter: the editor is told the webhook is off.
        assert any("topic_arns is empty" in line and "webhook" in line for line in lines), lines
        assert httpx.get(f"{url.group(1)}/healthz", timeout=10).text == "ok\n"
        process.send_signal(signal.SIGINT)
        _, rest = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, rest
    assert "Traceback" not in rest and "Aborted" not in rest
