"""The SES transport against real parts: moto's SES server, the real console script, a fault proxy.

moto runs in this process (``ThreadedMotoServer``), so what SES was handed is read straight
from moto's SES backend: the exact raw MIME bytes, one record per SendEmail.

Two things about moto shape these tests:

* moto has no SES v2 ``GetAccount`` and answers v1 ``GetSendQuota`` with ``MaxSendRate = 1``,
  like a sandboxed account. A 50-subscriber campaign straight at moto would take 50 s, so the
  big campaigns go through :class:`FaultProxy`, which forwards everything to moto but answers
  ``GetAccount`` itself with a production-like ``MaxSendRate``. The small campaign in
  ``test_campaign_straight_to_moto_*`` talks to moto directly and is paced at 1/s.
* moto (like real SES) refuses to send from an unverified identity, so every test starts from a
  reset moto with ``editor@example.org`` verified.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import email
import email.policy
import os
import re
import socket
import sqlite3
import subprocess
from collections import Counter
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from pipeline.audience.subscribers import import_csv
from pipeline.audience.tokens import make_token, verify_token
from pipeline.db import DB_NAME, open_db
from pipeline.errors import DeliveryUnknown, Rejected, TemporaryFailure, TransportError, TransportUnavailable
from pipeline.issue.build import build_issue
from pipeline.publish import send_rate
from pipeline.send.ledger import Campaign, content_hash, find_campaign
from pipeline.send.message import MessageTemplate, Recipient
from pipeline.send.transports import open_transport
from pipeline.send.transports.base import Envelope
from pipeline.send.transports.ses import SesTransport, classify, ses_error
from tests.conftest import Newsletter
from tests.support.aws import DUMMY_AWS, REGION, SENDER, Ses, aws_cli_env, scrub_aws_env
from tests.support.cli import clean_env, run_cli
from tests.support.fault_proxy import INTERNAL, THROTTLED, THROTTLING, Call, Fault, FaultProxy, rejected

SECRET = "test-secret-0123456789abcdefghij"  # 32 characters, for tests only
assert len(SECRET) == 32
UNSUBSCRIBE_URL = re.compile(r"https://news\.example\.org/unsubscribe/(\d+)\.([A-Za-z0-9_-]{24})")
ISSUE_BODY = "Hello [there](https://example.org/).\n\nA second paragraph, with ünïcödé and a € sign.\n"


# --- Servers -------------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- The newsletter under test ------------------------------------------------------------------


def configure_ses(newsletter: Newsletter, endpoint: str, **send: object) -> None:
    settings = {"max_rate": 200, "concurrency": 8, **send}
    lines = [
        "",
        "[transport]",
        'kind = "ses"',
        "",
        "[transport.ses]",
        f'endpoint_url = "{endpoint}"',
        "",
        "[send]",
    ]
    lines += [f"{key} = {value}" for key, value in settings.items()]
    text = newsletter.config_path.read_text(encoding="utf-8")
    newsletter.config_path.write_text(text + "\n".join(lines) + "\n", encoding="utf-8")


def cli_env(**changes: str | None) -> dict[str, str]:
    """The editor's environment with dummy AWS credentials only; ``changes`` set (or with None, remove) more."""
    env = aws_cli_env(clean_env({"NEWSLETTER_SECRET": SECRET}))
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def run(newsletter: Newsletter, *args: str, **env: str | None) -> subprocess.CompletedProcess[str]:
    return run_cli(newsletter.root, *args, env=cli_env(**env), timeout=90)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def write_csv(newsletter: Newsletter, rows: list[tuple[str, str, str]]) -> Path:
    path = newsletter.root / "subscribers.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "name", "status"])
        writer.writerows(rows)
    return path


def import_subscribers(newsletter: Newsletter, rows: list[tuple[str, str, str]]) -> None:
    """Through the library, to save a process; the CLI import is exercised by the full campaign test."""
    db = open_db(newsletter.config().paths.state)
    try:
        report = import_csv(db, write_csv(newsletter, rows))
    finally:
        db.close()
    assert report.added == len(rows) and not report.rejected


FIFTY = [
    (
        f"user{i:02d}@example.com",
        "Zoë Ñuñez" if i == 12 else f"Reader {i:02d}",
        {5: "unsubscribed", 17: "unsubscribed", 33: "bounced"}.get(i, "active"),
    )
    for i in range(1, 51)
]
ACTIVE = [address for address, _, status in FIFTY if status == "active"]
INACTIVE = [address for address, _, status in FIFTY if status != "active"]


@pytest.fixture
def letter(newsletter: Newsletter) -> Newsletter:
    """Issue 1 and fifty subscribers (three of them not active)."""
    newsletter.write_issue(1, ISSUE_BODY)
    import_subscribers(newsletter, FIFTY)
    return newsletter


def ledger(newsletter: Newsletter) -> dict[str, sqlite3.Row]:
    """Delivery rows of issue 1's campaign, by address."""
    db = sqlite3.connect(f"file:{newsletter.root / 'state' / DB_NAME}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        rows = db.execute(
            "SELECT s.email, d.* FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id"
            " JOIN campaigns c ON c.id = d.campaign_id WHERE c.issue = 1"
        ).fetchall()
    finally:
        db.close()
    return {row["email"]: row for row in rows}


def campaign_of(newsletter: Newsletter) -> Campaign | None:
    db = sqlite3.connect(f"file:{newsletter.root / 'state' / DB_NAME}?mode=ro", uri=True)
    try:
        return find_campaign(db, 1)
    finally:
        db.close()


def campaign_state(newsletter: Newsletter) -> str | None:
    campaign = campaign_of(newsletter)
    return campaign.status if campaign else None


