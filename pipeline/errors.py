"""The pipeline's error tree: every failure the editor (or a subscriber, or the mail service) can cause.

The CLI prints ``str(error)`` on one line and exits with the class's ``exit_code``; anything that is
not a :class:`NewsletterError` is a bug and keeps its traceback. Success is never an exception.

    NewsletterError                 exit 2: the editor can fix it; nothing was half-done
    ├── ConfigError                 newsletter.toml or the environment (a key, a value, a secret)
    │   └── MissingSecret           NEWSLETTER_SECRET missing or too short for a real transport
    ├── SourceError                 an issue file (with its path and line)
    ├── ErrataError                 errata.yaml or an ``errata add`` request
    ├── RenderError                 a template or the MJML compiler failed
    ├── CheckFailed                 exit 1: ``check`` found what would break the issue in an inbox
    ├── StateError                  the state database cannot be opened or written (locked, read-only, full)
    ├── SubscriberError             a subscriber operation asked for cannot be done (bad address, unknown)
    ├── MessageError                a message cannot be built (a header with a line break, a bad address)
    ├── CampaignError               a campaign cannot start or resume as asked (content changed, locked)
    │   └── NotConfirmed            the editor did not confirm the send: nothing was changed
    ├── CampaignPaused              exit 1: stopped before everyone was handled; ``send`` resumes it
    ├── TransportError              handing a message to the mail service failed (fields below)
    │   ├── TemporaryFailure        throttling, 4xx, 5xx, network: retry this message later
    │   ├── Rejected                this recipient or message is refused for good: record it, go on
    │   ├── DeliveryUnknown         handed over, answer lost: it may have arrived; never retried
    │   └── TransportUnavailable    nothing can be sent (credentials, account paused): stop the campaign
    ├── ArchiveError                the archive folder holds something unreadable
    │   └── MirrorError             the archive could not be pushed; nothing was lost
    ├── PreviewError                the preview server cannot start
    ├── ServeError                  the subscriber web service cannot start
    ├── QuickstartError             ``newsletter init`` cannot start a newsletter there as asked
    ├── EventsError                 the SQS queue of SES events cannot be read
    └── NotificationError           an SNS notification was not applied
        ├── NotificationRejected    exit 1: never valid (unsigned, tampered, foreign, malformed):
        │                           answer 400, delete it from the queue
        └── NotificationDeferred    cannot be checked or applied *now* (certificate host down, database
                                    busy): answer 503 so SNS retries, leave it in the queue

``NotificationRejected`` and ``NotificationDeferred`` are siblings on purpose: a handler that catches
one can never swallow the other, so a retryable message is never deleted by mistake.
"""

from __future__ import annotations

from pathlib import Path


class NewsletterError(Exception):
    """Base of every error the editor can cause and fix. Never raised itself: raise a subclass."""

    exit_code = 2


class ConfigError(NewsletterError):
    """The configuration file is missing, unreadable or has a bad key."""

    def __init__(self, path: Path | str, message: str) -> None:
        super().__init__(f"{path}: {message}")


class MissingSecret(ConfigError):
    """NEWSLETTER_SECRET is missing or too short for a transport that sends real mail."""

    def __init__(self, message: str) -> None:
        NewsletterError.__init__(self, message)


class SourceError(NewsletterError):
    """An issue source file is missing or malformed."""

    def __init__(
        self, path: Path | str, message: str, line: int | None = None, column: int | None = None
    ) -> None:
        where = f"{path}:{line}" if line else str(path)
        where += f":{column}" if line and column else ""
        super().__init__(f"{where}: {message}")
        self.path = Path(path)
        self.line = line


class ErrataError(NewsletterError):
    """errata.yaml or an `errata add` request is malformed."""


class RenderError(NewsletterError):
    """A template or the MJML compiler failed."""


class CheckFailed(NewsletterError):
    """``check`` found problems that must be fixed before sending."""

    exit_code = 1


class StateError(NewsletterError):
    """The state database cannot be opened or written (locked, read-only, disk full, too new)."""


class SubscriberError(NewsletterError):
    """A subscriber operation the editor asked for cannot be done (bad address, unknown subscriber)."""


class MessageError(NewsletterError):
    """A message cannot be built: a header value with a line break, an address that cannot be sent to."""


class CampaignError(NewsletterError):
    """A campaign cannot start or resume as asked (content changed, another sender running)."""


class NotConfirmed(CampaignError):
    """The editor declined the send, or could not be asked: nothing was changed."""


class CampaignPaused(NewsletterError):
    """The campaign stopped before everyone was handled; running `send` again resumes it."""

    exit_code = 1


class TransportError(NewsletterError):
    """Handing a message to the mail service failed. The subclass says what to do about it.

    Structured fields, for the ledger and for logs: ``recipient`` (when one message failed),
    ``code`` (the service's error code or SMTP reply code, as text), ``status`` (the HTTP status
    or SMTP reply code as a number). ``retryable`` says whether the same message may be tried again.
    """

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        recipient: str | None = None,
        code: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.recipient = recipient
        self.code = code
        self.status = status


class TemporaryFailure(TransportError):
    """Throttling, a 4xx, a 5xx from the service, a network error: retry later."""

    retryable = True


class Rejected(TransportError):
    """The service refused this one recipient or message for good: record it, go on."""


class DeliveryUnknown(TransportError):
    """The message was handed over but the answer was lost: it may have been delivered. Never retried."""


class TransportUnavailable(TransportError):
    """Nothing can be sent (no credentials, account paused, server unreachable): stop the campaign."""


class ArchiveError(NewsletterError):
    """The archive folder holds something unreadable."""


class MirrorError(ArchiveError):
    """The archive could not be pushed to its git repository; nothing was lost."""


class PreviewError(NewsletterError):
    """The preview server cannot start (e.g. the port is taken)."""


class ServeError(NewsletterError):
    """The subscriber web service cannot start (port taken, bad settings)."""


class QuickstartError(NewsletterError):
    """``newsletter init`` cannot start a newsletter as asked (a folder in use, a bad answer)."""


class EventsError(NewsletterError):
    """Reading SES events from the SQS queue failed (no queue configured, queue unreachable)."""


class NotificationError(NewsletterError):
    """An SNS notification was not applied; the subclass says whether it ever can be."""


class NotificationRejected(NotificationError):
    """An SNS notification is unsigned, tampered, from an unexpected host or topic, or malformed."""

    exit_code = 1


class NotificationDeferred(NotificationError):
    """An SNS notification cannot be verified or applied right now (its certificate host is unreachable,
    the database is busy): not the sender's fault, so answer 503 (SNS retries) or leave it in the queue."""
