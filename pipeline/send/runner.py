"""Send one issue to every active subscriber, exactly once, resumably: the campaign loop.

What the loop relies on is in :mod:`pipeline.send.ledger`: a row is committed ``sending``
before its message is handed to the transport.
"""

from __future__ import annotations

import queue
import random
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from pipeline.config import Config
from pipeline.db import now, transaction
from pipeline.errors import (
    DeliveryUnknown,
    MessageError,
    Rejected,
    TemporaryFailure,
    TransportError,
    TransportUnavailable,
)
from pipeline.send.control import on_stop_signals
from pipeline.send.delivery import Outcome, SendSettings
from pipeline.send.ledger import Campaign, delivery_key, ledger_counts
from pipeline.send.message import MessageTemplate, recipient_for, sender_address, sender_domain
from pipeline.send.ratelimit import RateLimiter, Unlimited
from pipeline.send.transports import Envelope, Transport


class Reporter(Protocol):
    def start(self, total: int, done: int) -> None: ...
    def advance(self, outcome: Outcome) -> None: ...
    def finish(self) -> None: ...


class SilentReporter:
    def start(self, total: int, done: int) -> None:
        pass

    def advance(self, outcome: Outcome) -> None:
        pass

    def finish(self) -> None:
        pass


@dataclass
class Summary:
    counts: dict[str, int]
    elapsed: float
    handled: int
    status: str
    reason: str = ""
    outcomes: dict[str, int] = field(default_factory=dict)
    archived: str = ""
    """Where the issue was archived after a complete campaign."""
    archive_error: str = ""
    reconciled: int = 0
    """Messages a crash had left in flight that the transport could settle."""
    note: str = ""
    """Why nothing was sent, when the campaign was already complete."""

    @property
    def rate(self) -> float:
        return self.handled / self.elapsed if self.elapsed > 0 else 0.0