def assert_each_active_got_exactly_one(ses: Ses, active: list[str] = ACTIVE) -> None:
    received = ses.by_recipient()
    counts = {address: len(copies) for address, copies in received.items()}
    assert counts == {address: 1 for address in active}
    assert len(ses.messages()) == len(active)


# --- 2. The exact bytes SES was handed ----------------------------------------------------------

FEW = [
    ("ada@example.org", "Ada Example", "active"),
    ("zoe@example.com", "Zoë Ñuñez", "active"),
    ("plain@example.net", "", "active"),
    ("ken@example.org", "Ken Unsubscribed", "unsubscribed"),
]


@pytest.mark.slow  # the console script in a subprocess
def test_campaign_straight_to_moto_hands_ses_exactly_our_bytes(newsletter: Newsletter, ses: Ses) -> None:
    newsletter.write_issue(1, ISSUE_BODY)
    configure_ses(newsletter, ses.endpoint)
    import_subscribers(newsletter, FEW)

    result = run(newsletter, "send", "1", "--yes")

    assert result.returncode == 0, result.stderr
    # moto's account allows 1 message/s: the campaign must take that over the configured 200/s.
    assert "to 3 recipient(s) via ses at up to 1/s" in result.stdout
    assert "3 sent, 0 failed, 0 skipped, 0 still queued, 0 unknown" in result.stdout
    elapsed = float(re.search(r"handled in ([\d.]+)s", result.stdout).group(1))  # type: ignore[union-attr]
    assert elapsed >= 1.9  # three messages at 1/s: the third leaves two seconds after the first
    assert "issue 1: campaign complete" in result.stdout

    config = newsletter.config()
    rendered = build_issue(config, 1).rendered
    template = MessageTemplate(config, rendered)
    rows = ledger(newsletter)
    campaign = campaign_of(newsletter)
    assert campaign is not None and campaign.status == "done" and campaign.transport == "ses"
    assert campaign.content_hash == content_hash(rendered)  # we rebuild the very content that was sent

    stored = ses.messages()
    assert len(stored) == 3
    boundaries: set[str] = set()
    assert {m.destinations[0] for m in stored} == {"ada@example.org", "zoe@example.com", "plain@example.net"}
    for raw_message in stored:
        address = raw_message.destinations[0]
        name = next(n for a, n, _ in FEW if a == address)
        row = rows[address]
        raw = raw_message.raw_data.encode("utf-8")
        assert raw_message.source == SENDER  # envelope sender: the bare address
        assert row["status"] == "sent" and row["attempts"] == 1
        assert row["provider_id"] == raw_message.id  # the ledger keeps SES's message id

        # Wire format: ASCII only, CRLF everywhere, no line over 78 characters.
        assert raw.isascii()
        assert b"\n" not in raw.replace(b"\r\n", b"")
        assert max(len(line) for line in raw.split(b"\r\n")) <= 78

        message = email.message_from_bytes(raw, policy=email.policy.default)
        token = make_token(
            SECRET.encode(), "unsubscribe", row["subscriber_id"], address, list_id=message["List-Id"]
        )
        url = f"https://news.example.org/unsubscribe/{token}"
        message_id = f"<nl1-c{campaign.id}-s{row['subscriber_id']}.{campaign.content_hash[:10]}@example.org>"
        assert message["From"] == "Crate Notes <editor@example.org>"
        assert message["Reply-To"] == "editor@example.org"
        assert message["To"] == (f"{name} <{address}>" if name else address)
        assert message["Subject"] == rendered.issue.subject == "Issue 1"
        date = parsedate_to_datetime(message["Date"])
        assert date.tzinfo is not None
        assert abs((dt.datetime.now(dt.UTC) - date).total_seconds()) < 120
        assert message["Message-ID"] == message_id
        assert message["List-Id"] == "Crate Notes <crate-notes.example.org>"
        # Folded right after the colon (the URL does not fit on the first line): unfold and trim.
        assert (
            message["List-Unsubscribe"].strip() == f"<{url}>, <mailto:editor@example.org?subject=unsubscribe>"
        )
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert message["MIME-Version"] == "1.0"
        for header in (
            "From",
            "To",
            "Subject",
            "Date",
            "Message-ID",
            "List-Id",
            "List-Unsubscribe",
            "List-Unsubscribe-Post",
            "MIME-Version",
            "Content-Type",
        ):
            assert len(message.get_all(header) or []) == 1, header

        match = UNSUBSCRIBE_URL.fullmatch(url)
        assert match and int(match.group(1)) == row["subscriber_id"]
        assert verify_token(SECRET.encode(), "unsubscribe", token, address, list_id=message["List-Id"])

        assert message.get_content_type() == "multipart/alternative"
        parts = list(message.iter_parts())
        assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
        for part in parts:
            assert part.get_content_charset() == "utf-8"
            assert part["Content-Transfer-Encoding"] == "quoted-printable"
            content = part.get_content()
            assert url in content
            assert address in content
            assert "%%" not in content
            assert "ünïcödé and a € sign" in content
        assert f'href="{url}"' in parts[1].get_content()
        assert "reader@example.org" not in raw.decode() and "SAMPLE-TOKEN" not in raw.decode()

        # The very bytes MessageTemplate builds for this recipient, with the Date SES got.
        # The MIME boundary is drawn once per template (per campaign run): use the one SES got.
        expected = template.build(Recipient(address, name, url, message_id), date=date)
        ours = email.message_from_bytes(expected).get_boundary()
        theirs = message.get_boundary()
        assert ours and theirs and ours != theirs
        boundaries.add(theirs)
        assert raw == expected.replace(ours.encode(), theirs.encode())
    assert len(boundaries) == 1  # one template built once for the whole campaign


