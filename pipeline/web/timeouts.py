"""Deadlines on reading a request, which uvicorn lacks: a slow client is disconnected.

uvicorn closes a connection left idle after a response (``timeout_keep_alive``), refuses a request
head still incomplete past 16 KB (``h11_max_incomplete_event_size``) and answers 503 past a number of
connections (``limit_concurrency``); ``serve`` sets all three. But it sets no time limit on reading
a request: a client that connects and sends nothing, or trickles its headers or its body a byte at
a time, holds its connection (and a place under ``limit_concurrency``) for as long as it likes, so
a few hundred of them shut everyone else out. :class:`DeadlineProtocol` adds the two deadlines:

* the request line and headers must be complete ``header_timeout`` seconds after the connection
  opens (on a kept-alive connection: after the next request's first byte; the wait for that byte
  is uvicorn's ``timeout_keep_alive``);
* the body must be complete ``body_timeout`` seconds after the headers.

A deadline is never pushed back by a byte arriving: trickling buys nothing. A client past it is
disconnected without an answer (it is not reading one anyway); the application, if it was waiting
for the body, sees the client gone (Starlette's ``ClientDisconnect``). The time the application
takes to answer is not limited here.
"""

from __future__ import annotations

import asyncio
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)


class DeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each phase of reading a request (see the module)."""

    header_timeout = 10.0
    body_timeout = 10.0

    _phase: str | None = None
    """"headers" or "body" while a request is being read (a deadline is armed); None otherwise."""
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._watch()  # from now on: a connection that sends nothing is a slow client too

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.trailing_data[0]:  # part of a pipelined request was waiting: its clock runs
            self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _watch(self) -> None:
        """Arm or disarm the deadline as the request being read moves from one phase to the next."""
        state = self.conn.their_state
        phase = "headers" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None
        if phase == self._phase or self.transport.is_closing():
            return
        self._disarm()
        self._phase = phase
        if phase is not None:
            seconds = self.header_timeout if phase == "headers" else self.body_timeout
            self._deadline = self.loop.call_later(seconds, self._too_slow, phase, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self, phase: str, seconds: float) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        where = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        log.info("disconnected %s: request %s not complete within %g s", where, phase, seconds)
        self.transport.close()


def deadline_protocol(header_timeout: float, body_timeout: float) -> type[DeadlineProtocol]:
    """A :class:`DeadlineProtocol` with these deadlines, as uvicorn takes it (a class it instantiates)."""

    class Protocol(DeadlineProtocol):
        pass

    Protocol.header_timeout, Protocol.body_timeout = header_timeout, body_timeout
    return Protocol
