"""Bounces and complaints from Amazon SES, beside the stages: SNS notifications verified
(``sns``), applied to the subscriber list once each (``apply``), from the webhook or an SQS queue (``sqs``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline._lazy import lazy_exports

if TYPE_CHECKING:
    from pipeline.events.apply import Applied, apply_notification, handle_sns
    from pipeline.events.sns import SnsVerifier, canonical_string, parse_message, verify
    from pipeline.events.sqs import PullReport, pull

__all__ = [
    "Applied",
    "PullReport",
    "SnsVerifier",
    "apply_notification",
    "canonical_string",
    "handle_sns",
    "parse_message",
    "pull",
    "verify",
]
__getattr__, __dir__ = lazy_exports(__name__, __all__, ("sns", "apply", "sqs"))