@pytest.mark.slow  # the console script in a subprocess
def test_test_copy_through_ses_does_not_touch_the_campaign(newsletter: Newsletter, ses: Ses) -> None:
    newsletter.write_issue(1, ISSUE_BODY)
    configure_ses(newsletter, ses.endpoint)
    import_subscribers(newsletter, FEW)

    result = run(newsletter, "send", "1", "--to", "ada@example.org")

    assert result.returncode == 0, result.stderr
    [stored] = ses.messages()
    assert f"test copy of issue 1 sent to ada@example.org via ses ({stored.id})" in result.stdout
    message = email.message_from_bytes(stored.raw_data.encode(), policy=email.policy.default)
    assert message["To"] == "Ada Example <ada@example.org>"
    # ada is subscriber 1
    token = make_token(SECRET.encode(), "unsubscribe", 1, "ada@example.org", list_id=message["List-Id"])
    assert f"<https://news.example.org/unsubscribe/{token}>" in message["List-Unsubscribe"]
    assert campaign_of(newsletter) is None  # the ledger is not touched by a test copy


# --- 3. A whole campaign through the real CLI ----------------------------------------------------


@pytest.mark.slow  # the console script in a subprocess
def test_full_campaign_sends_each_active_subscriber_exactly_once(
    newsletter: Newsletter, ses: Ses, proxy: FaultProxy
) -> None:
    letter = newsletter
    letter.write_issue(1, ISSUE_BODY)
    imported = run(letter, "subscribers", "import", str(write_csv(letter, FIFTY)))
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.startswith("50 added, 0 updated, 0 unchanged, 0 skipped, 0 rejected")
    configure_ses(letter, proxy.url)

    result = run(letter, "send", "1", "--yes")

    assert result.returncode == 0, result.stderr
    assert f"Send issue 1 ('Issue 1') to {len(ACTIVE)} recipient(s) via ses at up to 200/s." in result.stdout
    assert f"{len(ACTIVE)} sent, 0 failed, 0 skipped, 0 still queued, 0 unknown" in result.stdout
    assert "issue 1: campaign complete" in result.stdout
    assert_each_active_got_exactly_one(ses)
    assert not set(INACTIVE) & set(ses.by_recipient())
    assert proxy.send_calls == len(ACTIVE) and not proxy.injected
    rows = ledger(letter)
    assert set(rows) == set(ACTIVE)  # only active subscribers are in the campaign
    assert {row["status"] for row in rows.values()} == {"sent"}
    assert {m.id for m in ses.messages()} == {row["provider_id"] for row in rows.values()}
    # Each message is addressed to its subscriber and carries that subscriber's own unsubscribe link.
    names = {address: name for address, name, _ in FIFTY}
    for address, [raw] in ses.by_recipient().items():
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert message["To"] == f"{names[address]} <{address}>"
        match = UNSUBSCRIBE_URL.search(message["List-Unsubscribe"])
        assert match and verify_token(
            SECRET.encode(), "unsubscribe", f"{match[1]}.{match[2]}", address, list_id=message["List-Id"]
        )
        for part in message.iter_parts():
            content = part.get_content()
            assert match[0] in content and address in content and "%%" not in content

    status = run(letter, "status", "1")
    assert status.returncode == 0, status.stderr
    assert f"issue 1: done, {len(ACTIVE)}/{len(ACTIVE)} handled via ses" in status.stdout
    assert f"sent {len(ACTIVE)}  failed 0  skipped 0  queued 0  unknown 0" in status.stdout

    again = run(letter, "send", "1", "--yes")
    assert again.returncode == 0, again.stderr
    assert "issue 1 was already sent to everyone on its list; nothing to send" in again.stdout
    assert len(ses.messages()) == len(ACTIVE)
    assert proxy.send_calls == len(ACTIVE)


# --- 4. Faults -----------------------------------------------------------------------------------


def _number(address: str) -> int:
    return int(address[4:6])


FAULTS = (THROTTLED, THROTTLING, INTERNAL)


