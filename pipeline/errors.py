"""The pipeline's error tree: every user-facing failure is a NewsletterError.

The CLI prints ``str(error)`` on one line and exits non-zero; anything that is
not a NewsletterError is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class NewsletterError(Exception):
    """Base of every error the editor can cause and fix."""

    exit_code = 2


class ConfigError(NewsletterError):
    """The configuration file is missing, unreadable or has a bad key."""

    def __init__(self, path: Path | str, message: str) -> None:
        super().__init__(f"{path}: {message}")


class SourceError(NewsletterError):
    """An issue source file is missing or malformed."""

    def __init__(self, path: Path | str, message: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {message}")
        self.path = Path(path)
        self.line = line


class RenderError(NewsletterError):
    """A template or the MJML compiler failed."""


class PreviewError(NewsletterError):
    """The preview server cannot start (e.g. the port is taken)."""


class CheckFailed(NewsletterError):
    """``check`` found problems that must be fixed before sending."""

    exit_code = 1


class TransportError(NewsletterError):
    """Handing a message to the mail service failed. Subclasses say what to do about it."""


class TemporaryFailure(TransportError):
    """Throttling, a 4xx, a 5xx from the service, a network error: retry later."""


class Rejected(TransportError):
    """The service refused this one recipient or message for good: record it, go on."""


class DeliveryUnknown(TransportError):
    """The message was handed over but the answer was lost: it may have been delivered. Never retried."""


class TransportUnavailable(TransportError):
    """Nothing can be sent (no credentials, account paused, server unreachable): stop the campaign."""


class SubscriberError(NewsletterError):
    """A subscriber operation the editor asked for cannot be done (bad address, unknown subscriber)."""


class MissingSecret(NewsletterError):
    """NEWSLETTER_SECRET is missing or too short for a transport that sends real mail."""


class CampaignError(NewsletterError):
    """A campaign cannot start or resume as asked (content changed, another sender running)."""


class CampaignPaused(NewsletterError):
    """The campaign stopped before everyone was handled; running `send` again resumes it."""

    exit_code = 1


class NothingToSend(NewsletterError):
    """Not a failure: the campaign is already complete."""

    exit_code = 0


class ArchiveError(NewsletterError):
    """The archive folder holds something unreadable."""


class MirrorError(NewsletterError):
    """The archive could not be pushed to its git repository; nothing was lost."""


class ErrataError(NewsletterError):
    """errata.yaml or an `errata add` request is malformed."""


class ServeError(NewsletterError):
    """The subscriber web service cannot start (port taken, bad settings)."""


class NotificationRejected(NewsletterError):
    """An SNS notification is unsigned, tampered, from an unexpected host or topic, or malformed."""

    exit_code = 1


class EventsError(NewsletterError):
    """Reading SES events from the SQS queue failed (no queue configured, queue unreachable)."""


class NotificationDeferred(NotificationRejected):
    """An SNS notification cannot be verified or applied right now (its certificate host is unreachable,
    the database is busy): not the sender's fault, so answer 503 (SNS retries) or leave it in the queue."""
