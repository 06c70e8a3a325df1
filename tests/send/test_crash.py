"""Exactly once, even when a send dies: kill -9, Ctrl-C, SIGTERM, unknown fates, changed content, two senders.

Each test drives the real console script (``newsletter send``) in a subprocess and
interrupts it for real, then checks what arrived against the ledger.

The maildir transport names each message after its delivery key, so a resend would
silently *overwrite* the earlier copy and a plain count of files could never see a
duplicate. So between runs these tests also act as the mail client: they move some
delivered messages to ``cur/`` (as a client does once a message is read) and remember
the inode of the others. A second copy then shows up as a second file for the same
subscriber, or as a rewritten file. The SMTP test counts what a real server accepted.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Newsletter
from tests.support.cli import clean_env, invoke_cli, one_line, run_cli, start_cli, wait_for
from tests.support.fakes import FakeTransport
from tests.support.ledger import maildir_count as delivered_count
from tests.support.ledger import outbox, state_db
from tests.support.ledger import statuses_by_subscriber as ledger

SECRET = "crash-test-secret-0123456789abcdef"
MESSAGE_FILE = re.compile(
    r"^nl(?P<issue>\d+)-c(?P<campaign>\d+)-s(?P<subscriber>\d+)\.(?P<host>[^:]+)(?::2,[A-Za-z]*)?$"
)
DEADLINE = 60.0  # the longest any one wait may take before the test fails instead of hanging

pytestmark = pytest.mark.slow  # every test runs real campaigns through the console script


# --- Running the console script --------------------------------------------------------------------


def _env() -> dict[str, str]:
    return clean_env({"NEWSLETTER_SECRET": SECRET})


def run(newsletter: Newsletter, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(newsletter.root, *args, env=_env())


def cli(newsletter: Newsletter, *args: str) -> subprocess.CompletedProcess[str]:
    """A quick command (``status``, ``subscribers ...``) run in this process: same code, no start-up cost."""
    return invoke_cli(newsletter.config_path, *args, env={"NEWSLETTER_SECRET": SECRET})


def start(newsletter: Newsletter, *args: str) -> subprocess.Popen[str]:
    return start_cli(newsletter.root, *args, env=_env())


def count_in(pattern: str, text: str) -> int:
    """The number a message line reports, or 0 when the line is not there."""
    match = re.search(pattern, text)
    return int(match[1].replace(",", "")) if match else 0


# --- The newsletter folder -------------------------------------------------------------------------


def set_table(newsletter: Newsletter, table: str, **values: object) -> None:
    """Replace one [table] of the folder's newsletter.toml, whatever the repo config has in it."""
    text = newsletter.config_path.read_text(encoding="utf-8")
    text = re.sub(rf"(?ms)^\[{re.escape(table)}\][ \t]*$.*?(?=^\[|\Z)", "", text)
    lines = "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())
    newsletter.config_path.write_text(f"{text.rstrip()}\n\n[{table}]\n{lines}", encoding="utf-8")


BODY = "Hello [there](https://example.org/).\n"


def new_issue(newsletter: Newsletter, max_rate: float = 1000) -> None:
    """Issue 1, sent at up to 1,000 messages a second (the default is 14), 8 at a time."""
    newsletter.write_issue(1, BODY)
    set_table(newsletter, "send", max_rate=max_rate, concurrency=8)


@dataclass
class Roster:
    """The subscribers as the database has them, by id."""

    active: dict[int, str]
    inactive: dict[int, str]


