"""Delivering one message: retries with backoff, what came of it, and when the campaign must pause:
failures in a row (:class:`FailureBreaker`), or too many bounces and complaints (:class:`ReputationBreaker`).

None of it touches the ledger: the campaign loop records each :class:`Outcome` there, and hands the
reputation breaker a function that reads the campaign's counts.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pipeline.errors import DeliveryUnknown, Rejected, TemporaryFailure, TransportError, TransportUnavailable
from pipeline.send.transports import Envelope, Transport

Kind = Literal["sent", "failed", "retry", "fatal", "skipped", "unknown"]
"""sent; failed for good (rejected); retry in a later run (temporary); fatal (the whole campaign must
pause: the account or the transport is unusable); skipped; unknown (it may have arrived)."""


@dataclass(frozen=True)
class Outcome:
    subscriber_id: int
    kind: Kind
    attempts: int
    provider_id: str = ""
    error: str = ""


@dataclass
class SendSettings:
    concurrency: int
    max_rate: float | None
    max_attempts: int
    max_consecutive_failures: int
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    reputation: ReputationLimits | None = None
    """None: no reputation breaker (``send --ignore-breaker``)."""
    resume_command: str = ""
    """What the editor runs to resume this campaign; "" for an issue's (``newsletter send N``)."""


def deliver_with_retry(
    transport: Transport,
    envelope: Envelope,
    settings: SendSettings,
    *,
    subscriber_id: int,
    attempts: int,
    sleep: Callable[[float], bool],
) -> Outcome:
    """Hand ``envelope`` to ``transport``, retrying temporary failures up to ``settings.max_attempts``
    times with full-jitter exponential backoff. ``attempts`` is how many earlier runs made (the
    outcome counts on from there); ``sleep`` waits between tries and returns True if the campaign
    is stopping, which leaves the message for the next run."""
    for attempt in range(1, settings.max_attempts + 1):
        made = attempts + attempt
        try:
            provider_id = transport.send(envelope)
            return Outcome(subscriber_id, "sent", made, provider_id=provider_id)
        except Rejected as error:
            return Outcome(subscriber_id, "failed", made, error=str(error))
        except DeliveryUnknown as error:  # it may have arrived: retrying could send it twice
            return Outcome(subscriber_id, "unknown", made, error=str(error))
        except TransportUnavailable as error:
            return Outcome(subscriber_id, "fatal", made, error=str(error))
        except TemporaryFailure as error:
            if attempt == settings.max_attempts:
                return Outcome(subscriber_id, "retry", made, error=str(error))
            delay = random.uniform(0, min(settings.backoff_cap, settings.backoff_base * 2 ** (attempt - 1)))
            if sleep(delay):  # stopping: leave it queued for the next run
                return Outcome(subscriber_id, "retry", made, error=str(error))
        except TransportError as error:
            return Outcome(subscriber_id, "fatal", made, error=str(error))
    raise AssertionError("unreachable")


class FailureBreaker:
    """Trips after ``limit`` failed deliveries in a row (failed, to retry, or of unknown fate): by then
    the fault is likelier the account's or the transport's than each recipient's. A sent one resets it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_a_row = 0
        self.last_error = ""

    def record(self, outcome: Outcome) -> None:
        if outcome.error:
            self.last_error = outcome.error
        if outcome.kind == "sent":
            self.in_a_row = 0
        elif outcome.kind in ("failed", "retry", "unknown"):
            self.in_a_row += 1

    @property
    def reason(self) -> str:
        """Why the campaign must pause, or "" while it need not."""
        if self.in_a_row < self.limit:
            return ""
        return f"{self.in_a_row} failures in a row (last: {self.last_error})"


@dataclass(frozen=True)
class Reputation:
    """A campaign's messages sent, and the hard bounces and complaints traced back to them so far."""

    sent: int
    bounces: int
    complaints: int

    def percent(self, count: int) -> float:
        return 100.0 * count / self.sent if self.sent else 0.0


@dataclass(frozen=True)
class ReputationLimits:
    """``[send] max_bounce_rate``, ``max_complaint_rate`` (percentages) and ``breaker_min_sent``."""

    max_bounce_rate: float
    max_complaint_rate: float
    min_sent: int

    def exceeded(self, reputation: Reputation) -> str:
        """Which rate is over its limit, with both numbers; "" while none is or the sample is too small."""
        if reputation.sent < self.min_sent:
            return ""
        for what, count, limit, key in (
            ("hard-bounce", reputation.bounces, self.max_bounce_rate, "max_bounce_rate"),
            ("complaint", reputation.complaints, self.max_complaint_rate, "max_complaint_rate"),
        ):
            rate = reputation.percent(count)
            if rate > limit:
                return (
                    f"{what} rate {rate:.2f} % ({count:,} of {reputation.sent:,} sent) is over "
                    f"[send] {key} {limit:g} %"
                )
        return ""

    def sent_worth_counting(self, bounces: int, complaints: int) -> int:
        """How many sent messages are worth counting: from this many on, neither rate can be over its
        limit (and the minimum sample is reached), so a count may stop there. On a large campaign that
        keeps the breaker's reading to a fraction of the ledger."""
        most = self.min_sent
        for count, limit in ((bounces, self.max_bounce_rate), (complaints, self.max_complaint_rate)):
            if count and limit:  # a limit of 0 with any count: over it once the sample is reached
                most = max(most, math.ceil(100 * count / limit) + 1)
        return most


REPUTATION_INTERVAL = 2.0
"""Seconds between two readings of a campaign's counts: bounces arrive seconds to minutes after the
send, and counting a million-row campaign's sent messages costs tens of milliseconds."""


class ReputationBreaker:
    """Trips when the bounces and complaints SES reported for this campaign (the webhook or
    ``events pull`` store them as they come) pass their limits, so a bad list or a spam-flagged issue
    stops before it costs the account its reputation. Reads the counts through ``read`` (which may stop
    counting sent messages at :meth:`ReputationLimits.sent_worth_counting`) at most every ``interval``
    seconds, the first time at once: a resumed campaign over its limits sends nothing."""

    def __init__(
        self,
        limits: ReputationLimits | None,
        read: Callable[[ReputationLimits], Reputation],
        issue: int,
        *,
        resume: str = "",
        interval: float = REPUTATION_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits, self._read, self.issue = limits, read, issue
        self.resume = resume or f"newsletter send {issue}"
        self.interval, self._clock = interval, clock
        self._next = -float("inf")
        self.reason = ""
        """Why the campaign must pause, or "" while it need not."""

    def check(self) -> str:
        """Read the counts if it is time to; returns :attr:`reason`."""
        if self.limits is None or self.reason or self._clock() < self._next:
            return self.reason
        self._next = self._clock() + self.interval
        exceeded = self.limits.exceeded(self._read(self.limits))
        if exceeded:
            self.reason = (
                f"{exceeded}: see who bounced or complained (`newsletter subscribers list --status bounced`,"
                f" `--status complained`) before going on; `{self.resume} --ignore-breaker`"
                " resumes anyway"
            )
        return self.reason
