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
import faulthandler
import math
import multiprocessing
import multiprocessing.resource_tracker
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from multiprocessing.connection import Connection, wait
from typing import Any

from pipeline.config import Config
from pipeline.db import open_db
from pipeline.errors import CampaignError, NewsletterError
from pipeline.send.control import on_stop_signals
from pipeline.send.delivery import Outcome, SendSettings
from pipeline.send.ledger import Campaign, Ledger
from pipeline.send.message import MessageTemplate
from pipeline.send.runner import CampaignRunner, Reporter, SilentReporter, Summary, close_campaign
from pipeline.send.transports import open_transport

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
    ledger = Ledger(db, campaign)
    share_settings = replace(
        settings,
        concurrency=max(1, math.ceil(settings.concurrency / processes)),
        max_rate=settings.max_rate / processes if settings.max_rate else settings.max_rate,
    )
    senders = _Senders(config, campaign, template, secret, share_settings, processes)
    started = time.monotonic()
    # First Ctrl-C or SIGTERM: ask every sender to finish what is in flight. The second: stop now
    # (the senders die with us, PR_SET_PDEATHSIG: a crash, which the ledger survives).
    restore = on_stop_signals((signal.SIGINT, signal.SIGTERM), senders.stop)
    try:
        try:
            senders.start()
        except CampaignError as error:
            return close_campaign(ledger, str(error), time.monotonic() - started, {})
        reporter.start(*ledger.progress())
        reasons, tally = senders.collect(reporter)
    finally:
        senders.stop()  # a no-op after a normal end; after an error here, the senders must not go on alone
        reporter.finish()
        senders.close()
        restore()
    # An early stop of one share (a paused account, failures in a row) is the campaign's reason;
    # the other shares then only say they were stopped.
    reason = next((r for r in reasons if r and r != "interrupted"), "") or next((r for r in reasons if r), "")
    return close_campaign(ledger, reason, time.monotonic() - started, tally)


LIVENESS_INTERVAL = 0.5