def planned_failures(address: str) -> list[Fault]:
    """Every third subscriber's first SendEmail fails, every ninth's first two; the kind rotates."""
    n = _number(address)
    fault = FAULTS[(n // 3) % 3]
    return [fault] * (2 if n % 9 == 0 else 1 if n % 3 == 0 else 0)


@pytest.mark.slow  # the console script in a subprocess
def test_campaign_rides_out_throttling_and_server_errors(
    letter: Newsletter, ses: Ses, proxy: FaultProxy
) -> None:
    # Decided per recipient and attempt: the same calls fail whatever the interleaving of the workers.
    def policy(call: Call) -> Fault | None:
        planned = planned_failures(call.recipient)
        return planned[call.attempt - 1] if call.attempt <= len(planned) else None

    proxy.reset(policy)
    configure_ses(letter, proxy.url)

    result = run(letter, "send", "1", "--yes")

    assert result.returncode == 0, result.stderr
    assert f"{len(ACTIVE)} sent, 0 failed, 0 skipped, 0 still queued, 0 unknown" in result.stdout
    assert "issue 1: campaign complete" in result.stdout
    assert_each_active_got_exactly_one(ses)
    expected = Counter(fault.code for address in ACTIVE for fault in planned_failures(address))
    assert set(expected) == {"TooManyRequestsException", "ThrottlingException", "InternalFailure"}
    assert proxy.injected == expected  # every planned fault was met, so retries happened
    rows = ledger(letter)
    for address in ACTIVE:
        # One SendEmail per attempt the ledger counts: botocore did not retry behind the campaign's back.
        attempts = len(planned_failures(address)) + 1
        assert proxy.attempts[address] == attempts
        assert rows[address]["status"] == "sent" and rows[address]["attempts"] == attempts
    assert campaign_state(letter) == "done"


@pytest.mark.slow  # the console script in a subprocess
def test_permanent_rejection_fails_one_recipient_and_the_rest_go_out(
    letter: Newsletter, ses: Ses, proxy: FaultProxy
) -> None:
    refused = "user07@example.com"
    proxy.reset(lambda call: rejected(call.recipient) if call.recipient == refused else None)
    configure_ses(letter, proxy.url)

    result = run(letter, "send", "1", "--yes")

    assert result.returncode == 0, result.stderr
    assert f"{len(ACTIVE) - 1} sent, 1 failed, 0 skipped, 0 still queued, 0 unknown" in result.stdout
    assert "issue 1: campaign complete" in result.stdout
    assert_each_active_got_exactly_one(ses, [a for a in ACTIVE if a != refused])
    assert proxy.attempts[refused] == 1  # a permanent refusal is not retried
    row = ledger(letter)[refused]
    assert row["status"] == "failed" and row["attempts"] == 1
    assert row["last_error"] == (
        f"{refused}: SES MessageRejected: Email address is on the suppression list: {refused}"
    )
    assert campaign_state(letter) == "done"


@pytest.mark.slow  # the console script in a subprocess
def test_failures_pause_the_campaign_and_send_resumes_it(
    letter: Newsletter, ses: Ses, proxy: FaultProxy
) -> None:
    configure_ses(letter, proxy.url, max_attempts=2, max_consecutive_failures=3)

    # An account-wide refusal stops the campaign at once and costs no recipient anything.
    proxy.reset(
        lambda call: Fault(400, "SendingPausedException", "Email sending is disabled for this account.")
    )
    stopped = run(letter, "send", "1", "--yes")

    assert stopped.returncode == 1, stopped.stderr
    assert one_line(stopped.stderr) == (
        "error: campaign paused: SES SendingPausedException: Email sending is disabled for this account.; "
        "run `newsletter send 1` to resume"
    )
    assert proxy.send_calls <= 8  # at most one per worker: nobody kept sending into a paused account
    assert {row["status"] for row in ledger(letter).values()} == {"queued"}

    # Server errors on every call: after max_attempts each, three in a row pause the campaign.
    proxy.reset(lambda call: INTERNAL)
    paused = run(letter, "send", "1", "--yes")

    assert paused.returncode == 1, paused.stderr
    line = one_line(paused.stderr)
    assert re.fullmatch(
        r"error: campaign paused: \d+ failures in a row \(last: SES InternalFailure: We encountered an internal "
        r"error\. Please try again\.\); run `newsletter send 1` to resume",
        line,
    ), line
    assert f"Resume issue 1 ('Issue 1') to {len(ACTIVE)} recipient(s)" in paused.stdout
    assert "0 sent, 0 failed" in paused.stdout
    assert ses.messages() == []
    assert {row["status"] for row in ledger(letter).values()} == {"queued"}  # nothing lost, nothing unknown
    assert proxy.injected["InternalFailure"] >= 3
    assert max(proxy.attempts.values()) == 2  # max_attempts per message and run
    status = run(letter, "status", "1").stdout
    assert f"issue 1: paused, 0/{len(ACTIVE)} handled via ses" in status
    assert "note: " in status and "failures in a row" in status

    proxy.reset(None)  # SES is back
    resumed = run(letter, "send", "1", "--yes")

    assert resumed.returncode == 0, resumed.stderr
    assert f"Resume issue 1 ('Issue 1') to {len(ACTIVE)} recipient(s)" in resumed.stdout
    assert f"{len(ACTIVE)} sent, 0 failed, 0 skipped, 0 still queued, 0 unknown" in resumed.stdout
    assert "issue 1: campaign complete" in resumed.stdout
    assert_each_active_got_exactly_one(ses)
    assert {row["status"] for row in ledger(letter).values()} == {"sent"}
    assert campaign_state(letter) == "done"


# --- The transport's own error translation, call by call ----------------------------------------


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (THROTTLED, TemporaryFailure),
        (THROTTLING, TemporaryFailure),
        (INTERNAL, TemporaryFailure),
        (Fault(503, "ServiceUnavailable", "Service unavailable"), TemporaryFailure),
        (rejected("x@example.com"), Rejected),
        (Fault(400, "BadRequestException", "Illegal address"), Rejected),
        (Fault(400, "SendingPausedException", "Sending is paused for this account."), TransportUnavailable),
        (Fault(400, "AccountSuspendedException", "Account suspended."), TransportUnavailable),
        (
            Fault(403, "AccessDeniedException", "User is not authorized to perform: ses:SendEmail"),
            TransportUnavailable,
        ),
    ],
    ids=lambda v: v.code if isinstance(v, Fault) else v.__name__,
)
def test_ses_errors_are_translated(
    ses: Ses, proxy: FaultProxy, fault: Fault, expected: type[Exception]
) -> None:
    proxy.reset(lambda call: fault)
    transport = SesTransport(REGION, proxy.url, "", 2)
    try:
        with pytest.raises(expected) as raised:
            transport.send(Envelope(SENDER, "x@example.com", b"Subject: x\r\n\r\nx\r\n", "k1"))
    finally:
        transport.close()
    assert f"SES {fault.code}: {fault.message}" in str(raised.value)
    assert proxy.send_calls == 1  # botocore itself did not retry
    assert ses.messages() == []


# --- 5. Bad input --------------------------------------------------------------------------------


CAMPAIGN_AND_TEST_COPY = (("send", "1", "--yes"), ("send", "1", "--to", "ada@example.org"))


