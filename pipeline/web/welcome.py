"""The welcome mail after a confirmation: queued before the "you are subscribed" page is answered,
sent after it (a background task), so a slow or failing mail service never holds up or breaks the page.

What is sent and the record that keeps it to once per subscriber are :mod:`pipeline.send.welcome`'s.
"""

from __future__ import annotations

import logging
import sqlite3

from starlette.background import BackgroundTask
from starlette.responses import Response

from pipeline.errors import NewsletterError
from pipeline.send.welcome import queue_welcome, send_pending_welcomes, welcome_path
from pipeline.web.state import Service

log = logging.getLogger(__name__)


def welcome_after(service: Service, outcome: str, subscriber_id: int, page: Response) -> Response:
    """``page``, the answer to a confirmation; when it confirmed a subscriber and a welcome.md exists,
    with their welcome queued and a background task to send it."""
    if outcome != "confirmed" or not welcome_path(service.config).is_file():
        return page
    try:
        with service.db_lock:
            queue_welcome(service.db, subscriber_id, service.clock())
    except (NewsletterError, sqlite3.Error) as error:
        log.error("welcome mail for s%d not queued: %s", subscriber_id, error)
        return page
    page.background = BackgroundTask(send_welcomes, service)
    return page


def send_welcomes(service: Service) -> None:
    """Send the pending welcomes: this one, and any a failed transport left for later."""
    try:
        report = send_pending_welcomes(
            service.config,
            service.db,
            service.transport,
            service.secret,
            lock=service.db_lock,
            clock=service.clock,
        )
    except (NewsletterError, sqlite3.Error) as error:
        # welcome.md was broken since `serve` started, or the database is busy: the welcomes stay pending.
        log.error("welcome mail not sent: %s", error)
        return
    if report.unavailable is not None:
        service.drop_transport()  # reopened for the next mail: the server may be back by then
    for address in report.sent:
        log.info("welcome mail sent to %s", address)
