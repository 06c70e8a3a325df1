"""What guards the subscriber web service from its visitors: the security headers on every response
(a strict Content-Security-Policy), the per-key sliding-window limits on sign-ups, request body size
limits and a form parser that refuses what it cannot read."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import threading
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Callable
from urllib.parse import parse_qs

from starlette.datastructures import Headers, MutableHeaders
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_FORM_BYTES = 16 * 1024
# SNS notifications are at most 256 KB (the SNS message size limit), plus the envelope's JSON.
MAX_WEBHOOK_BYTES = 300 * 1024
MAX_TRACKED_KEYS = 100_000
# The sign-up limits' windows.
HOUR, DAY = 3600.0, 86400.0


class BodyTooLarge(Exception):
    """A request body over its limit: answered 413 by the app's handler."""


class SlidingWindow:
    """At most ``limit`` events per ``window`` seconds for each key, in this process's memory.

    At most ``MAX_TRACKED_KEYS`` keys are kept, least recently seen dropped first; each hit costs O(1)
    amortised (a key's old events and idle keys are dropped as they are met, each once)."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float]) -> None:
        self.limit, self.window, self.clock = limit, window, clock
        self._events: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def hit(self, key: str) -> float:
        """Count one event; 0 when allowed, else the seconds until the next one would be."""
        now = self.clock()
        horizon = now - self.window
        with self._lock:
            events = self._events.get(key)
            if events is None:
                events = self._events[key] = deque()
            else:
                self._events.move_to_end(key)
            while events and events[0] <= horizon:
                events.popleft()
            if len(events) >= self.limit:
                return events[0] + self.window - now
            events.append(now)
            self._forget(horizon)
            return 0.0

    def _forget(self, horizon: float) -> None:
        # The least recently seen first: drop them while idle, and always past the bound (a flood
        # from many addresses must not grow memory forever).
        while self._events:
            oldest_key = next(iter(self._events))
            oldest = self._events[oldest_key]
            if len(self._events) <= MAX_TRACKED_KEYS and oldest and oldest[-1] > horizon:
                return
            del self._events[oldest_key]


def client_key(host: str) -> str:
    """What the per-IP limit counts: an IPv4 address, or an IPv6 client's /64 (one end network is
    given a whole /64, and can rotate through it at will)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def csp_hash(css: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(css.encode("utf-8")).digest()).decode("ascii") + "'"


class SecurityHeaders:
    """Adds the same protective headers to every response, errors included."""

    def __init__(self, app: ASGIApp, style_hash: str) -> None:
        self.app = app
        self.headers = {
            "Content-Security-Policy": (
                f"default-src 'none'; style-src {style_hash}; form-action 'self'; "
                "frame-ancestors 'none'; base-uri 'none'"
            ),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY",
            # Pages behind tokens must not sit in a shared cache.
            "Cache-Control": "no-store",
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.headers.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) past ``limit`` bytes without reading the rest."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_form(headers: Headers, body: bytes) -> dict[str, str] | None:
    """The text fields of an urlencoded or multipart form; None when it cannot be parsed.
    Anything else (no content type) is read as urlencoded: some senders omit the header."""
    kind = headers.get("content-type", "").split(";")[0].strip().lower()

    async def once() -> AsyncGenerator[bytes, None]:
        yield body
        yield b""

    if kind == "multipart/form-data":
        parser: FormParser | MultiPartParser = MultiPartParser(headers, once(), max_files=0, max_fields=20)
    elif kind == "application/x-www-form-urlencoded":
        parser = FormParser(headers, once(), max_fields=20)
    else:
        try:
            fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
        except (UnicodeDecodeError, ValueError):
            return None
        return {name: values[0] for name, values in fields.items()}
    try:
        form = await parser.parse()
    except MultiPartException:
        return None
    return {name: value for name, value in form.items() if isinstance(value, str)}
