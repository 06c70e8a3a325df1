"""One campaign sent by several processes (``[send] processes``, :mod:`pipeline.send.fanout`).

Like ``test_crash.py``, each campaign test drives the real console script in a subprocess and
stops it for real: kill -9 of the parent or of one sender, Ctrl-C as a terminal sends it (to
the whole process group), SIGTERM to the parent only. The subprocess starts its own session
(``start_new_session=True``), so its process group is the test's to signal, and every process
it started, the senders included, can be found afterwards by that session id in ``/proc``.

Sender processes are the parent's children started by multiprocessing's ``spawn``: their
command line runs ``multiprocessing.spawn``. Share ``k`` of ``n`` sends to the subscribers
whose id ``% n == k``, and the parent names it "sender process k+1".
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.send.fanout import MAX_AUTO_PROCESSES, MIN_RECIPIENTS_PER_PROCESS, sender_processes
from tests.conftest import Newsletter
from tests.send.test_crash import (
    DEADLINE,
    Roster,
    _env,
    assert_done,
    assert_exactly_once,
    assert_ledger_matches_maildir,
    assert_untouched,
    cli,
    count_in,
    delivered_count,
    inodes,
    ledger,
    messages,
    new_issue,
    one_line,
    read_some,
    set_table,
    state_db,
    subscribe,
)
from tests.send.test_ses import ISSUE_BODY, Ses, cli_env, configure_ses, import_subscribers
from tests.support.cli import start_cli, wait_for
from tests.support.fault_proxy import THROTTLED, THROTTLING, Call, Fault, FaultProxy
from tests.support.ledger import state_path
from tests.support.procs import holders, is_running, pending_signals

BIG_LIST = 2000
FAST = 2000.0  # messages a second, when nothing needs to be interrupted
SLOW = 300.0  # slow enough to interrupt part-way: 2,000 subscribers take about 6.5 s
GONE_WITHIN = 5.0  # seconds in which every process of a stopped send must be gone

pytestmark = pytest.mark.slow  # real multi-process campaigns through the console script


# --- Processes, as /proc shows them -------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (state, ppid, pgrp, session, ...), or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text[text.rindex(")") + 2 :].split()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def in_session(session: int) -> dict[int, str]:
    """Live (not zombie) processes of the session the send started, but for its leader: pid -> cmdline."""
    found = {}
    for pid in _pids():
        fields = _stat(pid)
        if fields and int(fields[3]) == session and fields[0] != "Z" and pid != session:
            found[pid] = _cmdline(pid)
    return found


def senders_of(parent: int) -> list[int]:
    """The sender processes ``parent`` started, oldest first (multiprocessing's spawned children)."""
    found = []
    for pid in _pids():
        fields = _stat(pid)
        if (
            fields
            and int(fields[1]) == parent
            and fields[0] != "Z"
            and "multiprocessing.spawn" in _cmdline(pid)
        ):
            found.append((int(fields[19]), pid))  # field 22: start time
    return [pid for _, pid in sorted(found)]


def describe(pids: list[int]) -> str:
    """What each process is doing (state, what it waits on, its threads), for a failure message."""
    lines = []
    for pid in pids:
        fields = _stat(pid)
        if not fields:
            continue
        threads = []
        for tid in sorted(os.listdir(f"/proc/{pid}/task")) if os.path.isdir(f"/proc/{pid}/task") else []:
            try:
                wchan = Path(f"/proc/{pid}/task/{tid}/wchan").read_text()
            except OSError:
                wchan = "?"
            threads.append(f"{tid}:{wchan}")
        lines.append(
            f"{pid} ppid {fields[1]} state {fields[0]} {_cmdline(pid)[:90]} threads {' '.join(threads)}"
        )
    return "\n".join(lines)


def assert_all_gone(session: int, within: float = GONE_WITHIN) -> None:
    deadline = time.monotonic() + within
    while (left := in_session(session)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not left, f"still running {within:.0f}s after the send stopped: {left}"


class Watch:
    """Counts, while a send runs, the sender processes its parent has (polled every few ms)."""

    def __init__(self, parent: int) -> None:
        self.parent = parent
        self.most = 0
        self.seen: set[int] = set()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._done.is_set():
            now = senders_of(self.parent)
            self.seen.update(now)
            self.most = max(self.most, len(now))
            time.sleep(0.005)

    def stop(self) -> None:
        self._done.set()
        self._thread.join(5)


# --- Running the console script in its own session ----------------------------------------------------


def start(newsletter: Newsletter, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return start_cli(newsletter.root, *args, env=env or _env(), new_session=True)


def finish(process: subprocess.Popen[str], timeout: float = DEADLINE) -> tuple[str, str]:
    """The send's output once it ends; fails if it hangs."""
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        hung = describe([process.pid, *in_session(process.pid)])
        for pid in senders_of(process.pid):  # each sender prints its threads' stacks (faulthandler)
            os.kill(pid, signal.SIGUSR1)
        time.sleep(1)
        os.killpg(process.pid, signal.SIGKILL)  # the test's own session: nothing else is in it
        out, err = process.communicate()
        pytest.fail(f"the send did not end within {timeout:.0f}s:\n{out[-2000:]}\n{err[-2000:]}\n{hung}")


def run_watched(
    newsletter: Newsletter, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], Watch]:
    """Run a command to its end, counting its sender processes."""
    process = start(newsletter, *args, env=env)
    watch = Watch(process.pid)
    try:
        out, err = finish(process, DEADLINE)
    finally:
        watch.stop()
    assert_all_gone(process.pid)
    return subprocess.CompletedProcess(args, process.returncode, out, err), watch


def with_processes(newsletter: Newsletter, max_rate: float, processes: int = 2) -> None:
    new_issue(newsletter)
    set_table(newsletter, "send", max_rate=max_rate, concurrency=8, processes=processes)


def shares(ids: set[int], n: int = 2) -> list[set[int]]:
    return [{i for i in ids if i % n == k} for k in range(n)]


def summary_line(text: str) -> str:
    match = re.search(r"^.*\d+ sent, \d+ failed, .* handled in .*$", text, re.MULTILINE)
    assert match, text
    return match[0]


def resume_exactly_once(newsletter: Newsletter, people: Roster, *, settled: int | None = None) -> None:
    """``send 1`` again (two processes still) completes the campaign: every active subscriber one copy.

    At FAST: the interrupted run needed SLOW to be caught part-way; the rest need not take seconds."""
    set_table(newsletter, "send", max_rate=FAST, concurrency=8, processes=2)
    read_some(newsletter)
    before = inodes(newsletter)
    resumed, watch = run_watched(newsletter, "send", "1")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Traceback" not in resumed.stderr, resumed.stderr
    assert "Resume issue 1" in resumed.stdout, resumed.stdout
    total = len(people.active)
    assert f"{total:,} sent, 0 failed, 0 skipped, 0 still queued, 0 unknown" in resumed.stdout, resumed.stdout
    assert "issue 1: campaign complete" in resumed.stdout
    if settled is not None:
        found = count_in(
            r"([\d,]+) message\(s\) left in flight by an interruption were settled", resumed.stdout
        )
        assert found == settled, resumed.stdout
    assert watch.most == 2, f"the resume ran {watch.most} sender process(es), not 2"
    assert_exactly_once(newsletter, people)
    assert_untouched(newsletter, before)
    assert_done(newsletter, people)


# --- 1. A complete campaign from two processes -------------------------------------------------------


def test_two_processes_send_a_whole_campaign_exactly_once(newsletter: Newsletter) -> None:
    with_processes(newsletter, FAST)
    people = subscribe(newsletter, BIG_LIST)
    total = len(people.active)
    assert total > 1900 and people.inactive

    result, watch = run_watched(newsletter, "send", "1")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and not result.stderr.strip(), result.stderr
    assert (
        f"Send issue 1 ('Issue 1') to {total:,} recipient(s) via maildir at up to {FAST:g}/s."
        in result.stdout
    )
    line = summary_line(result.stdout)
    assert line.startswith(
        f"{total:,} sent, 0 failed, 0 skipped, 0 still queued, 0 unknown; {total:,} handled in "
    ), line
    assert "issue 1: campaign complete" in result.stdout
    assert "archived: " in result.stdout
    # Two senders, and nobody else sent: the parent only relays progress.
    assert watch.most == 2, f"{watch.most} sender process(es) seen, not 2"
    assert len(watch.seen) == 2, watch.seen

    assert_exactly_once(newsletter, people)
    assert_done(newsletter, people)
    db = state_db(newsletter)
    try:
        campaign = db.execute("SELECT status, note, finished_at FROM campaigns WHERE issue = 1").fetchone()
        attempts = Counter(a for (a,) in db.execute("SELECT attempts FROM deliveries"))
        provider_ids = [p for (p,) in db.execute("SELECT provider_id FROM deliveries")]
    finally:
        db.close()
    assert campaign[0] == "done" and not campaign[1] and campaign[2], campaign
    assert attempts == {1: total}
    assert len(set(provider_ids)) == total and None not in provider_ids
    # Each share was sent by its own process: both halves are in the maildir.
    assert all(len(share) > 900 for share in shares(set(messages(newsletter))))

    status = cli(newsletter, "status", "1")
    assert status.returncode == 0, status.stderr
    assert "sending now" not in status.stdout, "the lock must be released when the send ends"


# --- 2. kill -9 of the parent ----------------------------------------------------------------------


def test_kill_9_of_the_parent_takes_the_senders_with_it_and_resume_sends_each_once(
    newsletter: Newsletter,
) -> None:
    with_processes(newsletter, SLOW)
    people = subscribe(newsletter, BIG_LIST)
    total = len(people.active)

    sender = start(newsletter, "send", "1")
    wait_for(lambda: len(senders_of(sender.pid)) == 2, "two sender processes", sender)
    children = senders_of(sender.pid)
    wait_for(lambda: delivered_count(newsletter) >= 400, "400 messages", sender)
    os.kill(sender.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    assert_all_gone(sender.pid)
    gone_after = time.monotonic() - killed_at
    for child in children:
        assert _stat(child) is None or _stat(child)[0] == "Z", f"sender {child} outlived its parent"  # type: ignore[index]
    finish(sender)
    assert sender.returncode == -signal.SIGKILL

    statuses = assert_ledger_matches_maildir(newsletter)
    delivered = set(messages(newsletter))
    assert 0 < len(delivered) < total
    # Both senders were at work, and both stopped: each share has sent and queued rows.
    for k, (sent, queued) in enumerate(
        zip(shares(statuses["sent"]), shares(statuses["queued"]), strict=False)
    ):
        assert sent and queued, f"share {k}: {len(sent)} sent, {len(queued)} queued"
    # Not a pause and a look: prove nobody is left who could write. Every process of the session is
    # gone (above), and no other process holds the ledger or the maildir's tmp/ open.
    writers = holders(state_path(newsletter)) + holders(
        state_path(newsletter).with_name(state_path(newsletter).name + "-wal")
    )
    assert not writers, f"processes still hold the ledger: {writers}"
    assert ledger(newsletter) == statuses, "something still wrote to the ledger after the senders were gone"
    assert set(messages(newsletter)) == delivered, "something still delivered after the senders were gone"
    in_flight = statuses["sending"]
    status = cli(newsletter, "status", "1")
    assert f"unknown {len(in_flight):,}" in status.stdout, status.stdout
    assert "sending now" not in status.stdout, status.stdout

    resume_exactly_once(newsletter, people, settled=len(in_flight))
    assert gone_after < GONE_WITHIN


# --- 3, 4. Ctrl-C (to the whole group) and SIGTERM (to the parent only) ------------------------------


def _interrupt(process: subprocess.Popen[str], how: str) -> None:
    if how == "ctrl-c":
        os.killpg(process.pid, signal.SIGINT)  # what the terminal does: every process of the group
    else:
        os.kill(process.pid, signal.SIGTERM)  # what `kill PID` or a service manager does: the parent only


INTERRUPTED = "error: campaign paused: interrupted; run `newsletter send 1` to resume"


def assert_paused_by_interrupt(err: str) -> None:
    line = one_line(err)
    assert line == INTERRUPTED, line


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_one_interrupt_pauses_cleanly_and_resume_sends_each_once(newsletter: Newsletter, how: str) -> None:
    with_processes(newsletter, SLOW)
    people = subscribe(newsletter, BIG_LIST)
    total = len(people.active)
    sender = start(newsletter, "send", "1")
    wait_for(lambda: len(senders_of(sender.pid)) == 2, "two sender processes", sender)
    wait_for(lambda: delivered_count(newsletter) >= 400, "400 messages", sender)

    _interrupt(sender, how)
    interrupted_at = time.monotonic()
    out, err = finish(sender)
    took = time.monotonic() - interrupted_at

    assert sender.returncode == 1, out + err
    assert_paused_by_interrupt(err)
    assert took < 5, f"a clean pause took {took:.1f}s"
    assert_all_gone(sender.pid)
    statuses = assert_ledger_matches_maildir(newsletter)
    sent, queued, unknown = len(statuses["sent"]), len(statuses["queued"]), len(statuses["sending"])
    assert not unknown, "what was handed over before the stop must be recorded, not left unknown"
    assert 0 < sent < total and queued
    for k, (done, left) in enumerate(zip(shares(statuses["sent"]), shares(statuses["queued"]), strict=False)):
        assert done and left, (
            f"share {k} did not take part, or did not stop: {len(done)} sent, {len(left)} queued"
        )
    assert summary_line(out).startswith(
        f"{sent:,} sent, 0 failed, 0 skipped, {queued:,} still queued, 0 unknown; "
    ), out
    status = cli(newsletter, "status", "1")
    assert f"issue 1: paused, {sent:,}/{total:,} handled via maildir" in status.stdout, status.stdout
    if one_line(err) == INTERRUPTED:
        assert "note: interrupted" in status.stdout, status.stdout

    resume_exactly_once(newsletter, people, settled=0)


def test_ctrl_c_twice_stops_at_once_and_resume_sends_each_once(newsletter: Newsletter) -> None:
    with_processes(newsletter, SLOW)
    people = subscribe(newsletter, BIG_LIST)
    total = len(people.active)
    sender = start(newsletter, "send", "1")
    wait_for(lambda: len(senders_of(sender.pid)) == 2, "two sender processes", sender)
    wait_for(lambda: delivered_count(newsletter) >= 400, "400 messages", sender)

    os.killpg(sender.pid, signal.SIGINT)
    # Two signals pending at once are one: wait until the parent has taken the first (it is no longer
    # pending in /proc), then send the second at once, well short of the clean pause (>= 0.15 s).
    wait_for(lambda: signal.SIGINT not in pending_signals(sender.pid), "the parent to take the first Ctrl-C")
    assert sender.poll() is None, "the send ended before the second Ctrl-C"
    os.killpg(sender.pid, signal.SIGINT)
    second_at = time.monotonic()
    out, err = finish(sender)
    took = time.monotonic() - second_at

    assert sender.returncode == 130, out + err
    assert "Traceback" not in err, err
    assert "stopped at once; run `newsletter send` again to resume" in err, err
    assert took < 2, f"the second Ctrl-C took {took:.1f}s to stop the send"
    assert_all_gone(sender.pid)
    statuses = assert_ledger_matches_maildir(newsletter)
    assert 0 < len(statuses["sent"]) < total and statuses["queued"]

    resume_exactly_once(newsletter, people)


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_interrupt_as_the_senders_start_is_a_clean_pause(newsletter: Newsletter, how: str) -> None:
    """Ctrl-C (or SIGTERM) while the sender processes are still starting: importing, not yet listening.

    (Found by these tests: they died of it, and the campaign paused as "sender process 1 stopped
    unexpectedly (exit code -2/-15)"; fanout.py now starts them with the signals blocked.)"""
    with_processes(newsletter, SLOW)
    people = subscribe(newsletter, 400)
    sender = start(newsletter, "send", "1")
    wait_for(lambda: len(senders_of(sender.pid)) >= 1, "the first sender process", sender)

    _interrupt(sender, how)
    out, err = finish(sender)

    assert "Traceback" not in err, err
    assert sender.returncode == 1, out + err
    assert_paused_by_interrupt(err)
    assert_all_gone(sender.pid)
    assert not ledger(newsletter)["sending"]
    assert ledger(newsletter)["queued"], "a sender started after the signal was never asked to stop"
    resume_exactly_once(newsletter, people, settled=0)


# --- 5. kill -9 of one sender ---------------------------------------------------------------------


def kill_one_sender(newsletter: Newsletter) -> tuple[subprocess.Popen[str], str, str, float]:
    """Start ``send 1`` with two senders, kill -9 the younger one part-way; wait for the parent's end."""
    sender = start(newsletter, "send", "1")
    wait_for(lambda: len(senders_of(sender.pid)) == 2, "two sender processes", sender)
    victim = senders_of(sender.pid)[-1]
    wait_for(lambda: delivered_count(newsletter) >= 300, "300 messages", sender)
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    out, err = finish(sender)
    return sender, out, err, time.monotonic() - killed_at


def named_share(err: str) -> int:
    """Which share the parent says stopped (0-based), from its one line on stderr."""
    line = one_line(err)
    match = re.fullmatch(
        r"error: campaign paused: sender process ([12]) stopped unexpectedly \(exit code -9\); "
        r"run `newsletter send 1` to resume",
        line,
    )
    assert match, line
    return int(match[1]) - 1


def test_kill_9_of_one_sender_pauses_the_campaign_naming_it(newsletter: Newsletter) -> None:
    with_processes(newsletter, SLOW)
    people = subscribe(newsletter, BIG_LIST)
    total = len(people.active)

    sender, out, err, _ = kill_one_sender(newsletter)

    assert sender.returncode == 1, out + err
    named = named_share(err)
    assert_all_gone(sender.pid)  # the other sender stopped too
    statuses = assert_ledger_matches_maildir(newsletter)
    # Only the killed share can have rows in flight; the other one was stopped (or ended) cleanly.
    assert not shares(statuses["sending"])[1 - named], "the sender that was not killed left rows unknown"
    assert shares(statuses["queued"])[named], "the killed sender's share should be unfinished"
    sent, queued, unknown = (len(statuses[s]) for s in ("sent", "queued", "sending"))
    assert summary_line(out).startswith(
        f"{sent:,} sent, 0 failed, 0 skipped, {queued:,} still queued, {unknown:,} unknown; "
    ), out
    assert 0 < sent < total
    status = cli(newsletter, "status", "1")
    assert f"issue 1: paused, {sent:,}/{total:,} handled via maildir" in status.stdout, status.stdout
    assert f"note: sender process {named + 1} stopped unexpectedly (exit code -9)" in status.stdout, (
        status.stdout
    )

    resume_exactly_once(newsletter, people, settled=unknown)


def test_kill_9_of_one_sender_stops_the_other_promptly(newsletter: Newsletter) -> None:
    """(Found by these tests: the parent looked for dead senders only when no outcome had come for 0.2 s,
    so the other sender sent the rest of its share first; fanout.py now checks every 0.5 s regardless.)"""
    with_processes(newsletter, SLOW)
    subscribe(newsletter, BIG_LIST)

    sender, out, err, took = kill_one_sender(newsletter)

    assert sender.returncode == 1, out + err
    named = named_share(err)
    other_queued = shares(ledger(newsletter)["queued"])[1 - named]
    assert other_queued, f"the other sender went on to the end of its share ({took:.1f}s after the kill)"
    assert took < 4, f"the parent took {took:.1f}s to notice a dead sender and stop the other"


# --- 6. SES through moto, two processes ----------------------------------------------------------------

SES_LIST = 200  # moto, in this process, takes about 50 messages a second


def ses_people(newsletter: Newsletter, count: int = SES_LIST) -> tuple[list[str], dict[str, int]]:
    """``count`` subscribers, every 25th unsubscribed; the active addresses, and everyone's id."""
    rows = [
        (f"reader{n:04d}@example.com", f"Reader {n}", "unsubscribed" if n % 25 == 7 else "active")
        for n in range(count)
    ]
    import_subscribers(newsletter, rows)
    db = state_db(newsletter)
    try:
        ids = dict(db.execute("SELECT email, id FROM subscribers").fetchall())
    finally:
        db.close()
    return [address for address, _, status in rows if status == "active"], ids


def ses_ledger(newsletter: Newsletter) -> dict[str, sqlite3.Row]:
    db = state_db(newsletter)
    db.row_factory = sqlite3.Row
    try:
        rows = db.execute(
            "SELECT s.email, d.* FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id"
        ).fetchall()
    finally:
        db.close()
    return {row["email"]: row for row in rows}


def assert_ses_got_each_once(ses: Ses, active: list[str]) -> None:
    counts = Counter(message.destinations[0] for message in ses.messages())
    twice = {address: n for address, n in counts.items() if n > 1}
    assert not twice, f"{len(twice)} address(es) got more than one copy: {list(twice.items())[:3]}"
    assert set(counts) == set(active), (
        sorted(set(active) - set(counts))[:5],
        sorted(set(counts) - set(active))[:5],
    )


def planned_throttles(address: str) -> list[Fault]:
    """Every 5th address's first SendEmail is throttled, every 15th's first two."""
    n = int(address[6:10])
    return [THROTTLED, THROTTLING][: 2 if n % 15 == 0 else 1 if n % 5 == 0 else 0]


def test_ses_two_processes_ride_out_throttling_and_send_each_once(
    newsletter: Newsletter, ses: Ses, proxy: FaultProxy
) -> None:
    newsletter.write_issue(1, ISSUE_BODY)
    active, _ = ses_people(newsletter)
    proxy.account_rate = 2000.0

    def policy(call: Call) -> Fault | None:
        planned = planned_throttles(call.recipient)
        return planned[call.attempt - 1] if call.attempt <= len(planned) else None

    proxy.reset(policy)
    configure_ses(newsletter, proxy.url, max_rate=1000, concurrency=8, processes=2)

    result, watch = run_watched(newsletter, "send", "1", "--yes", env=cli_env())

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert f"to {len(active):,} recipient(s) via ses at up to 1000/s." in result.stdout, result.stdout
    assert summary_line(result.stdout).startswith(
        f"{len(active):,} sent, 0 failed, 0 skipped, 0 still queued, 0 unknown; "
    ), result.stdout
    assert "issue 1: campaign complete" in result.stdout
    assert watch.most == 2, f"{watch.most} sender process(es) seen, not 2"
    assert_ses_got_each_once(ses, active)
    expected = Counter(fault.code for address in active for fault in planned_throttles(address))
    assert proxy.injected == expected and set(expected) == {"TooManyRequestsException", "ThrottlingException"}
    rows = ses_ledger(newsletter)
    assert set(rows) == set(active)
    provider = {message.destinations[0]: message.id for message in ses.messages()}
    for address in active:
        attempts = len(planned_throttles(address)) + 1
        assert proxy.attempts[address] == attempts, address
        row = rows[address]
        assert (row["status"], row["attempts"], row["provider_id"]) == (
            "sent",
            attempts,
            provider[address],
        ), address
    status = cli(newsletter, "status", "1")
    assert f"issue 1: done, {len(active):,}/{len(active):,} handled via ses" in status.stdout, status.stdout


PAUSED = Fault(400, "SendingPausedException", "Email sending is disabled for this account.")
PAUSED_LINE = (
    "error: campaign paused: SES SendingPausedException: Email sending is disabled for this account.; "
    "run `newsletter send 1` to resume"
)


@pytest.mark.parametrize("where", ["every-call", "one-share"])
def test_ses_fatal_error_pauses_the_whole_campaign_with_its_reason(
    newsletter: Newsletter, ses: Ses, proxy: FaultProxy, where: str
) -> None:
    """An account-wide refusal met by one sender stops both; the campaign's reason is SES's, not "interrupted".

    The account is paused once both senders have sent a few messages (so neither is still starting):
    on every call from then on, or only on share 1's calls (odd ids), so that share 0 only learns of it
    from the parent, and says "interrupted"."""
    newsletter.write_issue(1, ISSUE_BODY)
    active, ids = ses_people(newsletter)
    proxy.account_rate = 2000.0
    forwarded: Counter[int] = Counter()

    def policy(call: Call) -> Fault | None:  # called under the proxy's lock
        share = ids[call.recipient] % 2
        if min(forwarded[0], forwarded[1]) >= 5 and (where == "every-call" or share == 1):
            return PAUSED
        forwarded[share] += 1
        return None

    proxy.reset(policy)
    configure_ses(newsletter, proxy.url, max_rate=300, concurrency=8, processes=2)

    stopped, watch = run_watched(newsletter, "send", "1", "--yes", env=cli_env())

    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    assert one_line(stopped.stderr) == PAUSED_LINE
    assert watch.most == 2
    assert proxy.injected["SendingPausedException"] >= 1
    assert proxy.injected["SendingPausedException"] <= 8, "a sender kept calling a paused account"
    rows = ses_ledger(newsletter)
    statuses = Counter(row["status"] for row in rows.values())
    assert not statuses["failed"], "the account's problem, not the subscribers': nobody may be written off"
    assert not statuses["sending"], statuses
    delivered = {message.destinations[0] for message in ses.messages()}
    assert {a for a, row in rows.items() if row["status"] == "sent"} == delivered
    assert len(delivered) == proxy.forwarded_sends
    left = [{a for a in active if ids[a] % 2 == k} - delivered for k in (0, 1)]
    assert all(left), "both senders must have stopped before the end of their share"
    status = cli(newsletter, "status", "1")
    assert f"issue 1: paused, {len(delivered):,}/{len(active):,} handled via ses" in status.stdout, (
        status.stdout
    )
    assert "note: SES SendingPausedException: Email sending is disabled for this account." in status.stdout

    proxy.reset(None)  # the account is back
    resumed, watch = run_watched(newsletter, "send", "1", "--yes", env=cli_env())
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{len(active):,} sent, 0 failed, 0 skipped, 0 still queued, 0 unknown" in resumed.stdout, (
        resumed.stdout
    )
    assert watch.most == 2
    assert_ses_got_each_once(ses, active)
    assert proxy.send_calls == len(active) - len(delivered)
    assert {row["status"] for row in ses_ledger(newsletter).values()} == {"sent"}


# --- 7. How many processes -------------------------------------------------------------------------


def _config(newsletter: Newsletter, transport: str = "maildir", processes: int = 0):  # type: ignore[no-untyped-def]
    config = newsletter.config()
    return dataclasses.replace(
        config, transport=transport, send=dataclasses.replace(config.send, processes=processes)
    )


@pytest.mark.parametrize(
    ("transport", "processes", "cores", "recipients", "dry_run", "expected"),
    [
        # The setting wins, whatever the transport, the cores or the list.
        ("maildir", 2, 1, 10, False, 2),
        ("smtp", 3, 8, 1, False, 3),
        ("ses", 7, 2, 100_000, False, 7),
        # Auto, SES: one per core, at most 4, and at least 250 recipients each; never fewer than one.
        ("ses", 0, 8, 100_000, False, MAX_AUTO_PROCESSES),
        ("ses", 0, 2, 100_000, False, 2),
        ("ses", 0, 8, 3 * MIN_RECIPIENTS_PER_PROCESS, False, 3),
        ("ses", 0, 8, 3 * MIN_RECIPIENTS_PER_PROCESS - 1, False, 2),
        ("ses", 0, 8, MIN_RECIPIENTS_PER_PROCESS - 1, False, 1),
        ("ses", 0, 8, 0, False, 1),
        ("ses", 0, None, 100_000, False, 1),  # os.cpu_count() may not know
        ("ses", 0, 1, 100_000, False, 1),
        # Auto, SMTP and the maildir: one, they wait on I/O.
        ("maildir", 0, 8, 100_000, False, 1),
        ("smtp", 0, 8, 100_000, False, 1),
        # A dry run: always one, even when set.
        ("ses", 0, 8, 100_000, True, 1),
        ("ses", 4, 8, 100_000, True, 1),
        ("maildir", 2, 8, 100_000, True, 1),
    ],
)
def test_sender_processes_rules(
    newsletter: Newsletter,
    monkeypatch: pytest.MonkeyPatch,
    transport: str,
    processes: int,
    cores: int | None,
    recipients: int,
    dry_run: bool,
    expected: int,
) -> None:
    import pipeline.send.fanout

    monkeypatch.setattr(pipeline.send.fanout.os, "cpu_count", lambda: cores)
    config = _config(newsletter, transport, processes)
    assert sender_processes(config, recipients, dry_run=dry_run) == expected


def test_processes_setting_is_validated(newsletter: Newsletter) -> None:
    assert newsletter.config().send.processes == 0  # the default: auto
    set_table(newsletter, "send", processes=0)
    assert load_config(newsletter.config_path).send.processes == 0
    set_table(newsletter, "send", processes=3)
    assert load_config(newsletter.config_path).send.processes == 3

    set_table(newsletter, "send", processes=-1)
    with pytest.raises(ConfigError) as raised:
        load_config(newsletter.config_path)
    message = str(raised.value)
    assert "send.processes" in message and "-1" in message and "\n" not in message, message
    newsletter.write_issue(1, "Hello.\n")
    result = cli(newsletter, "send", "1", "--dry-run")
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert line.startswith("error: ") and "send.processes" in line, line

    set_table(newsletter, "send", processes="two")
    with pytest.raises(ConfigError) as raised:
        load_config(newsletter.config_path)
    assert "send.processes" in str(raised.value)


# --- 8. A dry run ----------------------------------------------------------------------------------


def dump(newsletter: Newsletter) -> list[str]:
    db = state_db(newsletter)
    try:
        return list(db.iterdump())
    finally:
        db.close()


def test_dry_run_with_processes_set_runs_one_process_and_writes_nothing(newsletter: Newsletter) -> None:
    with_processes(newsletter, FAST)
    people = subscribe(newsletter, 600)
    total = len(people.active)
    before = dump(newsletter)

    result, watch = run_watched(newsletter, "send", "1", "--dry-run")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert f"DRY RUN: would send issue 1 ('Issue 1') to {total:,} recipient(s) via dry-run" in result.stdout
    assert summary_line(result.stdout).startswith(
        f"DRY RUN: {total:,} sent, 0 failed, 0 skipped, 0 still queued, 0 unknown; {total:,} handled"
    ), result.stdout
    assert watch.most == 0, "a dry run works on an in-memory copy: no sender process can see it"
    assert dump(newsletter) == before, "a dry run changed the database"
    assert not (newsletter.root / "outbox").exists() or delivered_count(newsletter) == 0
    assert not (newsletter.root / "archive").exists()
    status = cli(newsletter, "status", "1")
    assert f"issue 1: not sent yet ({total:,} active subscribers)" in status.stdout, status.stdout


# --- Found while testing: a stop request that lands at the wrong moment --------------------------------


class _StopOnThirdOutcome:
    """A reporter that sends this process SIGTERM while the runner records its third outcome."""

    def __init__(self) -> None:
        self.outcomes = 0

    def start(self, total: int, done: int) -> None:
        pass

    def advance(self, outcome: object) -> None:
        self.outcomes += 1
        if self.outcomes == 3:
            assert callable(signal.getsignal(signal.SIGTERM)), "the runner's SIGTERM handler is not installed"
            os.kill(os.getpid(), signal.SIGTERM)

    def finish(self) -> None:
        pass


def test_a_stop_that_lands_while_outcomes_are_recorded_is_reported_as_interrupted(
    newsletter: Newsletter,
) -> None:
    """What a sender process does (share 0 of 2, SIGTERM handler), with the SIGTERM arriving at a set moment:
    while the runner records outcomes, between rate-limited hand-overs (nothing in flight)."""
    from pipeline.db import open_db
    from pipeline.issue.build import build_issue
    from pipeline.send.delivery import SendSettings
    from pipeline.send.ledger import content_hash, prepare_campaign
    from pipeline.send.message import MessageTemplate
    from pipeline.send.runner import CampaignRunner
    from pipeline.send.transports.maildir import MaildirTransport
    from tests.send.test_crash import SECRET

    new_issue(newsletter)
    subscribe(newsletter, 40, inactive=False)
    config = newsletter.config()
    rendered = build_issue(config, 1).rendered
    transport = MaildirTransport(config.maildir)
    db = open_db(config.paths.state)
    try:
        campaign = prepare_campaign(db, 1, content_hash(rendered), transport).campaign
        reporter = _StopOnThirdOutcome()
        runner = CampaignRunner(
            db,
            config,
            campaign,
            MessageTemplate(config, rendered),
            transport,
            SECRET.encode(),
            SendSettings(concurrency=4, max_rate=20, max_attempts=1, max_consecutive_failures=10),
            reporter,
            partition=(0, 2),
        )
        before = signal.getsignal(signal.SIGTERM)
        runner.stop_on_signals((signal.SIGTERM,))  # it stays once a stop came: put pytest's back ourselves
        try:
            reason, _, tally = runner.send_all()
        finally:
            signal.signal(signal.SIGTERM, before)
    finally:
        db.close()
    # What was in flight when the stop landed is finished and recorded (one hand-over at a time on a
    # quiet machine, a few more on a loaded one), and the campaign stops well short of its 20 messages.
    assert runner.interrupted and 3 <= reporter.outcomes < 20 and tally == {"sent": reporter.outcomes}
    assert reason == "interrupted"


class _Child:
    """Stands for a sender process in :class:`pipeline.send.fanout._Senders`: alive until signalled."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(["sleep", "30"])

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def exitcode(self) -> int | None:
        return self.process.poll()

    def is_alive(self) -> bool:
        return self.process.poll() is None

    def join(self, timeout: float | None = None) -> None:
        self.process.wait(timeout)


def test_a_sender_that_has_reported_its_end_is_not_signalled() -> None:
    """A sender that has said it is done is leaving: a SIGTERM then could cut its report short."""
    import threading
    from multiprocessing import Pipe

    from pipeline.send.fanout import _Senders
    from pipeline.send.runner import SilentReporter

    reporting, other = _Child(), _Child()
    senders = _Senders(None, None, None, b"", None, 2)  # type: ignore[arg-type]  # never started
    pipes = [Pipe(duplex=False) for _ in range(2)]
    senders.processes = senders.started = [reporting, other]  # type: ignore[list-item]
    senders.readers = [reader for reader, _ in pipes]
    pipes[0][1].send(("done", ("SES SendingPausedException: paused", {"fatal": 1})))  # met a paused account
    pipes[0][1].close()

    def other_obeys() -> None:  # the other one reports once it is stopped
        other.process.wait(10)
        pipes[1][1].send(("done", ("interrupted", {"sent": 3})))
        pipes[1][1].close()

    obeying = threading.Thread(target=other_obeys)
    obeying.start()
    try:
        reasons, tally = senders.collect(SilentReporter())
        assert reasons == ["SES SendingPausedException: paused", "interrupted"]
        assert tally == {"fatal": 1, "sent": 3}
        assert other.exitcode == -signal.SIGTERM, "the sender still at work must be asked to stop"
        # No pause needed: collect() has returned, so any signal it sent was sent; a SIGTERM sent is
        # either still pending in /proc or has already ended ``sleep`` (as it ended ``other``'s).
        assert not pending_signals(reporting.pid) & {signal.SIGTERM, signal.SIGKILL}
        assert is_running(reporting.pid) and reporting.is_alive(), (
            f"the sender that had reported its end was signalled (exit {reporting.exitcode})"
        )
    finally:
        obeying.join(15)
        for child in (reporting, other):
            child.process.kill()
            child.process.wait()
