"""One copy of a message to an address the editor gives (``--to``), outside any campaign.

The copy is what a subscriber with that address gets (their name and unsubscribe link when they are
one), built by the campaign's :class:`MessageTemplate`; no ledger records it.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from email.utils import make_msgid
from typing import TYPE_CHECKING

from pipeline.audience.addresses import check_address
from pipeline.audience.subscribers import find
from pipeline.config import Config
from pipeline.errors import MessageError
from pipeline.send.message import MessageTemplate, recipient_for, sender_address, sender_domain
from pipeline.send.transports import Envelope

if TYPE_CHECKING:
    from pipeline.issue.render import Rendered


def envelope_to(
    config: Config, db: sqlite3.Connection, secret: bytes, rendered: Rendered, to: str, key_prefix: str
) -> Envelope:
    """The envelope of one copy of ``rendered`` to ``to``; its key is ``key_prefix`` and the time."""
    try:
        address = check_address(to)
    except ValueError as error:
        raise MessageError(f"--to {to!r}: {error}") from None
    row = find(db, address)
    subscriber_id, name = (row["id"], row["name"]) if row else (0, "")
    try:
        recipient = recipient_for(
            config, secret, subscriber_id, address, name, make_msgid(domain=sender_domain(config))
        )
    except MessageError as error:
        raise MessageError(f"--to {error}") from None
    data = MessageTemplate(config, rendered).build(recipient)
    key = f"{key_prefix}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S%f}"
    return Envelope(sender_address(config), recipient.email, data, key)
