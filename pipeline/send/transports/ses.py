"""The Amazon SES v2 transport: ``SendEmail`` with the raw message, SES errors translated into the error tree.

Three parts, kept apart so each can be read and tested alone:

* :func:`classify`: what an SES error answer (error code, HTTP status, message) means for the
  campaign. Pure, driven by :data:`SES_ERROR_CODES` and :data:`SES_HTTP_STATUSES`.
* :class:`SignedPost`: the fast path, one hand-built SigV4-signed POST through botocore's internals.
* :class:`SesTransport`: the transport. It sends through :class:`SignedPost` when botocore's
  internals are as expected, else through the public ``client.send_email``; either way every
  failure goes through the same translation.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from typing import Any

from pipeline.errors import DeliveryUnknown, Rejected, TemporaryFailure, TransportError, TransportUnavailable
from pipeline.send.transports.base import Envelope, Transport

log = logging.getLogger(__name__)

SES_ERROR_CODES: dict[str, type[TransportError]] = {
    # Slow down: over the account's sending rate, or SES itself is struggling. The same message will go later.
    "TooManyRequestsException": TemporaryFailure,  # v2: over the per-second sending rate
    "ThrottlingException": TemporaryFailure,  # request rate throttled
    "Throttling": TemporaryFailure,  # the same, as the v1 (query protocol) API spells it
    "ServiceUnavailable": TemporaryFailure,  # SES is down for now
    "ServiceUnavailableException": TemporaryFailure,
    "InternalFailure": TemporaryFailure,  # SES failed on its side
    "InternalServerError": TemporaryFailure,
    "RequestTimeout": TemporaryFailure,  # SES gave up reading the request: nothing was taken
    # This recipient or this message is refused for good: record it, go on with the others.
    "MessageRejected": Rejected,  # suppression list, invalid content (see SENDER_PROBLEMS for the exception)
    "BadRequestException": Rejected,  # a malformed input, e.g. an address SES cannot parse
    "InvalidParameterValue": Rejected,
    # Nothing can be sent until the editor acts: stop the campaign, write off no subscriber.
    "AccountSuspendedException": TransportUnavailable,  # the account may no longer send
    "SendingPausedException": TransportUnavailable,  # sending paused for the account or configuration set
    "MailFromDomainNotVerifiedException": TransportUnavailable,  # the sender's MAIL FROM domain
    "NotFoundException": TransportUnavailable,  # the configuration set does not exist
    "AccessDeniedException": TransportUnavailable,  # IAM does not allow ses:SendEmail
    "UnrecognizedClientException": TransportUnavailable,  # unknown access key
    "InvalidClientTokenId": TransportUnavailable,
    "SignatureDoesNotMatch": TransportUnavailable,  # wrong secret key (or a far-off clock)
    "ExpiredTokenException": TransportUnavailable,  # temporary credentials expired
    "LimitExceededException": TransportUnavailable,  # an account quota reached
}
"""SES error codes (``x-amzn-ErrorType`` / ``__type``), by what the campaign should do about them."""

SENDER_PROBLEMS = ("not verified", "not authorized", "did not have authority")
"""``MessageRejected`` messages that blame the sender ("Email address is not verified", "not
authorized to send from"): every message has that sender, so they stop the campaign instead."""

SES_HTTP_STATUSES: tuple[tuple[range, type[TransportError]], ...] = (
    # 2xx with no readable MessageId (a captive portal, a misconfigured proxy): it may have gone out.
    (range(200, 300), DeliveryUnknown),
    (range(401, 402), TransportUnavailable),  # no or wrong credentials
    (range(403, 404), TransportUnavailable),  # forbidden: credentials without the right to send
    (range(429, 430), TemporaryFailure),  # too many requests
    (range(500, 600), TemporaryFailure),  # the service (or a proxy in front of it) failed: try later
)
"""For answers whose error code is missing or unknown (a proxy's HTML page): the HTTP status decides.
Any other status (a 4xx) means this request, so this message, is refused: :class:`Rejected`."""


def classify(code: str | None, status: int | None, message: str) -> type[TransportError]:
    """What an SES error answer means for the campaign: which :class:`TransportError` to raise.

    In order: a ``MessageRejected`` that blames the sender (:data:`SENDER_PROBLEMS`) is
    :class:`TransportUnavailable`; a known error code decides (:data:`SES_ERROR_CODES`); else the
    HTTP status does (:data:`SES_HTTP_STATUSES`); anything else is :class:`Rejected`.
    """
    if code == "MessageRejected" and any(phrase in message.lower() for phrase in SENDER_PROBLEMS):
        return TransportUnavailable
    if code in SES_ERROR_CODES:
        return SES_ERROR_CODES[code]
    for statuses, failure in SES_HTTP_STATUSES:
        if status in statuses:
            return failure
    return Rejected


def ses_error(code: str | None, status: int | None, message: str, recipient: str | None) -> TransportError:
    """The error to raise for an SES error answer, with its structured fields filled."""
    failure = classify(code, status, message)
    text = f"SES {code or status}: {message}".strip()
    if failure is Rejected and recipient:
        text = f"{recipient}: {text}"
    return failure(text, recipient=recipient, code=code, status=status)


class SignedPost:
    """The fast path: ``SendEmail`` as one POST built, SigV4-signed and sent with botocore's parts
    (the credential chain, SigV4, its urllib3 session with proxies and CA bundle, and its error parser).

    These are botocore internals, not its public API: constructing this raises ImportError,
    AttributeError or TypeError when a botocore release has moved or changed them, and
    :class:`SesTransport` then sends through ``client.send_email`` instead.
    """

    def __init__(self, client: Any, ca_bundle: str | None, url: str, pool_size: int) -> None:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.httpsession import URLLib3Session
        from botocore.parsers import create_parser
        from botocore.utils import get_environ_proxies

        meta = client.meta
        self._url = url
        self._sign = SigV4Auth
        self._request = AWSRequest
        self._signing = (meta.service_model.signing_name or "ses", meta.region_name)
        self._operation = meta.service_model.operation_model("SendEmail")
        self._parser = create_parser(meta.service_model.metadata["protocol"])
        self._http = URLLib3Session(
            # As the client does: AWS_CA_BUNDLE or ca_bundle in ~/.aws/config (a TLS-inspecting proxy's CA).
            verify=ca_bundle or True,
            proxies=get_environ_proxies(url),
            timeout=(10, 30),
            max_pool_connections=pool_size,
        )

    def post(self, body: bytes, credentials: Any) -> Any:
        """Sign and send; the urllib3-backed response (``status_code``, ``headers``, ``content``)."""
        request = self._request("POST", self._url, data=body, headers={"Content-Type": "application/json"})
        self._sign(credentials.get_frozen_credentials(), *self._signing).add_auth(request)
        return self._http.send(request.prepare())

    def error_of(self, response: Any) -> tuple[str | None, str]:
        """The SES error code (None if there is none) and message, as botocore parses them; an HTML or
        garbled body (a proxy's) has no code, and its first 200 characters are the message."""
        try:
            parsed = self._parser.parse(
                {"status_code": response.status_code, "headers": response.headers, "body": response.content},
                self._operation.output_shape,
            )
            error = parsed.get("Error")
            if isinstance(error, dict):
                return _error_fields(error, response.status_code)
        except Exception:
            pass
        return None, " ".join(bytes(response.content[:200]).decode("utf-8", "replace").split())

    def close(self) -> None:
        self._http.close()


def _error_fields(error: dict[str, Any], status: int | None) -> tuple[str | None, str]:
    """Code and message of botocore's ``Error`` dict. botocore puts the HTTP status in ``Code`` when
    the answer carries no error code: that is no code."""
    code = str(error.get("Code") or "") or None
    if code is not None and code == str(status):
        code = None
    return code, str(error.get("Message") or "")


class SesTransport(Transport):
    """Amazon SES v2 ``SendEmail`` with ``Content.Raw``: SES sends exactly the bytes we built.

    ``send`` posts the request through :class:`SignedPost` rather than ``client.send_email``: the
    client's generic machinery (events, validation, user agent, JSON-escaping the 180 KB base64
    body) costs 3.2 ms of CPU per 136 KB message under the GIL, which capped a campaign near
    200 msg/s; the signed post costs 1.6 ms. When botocore's internals are not as SignedPost
    expects, ``send`` goes through ``client.send_email``: slower, same result, same errors.
    Everything else (quota, endpoint resolution) goes through the boto3 client.
    """

    name = "ses"
    SEND_PATH = "/v2/email/outbound-emails"

    def __init__(self, region: str, endpoint_url: str, configuration_set: str, pool_size: int) -> None:
        import boto3
        import botocore.session
        from botocore.config import Config as BotoConfig

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
        self._url = self._client.meta.endpoint_url.rstrip("/") + self.SEND_PATH
        self._prefix: dict[str, object] = {}
        if configuration_set:
            self._prefix["ConfigurationSetName"] = configuration_set
        self._where = endpoint_url or f"SES in {region}"
        try:
            self._fast: SignedPost | None = SignedPost(
                self._client, core.get_config_variable("ca_bundle"), self._url, pool_size
            )
        except (ImportError, AttributeError, TypeError) as error:
            log.warning("SES: sending through boto3's send_email, at about half the speed (%r)", error)
            self._fast = None

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
        if self._fast is None:
            return self._send_through_client(envelope)
        from botocore.exceptions import NoCredentialsError

        try:
            if self._credentials is None:
                raise NoCredentialsError()
            response = self._fast.post(self.request_body(envelope), self._credentials)
        except Exception as error:
            raise self._translate(error, envelope.recipient) from None
        if 200 <= response.status_code < 300:
            try:
                answer = json.loads(response.content)
            except ValueError:
                answer = None
            return self._message_id(answer, envelope.recipient)
        code, message = self._fast.error_of(response)
        raise ses_error(code, response.status_code, message, envelope.recipient) from None

    def _send_through_client(self, envelope: Envelope) -> str:
        try:
            answer = self._client.send_email(
                **self._prefix,
                FromEmailAddress=envelope.sender,
                Destination={"ToAddresses": [envelope.recipient]},
                Content={"Raw": {"Data": envelope.data}},
            )
        except Exception as error:
            raise self._translate(error, envelope.recipient) from None
        return self._message_id(answer, envelope.recipient)

    def _message_id(self, answer: object, recipient: str) -> str:
        message_id = answer.get("MessageId") if isinstance(answer, dict) else None
        if not isinstance(message_id, str) or not message_id:
            # Something answered 2xx that is not SES (a captive portal, a misconfigured proxy):
            # the message probably went nowhere, but we cannot be sure. Failures in a row pause the campaign.
            failure = classify(None, 200, "")  # DeliveryUnknown: see SES_HTTP_STATUSES
            raise failure(
                f"{self._where} answered 200 without a MessageId: is endpoint_url an SES endpoint?",
                recipient=recipient,
            )
        return message_id

    def _translate(self, error: Exception, recipient: str | None) -> TransportError:
        """The TransportError for an exception from boto3 (either path) or from the signed post."""
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
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws/credentials or an instance role)",
                recipient=recipient,
            )
        if isinstance(error, ClientError):
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code, message = _error_fields(error.response.get("Error", {}), status)
            return ses_error(code, status, message, recipient)
        if isinstance(error, (ReadTimeoutError, ConnectionClosedError)):
            # The request went out; SES may have accepted it. Resending could mean two copies.
            return DeliveryUnknown(f"{self._where}: no answer to the request: {error}", recipient=recipient)
        if isinstance(error, BotoCoreError):
            return TemporaryFailure(f"{self._where}: {error}", recipient=recipient)
        # Not an error botocore knows: the request may have gone out, so never assume it did not.
        return DeliveryUnknown(f"{self._where}: unexpected error: {error!r}", recipient=recipient)

    def check(self) -> None:
        """Fail fast on credentials or an unreachable endpoint, before the campaign starts."""
        self.max_rate()

    def max_rate(self) -> float | None:
        from botocore.exceptions import ClientError

        readers: tuple[Callable[[], Any], ...] = (
            lambda: self._client.get_account()["SendQuota"]["MaxSendRate"],
            lambda: self._v1.get_send_quota()["MaxSendRate"],
        )
        for read in readers:
            try:
                return float(read())
            except ClientError as error:
                status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if status in (401, 403):
                    raise self._translate(error, None) from None
                continue  # this endpoint does not offer it (some stand-ins); try the next way
            except (KeyError, TypeError, ValueError):
                continue
            except Exception as error:
                translated = self._translate(error, None)
                if isinstance(translated, (TemporaryFailure, DeliveryUnknown)):
                    raise TransportUnavailable(
                        f"cannot reach {self._where}: {translated}",
                        code=translated.code,
                        status=translated.status,
                    ) from None
                raise translated from None
        return None

    def close(self) -> None:
        if self._fast is not None:
            self._fast.close()
        self._client.close()
        self._v1.close()