@pytest.mark.slow  # the console script in a subprocess
def test_unreachable_endpoint_is_one_line_and_nothing_is_recorded(newsletter: Newsletter, ses: Ses) -> None:
    newsletter.write_issue(1, ISSUE_BODY)
    import_subscribers(newsletter, FEW)
    endpoint = f"http://127.0.0.1:{closed_port()}"
    configure_ses(newsletter, endpoint)

    for args in CAMPAIGN_AND_TEST_COPY:
        result = run(newsletter, *args)

        assert result.returncode == 2, args
        line = one_line(result.stderr)
        assert line.startswith(f"error: cannot reach {endpoint}: "), line
        assert "Could not connect to the endpoint URL" in line
    assert ses.messages() == []
    assert campaign_of(newsletter) is None  # no campaign, no ledger


@pytest.mark.slow  # the console script in a subprocess
def test_missing_or_short_secret_with_ses_is_refused(newsletter: Newsletter, ses: Ses) -> None:
    newsletter.write_issue(1, ISSUE_BODY)
    import_subscribers(newsletter, FEW)
    configure_ses(newsletter, ses.endpoint)

    for secret, args, expected in [
        (None, CAMPAIGN_AND_TEST_COPY[0], "error: NEWSLETTER_SECRET is not set: "),
        (None, CAMPAIGN_AND_TEST_COPY[1], "error: NEWSLETTER_SECRET is not set: "),
        ("too-short", CAMPAIGN_AND_TEST_COPY[0], "error: NEWSLETTER_SECRET is too short: "),
    ]:
        result = run(newsletter, *args, NEWSLETTER_SECRET=secret)

        assert result.returncode == 2, (secret, args)
        assert one_line(result.stderr).startswith(expected), result.stderr
    assert ses.messages() == []
    assert campaign_of(newsletter) is None


@pytest.mark.slow  # the console script in a subprocess
def test_send_to_a_bad_address_is_a_clear_error(newsletter: Newsletter, ses: Ses) -> None:
    newsletter.write_issue(1, ISSUE_BODY)
    configure_ses(newsletter, ses.endpoint)

    for address, reason in [
        ("not-an-address", "An email address must have an @-sign."),
        ("ada@example.org\r\nBcc: x@example.org", "contains the control character U+000D (carriage return)"),
    ]:
        result = run(newsletter, "send", "1", "--to", address)

        assert result.returncode == 2, address
        line = one_line(result.stderr)
        assert line.startswith(f"error: --to {address!r}: "), line
        assert reason in line
    assert ses.messages() == []


# --- 6. The account's own sending rate -----------------------------------------------------------


def test_rate_is_the_lower_of_config_and_account(newsletter: Newsletter, ses: Ses, proxy: FaultProxy) -> None:
    newsletter.write_issue(1, ISSUE_BODY)
    configure_ses(newsletter, ses.endpoint, max_rate=200)
    config = newsletter.config()
    assert config.send.max_rate == 200.0

    # moto: no v2 GetAccount (404), so the v1 GetSendQuota answer counts: 1 message/s.
    moto_transport = open_transport(config)
    try:
        assert moto_transport.max_rate() == 1.0
        assert send_rate(config, moto_transport, dry_run=False) == 1.0
        assert send_rate(config, moto_transport, dry_run=True) is None
    finally:
        moto_transport.close()

    for account, configured, expected in [(500.0, 200, 200.0), (50.0, 200, 50.0), (50.0, 14, 14.0)]:
        proxy.account_rate = account
        transport = SesTransport(REGION, proxy.url, "", 2)
        try:
            assert transport.max_rate() == account  # from v2 GetAccount
            local = dataclasses.replace(
                config, send=dataclasses.replace(config.send, max_rate=float(configured))
            )
            assert send_rate(local, transport, dry_run=False) == expected
        finally:
            transport.close()


# --- Regressions: bugs these tests found ---------------------------------------------------------


@pytest.mark.slow  # the console script in a subprocess
def test_unverified_sender_stops_the_campaign_without_failing_recipients(
    letter: Newsletter, ses: Ses, proxy: FaultProxy
) -> None:
    ses.reset(verify=False)  # moto, like SES, refuses to send from an unverified identity
    configure_ses(letter, proxy.url)

    refused = run(letter, "send", "1", "--yes")

    assert refused.returncode != 0
    assert "Did not have authority to send from email editor@example.org" in refused.stderr
    assert ses.messages() == []
    # The sender's problem, not the subscribers': none of them may be written off.
    assert "failed" not in {row["status"] for row in ledger(letter).values()}

    ses.verify(SENDER)
    resumed = run(letter, "send", "1", "--yes")
    assert resumed.returncode == 0, resumed.stderr
    assert_each_active_got_exactly_one(ses)


@pytest.mark.slow  # the console script in a subprocess
def test_a_non_ascii_address_does_not_crash_the_campaign(
    newsletter: Newsletter, ses: Ses, proxy: FaultProxy
) -> None:
    newsletter.write_issue(1, ISSUE_BODY)
    rows = [
        ("ada@example.org", "Ada", "active"),
        ("zoë@example.org", "Zoë", "active"),
        ("plain@example.net", "", "active"),
    ]
    db = open_db(newsletter.config().paths.state)
    try:
        import_csv(db, write_csv(newsletter, rows))  # either refused here, or failed alone at send time
    finally:
        db.close()
    configure_ses(newsletter, proxy.url)

    result = run(newsletter, "send", "1", "--yes")

    assert "Traceback" not in result.stderr, result.stderr[-600:]
    assert result.returncode in (0, 1)
    assert_each_active_got_exactly_one(ses, ["ada@example.org", "plain@example.net"])
    statuses = {address: row["status"] for address, row in ledger(newsletter).items()}
    assert statuses.get("zoë@example.org", "failed") == "failed"  # never left 'sending' (unknown)


# --- The request SesTransport builds and signs itself -------------------------------------------


