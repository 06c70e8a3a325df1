"""The welcome mail: sent once after a confirmation by the real web service under uvicorn, through a
real transport (the maildir, or SMTP against aiosmtpd), and ``newsletter welcome`` from the CLI.

The site helpers (a running service, pressing a confirmation link) are the web tests' own, imported
from there so both files drive the service the same way.
"""

from __future__ import annotations

import asyncio
import email
import logging
import sqlite3
import threading
from collections.abc import Callable
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from pipeline.audience.subscribers import find, set_status
from pipeline.db import open_db, transaction
from pipeline.send.welcome import load_welcome, send_pending_welcomes
from tests.conftest import REPO, Newsletter
from tests.support.cli import clean_env, invoke_cli, one_line, run_cli
from tests.support.fakes import FakeTransport
from tests.web.test_web import (
    SECRET,
    Site,
    link_in,
    list_unsubscribe,
    press_confirm,
    running_site,
    send_issue_one,
    wait_until,
)

WELCOME = """\
---
subject: "Welcome to {{ name }}"
preheader: "What to expect"
---

Glad to have you. Start with [the latest issue]({{ latest_issue_url }}) (number {{ latest_issue_number }}).
"""


def eventually(condition: Callable[[], bool], what: str) -> None:
    """Wait for what happens after a response, with room for a loaded machine."""
    wait_until(condition, what, timeout=60)


def write_welcome(newsletter: Newsletter, text: str = WELCOME) -> Path:
    path = newsletter.root / "email_templates" / "welcome.md"
    path.write_text(text, encoding="utf-8")
    return path


def welcome_rows(db_path: Path) -> dict[str, tuple[str, int]]:
    """email -> (status, attempts) of each welcome recorded."""
    db = open_db(db_path)
    try:
        return {
            row["email"]: (row["status"], row["attempts"])
            for row in db.execute(
                "SELECT s.email, w.status, w.attempts FROM welcome_mails w JOIN subscribers s ON s.id = w.subscriber_id"
            )
        }
    finally:
        db.close()


def subscribe(site: Site, address: str, handled: int) -> None:
    """Sign up and press the confirmation link, as a reader does."""
    site.sign_up(address)
    site.wait_handled(handled)
    confirmation = [m for m in site.mails_to(address) if "/confirm/" in m.get_body(("plain",)).get_content()][
        -1
    ]  # type: ignore[union-attr]
    answer = press_confirm(site, link_in(confirmation, "confirm"))
    assert answer.status_code == 200 and site.status(address) == "active"


def welcomes_to(site: Site, address: str) -> list[EmailMessage]:
    return [m for m in site.mails_to(address) if str(m["Subject"]).startswith("Welcome")]