class _Workers:
    """Threads that deliver the messages the campaign loop hands them and queue back the outcomes.

    Lighter than a ThreadPoolExecutor with ``wait()``: the loop learns of each outcome in O(1),
    not by scanning every future in flight. An unexpected exception (a bug) becomes an "unknown"
    outcome: the message may have been handed over, so it must not be retried blindly.
    """

    def __init__(self, count: int, deliver: Callable[[int, str, str, int], Outcome]) -> None:
        self._jobs: queue.SimpleQueue[tuple[int, str, str, int] | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self._deliver = deliver
        self._threads = [
            threading.Thread(target=self._work, name=f"send-{n}", daemon=True) for n in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                outcome = self._deliver(*job)
            except BaseException as error:
                outcome = Outcome(job[0], "unknown", job[3], error=f"internal error: {error!r}")
            self._done.put(outcome)

    def submit(self, job: tuple[int, str, str, int]) -> None:
        self._jobs.put(job)

    def ready(self) -> list[Outcome]:
        """The outcomes that have arrived, without waiting."""
        found = []
        while True:
            try:
                found.append(self._done.get_nowait())
            except queue.Empty:
                return found

    def wait(self, timeout: float) -> list[Outcome]:
        """At least one outcome, or none if ``timeout`` passes first; then whatever else has arrived."""
        try:
            first = self._done.get(timeout=timeout)
        except queue.Empty:
            return []
        return [first, *self.ready()]

    def shutdown(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()


class CampaignRunner:
    def __init__(
        self,
        db: sqlite3.Connection,
        config: Config,
        campaign: Campaign,
        template: MessageTemplate,
        transport: Transport,
        secret: bytes,
        settings: SendSettings,
        reporter: Reporter | None = None,
        sleep: Callable[[float], bool] | None = None,
        partition: tuple[int, int] | None = None,
    ) -> None:
        self.db, self.config, self.campaign = db, config, campaign
        self.partition = partition
        """(k, n): send only to subscribers whose id % n == k (one of n sender processes)."""
        self.template, self.transport, self.secret = template, transport, secret
        self.settings = settings
        self.reporter = reporter or SilentReporter()
        self.stopping = threading.Event()
        self._sleep = sleep or self.stopping.wait
        self._sender = config.sender
        self._envelope_sender = sender_address(config)
        self._domain = sender_domain(config)

    def run(self) -> Summary:
        restore_signals = self.stop_on_signals((signal.SIGINT, signal.SIGTERM))
        try:
            pause_reason, elapsed, tally = self.send_all()
            return close_campaign(self.db, self.campaign, pause_reason, elapsed, tally)
        finally:
            restore_signals()

    def send_all(self) -> tuple[str, float, dict[str, int]]:
        """Send to every queued recipient (of this runner's partition); returns why it stopped early
        (or ""), the time taken and how many outcomes of each kind. The campaign row is not touched."""
        settings = self.settings
        limiter = RateLimiter(settings.max_rate) if settings.max_rate else Unlimited()
        counts = ledger_counts(self.db, self.campaign.id)
        self.reporter.start(sum(counts.values()), counts["sent"] + counts["failed"] + counts["skipped"])
        in_flight: set[int] = set()  # subscriber ids handed to a worker, outcome not back yet
        arrived: list[Outcome] = []
        finished: list[Outcome] = []
        tally: dict[str, int] = {}
        consecutive_failures = 0
        cursor = 0
        exhausted = False
        pause_reason = ""
        not_handed_over: list[int] = []
        started = time.monotonic()
        pool = _Workers(settings.concurrency, self._deliver)
        try:
            while True:
                arrived.extend(pool.ready())
                for outcome in arrived:
                    in_flight.discard(outcome.subscriber_id)
                    finished.append(outcome)
                    tally[outcome.kind] = tally.get(outcome.kind, 0) + 1
                    if outcome.kind == "sent":
                        consecutive_failures = 0
                    elif outcome.kind in ("failed", "retry", "unknown"):
                        consecutive_failures += 1
                    elif outcome.kind == "fatal" and not pause_reason:
                        pause_reason = outcome.error
                arrived = []
                if consecutive_failures >= settings.max_consecutive_failures and not pause_reason:
                    last = next((o.error for o in reversed(finished) if o.error), "")
                    pause_reason = f"{consecutive_failures} failures in a row (last: {last})"
                if self.interrupted and not pause_reason:
                    pause_reason = "interrupted"
                if pause_reason:
                    self.stopping.set()

                claimed: list[sqlite3.Row] = []
                free = settings.concurrency - len(in_flight)
                if not self.stopping.is_set() and not self.interrupted and not exhausted and free > 0:
                    wanted = limiter.take(free)
                    if wanted:
                        claimed = self._next_recipients(cursor, wanted)
                        if len(claimed) < wanted:
                            exhausted = True
                        if claimed:
                            cursor = claimed[-1]["subscriber_id"]
                # One transaction records what finished and claims what starts: one fsync per round.
                if finished or claimed:
                    self._commit(finished, claimed)
                    not_handed_over = [row["subscriber_id"] for row in claimed if row["status"] == "active"]
                    recorded, finished = finished, []
                    for outcome in recorded:
                        self.reporter.advance(outcome)
                for row in claimed:
                    if row["status"] != "active":
                        continue
                    # Off the list before the hand-over: an interrupt in between leaves the row
                    # "sending" (unknown, never resent blindly), not "queued" (possibly sent twice).
                    not_handed_over.remove(row["subscriber_id"])
                    pool.submit((row["subscriber_id"], row["email"], row["name"], row["attempts"]))
                    in_flight.add(row["subscriber_id"])
                if not in_flight and (exhausted or self.stopping.is_set() or self.interrupted):
                    break
                timeout = limiter.delay() if not exhausted and free > 0 else None
                if in_flight:
                    arrived.extend(pool.wait(min(timeout, 0.25) if timeout is not None else 0.25))
                elif timeout:
                    time.sleep(timeout)
        except KeyboardInterrupt:
            # Only reached on a second Ctrl-C, or one that landed outside the loop's checks.
            self.stopping.set()
            pause_reason = pause_reason or "interrupted"
            # Claimed but never handed to the transport: certainly not sent.
            finished.extend(
                Outcome(sid, "retry", 0, error="interrupted before sending") for sid in not_handed_over
            )
            finished.extend(arrived)
            in_flight.difference_update(outcome.subscriber_id for outcome in arrived)
            while in_flight:
                # Let the messages already handed over finish, so their results are recorded, not unknown.
                outcomes = pool.wait(30.0)
                if not outcomes:
                    break  # an outcome lost to the interrupt itself: its row stays "sending" (unknown)
                in_flight.difference_update(outcome.subscriber_id for outcome in outcomes)
                finished.extend(outcomes)
            self._commit(finished, [])
        finally:
            pool.shutdown()
            self.reporter.finish()
        if self.interrupted and not pause_reason:  # a stop that landed after the loop's last check
            pause_reason = "interrupted"
        return pause_reason, time.monotonic() - started, tally

    interrupted = False

    def stop_on_signals(self, signals: tuple[signal.Signals, ...]) -> Callable[[], None]:
        """First Ctrl-C (or SIGTERM): finish what is in flight, record it, stop. The second one: stop now."""

        def first() -> None:
            # Only a flag: taking a lock here (Event.set) deadlocks if the signal lands while the
            # main thread holds that lock. The loop turns the flag into a stop within one round.
            self.interrupted = True

        return on_stop_signals(signals, first)

    def _next_recipients(self, after: int, limit: int) -> list[sqlite3.Row]:
        share, shares = self.partition or (0, 1)
        return self.db.execute(
            "SELECT d.subscriber_id, d.attempts, s.email, s.name, s.status FROM deliveries d"
            " JOIN subscribers s ON s.id = d.subscriber_id"
            " WHERE d.campaign_id = ? AND d.status = 'queued' AND d.subscriber_id > ? AND d.subscriber_id % ? = ?"
            " ORDER BY d.subscriber_id LIMIT ?",
            (self.campaign.id, after, shares, share, limit),
        ).fetchall()

    def _commit(self, finished: list[Outcome], claimed: list[sqlite3.Row]) -> None:
        stamp = now()
        campaign_id = self.campaign.id
        with transaction(self.db):
            for outcome in finished:
                status = {"sent": "sent", "failed": "failed", "skipped": "skipped", "unknown": "sending"}.get(
                    outcome.kind, "queued"
                )
                self.db.execute(
                    "UPDATE deliveries SET status = ?, provider_id = ?, attempts = ?, last_error = ?, updated_at = ?"
                    " WHERE campaign_id = ? AND subscriber_id = ?",
                    (
                        status,
                        outcome.provider_id or None,
                        outcome.attempts,
                        outcome.error or None,
                        stamp,
                        campaign_id,
                        outcome.subscriber_id,
                    ),
                )
            for row in claimed:
                # Unsubscribed or bounced since the campaign started: never mail them.
                status = "sending" if row["status"] == "active" else "skipped"
                self.db.execute(
                    "UPDATE deliveries SET status = ?, updated_at = ?, last_error = ? WHERE campaign_id = ? AND subscriber_id = ?",
                    (
                        status,
                        stamp,
                        None if status == "sending" else f"subscriber is {row['status']}",
                        campaign_id,
                        row["subscriber_id"],
                    ),
                )

    def _deliver(self, subscriber_id: int, email: str, name: str, attempts: int) -> Outcome:
        try:
            message_id = f"<{delivery_key(self.campaign, subscriber_id)}.{self.campaign.content_hash[:10]}@{self._domain}>"
            recipient = recipient_for(self.config, self.secret, subscriber_id, email, name, message_id)
            data = self.template.build(recipient)
        except MessageError as error:  # one bad row must not stop the campaign
            return Outcome(subscriber_id, "failed", attempts, error=str(error))
        envelope = Envelope(
            self._envelope_sender, recipient.email, data, delivery_key(self.campaign, subscriber_id)
        )
        settings = self.settings
        for attempt in range(1, settings.max_attempts + 1):
            try:
                provider_id = self.transport.send(envelope)
                return Outcome(subscriber_id, "sent", attempts + attempt, provider_id=provider_id)
            except Rejected as error:
                return Outcome(subscriber_id, "failed", attempts + attempt, error=str(error))
            except DeliveryUnknown as error:  # it may have arrived: retrying could send it twice
                return Outcome(subscriber_id, "unknown", attempts + attempt, error=str(error))
            except TransportUnavailable as error:
                return Outcome(subscriber_id, "fatal", attempts + attempt, error=str(error))
            except TemporaryFailure as error:
                if attempt == settings.max_attempts:
                    return Outcome(subscriber_id, "retry", attempts + attempt, error=str(error))
                delay = random.uniform(
                    0, min(settings.backoff_cap, settings.backoff_base * 2 ** (attempt - 1))
                )
                if self._sleep(delay):  # stopping: leave it queued for the next run
                    return Outcome(subscriber_id, "retry", attempts + attempt, error=str(error))
            except TransportError as error:
                return Outcome(subscriber_id, "fatal", attempts + attempt, error=str(error))
        raise AssertionError("unreachable")


def close_campaign(
    db: sqlite3.Connection, campaign: Campaign, pause_reason: str, elapsed: float, tally: dict[str, int]
) -> Summary:
    """Record whether the campaign is done or paused (and why), from what the ledger now says."""
    counts = ledger_counts(db, campaign.id)
    handled = sum(tally.values())
    if not pause_reason and counts["queued"]:
        pause_reason = (
            f"{counts['queued']} message(s) could not be sent yet (temporary errors); run again to retry"
        )
    if not pause_reason and counts["sending"]:
        pause_reason = f"{counts['sending']} message(s) in an unknown state"
    status = "paused" if pause_reason else "done"
    stamp = now()
    with transaction(db):
        db.execute(
            "UPDATE campaigns SET status = ?, note = ?, updated_at = ?,"
            " finished_at = CASE WHEN ? = 'done' THEN ? ELSE NULL END WHERE id = ?",
            (status, pause_reason, stamp, status, stamp, campaign.id),
        )
    return Summary(counts, elapsed, handled, status, pause_reason, tally)
