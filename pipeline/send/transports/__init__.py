"""Where messages go. The transports move into one file each in the next commit."""

from pipeline.send.transports.ses import (
    DiscardTransport,
    Envelope,
    MaildirTransport,
    SesTransport,
    SmtpTransport,
    Transport,
    open_transport,
)

__all__ = [
    "DiscardTransport",
    "Envelope",
    "MaildirTransport",
    "SesTransport",
    "SmtpTransport",
    "Transport",
    "open_transport",
]
