"""The Amazon SES v2 transport: ``SendEmail`` with the raw message, SES errors translated into the error tree."""

from __future__ import annotations

import base64
import json
from typing import Any

from pipeline.errors import DeliveryUnknown, Rejected, TemporaryFailure, TransportError, TransportUnavailable
from pipeline.send.transports.base import Envelope

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
