"""What every transport shares: the envelope it is handed and the interface it implements.

A transport has one job: hand over one message's exact bytes. Every provider error is translated
into the TransportError tree (TemporaryFailure / Rejected / TransportUnavailable / DeliveryUnknown),
so the campaign decides what to do without knowing which service is behind it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Envelope:
    sender: str
    recipient: str
    data: bytes
    key: str
    """Unique per campaign and recipient: lets a transport tell whether it already took this one."""


class Transport(Protocol):
    name: str

    def send(self, envelope: Envelope) -> str:
        """Hand the message over; return the provider's message id."""
        ...

    def max_rate(self) -> float | None:
        """The service's own sending limit per second, when it tells."""
        ...

    def was_delivered(self, key: str) -> bool | None:
        """After a crash: whether the message with ``key`` was taken; None when the service cannot tell."""
        ...

    def close(self) -> None: ...
