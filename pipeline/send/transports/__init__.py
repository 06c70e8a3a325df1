"""Where messages go: one transport per file (as django-anymail keeps one backend per file), and
``open_transport`` to open the one newsletter.toml names.

    base.py      Envelope, and the Transport interface every backend implements
    discard.py   DiscardTransport: sends nothing (``--dry-run``, benchmarks)
    maildir.py   MaildirTransport: a local Maildir (development, tests)
    smtp.py      SmtpTransport: any SMTP server
    ses.py       SesTransport: Amazon SES v2
"""

from __future__ import annotations

from pipeline.config import Config, Environment
from pipeline.errors import TransportUnavailable
from pipeline.send.transports.base import Envelope, Transport

__all__ = ["Envelope", "Transport", "open_transport"]


def open_transport(config: Config, *, dry_run: bool = False) -> Transport:
    # Each backend imported when chosen: `newsletter build` reads the ledger, whose types live in
    # base.py, and must not pay for smtplib and ssl (or boto3) at start-up.
    from pipeline.send.transports.discard import DiscardTransport
    from pipeline.send.transports.maildir import MaildirTransport
    from pipeline.send.transports.ses import SesTransport
    from pipeline.send.transports.smtp import SmtpTransport

    if dry_run:
        return DiscardTransport()
    if config.transport == "maildir":
        return MaildirTransport(config.maildir)
    if config.transport == "smtp":
        settings = config.smtp
        password = Environment.from_os(settings.password_env).smtp_password if settings.username else ""
        if settings.username and not password:
            raise TransportUnavailable(
                f"transport.smtp.username is set but ${settings.password_env} (transport.smtp.password_env) is empty"
            )
        transport = SmtpTransport(
            settings.host, settings.port, settings.security, settings.username, password, settings.timeout
        )
        transport.check()
        return transport
    ses = SesTransport(
        config.ses.region, config.ses.endpoint_url, config.ses.configuration_set, config.send.concurrency + 2
    )
    ses.check()
    return ses
