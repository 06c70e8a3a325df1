"""Test doubles for the pipeline's interfaces that any test may use."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

from pipeline.send.transports import Envelope


def accept(envelope: Envelope) -> str:
    """A send that always succeeds; the provider id names the recipient."""
    return f"id-{envelope.recipient}"


class FakeTransport:
    """A transport (the ``Transport`` protocol) whose ``send`` is a function the test chooses.

    ``send`` returns a provider id or raises a pipeline transport error, as a real service would.
    What was taken is kept in ``received`` (only envelopes ``send`` returned for, in order).
    ``delivered`` is what ``was_delivered`` answers: None for a service that cannot say afterwards
    what it took (like SES, SMTP), True/False for one that can (like the maildir).
    """

    def __init__(
        self,
        send: Callable[[Envelope], str] = accept,
        name: str = "fake",
        delivered: bool | None = None,
        rate: float | None = None,
    ) -> None:
        self._send = send
        self.name = name
        self.delivered = delivered
        self.rate = rate
        self.received: list[Envelope] = []
        self._lock = threading.Lock()  # the campaign sends from several threads

    def send(self, envelope: Envelope) -> str:
        provider_id = self._send(envelope)
        with self._lock:
            self.received.append(envelope)
        return provider_id

    def max_rate(self) -> float | None:
        return self.rate

    def was_delivered(self, key: str) -> bool | None:
        return self.delivered

    def close(self) -> None:
        pass

    def recipients(self) -> Counter[str]:
        """How many messages each address was handed."""
        with self._lock:
            return Counter(envelope.recipient for envelope in self.received)


class ManualClock:
    """A clock that stands still until the test moves ``now``."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class OffsetClock:
    """Real time plus an offset the test moves forward (for code that also compares with time.time())."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds
