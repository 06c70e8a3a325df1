"""The discard transport: sends nothing, for ``--dry-run`` and benchmarks."""

from __future__ import annotations

import itertools

from pipeline.send.transports.base import Envelope, Transport


class DiscardTransport(Transport):
    """Sends nothing: ``--dry-run`` and benchmarks go through the same code path with it."""

    name = "dry-run"

    def __init__(self) -> None:
        self._counter = itertools.count(1)  # next() on a count is atomic under the GIL; `+= 1` is not

    def send(self, envelope: Envelope) -> str:
        return f"dry-run-{next(self._counter)}"

    def was_delivered(self, key: str) -> bool:
        return False  # it never takes anything
