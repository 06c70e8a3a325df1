"""Send one issue to every active subscriber, exactly once, resumably: the campaign loop.

Each round, the loop takes in what the workers delivered, records it and claims the next
recipients in one ledger transaction, and hands those to the workers. What makes it exactly
once is the ledger's (:mod:`pipeline.send.ledger`): a row is committed ``sending`` before its
message is handed to the transport.
"""

from __future__ import annotations

import queue
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from pipeline.config import Config
from pipeline.errors import MessageError
from pipeline.send.control import on_stop_signals
from pipeline.send.delivery import (
    FailureBreaker,
    Outcome,
    ReputationBreaker,
    SendSettings,
    deliver_with_retry,
)
from pipeline.send.ledger import Campaign, Candidate, Ledger, delivery_key
from pipeline.send.message import MessageTemplate, recipient_for, sender_address, sender_domain
from pipeline.send.ratelimit import RateLimiter, Unlimited
from pipeline.send.transports import Envelope, Transport

WAKE_INTERVAL = 0.25
"""The longest the loop waits for outcomes before it looks at the stop flag again."""


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

    def __init__(self, count: int, deliver: Callable[[Candidate], Outcome]) -> None:
        self._jobs: queue.SimpleQueue[Candidate | None] = queue.SimpleQueue()
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
                outcome = self._deliver(job)
            except BaseException as error:
                outcome = Outcome(
                    job.subscriber_id, "unknown", job.attempts, error=f"internal error: {error!r}"
                )
            self._done.put(outcome)

    def submit(self, job: Candidate) -> None:
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