def subscribe(newsletter: Newsletter, count: int, *, first: int = 0, inactive: bool = True) -> Roster:
    """Import ``count`` subscribers from a CSV with ``subscribers import``; about 2% unsubscribed, 1% bounced."""
    path = newsletter.root / f"subscribers-{first}.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "name", "status"])
        for number in range(first, first + count):
            status = "active"
            if inactive and number % 50 == 7:
                status = "unsubscribed"
            elif inactive and number % 97 == 13:
                status = "bounced"
            writer.writerow([f"reader{number}@example.org", f"Reader {number}", status])
    result = cli(newsletter, "subscribers", "import", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{count} added, 0 updated"), result.stdout
    return roster(newsletter)


def roster(newsletter: Newsletter) -> Roster:
    db = state_db(newsletter)
    try:
        rows = db.execute("SELECT id, email, status FROM subscribers").fetchall()
    finally:
        db.close()
    return Roster(
        active={i: email for i, email, status in rows if status == "active"},
        inactive={i: email for i, email, status in rows if status != "active"},
    )


def send_in_process(newsletter: Newsletter, transport: Any = None) -> Any:
    """Run issue 1's campaign with the library, as ``newsletter send 1`` would (``transport``: the maildir)."""
    from pipeline.db import open_db
    from pipeline.issue.build import build_issue
    from pipeline.send.delivery import SendSettings
    from pipeline.send.ledger import content_hash, prepare_campaign
    from pipeline.send.message import MessageTemplate
    from pipeline.send.runner import CampaignRunner
    from pipeline.send.transports.maildir import MaildirTransport

    config = newsletter.config()
    transport = transport or MaildirTransport(config.maildir)
    rendered = build_issue(config, 1).rendered
    db = open_db(config.paths.state)
    try:
        preparation = prepare_campaign(db, 1, content_hash(rendered), transport)
        runner = CampaignRunner(
            db,
            config,
            preparation.campaign,
            MessageTemplate(config, rendered),
            transport,
            SECRET.encode(),
            SendSettings(concurrency=4, max_rate=None, max_attempts=1, max_consecutive_failures=10),
        )
        return runner.run()
    finally:
        db.close()


# --- The maildir, as a mail client sees it ----------------------------------------------------------


def messages(newsletter: Newsletter, issue: int = 1) -> dict[int, list[Path]]:
    """Every message of ``issue`` in new/ and cur/, by subscriber id."""
    found: dict[int, list[Path]] = {}
    for folder in ("new", "cur"):
        directory = outbox(newsletter) / folder
        if not directory.exists():
            continue
        for entry in os.scandir(directory):
            match = MESSAGE_FILE.match(entry.name)
            assert match, f"unexpected file {folder}/{entry.name}"
            if int(match["issue"]) == issue:
                found.setdefault(int(match["subscriber"]), []).append(Path(entry.path))
    return found


def header(path: Path, name: str) -> str:
    with path.open("rb") as handle:
        return str(BytesHeaderParser().parse(handle)[name])


def read_some(newsletter: Newsletter, also: frozenset[int] | set[int] = frozenset(), every: int = 3) -> None:
    """The mail client reads some messages: new/X becomes cur/X:2,S."""
    for subscriber, paths in messages(newsletter).items():
        for path in paths:
            if path.parent.name == "new" and (subscriber % every == 0 or subscriber in also):
                path.rename(outbox(newsletter) / "cur" / f"{path.name}:2,S")


def inodes(newsletter: Newsletter) -> dict[str, tuple[int, int]]:
    """Who each message file is now, to prove later that none was written again."""
    found = {}
    for paths in messages(newsletter).values():
        for path in paths:
            stat = path.stat()
            found[f"{path.parent.name}/{path.name}"] = (stat.st_ino, stat.st_mtime_ns)
    return found


def assert_untouched(newsletter: Newsletter, before: dict[str, tuple[int, int]]) -> None:
    for name, identity in before.items():
        path = outbox(newsletter) / name
        assert path.exists(), f"{name} vanished"
        stat = path.stat()
        assert (stat.st_ino, stat.st_mtime_ns) == identity, f"{name} was written again: a second copy"


def assert_exactly_once(newsletter: Newsletter, people: Roster) -> None:
    found = messages(newsletter)
    twice = {s: sorted(p.name for p in paths) for s, paths in found.items() if len(paths) > 1}
    assert not twice, f"{len(twice)} subscriber(s) got more than one copy, e.g. {list(twice.items())[:3]}"
    missing = set(people.active) - set(found)
    assert not missing, f"{len(missing)} active subscriber(s) got nothing, e.g. {sorted(missing)[:5]}"
    unwanted = set(found) & set(people.inactive)
    assert not unwanted, f"unsubscribed or bounced subscribers were mailed: {sorted(unwanted)[:5]}"
    strangers = set(found) - set(people.active) - set(people.inactive)
    assert not strangers, f"messages for subscriber ids nobody has: {sorted(strangers)[:5]}"
    for subscriber, (path,) in found.items():
        assert parseaddr(header(path, "To"))[1] == people.active[subscriber], path.name
    left = list((outbox(newsletter) / "tmp").iterdir())
    assert not left, f"half-written messages left in tmp/: {left[:3]}"


def assert_done(newsletter: Newsletter, people: Roster, issue: int = 1, via: str = "maildir") -> None:
    result = cli(newsletter, "status", str(issue))
    assert result.returncode == 0, result.stderr
    total = len(people.active)
    assert f"issue {issue}: done, {total:,}/{total:,} handled via {via}" in result.stdout, result.stdout
    assert f"sent {total:,}  failed 0  skipped 0  queued 0  unknown 0" in result.stdout, result.stdout
    statuses = ledger(newsletter, issue)
    assert statuses["sent"] == set(people.active)
    assert not statuses["sending"] and not statuses["queued"]


def assert_ledger_matches_maildir(newsletter: Newsletter) -> dict[str, set[int]]:
    """The write-ahead rule, checked after a crash: a message was only handed over once its row said
    ``sending``, and a row only says ``sent`` once its message was handed over."""
    statuses = ledger(newsletter)
    delivered = set(messages(newsletter))
    early = delivered - statuses["sent"] - statuses["sending"]
    assert not early, f"delivered but neither sent nor sending in the ledger: {sorted(early)[:5]}"
    phantom = statuses["sent"] - delivered
    assert not phantom, f"recorded sent but not delivered: {sorted(phantom)[:5]}"
    return statuses


# --- 1. kill -9 part-way, then resume ------------------------------------------------------------

BIG_LIST = 2000
FAST = 10_000.0  # messages a second, once nothing is left to interrupt


@pytest.mark.parametrize(
    "kill_at",
    [pytest.param((0.03,), id="early"), pytest.param((0.5, 0.8), id="middle-then-late")],
)
def test_kill_9_part_way_then_resume_sends_each_exactly_once(
    newsletter: Newsletter, kill_at: tuple[float, ...]
) -> None:
    new_issue(newsletter)
    people = subscribe(newsletter, BIG_LIST)
    total = len(people.active)
    assert len(people.inactive) > 50
    seen: dict[str, tuple[int, int]] = {}
    found_delivered: set[int] = set()
    for fraction in kill_at:
        sender = start(newsletter, "send", "1")
        target = max(1, int(total * fraction))
        wait_for(lambda target=target: delivered_count(newsletter) >= target, f"{target} messages", sender)
        os.kill(sender.pid, signal.SIGKILL)
        sender.communicate(timeout=DEADLINE)
        assert sender.returncode == -signal.SIGKILL

        statuses = assert_ledger_matches_maildir(newsletter)
        delivered = set(messages(newsletter))
        assert 0 < len(delivered) < total, f"not part-way: {len(delivered)} of {total} delivered"
        assert statuses["queued"], "the kill came too late: nothing left to send"
        assert_untouched(newsletter, seen)  # what earlier runs delivered was not written again
        in_flight = statuses["sending"]
        found_delivered |= in_flight & delivered
        # The reader opens some messages, among them some whose fate the ledger does not know.
        read_some(newsletter, also={s for s in in_flight if s % 2})
        seen = inodes(newsletter)

        status = cli(newsletter, "status", "1")
        assert re.search(
            rf"issue 1: \w+, {len(statuses['sent']):,}/{total:,} handled via maildir", status.stdout
        ), status.stdout
        assert f"unknown {len(in_flight):,}" in status.stdout, status.stdout

    # The kills needed a rate slow enough to land part-way; the rest need not wait on it.
    set_table(newsletter, "send", max_rate=FAST, concurrency=8)
    resumed = run(newsletter, "send", "1")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Traceback" not in resumed.stderr
    assert "Resume issue 1" in resumed.stdout
    assert count_in(r"([\d,]+) message\(s\) were being handed over", resumed.stdout) == len(in_flight)
    assert f"{total:,} sent, 0 failed, 0 skipped, 0 still queued, 0 unknown" in resumed.stdout, resumed.stdout
    assert "issue 1: campaign complete" in resumed.stdout

    assert_exactly_once(newsletter, people)
    assert_untouched(newsletter, seen)
    assert_done(newsletter, people)
    db = state_db(newsletter)
    try:
        noted = {
            s
            for (s,) in db.execute(
                "SELECT subscriber_id FROM deliveries WHERE last_error LIKE 'found delivered%'"
            )
        }
    finally:
        db.close()
    assert noted == found_delivered
    # Last, as it is only the report: the editor is told how many the maildir settled.
    settled = count_in(
        r"([\d,]+) message\(s\) left in flight by an interruption were settled", resumed.stdout
    )
    assert settled == len(in_flight), resumed.stdout


# --- 2. Ctrl-C (or SIGTERM) part-way: a clean pause, then resume ---------------------------------

MID_LIST = 400


@pytest.mark.parametrize(
    "signals",
    [
        pytest.param((signal.SIGINT,), id="ctrl-c"),
        pytest.param((signal.SIGTERM,), id="sigterm"),
        pytest.param((signal.SIGINT, signal.SIGINT), id="ctrl-c-twice"),
    ],
)
def test_interrupt_pauses_with_one_line_and_resume_sends_the_rest_once(
    newsletter: Newsletter, signals: tuple[signal.Signals, ...]
) -> None:
    new_issue(newsletter)
    people = subscribe(newsletter, MID_LIST)
    total = len(people.active)
    sender = start(newsletter, "send", "1")
    wait_for(lambda: delivered_count(newsletter) >= total // 4, "a quarter of the messages", sender)
    for number, sig in enumerate(signals):
        if number:
            time.sleep(0.002)
        sender.send_signal(sig)
    out, err = sender.communicate(timeout=DEADLINE)

    if len(signals) == 1:
        assert sender.returncode == 1, out + err
        assert one_line(err) == "error: campaign paused: interrupted; run `newsletter send 1` to resume"
    else:  # the second one stops at once, as a crash would (or the pause was already recorded)
        assert sender.returncode in (1, 130, -signal.SIGINT), out + err
        assert "Traceback" not in err, err
    statuses = assert_ledger_matches_maildir(newsletter)
    sent, queued, unknown = len(statuses["sent"]), len(statuses["queued"]), len(statuses["sending"])
    assert 0 < sent < total and queued, (sent, total)
    if len(signals) == 1:
        assert not unknown, "what was handed over before the stop must be recorded, not left unknown"
        assert f"{sent:,} sent, 0 failed, 0 skipped, {queued:,} still queued, 0 unknown" in out, out
        status = cli(newsletter, "status", "1")
        assert f"issue 1: paused, {sent:,}/{total:,} handled via maildir" in status.stdout, status.stdout
        assert "note: interrupted" in status.stdout
    read_some(newsletter)
    before = inodes(newsletter)

    resumed = run(newsletter, "send", "1")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Resume issue 1" in resumed.stdout
    assert f"{total:,} sent, 0 failed, 0 skipped, 0 still queued, 0 unknown" in resumed.stdout, resumed.stdout
    assert "issue 1: campaign complete" in resumed.stdout
    assert_exactly_once(newsletter, people)
    assert_untouched(newsletter, before)
    assert_done(newsletter, people)


# --- 3. Unknown fates with a transport that cannot tell ------------------------------------------


class SmtpSink:
    """A real SMTP server (aiosmtpd) on 127.0.0.1 that accepts everything and counts recipients."""

    def __init__(self) -> None:
        self.recipients: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.lose_reply_for = ""
        """Take this recipient's first message, then drop the connection before the "250" gets out."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.recipients.update(envelope.rcpt_tos)
            number = sum(self.recipients.values())
            lose = self.lose_reply_for in envelope.rcpt_tos and self.recipients[self.lose_reply_for] == 1
        if lose:
            server.transport.abort()
        return f"250 2.0.0 Ok: queued as Q{number}"

    def snapshot(self) -> Counter[str]:
        with self.lock:
            return Counter(self.recipients)

    def total(self) -> int:
        with self.lock:
            return sum(self.recipients.values())


@pytest.fixture
def smtp_sink():  # type: ignore[no-untyped-def]
    from aiosmtpd.controller import Controller

    sink = SmtpSink()
    for attempt in range(3):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        controller = Controller(sink, hostname="127.0.0.1", port=port, ready_timeout=10)
        try:
            controller.start()
            break
        except OSError:  # the port was taken in between
            if attempt == 2:
                raise
    sink.port = port  # type: ignore[attr-defined]
    yield sink
    controller.stop()


def settle(sink: SmtpSink) -> Counter[str]:
    """What the server holds once a killed client's last connections have been wound up."""
    last, stable_since = -1, time.monotonic()
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() - stable_since < 0.3:
        now = sink.total()
        if now != last:
            last, stable_since = now, time.monotonic()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return sink.snapshot()


def use_smtp(newsletter: Newsletter, sink: SmtpSink) -> None:
    set_table(newsletter, "transport", kind="smtp")
    set_table(newsletter, "transport.smtp", host="127.0.0.1", port=sink.port, security="none")  # type: ignore[attr-defined]


def test_smtp_kill_9_unknown_fates_are_not_resent_unless_asked(
    newsletter: Newsletter, smtp_sink: SmtpSink
) -> None:
    new_issue(newsletter)
    use_smtp(newsletter, smtp_sink)
    people = subscribe(newsletter, 400)
    total = len(people.active)
    sender = start(newsletter, "send", "1", "--yes")
    wait_for(lambda: smtp_sink.total() >= total // 6, "some messages at the SMTP server", sender)
    os.kill(sender.pid, signal.SIGKILL)
    sender.communicate(timeout=DEADLINE)
    taken = settle(smtp_sink)

    statuses = ledger(newsletter)
    by_address = {email: i for i, email in people.active.items()}
    received = {by_address[address] for address in taken}
    assert max(taken.values()) == 1
    assert statuses["sent"] <= received, "recorded sent, but the server never got it"
    assert received <= statuses["sent"] | statuses["sending"], (
        "the server got a message whose row was not yet sending"
    )
    unknown = statuses["sending"]
    assert unknown and statuses["queued"], "the kill should leave messages in flight and others queued"

    # SMTP cannot tell what it took: the unknown ones are reported and left alone.
    resumed = run(newsletter, "send", "1", "--yes")
    assert resumed.returncode == 1, resumed.stdout + resumed.stderr
    assert count_in(r"([\d,]+) message\(s\) were being handed over", resumed.stdout) == len(unknown)
    assert one_line(resumed.stderr) == (
        f"error: campaign paused: {len(unknown)} message(s) in an unknown state; run `newsletter send 1` to resume"
    )
    after = smtp_sink.snapshot()
    for subscriber, address in people.active.items():
        expected = taken[address] if subscriber in unknown else 1
        assert after[address] == expected, (subscriber, address, after[address], expected)
    assert not set(after) & set(people.inactive.values())
    status = cli(newsletter, "status", "1")
    assert f"issue 1: paused, {total - len(unknown):,}/{total:,} handled via smtp" in status.stdout, (
        status.stdout
    )
    assert f"unknown {len(unknown):,}" in status.stdout

    # The editor decides: resend them, each exactly once more.
    again = run(newsletter, "send", "1", "--yes", "--resend-unknown")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "issue 1: campaign complete" in again.stdout
    final = smtp_sink.snapshot()
    for subscriber, address in people.active.items():
        expected = after[address] + 1 if subscriber in unknown else 1
        assert final[address] == expected, (subscriber, address, final[address], expected)
    assert_done(newsletter, people, via="smtp")


def paused_after(count: int) -> FakeTransport:
    """An API-style mail service (like SES) that cannot say afterwards what it took, and whose account
    is paused after ``count`` messages."""
    from pipeline.errors import TransportUnavailable

    taken = threading.Semaphore(count)

    def send(envelope: Any) -> str:
        if not taken.acquire(blocking=False):
            raise TransportUnavailable("fake-api: account paused")
        return f"fake-{envelope.recipient}"

    return FakeTransport(send, name="fake-api", delivered=None)


def test_unknown_left_by_another_transport_is_not_settled_by_the_maildir(newsletter: Newsletter) -> None:
    """Started through an API service, crashed, resumed with the maildir: the maildir cannot know what
    the service took, so it is not asked; those stay unknown until --resend-unknown."""
    new_issue(newsletter)
    people = subscribe(newsletter, 120)
    service = paused_after(40)
    assert send_in_process(newsletter, service).status == "paused"
    by_address = {email: i for i, email in people.active.items()}
    taken = {by_address[address] for address in service.recipients()}
    assert len(taken) == 40 and ledger(newsletter)["sent"] == taken
    # The crash: three handed over but not recorded, two claimed but never handed over.
    unrecorded, unsent = sorted(taken)[-3:], sorted(ledger(newsletter)["queued"])[:2]
    db = state_db(newsletter)
    with db:
        db.execute(
            f"UPDATE deliveries SET status = 'sending', provider_id = NULL WHERE subscriber_id IN ({','.join('?' * 5)})",
            (*unrecorded, *unsent),
        )
        db.execute("UPDATE campaigns SET status = 'sending'")
    db.close()
    unknown = set(unrecorded) | set(unsent)

    resumed = run(newsletter, "send", "1")
    assert resumed.returncode == 1, resumed.stdout + resumed.stderr
    assert count_in(r"([\d,]+) message\(s\) were being handed over", resumed.stdout) == 5
    assert (
        one_line(resumed.stderr)
        == "error: campaign paused: 5 message(s) in an unknown state; run `newsletter send 1` to resume"
    )
    assert set(messages(newsletter)) == set(people.active) - taken - set(unsent)
    assert ledger(newsletter)["sending"] == unknown
    read_some(newsletter)
    before = inodes(newsletter)

    again = run(newsletter, "send", "1", "--resend-unknown")
    assert again.returncode == 0, again.stdout + again.stderr
    assert set(messages(newsletter)) == set(people.active) - taken | unknown
    assert all(len(paths) == 1 for paths in messages(newsletter).values())
    assert_untouched(newsletter, before)
    assert_done(newsletter, people, via="fake-api")


# --- 4. Latecomers ---------------------------------------------------------------------------------


def test_latecomers_get_a_finished_issue_only_with_include_new(newsletter: Newsletter) -> None:
    new_issue(newsletter)
    people = subscribe(newsletter, 60)
    first = run(newsletter, "send", "1")
    assert first.returncode == 0 and "issue 1: campaign complete" in first.stdout, first.stdout + first.stderr
    assert_exactly_once(newsletter, people)
    read_some(newsletter)
    before = inodes(newsletter)

    subscribe(newsletter, 7, first=1000, inactive=False)
    everyone = roster(newsletter)
    assert len(everyone.active) == len(people.active) + 7
    again = run(newsletter, "send", "1")
    assert again.returncode == 0, again.stdout + again.stderr
    assert re.search(r"nothing to (do|send)", again.stdout) and "--include-new" in again.stdout, again.stdout
    assert inodes(newsletter) == before
    assert_done(newsletter, people)  # still done, with the list it was sent to

    latecomers = run(newsletter, "send", "1", "--include-new")
    assert latecomers.returncode == 0, latecomers.stdout + latecomers.stderr
    assert "issue 1: campaign complete" in latecomers.stdout
    assert f"{len(everyone.active):,} sent, 0 failed" in latecomers.stdout
    assert_exactly_once(newsletter, everyone)
    assert_untouched(newsletter, before)
    assert_done(newsletter, everyone)
    assert "left in flight by an interruption" not in latecomers.stdout, (
        "nothing was interrupted: " + latecomers.stdout
    )


# --- 5. The issue changed between the interruption and the resume ----------------------------------


def test_changed_content_refuses_the_resume_until_allowed(newsletter: Newsletter) -> None:
    new_issue(newsletter)
    people = subscribe(newsletter, MID_LIST)
    total = len(people.active)
    sender = start(newsletter, "send", "1")
    wait_for(lambda: delivered_count(newsletter) >= total // 5, "a fifth of the messages", sender)
    os.kill(sender.pid, signal.SIGKILL)
    sender.communicate(timeout=DEADLINE)
    statuses = assert_ledger_matches_maildir(newsletter)
    assert statuses["queued"]
    read_some(newsletter, also={s for s in statuses["sending"] if s % 2})
    before = inodes(newsletter)

    newsletter.write_issue(1, "Hello [there](https://example.org/), corrected.\n", title="Issue 1, corrected")
    refused = run(newsletter, "send", "1")
    assert refused.returncode != 0, refused.stdout + refused.stderr
    line = one_line(refused.stderr)
    assert (
        line.startswith("error: issue 1 changed since its campaign started") and "--allow-changed" in line
    ), line
    assert ledger(newsletter) == statuses, "a refused resume must not touch the ledger"
    assert inodes(newsletter) == before, "a refused resume must not send"

    allowed = run(newsletter, "send", "1", "--allow-changed")
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert "issue 1: campaign complete" in allowed.stdout
    assert_exactly_once(newsletter, people)
    assert_untouched(newsletter, before)
    assert_done(newsletter, people)
    subjects = Counter(header(paths[0], "Subject") for paths in messages(newsletter).values())
    assert subjects == {"Issue 1": len(before), "Issue 1, corrected": total - len(before)}


# --- 6. Two senders at once --------------------------------------------------------------------------


def test_second_sender_is_refused_while_the_first_runs(newsletter: Newsletter) -> None:
    new_issue(newsletter, max_rate=20)
    people = subscribe(newsletter, 200)
    first = start(newsletter, "send", "1")
    wait_for(lambda: delivered_count(newsletter) >= 2, "the first sender to start", first)

    second = run(newsletter, "send", "1")
    assert second.returncode == 2, second.stdout + second.stderr
    assert "is being sent by another process" in one_line(second.stderr)
    assert not second.stdout, "refused before announcing anything"
    status = cli(newsletter, "status", "1")
    assert "issue 1: sending now" in status.stdout, status.stdout
    assert first.poll() is None, "the first sender should still be running"

    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=DEADLINE)
    assert first.returncode == 1 and "campaign paused: interrupted" in err, err
    set_table(newsletter, "send", max_rate=1000, concurrency=8)
    resumed = run(newsletter, "send", "1")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_exactly_once(newsletter, people)
    assert_done(newsletter, people)


# --- Known bugs: each test shows one way to break exactly-once (see the reason) ---------------------


def test_smtp_reply_lost_after_the_message_was_taken_is_not_sent_again(
    newsletter: Newsletter, smtp_sink: SmtpSink
) -> None:
    new_issue(newsletter)
    use_smtp(newsletter, smtp_sink)
    people = subscribe(newsletter, 8, inactive=False)
    smtp_sink.lose_reply_for = people.active[min(people.active) + 3]
    result = run(newsletter, "send", "1", "--yes")
    assert "Traceback" not in result.stderr, result.stderr
    taken = settle(smtp_sink)
    assert set(taken) == set(people.active.values())
    twice = {address: count for address, count in taken.items() if count > 1}
    assert not twice, f"sent again after the server had taken it: {twice}; the run said: {result.stdout}"


def test_second_ctrl_c_just_after_a_hand_over_does_not_requeue_it(
    newsletter: Newsletter, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    from pipeline.send.runner import _Workers

    handed_over = 0
    submit = _Workers.submit

    def second_ctrl_c_after_tenth_hand_over(self, job):  # type: ignore[no-untyped-def]
        """Where a real second SIGINT lands now and then (see the ctrl-c-twice case above)."""
        nonlocal handed_over
        submit(self, job)
        handed_over += 1
        if handed_over == 10:
            raise KeyboardInterrupt  # as the signal handler raises it, right after submit() returns

    new_issue(newsletter)
    people = subscribe(newsletter, 40, inactive=False)
    monkeypatch.setattr(_Workers, "submit", second_ctrl_c_after_tenth_hand_over)
    assert send_in_process(newsletter).status == "paused"
    monkeypatch.undo()
    read_some(newsletter, every=1)  # the reader has read everything that arrived
    before = inodes(newsletter)
    resumed = run(newsletter, "send", "1")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_exactly_once(newsletter, people)
    assert_untouched(newsletter, before)


HOST_SWITCH = (
    "import socket, sys; socket.gethostname = lambda: 'another-host'; "
    "from pipeline.cli import main; sys.argv[0] = 'newsletter'; main()"
)


def test_resume_on_a_host_with_another_name_does_not_resend(newsletter: Newsletter) -> None:
    new_issue(newsletter)
    people = subscribe(newsletter, 50)
    assert send_in_process(newsletter).status == "done"
    # What kill -9 between the maildir rename and the ledger commit leaves: delivered, still "sending".
    unrecorded = sorted(people.active)[-4:]
    db = state_db(newsletter)
    with db:
        db.execute(
            f"UPDATE deliveries SET status = 'sending' WHERE subscriber_id IN ({','.join('?' * 4)})",
            unrecorded,
        )
        db.execute("UPDATE campaigns SET status = 'sending'")
    db.close()
    resumed = run_cli(newsletter.root, "send", "1", env=_env(), command=[sys.executable, "-c", HOST_SWITCH])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_exactly_once(newsletter, people)


def test_newcomer_who_inherits_a_deleted_subscribers_id_still_gets_the_issue(newsletter: Newsletter) -> None:
    new_issue(newsletter)
    people = subscribe(newsletter, 5, inactive=False)
    assert send_in_process(newsletter).status == "done"
    last = max(people.active)
    assert cli(newsletter, "subscribers", "remove", people.active[last]).returncode == 0
    assert cli(newsletter, "subscribers", "add", "newcomer@example.org").returncode == 0
    newcomer = next(i for i, email in roster(newsletter).active.items() if email == "newcomer@example.org")
    assert newcomer != last  # ids are never reused (AUTOINCREMENT): no stale delivery key can match
    # What `send 1 --include-new` leaves when killed right after claiming the newcomer, before handing it over.
    db = state_db(newsletter)
    with db:
        db.execute(
            "INSERT INTO deliveries (campaign_id, subscriber_id, status, updated_at)"
            " SELECT id, ?, 'sending', '2026-11-23T00:00:00+00:00' FROM campaigns WHERE issue = 1",
            (newcomer,),
        )
        db.execute("UPDATE campaigns SET status = 'sending'")
    db.close()
    resumed = run(newsletter, "send", "1")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    to = [parseaddr(header(path, "To"))[1] for path in messages(newsletter).get(newcomer, [])]
    assert "newcomer@example.org" in to, (
        f"the newcomer never got issue 1; the file under their key is for {to}"
    )


def test_second_ctrl_c_while_another_writer_holds_the_database_stops_cleanly(newsletter: Newsletter) -> None:
    new_issue(newsletter)
    subscribe(newsletter, 400)
    sender = start(newsletter, "send", "1")
    wait_for(lambda: delivered_count(newsletter) >= 40, "some messages", sender)
    # Another writer (a big `subscribers import`, the subscription web service) holds the database.
    other = sqlite3.connect(
        newsletter.root / "state" / "newsletter.sqlite3", isolation_level=None, timeout=30
    )
    try:
        other.execute("BEGIN IMMEDIATE")
        time.sleep(0.3)
        sender.send_signal(signal.SIGINT)  # the editor presses Ctrl-C while the sender waits for the database
        time.sleep(0.1)
        # Read while the lock is still ours: nobody can commit in between, so the sender's next commit,
        # however soon after ours, changes it (read after COMMIT, a quick one was missed and this hung).
        version = other.execute("PRAGMA data_version").fetchone()[0]
        other.execute("COMMIT")
        wait_for(
            lambda: other.execute("PRAGMA data_version").fetchone()[0] != version,
            "the sender's next commit",
            sender,
        )
        other.execute("BEGIN IMMEDIATE")  # the other writer again
        time.sleep(0.3)
        sender.send_signal(signal.SIGINT)  # nothing seems to happen, so the editor presses Ctrl-C again
        time.sleep(0.1)
    finally:
        if other.in_transaction:
            other.execute("COMMIT")
        other.close()
    _, err = sender.communicate(timeout=DEADLINE)
    # The first Ctrl-C asks for a clean pause; the second stops at once, as a crash would:
    # no traceback, a one-line notice, and the ledger still agrees with the maildir. A second Ctrl-C
    # that lands after the pause, while the interpreter shuts down (Python has put the default
    # handlers back by then), ends the process by the signal itself: a shell reports that as 130 too.
    assert sender.returncode in (1, 130, -signal.SIGINT), err
    assert "Traceback" not in err, err
    if sender.returncode == 130:
        assert "stopped at once; run `newsletter send` again to resume" in err
    if sender.returncode == -signal.SIGINT:
        assert "campaign paused: interrupted" in err, err
    assert_ledger_matches_maildir(newsletter)
    resumed = run(newsletter, "send", "1")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "issue 1: campaign complete" in resumed.stdout
