"""Send one campaign from several processes, for transports whose calls cost CPU (SES).

One Python process tops out near 300 SES calls a second: signing and posting a 136 KB
message costs about 1.5 ms of CPU under the GIL, and the campaign loop and personalisation
1 ms more. So each sender process runs the ordinary :class:`CampaignRunner` on its own share
of the ledger (``subscriber_id % n == k``), with its own database connection and transport,
at ``1/n`` of the rate. The ledger stays the only record: every row is still committed
``sending`` before its hand-over, so a crash of any process is a crash of one runner, and
``send`` resumes all shares alike.

Signals: the terminal's Ctrl-C reaches every process of the group; the senders ignore it and
stop only when this process tells them (SIGTERM), so the first Ctrl-C finishes what is in
flight everywhere, as with one process. A second Ctrl-C ends this process at once, and the
kernel then kills the senders (``PR_SET_PDEATHSIG``): the same as a crash, rows in flight
stay "unknown".
"""

from __future__ import annotations

import ctypes
import math
import multiprocessing
import os
import queue
import signal
import sqlite3
import sys
import time
from dataclasses import replace
from typing import Any

from .campaign import Campaign, CampaignRunner, Outcome, Reporter, SendSettings, SilentReporter, Summary, close_campaign
from .config import Config
from .db import open_db
from .errors import NewsletterError
from .message import MessageTemplate
from .transports import open_transport

# Below this many recipients, starting the processes (about a second) costs more than it saves.
MIN_RECIPIENTS_PER_PROCESS = 250
MAX_AUTO_PROCESSES = 4


def sender_processes(config: Config, recipients: int, *, dry_run: bool) -> int:
    """How many sender processes a campaign of ``recipients`` gets.

    ``[send] processes`` when set; otherwise one per core (at most four) for SES, whose calls
    are CPU-bound, and one for SMTP and the maildir, which wait on I/O. A dry run always uses
    one: it works on an in-memory copy of the database that other processes cannot see.
    """
    if dry_run:
        return 1
    if config.send.processes:
        return config.send.processes
    if config.transport != "ses":
        return 1
    return max(1, min(os.cpu_count() or 1, MAX_AUTO_PROCESSES, recipients // MIN_RECIPIENTS_PER_PROCESS))


def run_in_processes(
    db: sqlite3.Connection,
    config: Config,
    campaign: Campaign,
    template: MessageTemplate,
    secret: bytes,
    settings: SendSettings,
    processes: int,
    reporter: Reporter | None = None,
) -> Summary:
    reporter = reporter or SilentReporter()
    share_settings = replace(
        settings,
        concurrency=max(1, math.ceil(settings.concurrency / processes)),
        max_rate=settings.max_rate / processes if settings.max_rate else settings.max_rate,
    )
    context = multiprocessing.get_context("spawn")  # no fork: nothing of this process's threads or sockets is inherited
    messages: Any = context.Queue()
    senders = [
        context.Process(
            target=_sender_main,
            args=(config, campaign, template, secret, share_settings, (share, processes), os.getpid(), messages),
            name=f"sender-{share + 1}",
        )
        for share in range(processes)
    ]
    started = time.monotonic()
    restore = _forward_signals(senders)
    try:
        for sender in senders:
            sender.start()
        counts = db.execute(
            "SELECT COUNT(*), SUM(status IN ('sent', 'failed', 'skipped')) FROM deliveries WHERE campaign_id = ?",
            (campaign.id,),
        ).fetchone()
        reporter.start(int(counts[0]), int(counts[1] or 0))
        reasons, tally = _collect(senders, messages, reporter)
    finally:
        reporter.finish()
        for sender in senders:
            sender.join()
        restore()
    # An early stop of one share (a paused account, failures in a row) is the campaign's reason;
    # the other shares then only say they were stopped.
    reason = next((r for r in reasons if r and r != "interrupted"), "") or next((r for r in reasons if r), "")
    return close_campaign(db, campaign, reason, time.monotonic() - started, tally)


def _collect(senders: list[Any], messages: Any, reporter: Reporter) -> tuple[list[str], dict[str, int]]:
    """Relay progress until every sender has reported its end; stop them all when one stops early."""
    reasons: dict[int, str] = {}
    tally: dict[str, int] = {}
    while len(reasons) < len(senders):
        try:
            kind, share, payload = messages.get(timeout=0.2)
        except queue.Empty:
            dead = [share for share, sender in enumerate(senders) if share not in reasons and not sender.is_alive()]
            if not dead:
                continue
            try:  # a sender that ended normally put its last message before exiting: it may still be in the pipe
                kind, share, payload = messages.get(timeout=1.0)
            except queue.Empty:
                for share in dead:
                    reasons[share] = (f"sender process {share + 1} stopped unexpectedly "
                                      f"(exit code {senders[share].exitcode})")
                _stop(senders)
                continue
        if kind == "outcome":
            reporter.advance(payload)
            continue
        reason, counts = payload
        reasons[share] = reason
        for key, value in counts.items():
            tally[key] = tally.get(key, 0) + value
        if reason:
            _stop(senders)
    return [reasons[share] for share in range(len(senders))], tally


def _stop(senders: list[Any]) -> bool:
    """Ask every sender, once, to finish what it has in flight and stop (a second SIGTERM would stop it at once)."""
    for sender in senders:
        if sender.is_alive() and sender.pid and sender.pid not in _asked_to_stop:
            _asked_to_stop.add(sender.pid)
            try:
                os.kill(sender.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    return True


_asked_to_stop: set[int] = set()


def _forward_signals(senders: list[Any]) -> Any:
    """First Ctrl-C or SIGTERM: ask every sender to finish what is in flight. The second: stop now."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    asked = False

    def handler(signum: int, frame: object) -> None:
        nonlocal asked
        if asked:
            os.write(2, b"\nstopped at once; run `newsletter send` again to resume\n")
            os._exit(130)  # the senders die with us (PR_SET_PDEATHSIG): a crash, which the ledger survives
        asked = True
        _stop(senders)

    for sig in previous:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, action in previous.items():
            signal.signal(sig, action)

    return restore


class _QueueReporter:
    def __init__(self, share: int, messages: Any) -> None:
        self.share, self.messages = share, messages

    def start(self, total: int, done: int) -> None:
        pass

    def advance(self, outcome: Outcome) -> None:
        self.messages.put(("outcome", self.share, outcome))

    def finish(self) -> None:
        pass


def _die_with(parent: int) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


def _sender_main(
    config: Config,
    campaign: Campaign,
    template: MessageTemplate,
    secret: bytes,
    settings: SendSettings,
    partition: tuple[int, int],
    parent: int,
    messages: Any,
) -> None:
    _die_with(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; see the module's docstring
    share = partition[0]
    reason, tally = "", {}
    try:
        db = open_db(config.paths.state)
        transport = open_transport(config)
        try:
            runner = CampaignRunner(
                db, config, campaign, template, transport, secret, settings, _QueueReporter(share, messages),
                partition=partition,
            )
            restore = runner.stop_on_signals((signal.SIGTERM,))
            try:
                reason, _, tally = runner.send_all()
            finally:
                restore()
        finally:
            transport.close()
            db.close()
    except NewsletterError as error:
        reason = str(error)
    messages.put(("done", share, (reason, tally)))
    messages.close()
    messages.join_thread()