def test_request_body_is_what_botocore_would_serialise() -> None:
    """Our hand-spliced JSON must mean exactly what boto3's own serializer sends for SendEmail."""
    import base64
    import json

    from botocore.serialize import create_serializer

    transport = SesTransport(REGION, "http://127.0.0.1:9", "weekly-events", 2)
    try:
        data = 'Subject: caf\u00e9\r\n\r\n\u00e9"\\\x00'.encode() + bytes(range(256)) * 40
        envelope = Envelope(SENDER, 'odd"quote\\@example.org', data, "k")
        params = {
            "FromEmailAddress": envelope.sender,
            "Destination": {"ToAddresses": [envelope.recipient]},
            "Content": {"Raw": {"Data": data}},
            "ConfigurationSetName": "weekly-events",
        }
        operation = transport._client.meta.service_model.operation_model("SendEmail")
        expected = create_serializer("rest-json").serialize_to_request(params, operation)["body"]

        ours = transport.request_body(envelope)

        assert json.loads(ours) == json.loads(expected)
        assert base64.b64decode(json.loads(ours)["Content"]["Raw"]["Data"]) == data
    finally:
        transport.close()


def test_default_endpoint_is_the_regions_ses_endpoint() -> None:
    transport = SesTransport("eu-west-1", "", "", 2)
    try:
        assert transport._url == "https://email.eu-west-1.amazonaws.com/v2/email/outbound-emails"
        assert transport._where == "SES in eu-west-1"
    finally:
        transport.close()


class OneShotServer:
    """Accepts one connection, reads one whole request, then answers ``reply`` (or hangs up if None)."""

    def __init__(self, reply: bytes | None) -> None:
        import threading

        self.reply = reply
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen()
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        connection, _ = self._listener.accept()
        with connection:
            received = b""
            while b"\r\n\r\n" not in received:
                received += connection.recv(65536)
            head, _, body = received.partition(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
            while len(body) < length:
                body += connection.recv(65536)
            self.heads.append(head)
            self.bodies.append(body)
            if self.reply is not None:
                connection.sendall(self.reply)

    def close(self) -> None:
        self._thread.join(5)
        self._listener.close()


def test_requests_are_signed_with_the_credential_chains_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    scrub_aws_env(monkeypatch)
    answer = b'{"MessageId":"0100-abc"}'
    server = OneShotServer(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(answer)).encode()
        + b"\r\n\r\n"
        + answer
    )
    transport = SesTransport(REGION, server.url, "", 2)
    try:
        provider_id = transport.send(Envelope(SENDER, "reader@example.org", b"Subject: x\r\n\r\nx\r\n", "k1"))
    finally:
        transport.close()
        server.close()
    assert provider_id == "0100-abc"
    head = server.heads[0].decode()
    assert head.startswith("POST /v2/email/outbound-emails HTTP/1.1")
    authorization = re.search(r"(?im)^authorization: (.*)$", head).group(1).strip()  # type: ignore[union-attr]
    assert authorization.startswith(f"AWS4-HMAC-SHA256 Credential={os.environ['AWS_ACCESS_KEY_ID']}/")
    assert f"/{REGION}/ses/aws4_request" in authorization
    # Recompute the signature over what arrived: it must match, so SES would accept it.
    lines = head.split("\r\n")[1:]
    received = dict(line.split(": ", 1) for line in lines)
    signed = re.search(r"SignedHeaders=([^,]+)", authorization).group(1).split(";")  # type: ignore[union-attr]
    request = AWSRequest(
        "POST",
        server.url + "/v2/email/outbound-emails",
        data=server.bodies[0],
        headers={k: v for k, v in received.items() if k.lower() in signed},
    )
    request.context["timestamp"] = received["X-Amz-Date"]
    auth = SigV4Auth(
        Credentials(DUMMY_AWS["AWS_ACCESS_KEY_ID"], DUMMY_AWS["AWS_SECRET_ACCESS_KEY"]), "ses", REGION
    )
    signature = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
    assert authorization.endswith(f"Signature={signature}")
    assert "host" in signed and "x-amz-date" in signed


