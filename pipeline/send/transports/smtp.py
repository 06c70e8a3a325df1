"""The SMTP transport: one connection per worker thread, SMTP replies translated into the error tree.

Every error raised carries the SMTP reply code (``code`` as text, ``status`` as a number) when the
server gave one, and the recipient when one message failed.
"""

from __future__ import annotations

import smtplib
import ssl
import threading

from pipeline.errors import DeliveryUnknown, Rejected, TemporaryFailure, TransportError, TransportUnavailable
from pipeline.send.transports.base import Envelope, Transport


class SmtpTransport(Transport):
    """One SMTP connection per worker thread, reused across messages and reopened when dropped."""

    name = "smtp"

    def __init__(
        self, host: str, port: int, security: str, username: str, password: str, timeout: float
    ) -> None:
        self.host, self.port, self.security = host, port, security
        self.username, self.password, self.timeout = username, password, timeout
        self._local = threading.local()
        self._all: list[smtplib.SMTP] = []
        self._lock = threading.Lock()

    def _connect(self) -> smtplib.SMTP:
        where = f"SMTP server {self.host}:{self.port}"
        context = ssl.create_default_context()
        try:
            if self.security == "tls":
                connection: smtplib.SMTP = smtplib.SMTP_SSL(
                    self.host, self.port, timeout=self.timeout, context=context
                )
            else:
                connection = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
                if self.security == "starttls":
                    try:
                        connection.starttls(context=context)
                    except smtplib.SMTPNotSupportedError:
                        raise TransportUnavailable(
                            f"{where} does not offer STARTTLS (set transport.smtp.security)"
                        ) from None
            if self.username:
                try:
                    connection.login(self.username, self.password)
                except smtplib.SMTPNotSupportedError:
                    raise TransportUnavailable(
                        f'{where} does not offer AUTH on this connection (use security = "starttls" or "tls", '
                        "or leave transport.smtp.username empty)"
                    ) from None
        except smtplib.SMTPAuthenticationError as error:
            raise TransportUnavailable(
                f"{where} refused the login for {self.username!r}: {_reply(error)}",
                code=str(error.smtp_code),
                status=error.smtp_code,
            ) from None
        except (OSError, smtplib.SMTPException) as error:
            raise TemporaryFailure(f"cannot connect to {where}: {error}") from None
        with self._lock:
            self._all.append(connection)
        return connection

    def check(self) -> None:
        """Fail fast, before a campaign starts, when the server cannot be reached or refuses us."""
        try:
            self._connection()
        except TemporaryFailure as error:
            raise TransportUnavailable(str(error), code=error.code, status=error.status) from None

    def _connection(self) -> smtplib.SMTP:
        connection: smtplib.SMTP | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self._connect()
        return connection

    def send(self, envelope: Envelope) -> str:
        reused = getattr(self._local, "connection", None) is not None
        try:
            return self._send(envelope)
        except _StaleConnection as stale:
            if not reused:
                raise TemporaryFailure(str(stale), recipient=envelope.recipient) from None
        # Servers close idle sessions (after minutes, silently): a connection kept since the last
        # message may be gone. Nothing was handed over on it, so one try on a new one cannot send twice.
        try:
            return self._send(envelope)
        except _StaleConnection as stale:
            raise TemporaryFailure(str(stale), recipient=envelope.recipient) from None

    def _send(self, envelope: Envelope) -> str:
        connection = self._connection()
        handed_over = False
        try:
            connection.ehlo_or_helo_if_needed()
            code, reply = connection.mail(envelope.sender)
            if code != 250:
                raise smtplib.SMTPSenderRefused(code, reply, envelope.sender)
            code, reply = connection.rcpt(envelope.recipient)
            if code not in (250, 251):
                connection.rset()
                raise smtplib.SMTPRecipientsRefused({envelope.recipient: (code, reply)})
            handed_over = True  # from here on, the server may have the message
            code, reply = connection.data(envelope.data)
            if code != 250:
                raise smtplib.SMTPDataError(code, reply)
            return reply.decode("utf-8", "replace")
        except smtplib.SMTPRecipientsRefused as error:
            code, reply = next(iter(error.recipients.values()))
            text = f"{envelope.recipient}: {code} {reply.decode('utf-8', 'replace')}"
            raise self._refused(code, text, envelope.recipient, of_sender=False) from None
        except smtplib.SMTPSenderRefused as error:
            text = (
                f"sender {envelope.sender} refused: {_reply(error)}"
                if error.smtp_code >= 500
                else f"sender refused for now: {_reply(error)}"
            )
            raise self._refused(error.smtp_code, text, envelope.recipient, of_sender=True) from None
        except smtplib.SMTPResponseException as error:
            text = f"{envelope.recipient}: {_reply(error)}"
            raise self._refused(error.smtp_code, text, envelope.recipient, of_sender=False) from None
        except (OSError, smtplib.SMTPException) as error:
            self._drop()
            if handed_over:
                # The reply to DATA was lost: the server may have queued it. Resending could mean two copies.
                raise DeliveryUnknown(
                    f"SMTP connection lost while the server took the message: {error}",
                    recipient=envelope.recipient,
                ) from None
            raise _StaleConnection(f"SMTP connection lost: {error}") from None

    def _refused(self, code: int, text: str, recipient: str, *, of_sender: bool) -> TransportError:
        if code == 421:  # the server is closing this connection: the next try needs a new one
            self._drop()
        failure = refusal(code, of_sender=of_sender)
        return failure(text, recipient=recipient, code=str(code), status=code)

    def _drop(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            try:
                connection.close()
            except OSError:
                pass

    def close(self) -> None:
        with self._lock:
            connections, self._all = self._all, []
        for connection in connections:
            try:
                connection.quit()
            except (OSError, smtplib.SMTPException):
                connection.close()


def refusal(code: int, *, of_sender: bool) -> type[TransportError]:
    """What an SMTP reply refusing a message means for the campaign (RFC 5321, 4.2.1).

    ====  ==========================  =====================================================
    4xx   TemporaryFailure            transient (greylisting, mailbox busy, 421 closing): retry
    5xx   Rejected                    the recipient or the message is refused for good
    5xx   TransportUnavailable        ``of_sender``: MAIL FROM refused for good; every
                                      message has that sender, so nothing can be sent
    ====  ==========================  =====================================================
    """
    if code < 500:
        return TemporaryFailure
    return TransportUnavailable if of_sender else Rejected


class _StaleConnection(Exception):
    """The connection failed before the message was handed over: safe to try again on a new one."""


def _reply(error: smtplib.SMTPResponseException) -> str:
    message = (
        error.smtp_error.decode("utf-8", "replace")
        if isinstance(error.smtp_error, bytes)
        else str(error.smtp_error)
    )
    return f"{error.smtp_code} {message}"