@dataclass
class _Run:
    """Where one ``send_all`` stands; kept in one place so an interrupt can record all of it."""

    breaker: FailureBreaker
    reputation: ReputationBreaker
    in_flight: set[int] = field(default_factory=set)
    """Subscriber ids handed to a worker, outcome not back yet."""
    arrived: list[Outcome] = field(default_factory=list)
    """Back from the workers, not taken in yet."""
    finished: list[Outcome] = field(default_factory=list)
    """Taken in, not recorded in the ledger yet."""
    not_handed_over: list[int] = field(default_factory=list)
    """Claimed (``sending``) but not handed to a worker yet: certainly not sent."""
    tally: dict[str, int] = field(default_factory=dict)
    cursor: int = 0
    """The last subscriber id read from the queue: a row requeued by this run waits for the next."""
    exhausted: bool = False
    pause_reason: str = ""


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db, self.config, self.campaign = db, config, campaign
        self.ledger = Ledger(db, campaign)
        self.partition = partition or (0, 1)
        """(k, n): send only to subscribers whose id % n == k (one of n sender processes)."""
        self.template, self.transport, self.secret = template, transport, secret
        self.settings = settings
        self.reporter = reporter or SilentReporter()
        self.stopping = threading.Event()
        self._sleep = sleep or self.stopping.wait
        self._clock = clock
        """When the reputation breaker reads the campaign's counts again (monotonic seconds)."""
        self._envelope_sender = sender_address(config)
        self._domain = sender_domain(config)

    interrupted = False
    """Set by the stop signal's handler, and only there: see :meth:`stop_on_signals`."""

    def run(self) -> Summary:
        restore_signals = self.stop_on_signals((signal.SIGINT, signal.SIGTERM))
        try:
            pause_reason, elapsed, tally = self.send_all()
            return close_campaign(self.ledger, pause_reason, elapsed, tally)
        finally:
            restore_signals()

    def send_all(self) -> tuple[str, float, dict[str, int]]:
        """Send to every queued recipient (of this runner's partition); returns why it stopped early
        (or ""), the time taken and how many outcomes of each kind. The campaign row is not touched."""
        limiter = RateLimiter(self.settings.max_rate) if self.settings.max_rate else Unlimited()
        run = _Run(
            FailureBreaker(self.settings.max_consecutive_failures),
            ReputationBreaker(
                self.settings.reputation,
                self.ledger.reputation,
                self.campaign.issue,
                resume=self.settings.resume_command,
                clock=self._clock,
            ),
        )
        self.reporter.start(*self.ledger.progress())
        started = time.monotonic()
        pool = _Workers(self.settings.concurrency, self._deliver)
        try:
            while True:
                self._take_in(run, pool.ready())
                claimed = self._record_and_claim(run, limiter)
                self._hand_over(run, claimed, pool)
                if not run.in_flight and (run.exhausted or self._stop_requested()):
                    break
                self._wait(run, limiter, pool)
        except KeyboardInterrupt:
            # Only reached on a second Ctrl-C, or one that landed outside the loop's checks.
            self._stop_at_once(run, pool)
        finally:
            pool.shutdown()
            self.reporter.finish()
        if self.interrupted and not run.pause_reason:  # a stop that landed after the loop's last check
            run.pause_reason = "interrupted"
        return run.pause_reason, time.monotonic() - started, run.tally

    def _stop_requested(self) -> bool:
        return self.stopping.is_set() or self.interrupted

    def _take_in(self, run: _Run, outcomes: list[Outcome]) -> None:
        """Count what came back; decide whether the campaign must pause (the first reason stands)."""
        run.arrived.extend(outcomes)
        for outcome in run.arrived:
            run.in_flight.discard(outcome.subscriber_id)
            run.finished.append(outcome)
            run.tally[outcome.kind] = run.tally.get(outcome.kind, 0) + 1
            run.breaker.record(outcome)
            if outcome.kind == "fatal" and not run.pause_reason:
                run.pause_reason = outcome.error
        run.arrived = []
        if not run.pause_reason:
            run.pause_reason = (
                run.breaker.reason or run.reputation.check() or ("interrupted" if self.interrupted else "")
            )
        if run.pause_reason:
            self.stopping.set()

    def _record_and_claim(self, run: _Run, limiter: RateLimiter | Unlimited) -> list[Candidate]:
        """Read as many queued rows as there are free workers and tokens; then record what finished
        and claim those, in one transaction (one fsync a round). Returns the claimed ones."""
        candidates: list[Candidate] = []
        free = self.settings.concurrency - len(run.in_flight)
        if not self._stop_requested() and not run.exhausted and free > 0:
            wanted = limiter.take(free)
            if wanted:
                candidates = self.ledger.queued(after=run.cursor, limit=wanted, partition=self.partition)
                run.exhausted = len(candidates) < wanted
                if candidates:
                    run.cursor = candidates[-1].subscriber_id
        if not run.finished and not candidates:
            return []
        claimed = self.ledger.record_and_claim(run.finished, candidates)
        run.not_handed_over = [candidate.subscriber_id for candidate in claimed]
        recorded, run.finished = run.finished, []
        for outcome in recorded:
            self.reporter.advance(outcome)
        return claimed

    def _hand_over(self, run: _Run, claimed: list[Candidate], pool: _Workers) -> None:
        for candidate in claimed:
            # Off the list before the hand-over: an interrupt in between leaves the row "sending"
            # (unknown, never resent blindly), not "queued" (possibly sent twice).
            run.not_handed_over.remove(candidate.subscriber_id)
            pool.submit(candidate)
            run.in_flight.add(candidate.subscriber_id)

    def _wait(self, run: _Run, limiter: RateLimiter | Unlimited, pool: _Workers) -> None:
        """Until an outcome arrives or the rate limit lets the next message go (at most WAKE_INTERVAL)."""
        free = self.settings.concurrency - len(run.in_flight)
        timeout = limiter.delay() if not run.exhausted and free > 0 else None
        if run.in_flight:
            run.arrived.extend(
                pool.wait(min(timeout, WAKE_INTERVAL) if timeout is not None else WAKE_INTERVAL)
            )
        elif timeout:
            time.sleep(timeout)

    def _stop_at_once(self, run: _Run, pool: _Workers) -> None:
        """After a KeyboardInterrupt: record everything whose fate is known, and nothing more."""
        self.stopping.set()
        run.pause_reason = run.pause_reason or "interrupted"
        # Claimed but never handed to the transport: certainly not sent.
        finished = run.finished + [
            Outcome(sid, "retry", 0, error="interrupted before sending") for sid in run.not_handed_over
        ]
        finished.extend(run.arrived)
        run.in_flight.difference_update(outcome.subscriber_id for outcome in run.arrived)
        while run.in_flight:
            # Let the messages already handed over finish, so their results are recorded, not unknown.
            outcomes = pool.wait(30.0)
            if not outcomes:
                break  # an outcome lost to the interrupt itself: its row stays "sending" (unknown)
            run.in_flight.difference_update(outcome.subscriber_id for outcome in outcomes)
            finished.extend(outcomes)
        self.ledger.record_and_claim(finished)

    def stop_on_signals(self, signals: tuple[signal.Signals, ...]) -> Callable[[], None]:
        """First Ctrl-C (or SIGTERM): finish what is in flight, record it, stop. The second one: stop now."""

        def first() -> None:
            # Only a flag: taking a lock here (Event.set) deadlocks if the signal lands while the
            # main thread holds that lock. The loop turns the flag into a stop within one round.
            self.interrupted = True

        return on_stop_signals(signals, first)

    def _deliver(self, candidate: Candidate) -> Outcome:
        """Build ``candidate``'s own message and deliver it (on a worker thread)."""
        key = delivery_key(self.campaign, candidate.subscriber_id)
        try:
            message_id = f"<{key}.{self.campaign.content_hash[:10]}@{self._domain}>"
            recipient = recipient_for(
                self.config, self.secret, candidate.subscriber_id, candidate.email, candidate.name, message_id
            )
            data = self.template.build(recipient)
        except MessageError as error:  # one bad row must not stop the campaign
            return Outcome(candidate.subscriber_id, "failed", candidate.attempts, error=str(error))
        return deliver_with_retry(
            self.transport,
            Envelope(self._envelope_sender, recipient.email, data, key),
            self.settings,
            subscriber_id=candidate.subscriber_id,
            attempts=candidate.attempts,
            sleep=self._sleep,
        )


def close_campaign(ledger: Ledger, pause_reason: str, elapsed: float, tally: dict[str, int]) -> Summary:
    """Record whether the campaign is done or paused (and why); sum up the run."""
    closing = ledger.close(pause_reason)
    return Summary(closing.counts, elapsed, sum(tally.values()), closing.status, closing.reason, tally)