def test_a_lost_answer_after_the_request_went_out_is_unknown_not_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server reads the whole request, then hangs up: SES may have sent it. Never a retry."""
    from pipeline.errors import DeliveryUnknown

    scrub_aws_env(monkeypatch)
    server = OneShotServer(None)
    transport = SesTransport(REGION, server.url, "", 2)
    try:
        with pytest.raises(DeliveryUnknown, match="no answer to the request"):
            transport.send(Envelope(SENDER, "reader@example.org", b"Subject: x\r\n\r\nx\r\n", "k1"))
    finally:
        transport.close()
        server.close()
    assert len(server.bodies) == 1


def test_no_credentials_anywhere_stops_the_send(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    transport = SesTransport(REGION, f"http://127.0.0.1:{closed_port()}", "", 2)
    try:
        with pytest.raises(TransportUnavailable, match="no AWS credentials"):
            transport.send(Envelope(SENDER, "reader@example.org", b"Subject: x\r\n\r\nx\r\n", "k1"))
    finally:
        transport.close()


def _answer(status: str, content_type: str, body: bytes) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body


@pytest.mark.parametrize(
    ("answer", "expected", "text"),
    [
        (
            _answer(
                "403 Forbidden", "text/html; charset=latin-1", "<h1>Acc\xe8s refus\xe9</h1>".encode("latin-1")
            ),
            TransportUnavailable,
            "SES 403",
        ),
        (_answer("400 Bad Request", "application/json", b"[1, 2]"), Rejected, "SES 400"),
        (
            _answer("400 Bad Request", "application/json", b'{"__type": 12, "message": ["x"]}'),
            Rejected,
            "SES",
        ),
        (_answer("502 Bad Gateway", "text/html", b"<html>proxy error</html>"), TemporaryFailure, "SES 502"),
        (_answer("413 Payload Too Large", "text/plain", b"too big"), Rejected, "SES 413"),
    ],
    ids=["html-403-latin1", "json-array-400", "odd-json-400", "proxy-502", "plain-413"],
)
def test_answers_that_are_not_ses_errors_are_still_translated(
    monkeypatch: pytest.MonkeyPatch, answer: bytes, expected: type[Exception], text: str
) -> None:
    scrub_aws_env(monkeypatch)
    server = OneShotServer(answer)
    transport = SesTransport(REGION, server.url, "", 2)
    try:
        with pytest.raises(expected, match=text):
            transport.send(Envelope(SENDER, "reader@example.org", b"Subject: x\r\n\r\nx\r\n", "k1"))
    finally:
        transport.close()
        server.close()


@pytest.mark.parametrize("body", [b"<html>Welcome to the hotel wifi</html>", b"{}", b'{"MessageId": 7}'])
def test_a_200_without_a_message_id_is_unknown_not_sent(monkeypatch: pytest.MonkeyPatch, body: bytes) -> None:
    """Something answered that is not SES: counting the message as sent would lose it silently."""
    from pipeline.errors import DeliveryUnknown

    scrub_aws_env(monkeypatch)
    server = OneShotServer(_answer("200 OK", "text/html", body))
    transport = SesTransport(REGION, server.url, "", 2)
    try:
        with pytest.raises(DeliveryUnknown, match="without a MessageId"):
            transport.send(Envelope(SENDER, "reader@example.org", b"Subject: x\r\n\r\nx\r\n", "k1"))
    finally:
        transport.close()
        server.close()


def test_sending_trusts_the_ca_bundle_the_boto3_chain_names(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Behind a TLS-inspecting proxy the editor sets AWS_CA_BUNDLE; sending must trust it as boto3 does."""
    import http.server
    import threading

    from tests.send.test_smtp import _certificate_with_cryptography

    certificate = _certificate_with_cryptography(tmp_path)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            body = b'{"MessageId":"0100-tls"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.socket = certificate.server_context().wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    endpoint = f"https://127.0.0.1:{httpd.server_address[1]}"
    envelope = Envelope(SENDER, "reader@example.org", b"Subject: x\r\n\r\nx\r\n", "k1")
    try:
        scrub_aws_env(monkeypatch)
        untrusting = SesTransport(REGION, endpoint, "", 2)
        try:
            with pytest.raises(TemporaryFailure, match="SSL"):
                untrusting.send(envelope)
        finally:
            untrusting.close()
        monkeypatch.setenv("AWS_CA_BUNDLE", str(certificate.ca))
        trusting = SesTransport(REGION, endpoint, "", 2)
        try:
            assert trusting.send(envelope) == "0100-tls"
        finally:
            trusting.close()
    finally:
        httpd.shutdown()
        httpd.server_close()


# --- classify: what an SES error answer means, without a server ---------------------------------


@pytest.mark.parametrize(
    ("code", "status", "message", "expected"),
    [
        ("TooManyRequestsException", 429, "Maximum sending rate exceeded.", TemporaryFailure),
        ("ThrottlingException", 400, "Maximum sending rate exceeded.", TemporaryFailure),  # the code wins
        ("Throttling", 400, "Rate exceeded", TemporaryFailure),
        ("InternalFailure", 500, "We encountered an internal error.", TemporaryFailure),
        ("ServiceUnavailable", 503, "Service unavailable", TemporaryFailure),
        ("MessageRejected", 400, "Email address is on the suppression list: x@example.com", Rejected),
        (
            "MessageRejected",
            400,
            "Email address is not verified. The following identities failed",
            TransportUnavailable,
        ),
        (
            "MessageRejected",
            400,
            "Did not have authority to send from email editor@example.org",
            TransportUnavailable,
        ),
        ("BadRequestException", 400, "Illegal address", Rejected),
        ("InvalidParameterValue", 400, "Missing final '@domain'", Rejected),
        ("SendingPausedException", 400, "Sending is paused for this account.", TransportUnavailable),
        ("AccountSuspendedException", 400, "Account suspended.", TransportUnavailable),
        (
            "AccessDeniedException",
            403,
            "User is not authorized to perform: ses:SendEmail",
            TransportUnavailable,
        ),
        (
            "SignatureDoesNotMatch",
            403,
            "The request signature we calculated does not match",
            TransportUnavailable,
        ),
        ("NotFoundException", 404, "Configuration set weekly does not exist.", TransportUnavailable),
        ("SomethingNewException", 400, "a code this table does not know", Rejected),
        ("SomethingNewException", 500, "a code this table does not know", TemporaryFailure),
        (None, 401, "", TransportUnavailable),
        (None, 403, "<h1>Forbidden</h1>", TransportUnavailable),
        (None, 429, "", TemporaryFailure),
        (None, 502, "<html>proxy error</html>", TemporaryFailure),
        (None, 400, "[1, 2]", Rejected),
        (None, 413, "too big", Rejected),
        (None, 200, "", DeliveryUnknown),
        (None, None, "", Rejected),
    ],
)
def test_classify(code: str | None, status: int | None, message: str, expected: type[TransportError]) -> None:
    assert classify(code, status, message) is expected


def test_ses_error_carries_its_fields() -> None:
    rejected_one = ses_error("MessageRejected", 400, "on the suppression list", "x@example.com")
    throttled = ses_error(None, 429, "slow down", "y@example.com")

    assert isinstance(rejected_one, Rejected)
    assert str(rejected_one) == "x@example.com: SES MessageRejected: on the suppression list"
    assert (rejected_one.recipient, rejected_one.code, rejected_one.status) == (
        "x@example.com",
        "MessageRejected",
        400,
    )
    assert isinstance(throttled, TemporaryFailure)
    assert str(throttled) == "SES 429: slow down"
    assert (throttled.recipient, throttled.code, throttled.status) == ("y@example.com", None, 429)


