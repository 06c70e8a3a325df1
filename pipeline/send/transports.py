"""Where messages go. A transport has one job: hand over one message's exact bytes.

Every provider error is translated into the TransportError tree
(TemporaryFailure / Rejected / TransportUnavailable), so the campaign decides
what to do without knowing which service is behind it.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import smtplib
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pipeline.config import Config, Environment
from pipeline.errors import DeliveryUnknown, Rejected, TemporaryFailure, TransportError, TransportUnavailable


@dataclass(frozen=True)
class Envelope:
    sender: str
    recipient: str
    data: bytes
    key: str
    """Unique per campaign and recipient: lets a transport tell whether it already took this one."""


class Transport(Protocol):
    name: str

    def send(self, envelope: Envelope) -> str:
        """Hand the message over; return the provider's message id."""
        ...

    def max_rate(self) -> float | None:
        """The service's own sending limit per second, when it tells."""
        ...

    def was_delivered(self, key: str) -> bool | None:
        """After a crash: whether the message with ``key`` was taken; None when the service cannot tell."""
        ...

    def close(self) -> None: ...


class MaildirTransport:
    """Delivers into a local Maildir: tmp/ then an atomic rename into new/."""

    name = "maildir"

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            for folder in ("tmp", "new", "cur"):
                (path / folder).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise TransportUnavailable(f"maildir {path}: {error.strerror}") from None

    def send(self, envelope: Envelope) -> str:
        name = _maildir_name(envelope.key)
        temporary = self.path / "tmp" / name
        try:
            with temporary.open("wb") as handle:
                handle.write(envelope.data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path / "new" / name)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            raise TemporaryFailure(f"maildir {self.path}: {error.strerror}") from None
        return name

    def max_rate(self) -> float | None:
        return None

    def was_delivered(self, key: str) -> bool:
        # Any host name: the resume may run in another container. A mail client moves read
        # messages to cur/ and appends ":2,<flags>". Keys hold no dot, so "s5.*" never matches "s50".
        return any((self.path / "new").glob(f"{key}.*")) or any((self.path / "cur").glob(f"{key}.*"))

    def close(self) -> None:
        pass


def _maildir_name(key: str) -> str:
    return f"{key}.{socket.gethostname().replace('/', '_').replace(':', '_')}"


class DiscardTransport:
    """Sends nothing: ``--dry-run`` and benchmarks go through the same code path with it."""

    name = "dry-run"

    def __init__(self) -> None:
        self._counter = itertools.count(1)  # next() on a count is atomic under the GIL; `+= 1` is not

    def send(self, envelope: Envelope) -> str:
        return f"dry-run-{next(self._counter)}"

    def max_rate(self) -> float | None:
        return None

    def was_delivered(self, key: str) -> bool | None:
        return False

    def close(self) -> None:
        pass


