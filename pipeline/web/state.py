"""What the routes of the subscriber web service share: the configuration, the secret, the state
database connections, the mail transport, the SNS verifier, the sign-up limits and the pages.

It lives in a module of its own, below the route modules and :mod:`pipeline.web.app` (which builds
it), so every route module can name its type without importing the app.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from pipeline.config import Config
from pipeline.db import open_db
from pipeline.events.sns import SnsVerifier
from pipeline.send.message import list_id
from pipeline.send.transports import Transport, open_transport
from pipeline.web.pages import Pages
from pipeline.web.security import DAY, HOUR, SlidingWindow

# Webhook requests handled at once (see Service.webhook_threads). SNS delivers a few at a time; the
# certificate fetches among them are capped lower still (pipeline.events.sns.MAX_CONCURRENT_FETCHES).
WEBHOOK_THREADS = 8


class Service:
    """The shared state of one running service (``app.state.service``). Thread-safe: routes run their
    database and mail work in the thread pool."""

    def __init__(
        self,
        config: Config,
        secret: bytes,
        previous_secret: bytes | None,
        transport: Transport | None,
        verifier: SnsVerifier | None,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.secret = secret
        """Signs every link the service makes."""
        self.previous_secret = previous_secret
        """While NEWSLETTER_SECRET is being rotated, the one before it: links it signed still work."""
        self.list_id = list_id(config)
        """Every token is bound to the list: a link from another list's mail does nothing here."""
        self.clock = clock
        self.pages = Pages(config)
        self._transport = transport
        self._transport_lock = threading.Lock()
        self._verifier = verifier
        self._verifier_lock = threading.Lock()
        # The webhook's threads, apart from the pool the pages run in: anyone can POST it a forged
        # notification whose certificate takes seconds to fetch, and those waits must not hold up a
        # subscriber's unsubscribe page. Requests beyond them wait their turn without a thread.
        self.webhook_threads = ThreadPoolExecutor(WEBHOOK_THREADS, thread_name_prefix="webhook")
        # One connection per purpose, each used by one thread at a time, under its lock. The webhook
        # holds its lock only for database work, never while it waits on the network (SNS certificates).
        self.db = open_db(config.paths.state)
        self.db_lock = threading.Lock()
        self._events_db: sqlite3.Connection | None = None
        self.events_lock = threading.Lock()
        self.per_ip = SlidingWindow(config.serve.signups_per_ip_per_hour, HOUR, clock)
        self.per_address = SlidingWindow(config.serve.signups_per_address_per_day, DAY, clock)
        # Sign-ups whose background work is over (recorded, mailed or failed): tests wait on it.
        self.signups_handled = 0
        self._counter_lock = threading.Lock()

    def close(self) -> None:
        # Not waiting: a thread may be fetching a certificate for seconds; its database work is
        # done under events_lock, which closing takes too.
        self.webhook_threads.shutdown(wait=False, cancel_futures=True)
        with self.db_lock:
            self.db.close()
        with self.events_lock:
            if self._events_db is not None:
                self._events_db.close()
        with self._transport_lock:
            if self._transport is not None:
                self._transport.close()

    def signup_handled(self) -> None:
        with self._counter_lock:
            self.signups_handled += 1

    def transport(self) -> Transport:
        # Opened on first use: an SMTP server that is down must not stop the unsubscribe pages.
        with self._transport_lock:
            if self._transport is None:
                self._transport = open_transport(self.config)
            return self._transport

    def drop_transport(self) -> None:
        with self._transport_lock:
            if self._transport is not None:
                self._transport.close()
                self._transport = None

    def events_db(self) -> sqlite3.Connection:
        with self.events_lock:
            if self._events_db is None:
                self._events_db = open_db(self.config.paths.state)
            return self._events_db

    def verifier(self) -> SnsVerifier:
        with self._verifier_lock:
            if self._verifier is None:
                self._verifier = SnsVerifier(topic_arns=self.config.events.topic_arns)
            return self._verifier