# --- The fallback: client.send_email when botocore's internals are not as the fast path expects ---


def without_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make building the fast path fail the way a botocore release that moved its internals would."""

    def moved(*args: object, **kwargs: object) -> None:
        raise AttributeError("module 'botocore.httpsession' has no attribute 'URLLib3Session'")

    monkeypatch.setattr("pipeline.send.transports.ses.SignedPost", moved)


def test_the_fast_path_is_used_when_botocore_is_as_expected(ses: Ses) -> None:
    """A botocore upgrade that breaks the fast path must show here, not only as a slower campaign."""
    transport = SesTransport(REGION, ses.endpoint, "", 2)
    try:
        assert transport._fast is not None
    finally:
        transport.close()


def test_the_fallback_sends_our_exact_bytes_through_send_email(
    ses: Ses, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    without_fast_path(monkeypatch)
    data = "From: editor@example.org\r\nSubject: caf\u00e9\r\n\r\nThe fallback, with \u00fcn\u00efc\u00f6d\u00e9.\r\n".encode()

    transport = SesTransport(REGION, ses.endpoint, "", 2)
    try:
        assert transport._fast is None
        provider_id = transport.send(Envelope(SENDER, "reader@example.org", data, "k1"))
    finally:
        transport.close()

    assert provider_id
    assert ses.by_recipient() == {"reader@example.org": [data]}
    assert "sending through boto3's send_email" in caplog.text


FAILURES = [
    THROTTLED,
    THROTTLING,
    INTERNAL,
    rejected("x@example.com"),
    Fault(400, "BadRequestException", "Illegal address"),
    Fault(400, "SendingPausedException", "Sending is paused for this account."),
    Fault(403, "AccessDeniedException", "User is not authorized to perform: ses:SendEmail"),
    Fault(404, "NotFoundException", "Configuration set weekly does not exist."),
]


@pytest.mark.parametrize("fault", FAILURES, ids=lambda fault: fault.code)
def test_both_paths_raise_the_same_error_for_the_same_answer(
    ses: Ses, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch, fault: Fault
) -> None:
    proxy.reset(lambda call: fault)
    fast = SesTransport(REGION, proxy.url, "", 2)
    without_fast_path(monkeypatch)
    fallback = SesTransport(REGION, proxy.url, "", 2)
    raised: list[TransportError] = []
    try:
        assert fast._fast is not None and fallback._fast is None
        for transport in (fast, fallback):
            with pytest.raises(TransportError) as caught:
                transport.send(Envelope(SENDER, "x@example.com", b"Subject: x\r\n\r\nx\r\n", "k1"))
            raised.append(caught.value)
    finally:
        fast.close()
        fallback.close()
    by_fast, by_fallback = raised
    assert type(by_fast) is type(by_fallback) is classify(fault.code, fault.status, fault.message)
    assert (by_fast.recipient, by_fast.code, by_fast.status) == ("x@example.com", fault.code, fault.status)
    assert (by_fallback.recipient, by_fallback.code, by_fallback.status) == (
        by_fast.recipient,
        by_fast.code,
        by_fast.status,
    )
    assert str(by_fast) == str(by_fallback)
    assert proxy.send_calls == 2  # one each: botocore did not retry on either path
    assert ses.messages() == []


def test_both_paths_stop_on_an_unverified_sender(ses: Ses, monkeypatch: pytest.MonkeyPatch) -> None:
    """moto itself refuses, as SES does: MessageRejected that blames the sender."""
    ses.reset(verify=False)
    fast = SesTransport(REGION, ses.endpoint, "", 2)
    without_fast_path(monkeypatch)
    fallback = SesTransport(REGION, ses.endpoint, "", 2)
    try:
        for transport in (fast, fallback):
            with pytest.raises(TransportUnavailable, match="Did not have authority to send from email"):
                transport.send(Envelope(SENDER, "reader@example.org", b"Subject: x\r\n\r\nx\r\n", "k1"))
    finally:
        fast.close()
        fallback.close()
    assert ses.messages() == []


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (_answer("403 Forbidden", "text/html", b"<h1>Forbidden</h1>"), TransportUnavailable),
        (_answer("502 Bad Gateway", "text/html", b"<html>proxy error</html>"), TemporaryFailure),
        (_answer("413 Payload Too Large", "text/plain", b"too big"), Rejected),
        (_answer("200 OK", "text/html", b"<html>Welcome to the hotel wifi</html>"), DeliveryUnknown),
        (None, DeliveryUnknown),  # the request went out, the connection closed with no answer
    ],
    ids=["html-403", "proxy-502", "plain-413", "html-200", "no-answer"],
)
def test_both_paths_treat_answers_that_are_not_ses_alike(
    monkeypatch: pytest.MonkeyPatch, answer: bytes | None, expected: type[TransportError]
) -> None:
    scrub_aws_env(monkeypatch)
    raised: list[TransportError] = []
    for fast in (True, False):
        if not fast:
            without_fast_path(monkeypatch)
        server = OneShotServer(answer)
        transport = SesTransport(REGION, server.url, "", 2)
        try:
            assert (transport._fast is not None) is fast
            with pytest.raises(expected) as caught:
                transport.send(Envelope(SENDER, "reader@example.org", b"Subject: x\r\n\r\nx\r\n", "k1"))
            raised.append(caught.value)
        finally:
            transport.close()
            server.close()
    by_fast, by_fallback = raised
    assert (by_fast.code, by_fast.status) == (by_fallback.code, by_fallback.status)