class SmtpTransport:
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
                f"{where} refused the login for {self.username!r}: {_reply(error)}"
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
            raise TransportUnavailable(str(error)) from None

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
                raise TemporaryFailure(str(stale)) from None
        # Servers close idle sessions (after minutes, silently): a connection kept since the last
        # message may be gone. Nothing was handed over on it, so one try on a new one cannot send twice.
        try:
            return self._send(envelope)
        except _StaleConnection as stale:
            raise TemporaryFailure(str(stale)) from None

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
            if code == 421:  # the server is closing this connection: the next try needs a new one
                self._drop()
            failure = Rejected if code >= 500 else TemporaryFailure
            raise failure(f"{envelope.recipient}: {code} {reply.decode('utf-8', 'replace')}") from None
        except smtplib.SMTPSenderRefused as error:
            if error.smtp_code == 421:
                self._drop()
            if error.smtp_code >= 500:
                raise TransportUnavailable(f"sender {envelope.sender} refused: {_reply(error)}") from None
            raise TemporaryFailure(f"sender refused for now: {_reply(error)}") from None
        except smtplib.SMTPResponseException as error:
            if error.smtp_code == 421:
                self._drop()
            failure = Rejected if error.smtp_code >= 500 else TemporaryFailure
            raise failure(f"{envelope.recipient}: {_reply(error)}") from None
        except (OSError, smtplib.SMTPException) as error:
            self._drop()
            if handed_over:
                # The reply to DATA was lost: the server may have queued it. Resending could mean two copies.
                raise DeliveryUnknown(
                    f"SMTP connection lost while the server took the message: {error}"
                ) from None
            raise _StaleConnection(f"SMTP connection lost: {error}") from None

    def _drop(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            try:
                connection.close()
            except OSError:
                pass

    def max_rate(self) -> float | None:
        return None

    def was_delivered(self, key: str) -> bool | None:
        return None

    def close(self) -> None:
        with self._lock:
            connections, self._all = self._all, []
        for connection in connections:
            try:
                connection.quit()
            except (OSError, smtplib.SMTPException):
                connection.close()


class _StaleConnection(Exception):
    """The connection failed before the message was handed over: safe to try again on a new one."""


def _reply(error: smtplib.SMTPResponseException) -> str:
    message = (
        error.smtp_error.decode("utf-8", "replace")
        if isinstance(error.smtp_error, bytes)
        else str(error.smtp_error)
    )
    return f"{error.smtp_code} {message}"


# SES error codes, by what the campaign should do about them.
SES_TEMPORARY = {
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "ServiceUnavailable",
    "InternalFailure",
    "InternalServerError",
    "RequestTimeout",
    "ServiceUnavailableException",
}
SES_REJECTED = {"MessageRejected", "BadRequestException", "InvalidParameterValue"}
SES_FATAL = {
    "AccountSuspendedException",
    "SendingPausedException",
    "MailFromDomainNotVerifiedException",
    "NotFoundException",
    "AccessDeniedException",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "ExpiredTokenException",
    "LimitExceededException",
}


def _sender_problem(message: str) -> bool:
    lowered = message.lower()
    return any(phrase in lowered for phrase in ("not verified", "not authorized", "did not have authority"))


class SesTransport:
    """Amazon SES v2 ``SendEmail`` with ``Content.Raw``: SES sends exactly the bytes we built.

    ``send`` builds, signs and posts the request itself with botocore's parts (the credential
    chain, SigV4, its urllib3 session with proxies and CA bundle, and its error parser), rather than
    through ``client.send_email``. The client's generic machinery (events, validation, user agent,
    JSON-escaping the 180 KB base64 body) costs 3.2 ms of CPU per 136 KB message under the GIL,
    which capped a campaign near 200 msg/s; this path costs 1.6 ms. Everything else (quota,
    endpoint resolution) goes through the boto3 client.
    """

    name = "ses"
    SEND_PATH = "/v2/email/outbound-emails"

    def __init__(self, region: str, endpoint_url: str, configuration_set: str, pool_size: int) -> None:
        import boto3
        import botocore.session
        from botocore.config import Config as BotoConfig
        from botocore.httpsession import URLLib3Session
        from botocore.parsers import create_parser
        from botocore.utils import get_environ_proxies

        # Our campaign retries with backoff and records attempts; botocore must not retry behind its back.
        boto_config = BotoConfig(
            retries={"mode": "standard", "total_max_attempts": 1},
            max_pool_connections=pool_size,
            connect_timeout=10,
            read_timeout=30,
        )
        core = botocore.session.get_session()
        session = boto3.session.Session(botocore_session=core)
        self._client = session.client(
            "sesv2", region_name=region, endpoint_url=endpoint_url or None, config=boto_config
        )
        self._v1 = session.client(
            "ses", region_name=region, endpoint_url=endpoint_url or None, config=boto_config
        )
        self._credentials = session.get_credentials()
        meta = self._client.meta
        self._url = meta.endpoint_url.rstrip("/") + self.SEND_PATH
        self._signing = (meta.service_model.signing_name or "ses", meta.region_name)
        self._operation = meta.service_model.operation_model("SendEmail")
        self._parser = create_parser(meta.service_model.metadata["protocol"])
        self._http = URLLib3Session(
            # As the client does: AWS_CA_BUNDLE or ca_bundle in ~/.aws/config (a TLS-inspecting proxy's CA).
            verify=core.get_config_variable("ca_bundle") or True,
            proxies=get_environ_proxies(self._url),
            timeout=(10, 30),
            max_pool_connections=pool_size,
        )
        prefix: dict[str, object] = {}
        if configuration_set:
            prefix["ConfigurationSetName"] = configuration_set
        self._configuration_set = configuration_set
        self._prefix = prefix
        self._where = endpoint_url or f"SES in {region}"

    def request_body(self, envelope: Envelope) -> bytes:
        """The JSON ``SendEmail`` body. The base64 of the message needs no JSON escaping, so it is
        spliced in as bytes rather than passed through ``json.dumps``."""
        head = json.dumps(
            {
                **self._prefix,
                "FromEmailAddress": envelope.sender,
                "Destination": {"ToAddresses": [envelope.recipient]},
            },
            separators=(",", ":"),
        )
        return head[:-1].encode() + b',"Content":{"Raw":{"Data":"' + base64.b64encode(envelope.data) + b'"}}}'

    def send(self, envelope: Envelope) -> str:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.exceptions import ClientError, NoCredentialsError

        try:
            if self._credentials is None:
                raise NoCredentialsError()
            request = AWSRequest(
                "POST",
                self._url,
                data=self.request_body(envelope),
                headers={"Content-Type": "application/json"},
            )
            SigV4Auth(self._credentials.get_frozen_credentials(), *self._signing).add_auth(request)
            response = self._http.send(request.prepare())
        except Exception as error:
            raise self._translate(error, envelope.recipient) from None
        if response.status_code == 200:
            try:
                message_id = json.loads(response.content).get("MessageId")
            except (ValueError, AttributeError):
                message_id = None
            if not isinstance(message_id, str) or not message_id:
                # Something answered 200 that is not SES (a captive portal, a misconfigured proxy):
                # the message probably went nowhere, but we cannot be sure. Failures in a row pause the campaign.
                raise DeliveryUnknown(
                    f"{self._where} answered 200 without a MessageId: is endpoint_url an SES endpoint?"
                )
            return message_id
        raise self._translate(
            ClientError(self._error_of(response), "SendEmail"), envelope.recipient
        ) from None

    def _error_of(self, response: Any) -> dict[str, Any]:
        """The error as botocore parses it; an HTML or garbled body (a proxy's) becomes its HTTP status."""
        try:
            parsed: dict[str, Any] = self._parser.parse(
                {"status_code": response.status_code, "headers": response.headers, "body": response.content},
                self._operation.output_shape,
            )
            if isinstance(parsed.get("Error"), dict):
                return parsed
        except Exception:
            pass
        text = " ".join(bytes(response.content[:200]).decode("utf-8", "replace").split())
        return {
            "Error": {"Code": str(response.status_code), "Message": text},
            "ResponseMetadata": {"HTTPStatusCode": response.status_code},
        }

    def _translate(self, error: Exception, recipient: str) -> TransportError:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionClosedError,
            NoCredentialsError,
            PartialCredentialsError,
            ReadTimeoutError,
        )

        if isinstance(error, (NoCredentialsError, PartialCredentialsError)):
            return TransportUnavailable(
                "no AWS credentials: set them the standard boto3 way "
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws/credentials or an instance role)"
            )
        if isinstance(error, ClientError):
            code = str(error.response.get("Error", {}).get("Code") or "")
            message = str(error.response.get("Error", {}).get("Message") or "")
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            text = f"SES {code or status}: {message}".strip()
            if code in SES_FATAL or (code == "MessageRejected" and _sender_problem(message)):
                # "Email address is not verified" / "not authorized": the sender's problem, not the recipient's.
                return TransportUnavailable(text)
            if code in SES_REJECTED:
                return Rejected(f"{recipient}: {text}")
            if code in SES_TEMPORARY or status >= 500 or status == 429:
                return TemporaryFailure(text)
            if status in (401, 403):
                return TransportUnavailable(text)
            return Rejected(f"{recipient}: {text}")
        if isinstance(error, (ReadTimeoutError, ConnectionClosedError)):
            # The request went out; SES may have accepted it. Resending could mean two copies.
            return DeliveryUnknown(f"{self._where}: no answer to the request: {error}")
        if isinstance(error, BotoCoreError):
            return TemporaryFailure(f"{self._where}: {error}")
        if isinstance(error, TransportError):
            return error
        # Not an error botocore knows: the request may have gone out, so never assume it did not.
        return DeliveryUnknown(f"{self._where}: unexpected error: {error!r}")

    def check(self) -> None:
        """Fail fast on credentials or an unreachable endpoint, before the campaign starts."""
        self.max_rate()

    def max_rate(self) -> float | None:
        from botocore.exceptions import ClientError

        for call in (
            lambda: self._client.get_account()["SendQuota"]["MaxSendRate"],
            lambda: self._v1.get_send_quota()["MaxSendRate"],
        ):
            try:
                return float(call())
            except ClientError as error:
                status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if status in (401, 403):
                    raise self._translate(error, "") from None
                continue  # this endpoint does not offer it (some stand-ins); try the next way
            except (KeyError, TypeError, ValueError):
                continue
            except Exception as error:
                translated = self._translate(error, "")
                if isinstance(translated, (TemporaryFailure, DeliveryUnknown)):
                    raise TransportUnavailable(f"cannot reach {self._where}: {translated}") from None
                raise translated from None
        return None

    def was_delivered(self, key: str) -> bool | None:
        return None

    def close(self) -> None:
        self._client.close()
        self._v1.close()


def open_transport(config: Config, *, dry_run: bool = False) -> Transport:
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
