"""What every transport shares: the envelope it is handed and the interface it implements.

A transport has one job (as an httpx transport has ``handle_request``): ``send`` hands over one
message's exact bytes and returns the provider's message id. Every provider error is raised as one
of the TransportError tree (TemporaryFailure / Rejected / DeliveryUnknown / TransportUnavailable),
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
    """The one method every transport implements, plus three optional ones with safe defaults.

    Backends subclass it to inherit the defaults; anything with the same methods (a test's fake)
    is a Transport too, without subclassing.
    """

    name: str

    def send(self, envelope: Envelope) -> str:
        """Hand the message over; return the provider's message id."""
        ...

    def max_rate(self) -> float | None:
        """The service's own sending limit per second, when it tells."""
        return None

    def was_delivered(self, key: str) -> bool | None:
        """After a crash: whether the message with ``key`` was taken; None when the service cannot tell."""
        return None

    def close(self) -> None:
        """Release connections; the transport is not used afterwards."""
        return None  # nothing to release; explicit, so type checkers do not take close as abstract
