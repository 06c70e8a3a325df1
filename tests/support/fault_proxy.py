"""A small HTTP proxy in front of a (moto) SES endpoint that can answer instead of it.

Every request is forwarded unchanged (method, path, headers, body) unless:

* it is SES v2 ``GetAccount`` (``GET /v2/email/account``) and ``account_rate`` is set:
  answered like real SES does, with that ``SendQuota.MaxSendRate`` (moto has no GetAccount);
* it is SES v2 ``SendEmail`` (``POST /v2/email/outbound-emails``) and ``policy`` returns a
  :class:`Fault` for it: that error is answered and the request never reaches the server.

The policy sees the recipient and how many SendEmail calls for that recipient came before,
so a test can fail chosen attempts deterministically whatever the thread interleaving.
"""

from __future__ import annotations

import http.client
import json
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SEND_PATH = "/v2/email/outbound-emails"
ACCOUNT_PATH = "/v2/email/account"
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
}


@dataclass(frozen=True)
class Fault:
    """An error answer, shaped the way SES v2 (REST-JSON) shapes them."""

    status: int
    code: str
    message: str

    def headers(self) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "x-amzn-ErrorType": self.code,
            "x-amzn-RequestId": str(uuid.uuid4()),
        }

    def body(self) -> bytes:
        return json.dumps({"message": self.message}).encode()


THROTTLED = Fault(429, "TooManyRequestsException", "Maximum sending rate exceeded.")
THROTTLING = Fault(400, "ThrottlingException", "Maximum sending rate exceeded.")
INTERNAL = Fault(500, "InternalFailure", "We encountered an internal error. Please try again.")


def rejected(address: str) -> Fault:
    return Fault(400, "MessageRejected", f"Email address is on the suppression list: {address}")


@dataclass(frozen=True)
class Call:
    recipient: str
    attempt: int
    """1 for the first SendEmail for this recipient, 2 for the second, ..."""
    number: int
    """1-based count of SendEmail calls the proxy has seen."""


Policy = Callable[[Call], "Fault | None"]


@dataclass
class FaultProxy:
    upstream: str
    policy: Policy | None = None
    account_rate: float | None = None
    injected: Counter[str] = field(default_factory=Counter)
    attempts: Counter[str] = field(default_factory=Counter)
    forwarded_sends: int = 0
    send_calls: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        target = urlsplit(self.upstream)
        self._upstream_host, self._upstream_port = target.hostname or "127.0.0.1", target.port or 80
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fault-proxy", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        assert isinstance(host, str)
        return f"http://{host}:{port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def reset(self, policy: Policy | None = None) -> None:
        with self._lock:
            self.policy = policy
            self.injected.clear()
            self.attempts.clear()
            self.forwarded_sends = 0
            self.send_calls = 0

    def _decide(self, body: bytes) -> Fault | None:
        try:
            recipient = json.loads(body)["Destination"]["ToAddresses"][0]
        except (ValueError, KeyError, IndexError, TypeError):
            recipient = ""
        with self._lock:
            self.send_calls += 1
            self.attempts[recipient] += 1
            call = Call(recipient, self.attempts[recipient], self.send_calls)
            fault = self.policy(call) if self.policy else None
            if fault is None:
                self.forwarded_sends += 1
            else:
                self.injected[fault.code] += 1
            return fault

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = urlsplit(self.path).path
                if self.command == "GET" and path == ACCOUNT_PATH and proxy.account_rate is not None:
                    quota = {
                        "Max24HourSend": 50000.0,
                        "MaxSendRate": proxy.account_rate,
                        "SentLast24Hours": 0.0,
                    }
                    answer = {
                        "SendQuota": quota,
                        "SendingEnabled": True,
                        "ProductionAccessEnabled": True,
                        "EnforcementStatus": "HEALTHY",
                        "DedicatedIpAutoWarmupEnabled": False,
                    }
                    self._answer(200, {"Content-Type": "application/json"}, json.dumps(answer).encode())
                    return
                if self.command == "POST" and path == SEND_PATH:
                    fault = proxy._decide(body)
                    if fault is not None:
                        self._answer(fault.status, fault.headers(), fault.body())
                        return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                upstream = http.client.HTTPConnection(proxy._upstream_host, proxy._upstream_port, timeout=30)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    reply = {k: v for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP}
                    self._answer(response.status, reply, data)
                finally:
                    upstream.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        return Handler
