"""Delivering one message: retries with backoff, what came of it, and when failures mean "pause".

Neither touches the ledger: the campaign loop records each :class:`Outcome` there.
"""

from __future__ import annotations

import random
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
