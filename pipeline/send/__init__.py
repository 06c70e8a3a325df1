"""The send stage: one personalised message per subscriber, exactly once, at the account's rate.

The ledger (``ledger``) is the only record of who was sent what; the runner (``runner``) claims,
hands over and records in short transactions; ``fanout`` runs several sender processes; each
transport lives in its own module under ``transports``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline._lazy import lazy_exports

if TYPE_CHECKING:
    from pipeline.send.control import campaign_lock, is_locked
    from pipeline.send.delivery import FailureBreaker, Outcome, SendSettings, deliver_with_retry
    from pipeline.send.fanout import run_in_processes, sender_processes
    from pipeline.send.ledger import (
        Campaign,
        Ledger,
        Plan,
        Preparation,
        campaign_state,
        content_hash,
        find_campaign,
        plan_campaign,
        prepare_campaign,
    )
    from pipeline.send.message import MessageTemplate, Recipient, build_message, message_bytes, recipient_for
    from pipeline.send.ratelimit import RateLimiter
    from pipeline.send.runner import CampaignRunner, Reporter, Summary
    from pipeline.send.transports import Envelope, Transport, open_transport

__all__ = [
    "Campaign",
    "CampaignRunner",
    "Envelope",
    "FailureBreaker",
    "Ledger",
    "MessageTemplate",
    "Outcome",
    "Plan",
    "Preparation",
    "RateLimiter",
    "Recipient",
    "Reporter",
    "SendSettings",
    "Summary",
    "Transport",
    "build_message",
    "campaign_lock",
    "campaign_state",
    "content_hash",
    "deliver_with_retry",
    "find_campaign",
    "is_locked",
    "message_bytes",
    "open_transport",
    "plan_campaign",
    "prepare_campaign",
    "recipient_for",
    "run_in_processes",
    "sender_processes",
]
__getattr__, __dir__ = lazy_exports(
    __name__,
    __all__,
    ("ledger", "runner", "delivery", "control", "fanout", "message", "ratelimit", "transports"),
)