def test_confirming_sends_the_welcome_once_with_the_latest_issue_and_one_click_unsubscribe(
    newsletter: Newsletter, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_welcome(newsletter)
    with running_site(newsletter) as site:
        send_issue_one(newsletter, monkeypatch)  # a sent issue: the welcome links to it
        subscribe(site, "ada@example.org", 1)
        eventually(lambda: len(welcomes_to(site, "ada@example.org")) == 1, "the welcome mail")
        eventually(
            lambda: welcome_rows(site.config.paths.state) == {"ada@example.org": ("sent", 1)}, "it recorded"
        )
        [welcome] = welcomes_to(site, "ada@example.org")
        assert welcome["Subject"] == "Welcome to Crate Notes"
        text = welcome.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        assert site.config.archive_url(1) in text and "(number 1)" in text
        html = welcome.get_body(("html",)).get_content()  # type: ignore[union-attr]
        assert f'href="{site.config.archive_url(1)}"' in html and "What to expect" in html

        # Unsubscribe, sign up and confirm again: no second welcome.
        assert (
            site.client.post(list_unsubscribe(welcome), data={"List-Unsubscribe": "One-Click"}).status_code
            == 200
        )
        assert site.status("ada@example.org") == "unsubscribed"
        site.clock.advance(20 * 60)  # past the resend interval, and after the unsubscribe by whole seconds
        subscribe(site, "ada@example.org", 2)
        subscribe(site, "bob@example.org", 3)  # a later welcome, so the wait below has an event to wait on
        eventually(lambda: len(welcomes_to(site, "bob@example.org")) == 1, "bob's welcome")
        assert len(welcomes_to(site, "ada@example.org")) == 1
        assert welcome_rows(site.config.paths.state)["ada@example.org"] == ("sent", 1)


def test_without_welcome_md_confirming_mails_nothing_more(newsletter: Newsletter) -> None:
    with running_site(newsletter) as site:
        _confirm_two_without_welcome(site)


def _confirm_two_without_welcome(site: Site) -> None:
    subscribe(site, "ada@example.org", 1)
    subscribe(site, "bob@example.org", 2)  # handled after ada's confirmation: nothing of hers is in flight
    assert [m["Subject"] for m in site.mails_to("ada@example.org")] == [
        "Confirm your subscription to Crate Notes"
    ]
    assert welcome_rows(site.config.paths.state) == {}


def test_a_welcome_md_without_subject_leaves_the_confirmation_working_and_the_welcome_pending(
    newsletter: Newsletter, caplog: pytest.LogCaptureFixture
) -> None:
    write_welcome(newsletter, "---\ntitle: Hello\n---\n\nHello.\n")
    caplog.set_level(logging.ERROR, logger="pipeline.web")
    with running_site(newsletter) as site:
        subscribe(site, "ada@example.org", 1)
        eventually(lambda: "welcome mail not sent" in caplog.text, "the error logged")
        assert "welcome.md:1: subject: missing required field" in caplog.text
        assert welcome_rows(site.config.paths.state) == {"ada@example.org": ("pending", 0)}
        assert welcomes_to(site, "ada@example.org") == []


class Inbox:
    """A real SMTP server (aiosmtpd) on a fixed port, to stop and start again; it records each message."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[EmailMessage] = []
        self.lock = threading.Lock()
        self._controller: Controller | None = None
        self.welcome_gate = threading.Event()
        """Welcome messages wait for it (set: they pass at once)."""
        self.welcome_gate.set()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if b"Subject: Welcome" in envelope.original_content:
            await asyncio.get_running_loop().run_in_executor(None, self.welcome_gate.wait, 60)
        with self.lock:
            self.messages.append(email.message_from_bytes(envelope.original_content, policy=policy.default))  # type: ignore[arg-type]
        return "250 OK"

    def start(self) -> None:
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def subjects(self, address: str) -> list[str]:
        with self.lock:
            return [str(m["Subject"]) for m in self.messages if address in str(m["To"])]


def smtp_config(newsletter: Newsletter, port: int, timeout: float = 5) -> None:
    with newsletter.config_path.open("a", encoding="utf-8") as config:
        config.write(
            f'\n[transport]\nkind = "smtp"\n\n[transport.smtp]\nhost = "127.0.0.1"\nport = {port}\n'
            f'security = "none"\ntimeout = {timeout}\n'
        )


def test_the_confirmation_page_does_not_wait_for_the_welcome(newsletter: Newsletter) -> None:
    from tests.send.test_smtp import free_port

    inbox = Inbox(free_port())
    write_welcome(newsletter)
    smtp_config(newsletter, inbox.port, timeout=60)  # the held welcome must not time out on a busy machine
    inbox.start()
    try:
        with running_site(newsletter) as site:
            site.sign_up("ada@example.org")
            site.wait_handled(1)
            [confirmation] = inbox.messages
            inbox.welcome_gate.clear()  # the mail server takes the welcome only when the test says so
            answer = press_confirm(site, link_in(confirmation, "confirm"))
            assert answer.status_code == 200 and site.status("ada@example.org") == "active"
            # Answered while the welcome is queued or held at the server, not after it.
            assert welcome_rows(site.config.paths.state)["ada@example.org"] in {
                ("pending", 0),
                ("sending", 1),
            }
            assert inbox.subjects("ada@example.org") == ["Confirm your subscription to Crate Notes"]
            inbox.welcome_gate.set()
            eventually(
                lambda: welcome_rows(site.config.paths.state) == {"ada@example.org": ("sent", 1)},
                "the welcome",
            )
            assert inbox.subjects("ada@example.org")[1:] == ["Welcome to Crate Notes"]
    finally:
        inbox.welcome_gate.set()
        inbox.stop()


@pytest.mark.slow  # the console script in a subprocess
def test_a_welcome_the_smtp_server_could_not_take_is_sent_later_once(newsletter: Newsletter) -> None:
    from tests.send.test_smtp import free_port

    inbox = Inbox(free_port())
    write_welcome(newsletter)
    smtp_config(newsletter, inbox.port)
    inbox.start()
    try:
        with running_site(newsletter) as site:
            site.sign_up("ada@example.org")
            site.wait_handled(1)
            [confirmation] = inbox.messages
            inbox.stop()  # the mail server goes down before the reader confirms
            answer = press_confirm(site, link_in(confirmation, "confirm"))
            assert answer.status_code == 200 and site.status("ada@example.org") == "active"
            eventually(
                lambda: welcome_rows(site.config.paths.state) == {"ada@example.org": ("pending", 1)},
                "the welcome back to pending",
            )
        inbox.start()
        env = clean_env({"NEWSLETTER_SECRET": SECRET})
        sent = run_cli(newsletter.root, "welcome", "--pending", env=env)
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout.startswith("1 welcome(s) sent, 0 still pending")
        again = run_cli(newsletter.root, "welcome", "--pending", env=env)
        assert again.stdout.startswith("0 welcome(s) sent"), again.stdout
        assert inbox.subjects("ada@example.org") == [
            "Confirm your subscription to Crate Notes",
            "Welcome to Crate Notes",
        ]
        assert welcome_rows(newsletter.config().paths.state) == {"ada@example.org": ("sent", 2)}
    finally:
        inbox.stop()


# --- The record, without the web service --------------------------------------------------------


def queued(newsletter: Newsletter, *addresses: str, status: str = "pending") -> sqlite3.Connection:
    from pipeline.audience.subscribers import add
    from pipeline.send.welcome import queue_welcome

    db = open_db(newsletter.config().paths.state)
    for address in addresses:
        add(db, address, status="active")
        row = find(db, address)
        assert row is not None and queue_welcome(db, row["id"], 0)
    with transaction(db):
        db.execute("UPDATE welcome_mails SET status = ?", (status,))
    return db


def test_a_welcome_left_sending_by_a_crash_is_never_sent_again(newsletter: Newsletter) -> None:
    write_welcome(newsletter)
    db = queued(newsletter, "ada@example.org", status="sending")
    transport = FakeTransport()
    report = send_pending_welcomes(newsletter.config(), db, lambda: transport, SECRET.encode())
    assert transport.received == [] and report.sent == []
    assert welcome_rows(newsletter.config().paths.state) == {"ada@example.org": ("sending", 0)}


def test_a_subscriber_gone_before_their_welcome_is_skipped(newsletter: Newsletter) -> None:
    write_welcome(newsletter)
    db = queued(newsletter, "ada@example.org", "bob@example.org")
    row = find(db, "bob@example.org")
    assert row is not None
    set_status(db, row["id"], "unsubscribed", "test")
    transport = FakeTransport()
    report = send_pending_welcomes(newsletter.config(), db, lambda: transport, SECRET.encode())
    assert transport.recipients() == {"ada@example.org": 1} and report.skipped == 1
    assert welcome_rows(newsletter.config().paths.state) == {
        "ada@example.org": ("sent", 1),
        "bob@example.org": ("skipped", 0),
    }
    # Queuing again for a subscriber who had one (they confirmed again) changes nothing.
    from pipeline.send.welcome import queue_welcome

    assert not queue_welcome(db, find(db, "ada@example.org")["id"], 0)  # type: ignore[index]


# --- newsletter welcome -----------------------------------------------------------------------------


@pytest.mark.slow  # the console script in a subprocess
def test_welcome_to_sends_a_test_copy_and_records_nothing(newsletter: Newsletter) -> None:
    write_welcome(newsletter)
    result = run_cli(newsletter.root, "welcome", "--to", "editor@example.org")
    assert result.returncode == 0, result.stderr
    assert "test welcome sent to editor@example.org via maildir" in result.stdout
    [path] = (newsletter.root / "outbox" / "new").iterdir()
    message = email.message_from_bytes(path.read_bytes(), policy=policy.default)
    assert message["Subject"] == "Welcome to Crate Notes" and message["To"] == "editor@example.org"
    # Before any issue is sent, the latest issue's link is the archive's index.
    index = f"{newsletter.config().archive_base_url}/README.md"
    assert index in message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert list_unsubscribe(message).startswith(f"{newsletter.config().public_url}/unsubscribe/")
    assert welcome_rows(newsletter.config().paths.state) == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("---\ntitle: Hello\n---\n\nHello.\n", "welcome.md:1: subject: missing required field"),
        ("---\nsubject: Hi\nsubjet: typo\n---\n\nHello.\n", "welcome.md:3: subjet: unknown field"),
        ("---\nsubject: Hi\n---\n\nRead {{ latest }}.\n", "welcome.md:5: 'latest' is undefined"),
        ("---\nsubject: Hi\n---\n\n\n", "welcome.md: the body is empty"),
        ("Hello.\n", "welcome.md:1: must start with front matter"),
    ],
)
def test_a_bad_welcome_md_is_one_line_and_sends_nothing(
    newsletter: Newsletter, text: str, expected: str
) -> None:
    write_welcome(newsletter, text)
    result = invoke_cli(newsletter.config_path, "welcome", "--to", "editor@example.org")
    assert result.returncode == 2
    assert expected in one_line(result.stderr)
    assert not (newsletter.root / "outbox").exists()


def test_without_welcome_md_there_is_no_test_copy_to_send(newsletter: Newsletter) -> None:
    result = invoke_cli(newsletter.config_path, "welcome", "--to", "editor@example.org")
    assert result.returncode == 2 and "welcome.md: no such file" in one_line(result.stderr)
    status = invoke_cli(newsletter.config_path, "welcome")
    assert "welcome.md: absent: no welcome mail is sent" in status.stdout


def test_the_sample_welcome_md_loads() -> None:
    from pipeline.config import load_config

    welcome = load_welcome(load_config(REPO / "newsletter.toml"))
    assert welcome is not None and welcome.subject


@pytest.mark.slow  # the console script in a subprocess
def test_serve_refuses_to_start_with_a_broken_welcome_md(newsletter: Newsletter) -> None:
    write_welcome(newsletter, "---\nsubject: Hi\n---\n\n{% if %}\n")
    result = run_cli(newsletter.root, "serve", "--port", "0", env=clean_env({"NEWSLETTER_SECRET": SECRET}))
    assert result.returncode == 2
    assert "welcome.md:5: template error" in one_line(result.stderr)


def test_two_senders_at_once_send_each_welcome_once(newsletter: Newsletter) -> None:
    write_welcome(newsletter)
    addresses = [f"reader{n}@example.org" for n in range(6)]
    queued(newsletter, *addresses).close()
    both_sending = threading.Barrier(2, timeout=30)

    def slow(envelope: Any) -> str:
        try:
            both_sending.wait()  # the first message of each sender is in flight at the same time
        except threading.BrokenBarrierError:
            pass  # later messages: the other sender may be done
        return f"id-{envelope.recipient}"

    transport = FakeTransport(slow)
    config = newsletter.config()

    def sender() -> None:
        db = open_db(config.paths.state)
        try:
            send_pending_welcomes(config, db, lambda: transport, SECRET.encode())
        finally:
            db.close()

    threads = [threading.Thread(target=sender) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert transport.recipients() == dict.fromkeys(addresses, 1)
    assert set(welcome_rows(config.paths.state).values()) == {("sent", 1)}