class _Senders:
    """The sender processes of one campaign, each reporting on a pipe of its own.

    One pipe each, not one shared queue: a sender killed while writing cannot leave a lock
    held that the others would wait on for ever.
    """

    def __init__(
        self,
        config: Config,
        campaign: Campaign,
        template: MessageTemplate,
        secret: bytes,
        settings: SendSettings,
        processes: int,
    ) -> None:
        context = multiprocessing.get_context("spawn")  # not fork: inherit none of our threads or sockets
        self.processes: list[Any] = []
        self.readers: list[Connection] = []
        self._writers: list[Connection] = []
        for share in range(processes):
            reader, writer = context.Pipe(duplex=False)
            self.readers.append(reader)
            self._writers.append(writer)
            self.processes.append(
                context.Process(
                    target=_sender_main,
                    args=(
                        config,
                        campaign,
                        template,
                        secret,
                        settings,
                        (share, processes),
                        os.getpid(),
                        writer,
                    ),
                    name=f"sender-{share + 1}",
                )
            )
        self.started: list[Any] = []
        self._stopping = False
        self.reasons: dict[int, str] = {}
        self._asked: set[int] = set()

    def stopping(self) -> bool:
        """A stop was asked for, perhaps by a signal handler that ran between two lines of ours
        (a method, not an attribute, so no reader assumes it unchanged since its last look; a plain
        flag, not an Event, because a signal handler sets it)."""
        return self._stopping

    def start(self) -> None:
        # The first spawn would start multiprocessing's resource tracker, and launching it unblocks
        # SIGINT and SIGTERM (SIG_UNBLOCK, not the mask it found): inside _sigint_held_back() that
        # would let the first sender start with SIGINT deliverable. Started here, it is not started again.
        multiprocessing.resource_tracker.ensure_running()
        for number, process in enumerate(self.processes, start=1):
            if self.stopping():  # Ctrl-C while starting: the rest need not start at all
                self.reasons[number - 1] = "interrupted"
                continue
            try:
                with _sigint_held_back():
                    process.start()
            except OSError as error:
                self.stop()
                raise CampaignError(
                    f"cannot start sender process {number}: {error.strerror or error}"
                ) from None
            self._writers[number - 1].close()  # ours; the sender has its own copy: EOF when it ends
            self.started.append(process)
            if self.stopping():
                # The stop came while this one started (a Ctrl-C held back runs our handler as soon as
                # it is let through; a SIGTERM at any point of process.start()), when stop() did not
                # count it as started yet: it would send its whole share. Ask it now.
                self.stop()

    def stop(self) -> None:
        """Ask every sender still at work, once, to finish what it has in flight and stop."""
        self._stopping = True
        for share, process in enumerate(self.processes):
            if process in self.started and share not in self.reasons and process.pid not in self._asked:
                self._asked.add(process.pid)
                try:
                    os.kill(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def collect(self, reporter: Reporter) -> tuple[list[str], dict[str, int]]:
        """Relay progress until every sender has reported its end (or died); stop all when one stops early."""
        tally: dict[str, int] = {}
        open_readers = {self.readers[self.processes.index(p)]: self.processes.index(p) for p in self.started}
        while open_readers:
            for reader in _ready(list(open_readers), LIVENESS_INTERVAL):
                share = open_readers[reader]
                try:
                    kind, payload = reader.recv()
                except (EOFError, OSError):  # it ended: with its last words already read, or none
                    del open_readers[reader]
                    if share not in self.reasons:
                        self._died(share)
                    continue
                if kind == "outcome":
                    reporter.advance(payload)
                    continue
                reason, counts = payload
                self.reasons[share] = reason
                for key, value in counts.items():
                    tally[key] = tally.get(key, 0) + value
                if reason:
                    self.stop()
        return [self.reasons.get(share, "interrupted") for share in range(len(self.processes))], tally

    def _died(self, share: int) -> None:
        process = self.processes[share]
        process.join(5)
        if process.pid in self._asked and process.exitcode == -signal.SIGTERM:
            self.reasons[share] = "interrupted"
        else:
            self.reasons[share] = (
                f"sender process {share + 1} stopped unexpectedly (exit code {process.exitcode})"
            )
        self.stop()

    def close(self) -> None:
        """Wait for the senders to end, reading what they still write so none blocks on a full pipe."""
        pending = [self.readers[self.processes.index(p)] for p in self.started]
        while pending:
            for reader in _ready(pending, LIVENESS_INTERVAL):
                try:
                    reader.recv()
                except (EOFError, OSError):
                    pending.remove(reader)
        for process in self.started:
            process.join()
        for reader in self.readers:
            reader.close()


def _ready(readers: list[Connection], timeout: float) -> list[Connection]:
    """Those of ``readers`` with something to read (or at EOF), after at most ``timeout`` seconds."""
    ready = wait(readers, timeout=timeout)
    return [reader for reader in readers if reader in ready]


@contextmanager
def _sigint_held_back() -> Iterator[None]:
    """SIGINT blocked while a sender starts: a process inherits the signal mask across fork and exec,
    so the terminal's Ctrl-C cannot interrupt the sender while it starts up (it ignores SIGINT before
    unblocking it; this process relays the Ctrl-C as a SIGTERM). Here a Ctrl-C in between stays
    pending and reaches our handler when the block ends.

    Only blocked, never ignored here: with the disposition "ignore", a Ctrl-C that found SIGINT
    unblocked meanwhile (multiprocessing's resource tracker unblocks it when it starts) was discarded
    by the kernel, and the campaign ran to its end."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


class _PipeReporter:
    def __init__(self, pipe: Connection) -> None:
        self.pipe = pipe

    def start(self, total: int, done: int) -> None:
        pass

    def advance(self, outcome: Outcome) -> None:
        self.pipe.send(("outcome", outcome))

    def finish(self) -> None:
        pass


def _die_with(parent: int) -> None:
    """End this sender as soon as `send` ends, whatever ends it (kill -9 included), as a crash would."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the kernel kills us with the parent

    def watch() -> None:  # elsewhere (and as a second guard): an orphan is adopted by another process
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _sender_main(
    config: Config,
    campaign: Campaign,
    template: MessageTemplate,
    secret: bytes,
    settings: SendSettings,
    partition: tuple[int, int],
    parent: int,
    pipe: Connection,
) -> None:
    # The parent decides; see the module's docstring. We started with SIGINT blocked (_sigint_held_back):
    # ignoring it drops a Ctrl-C already pending, and only then may it be unblocked.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _die_with(parent)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1` shows where a stuck sender is
    reason = ""
    tally: dict[str, int] = {}
    try:
        db = open_db(config.paths.state)
        transport = open_transport(config)
        try:
            runner = CampaignRunner(
                db,
                config,
                campaign,
                template,
                transport,
                secret,
                settings,
                _PipeReporter(pipe),
                partition=partition,
            )
            runner.stop_on_signals((signal.SIGTERM,))
            reason, _, tally = runner.send_all()
        finally:
            transport.close()
            db.close()
    except NewsletterError as error:
        reason = str(error)
    # Deaf to a late stop request from here on: the report must get out whole.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pipe.send(("done", (reason, tally)))
    pipe.close()
