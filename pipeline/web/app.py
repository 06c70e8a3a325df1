"""The subscriber web service (``newsletter serve``): sign-up with double opt-in, the confirmation
link, unsubscribe pages with RFC 8058 one-click unsubscribe, and the SES webhook (SNS).

Routes (every page is plain HTML: no script, nothing fetched, a strict Content-Security-Policy):

    GET  /, /subscribe          the sign-up form
    POST /subscribe             always "check your inbox" (400 for a malformed address, 429 over the per-IP limit)
    GET  /confirm/{token}       a page with one button; GET never changes anything (mail scanners follow links)
    POST /confirm/{token}       the button: activate a pending subscriber (410 expired or superseded,
                                404 forged, 403 bounced/complained)
    GET  /unsubscribe/{token}   a page with one button; GET never changes anything (mail scanners follow links)
    POST /unsubscribe/{token}   the button, or a mail provider's one-click POST (RFC 8058)
    POST /webhooks/ses          SNS notifications of SES bounces and complaints (pipeline.events);
                                403 for every message while ``[events] topic_arns`` is empty
    GET  /healthz               "ok", for the reverse proxy

Deployment: it listens on ``serve.host`` (127.0.0.1 by default) behind a reverse proxy that
terminates TLS for ``newsletter.public_url``. ``X-Forwarded-For`` (the client address the per-IP
sign-up limit counts) is believed only from the addresses in ``$FORWARDED_ALLOW_IPS``, by default
127.0.0.1: the proxy on the same machine. Every link in a page or an email is built from
``public_url``, never from the request's Host header, so a forged Host cannot plant links.

Sign-up answers the same bytes, status and timing whatever the address's state (new, pending,
active, unsubscribed, bounced): all the work, database and mail alike, happens after the response,
in a background task, so the page reveals nothing about who is on the list. The confirmation
email carries nothing the visitor typed but the address: not even the name, so nobody can put
their own words in a message from our domain.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import logging
import math
import re
import secrets
import socket
import sqlite3
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import jinja2
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.audience.addresses import check_address, check_name
from pipeline.audience.signup import (
    Signup,
    by_id,
    confirm,
    confirm_outcome,
    request_signup,
    undo_signup_mail,
    unsubscribe,
)
from pipeline.audience.tokens import (
    load_secret,
    make_token,
    token_expiry,
    token_issued,
    token_subscriber_id,
    verify_token,
)
from pipeline.config import Config, Environment
from pipeline.db import open_db
from pipeline.errors import (
    NewsletterError,
    NotificationDeferred,
    NotificationRejected,
    ServeError,
    TransportUnavailable,
)
from pipeline.send.message import sender_address, service_message
from pipeline.send.transports import Envelope, Transport, open_transport

if TYPE_CHECKING:
    from pipeline.events.sns import SnsVerifier

log = logging.getLogger(__name__)

MAX_FORM_BYTES = 16 * 1024
# SNS notifications are at most 256 KB (the SNS message size limit), plus the envelope's JSON.
MAX_WEBHOOK_BYTES = 300 * 1024
MAX_NAME_LENGTH = 100
MAX_TRACKED_KEYS = 100_000
HOUR, DAY = 3600.0, 86400.0
PACKAGED_TEMPLATES = Path(__file__).resolve().parents[1] / "email_templates" / "web"
PAGES = (
    "signup.html",
    "check_inbox.html",
    "confirm.html",
    "confirmed.html",
    "confirm_expired.html",
    "confirm_stale.html",
    "confirm_refused.html",
    "link_invalid.html",
    "unsubscribe.html",
    "unsubscribed.html",
    "rate_limited.html",
    "not_found.html",
    "confirm_email.txt",
    "confirm_email.html",
    "already_email.txt",
    "already_email.html",
)
HONEYPOT = "website"
# In a name: a scheme, "www.", or a domain (two or more letters, a dot, a top-level domain of letters).
# "J.R.R. Tolkien" and "A.Smith" pass; "St.John" does not, and its owner can add a space.
_URL_IN_NAME = re.compile(
    r"[a-z][a-z0-9+.-]*:/|www\.|(?<![\w.-])[^\W_][\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,63}(?![\w-])", re.IGNORECASE
)
ONE_CLICK = ("List-Unsubscribe", "One-Click")


class BodyTooLarge(Exception):
    pass


# --- Small parts -------------------------------------------------------------------------------


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


def short(token: str) -> str:
    """A token as logs may show it: the subscriber id and a few characters, never enough to use."""
    return token[:12] + "…" if len(token) > 12 else token


def _csp_hash(css: str) -> str:
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


# --- The service ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkCheck:
    """A token from a URL, checked against the subscriber it names."""

    row: sqlite3.Row | None
    status: int
    """200 when the token is ours for this subscriber; else the status to answer."""


class Service:
    def __init__(
        self,
        config: Config,
        secret: bytes,
        transport: Transport | None,
        verifier: SnsVerifier | None,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.secret = secret
        self.clock = clock
        self._transport = transport
        self._transport_lock = threading.Lock()
        self._verifier = verifier
        self._verifier_lock = threading.Lock()
        # One connection per purpose, each used by one thread at a time, under its lock. The webhook
        # holds its lock only for database work, never while it waits on the network (SNS certificates).
        self.db = open_db(config.paths.state)
        self.db_lock = threading.Lock()
        self._events_db: sqlite3.Connection | None = None
        self._events_lock = threading.Lock()
        self.per_ip = SlidingWindow(config.serve.signups_per_ip_per_hour, HOUR, clock)
        self.per_address = SlidingWindow(config.serve.signups_per_address_per_day, DAY, clock)
        self.prefix = urlsplit(config.public_url).path.rstrip("/")
        self.templates = _environment(config)
        css = self.templates.loader.get_source(self.templates, "page.css")[0]  # type: ignore[union-attr]
        self.css = Markup(css)
        self.style_hash = _csp_hash(css)
        self.contact = config.reply_to or sender_address(config)
        # Sign-ups whose background work is over (recorded, mailed or failed): tests wait on it.
        self.signups_handled = 0
        self._counter_lock = threading.Lock()

    def close(self) -> None:
        with self.db_lock:
            self.db.close()
        with self._events_lock:
            if self._events_db is not None:
                self._events_db.close()
        with self._transport_lock:
            if self._transport is not None:
                self._transport.close()

    # --- pages

    def render(self, template: str, **values: Any) -> str:
        context = {
            "newsletter": {
                "name": self.config.name,
                "language": self.config.language,
                "postal_address": self.config.postal_address,
            },
            "css": self.css,
            "prefix": self.prefix,
            "contact": self.contact,
            "confirm_hours": f"{self.config.serve.confirm_hours:g}",
            "email": "",
            "name": "",
            "error": "",
            "name_error": "",
            **values,
        }
        return self.templates.get_template(template).render(context)

    def page(self, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        return HTMLResponse(self.render(template, **values), status_code=status)

    # --- sign-up

    async def signup(self, request: Request) -> Response:
        if request.method != "POST":
            return self.page("signup.html")
        client = request.client.host if request.client else "unknown"
        wait = self.per_ip.hit(client_key(client))
        if wait:
            log.warning("sign-up refused: more than %d from %s in an hour", self.per_ip.limit, client)
            response = self.page("rate_limited.html", 429)
            response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
            return response
        form = await parse_form(request.headers, await read_body(request, MAX_FORM_BYTES)) or {}
        if form.get(HONEYPOT):
            log.info("sign-up ignored: the honeypot field was filled (from %s)", client)
            return self.page("check_inbox.html")
        email, name = form.get("email", ""), form.get("name", "")
        try:
            email = check_address(email)
        except ValueError as error:
            return self.page(
                "signup.html", 400, error=_address_problem(email, error), email=email.strip(), name=name
            )
        try:
            name = check_signup_name(name)
        except ValueError as error:
            return self.page("signup.html", 400, name_error=str(error), email=email, name=name.strip())
        if self.per_address.hit(email.casefold()):
            # The same answer as always: a different one would tell who is on the list.
            log.warning(
                "sign-up dropped: more than %d requests for one address today", self.per_address.limit
            )
            return self.page("check_inbox.html")
        return HTMLResponse(
            self.render("check_inbox.html"), background=BackgroundTask(self.record_signup, email, name)
        )

    def record_signup(self, email: str, name: str) -> None:
        """After the response: record the sign-up and mail what it calls for."""
        try:
            self._record_signup(email, name)
        finally:
            with self._counter_lock:
                self.signups_handled += 1

    def _record_signup(self, email: str, name: str) -> None:
        at = self.clock()
        try:
            with self.db_lock:
                signup = request_signup(
                    self.db, email, name, at=at, resend_seconds=self.config.serve.resend_minutes * 60
                )
        except (NewsletterError, sqlite3.Error) as error:
            log.error("sign-up not recorded: %s", error)
            return
        if signup.mail is None:
            log.info("sign-up: s%d (%s): nothing mailed", signup.subscriber_id, signup.status)
            return
        try:
            self.mail(signup, at)
        except NewsletterError as error:
            log.error(
                "sign-up: s%d (%s): %s mail not sent: %s",
                signup.subscriber_id,
                signup.status,
                signup.mail,
                error,
            )
            if isinstance(error, TransportUnavailable):
                self.drop_transport()  # reopened for the next sign-up: the server may be back by then
            with self.db_lock:
                undo_signup_mail(self.db, signup, at)
            return
        log.info("sign-up: s%d (%s): %s mail sent", signup.subscriber_id, signup.status, signup.mail)

    def mail(self, signup: Signup, at: float) -> None:
        config = self.config
        if signup.mail == "confirm":
            expires = int(at + config.serve.confirm_hours * HOUR)
            # The time it is sent (as stored in confirmation_sent_at), so only the latest link works.
            token = make_token(
                self.secret, "confirm", signup.subscriber_id, signup.email, expires=expires, issued=int(at)
            )
            link, template = f"{config.public_url}/confirm/{token}", "confirm_email"
            subject = f"Confirm your subscription to {config.name}"
        else:
            token = make_token(self.secret, "unsubscribe", signup.subscriber_id, signup.email)
            link, template = f"{config.public_url}/unsubscribe/{token}", "already_email"
            subject = f"You are already subscribed to {config.name}"
        # Not the name: whoever filled in the form chose it, and this goes to someone who may not have.
        values = {"email": signup.email, "name": "", "link": link, "subject": subject}
        recipient, data = service_message(
            config,
            email=signup.email,
            subject=subject,
            text=self.render(f"{template}.txt", **values),
            html=self.render(f"{template}.html", **values),
            date=dt.datetime.fromtimestamp(at, dt.UTC),
        )
        # Unique per message (dots are not allowed in maildir keys): each resend is a new delivery.
        key = f"{signup.mail}-s{signup.subscriber_id}-{int(at)}-{secrets.token_hex(4)}"
        self.transport().send(
            Envelope(sender=sender_address(config), recipient=recipient, data=data, key=key)
        )

    def transport(self) -> Transport:
        # Opened on first use: an SMTP server that is down must not stop the unsubscribe pages.
        with self._transport_lock:
            if self._transport is None:
                self._transport = open_transport(self.config)
            return self._transport

    def drop_transport(self) -> None:
        with self._transport_lock:
            if self._transport is not None:
                self._transport.close()
                self._transport = None

    # --- links

    def check_link(self, purpose: str, token: str) -> LinkCheck:
        subscriber_id = token_subscriber_id(token)
        if subscriber_id is None or (purpose == "confirm") != (token_expiry(token) is not None):
            return LinkCheck(None, 400)
        with self.db_lock:
            row = by_id(self.db, subscriber_id)
        # The signature alone; expiry is judged by the caller, who words it differently.
        expires = token_expiry(token)
        checked_at = None if expires is None else expires - 1
        if row is None or not verify_token(self.secret, purpose, token, row["email"], now=checked_at):
            return LinkCheck(None, 404)
        return LinkCheck(row, 200)

    async def confirm_link(self, request: Request) -> Response:
        token = request.path_params["token"]
        if request.method != "POST":
            return await run_in_threadpool(self._confirm_page, token)
        await read_body(request, MAX_FORM_BYTES)  # what the button sends does not matter
        return await run_in_threadpool(self._confirm, token)

    def _confirm_link(self, token: str) -> LinkCheck | Response:
        """The subscriber a confirmation link names, or the page to answer when it is forged or expired."""
        link = self.check_link("confirm", token)
        if link.row is None:
            log.warning("confirm: refused link %s (%d)", short(token), link.status)
            return self.page("link_invalid.html", link.status)
        if self.clock() >= (token_expiry(token) or 0):
            log.info("confirm: s%d: link expired", link.row["id"])
            return self.page("confirm_expired.html", 410, email=link.row["email"])
        return link

    def _confirm_page(self, token: str) -> Response:
        """GET: what the button would do, and the button; nothing changes (mail scanners open links)."""
        link = self._confirm_link(token)
        if not isinstance(link, LinkCheck):
            return link
        assert link.row is not None
        sent_at = token_issued(token)
        outcome = "stale" if sent_at is None else confirm_outcome(link.row, sent_at)
        if outcome == "confirm":
            return self.page("confirm.html", email=link.row["email"], action=f"{self.prefix}/confirm/{token}")
        return self._confirmed_page(outcome, link.row["email"])

    def _confirm(self, token: str) -> Response:
        """POST: the button."""
        link = self._confirm_link(token)
        if not isinstance(link, LinkCheck):
            return link
        assert link.row is not None
        subscriber_id, sent_at = link.row["id"], token_issued(token)
        if sent_at is None:  # a link from before links carried the time they were sent
            outcome = "stale"
        else:
            with self.db_lock:
                outcome = confirm(self.db, subscriber_id, "confirmed by link", sent_at=sent_at)
        log.info("confirm: s%d: %s", subscriber_id, outcome)
        return self._confirmed_page(outcome, link.row["email"])

    def _confirmed_page(self, outcome: str, email: str) -> Response:
        if outcome in ("confirmed", "already"):
            return self.page("confirmed.html")
        if outcome == "refused":
            return self.page("confirm_refused.html", 403)
        if outcome == "stale":
            return self.page("confirm_stale.html", 410, email=email)
        return self.page("link_invalid.html", 404)

    async def unsubscribe_link(self, request: Request) -> Response:
        token = request.path_params["token"]
        if request.method != "POST":
            return await run_in_threadpool(self._unsubscribe_page, token)
        form = await parse_form(request.headers, await read_body(request, MAX_FORM_BYTES)) or {}
        one_click = form.get(ONE_CLICK[0]) == ONE_CLICK[1]
        return await run_in_threadpool(self._unsubscribe, token, one_click)

    def _unsubscribe_page(self, token: str) -> Response:
        link = self.check_link("unsubscribe", token)
        if link.row is None:
            log.warning("unsubscribe page: refused link %s (%d)", short(token), link.status)
            return self.page("link_invalid.html", link.status)
        if link.row["status"] in ("active", "pending"):
            return self.page(
                "unsubscribe.html", email=link.row["email"], action=f"{self.prefix}/unsubscribe/{token}"
            )
        return self.page("unsubscribed.html", email=link.row["email"])

    def _unsubscribe(self, token: str, one_click: bool) -> Response:
        link = self.check_link("unsubscribe", token)
        if link.row is None:
            log.warning("unsubscribe: refused link %s (%d)", short(token), link.status)
            if one_click:
                return PlainTextResponse("This unsubscribe link is not valid.\n", link.status)
            return self.page("link_invalid.html", link.status)
        cause = "one-click (RFC 8058)" if one_click else "unsubscribe page"
        with self.db_lock:
            before = unsubscribe(self.db, link.row["id"], cause)
        log.info("unsubscribe: s%d: %s (was %s)", link.row["id"], cause, before)
        if one_click:  # a mail provider's request: no page, nobody to read it
            return PlainTextResponse("Unsubscribed.\n")
        return self.page("unsubscribed.html", email=link.row["email"])

    # --- webhook

    async def webhook(self, request: Request) -> Response:
        return await run_in_threadpool(self._webhook, await read_body(request, MAX_WEBHOOK_BYTES))

    def _webhook(self, body: bytes) -> Response:
        try:
            from pipeline.events import apply as events
        except ImportError as error:
            log.error("webhook: the events module cannot be loaded: %s", error)
            return PlainTextResponse("unavailable\n", 503)
        try:
            verifier = self.verifier()
            if not verifier.topic_arns:
                # Any AWS account's topic (validly signed by SNS) could otherwise report fake bounces.
                log.warning(
                    "webhook: refused an SNS message: [events] topic_arns is empty in %s; set it to the "
                    "ARN of the SNS topic of your SES events (until then every SNS message is refused)",
                    self.config.path,
                )
                return PlainTextResponse("refused: this endpoint accepts no SNS topic yet\n", 403)
            # Signature checks (and the certificate fetch) run outside the lock: only database work
            # holds it, so one slow certificate host does not stall every other notification.
            applied = events.handle_sns(self.events_db(), verifier, body, db_lock=self._events_lock)
        except NotificationDeferred as error:  # our side cannot check it now: SNS retries a 5xx
            log.warning("webhook: deferred: %s", error)
            return PlainTextResponse("try again later\n", 503)
        except NotificationRejected as error:
            log.warning("webhook: rejected: %s", error)
            return PlainTextResponse("rejected\n", 400)
        except NewsletterError as error:
            log.error("webhook: not applied: %s", error)
            return PlainTextResponse("try again later\n", 503)
        log.info(
            "webhook: %s %s: %s%s",
            applied.kind,
            applied.message_id,
            applied.outcome,
            " (duplicate)" if applied.duplicate else "",
        )
        return PlainTextResponse("ok\n")

    def events_db(self) -> sqlite3.Connection:
        with self._events_lock:
            if self._events_db is None:
                self._events_db = open_db(self.config.paths.state)
            return self._events_db

    def verifier(self) -> SnsVerifier:
        with self._verifier_lock:
            if self._verifier is None:
                from pipeline.events.sns import SnsVerifier

                self._verifier = SnsVerifier(topic_arns=self.config.events.topic_arns)
            return self._verifier


def check_signup_name(name: str) -> str:
    """The optional name from the sign-up form, tidied; ValueError (a sentence for the form) when it
    holds a web address or an "@", or is too long: it ends up in the headers of our mails."""
    try:
        name = check_name(name)
    except ValueError:
        raise ValueError("The name cannot contain control characters.") from None
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"Keep the name to {MAX_NAME_LENGTH} characters or fewer.")
    if "@" in name or _URL_IN_NAME.search(name):
        raise ValueError("The name cannot contain a web or email address.")
    return name


def _address_problem(address: str, error: ValueError) -> str:
    if not address.strip():
        return "Enter your email address."
    return f"That is not a valid email address: {error}"


def _environment(config: Config) -> jinja2.Environment:
    """The newsletter's own web templates first (``<templates>/web``), the packaged ones for the rest."""
    environment = jinja2.Environment(
        loader=jinja2.ChoiceLoader(
            [
                jinja2.FileSystemLoader(config.paths.templates / "web"),
                jinja2.FileSystemLoader(PACKAGED_TEMPLATES),
            ]
        ),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    for name in (*PAGES, "page.css"):  # a broken template stops the start, not a visitor's request
        try:
            environment.get_template(name)
        except jinja2.TemplateSyntaxError as error:
            raise ServeError(
                f"{error.filename or name}:{error.lineno}: template error: {error.message}"
            ) from None
        except jinja2.TemplateNotFound:
            raise ServeError(f"{config.paths.templates / 'web'}: template not found: {name}") from None
    return environment


# --- The application and the server -----------------------------------------------------------


def create_app(
    config: Config,
    *,
    secret: bytes | None = None,
    transport: Transport | None = None,
    verifier: SnsVerifier | None = None,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """The ASGI app. ``secret`` defaults to NEWSLETTER_SECRET (the same rule as sending), ``transport``
    to the configured one (opened on first mail), ``verifier`` to an SNS verifier for the configured topics."""
    if secret is None:
        secret = load_secret(allow_development=config.transport == "maildir")
    service = Service(config, secret, transport, verifier, clock)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        service.close()

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def not_found(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException) and exc.status_code != 404:
            return PlainTextResponse(f"{exc.detail}\n", exc.status_code, headers=exc.headers)
        return service.page("not_found.html", 404)

    async def too_large(request: Request, exc: Exception) -> Response:
        log.warning("%s: request body over the limit, refused", request.url.path.split("/")[1] or "/")
        return PlainTextResponse("Request body too large.\n", 413)

    async def server_error(request: Request, exc: Exception) -> Response:
        # Plain words, no traceback (that goes to the log, where uvicorn writes it).
        return PlainTextResponse("Something went wrong on our side. Please try again later.\n", 500)

    app = _Application(
        routes=[
            Route("/", service.signup, methods=["GET"]),
            Route("/subscribe", service.signup, methods=["GET", "POST"]),
            Route("/confirm/{token}", service.confirm_link, methods=["GET", "POST"]),
            Route("/unsubscribe/{token}", service.unsubscribe_link, methods=["GET", "POST"]),
            Route("/webhooks/ses", service.webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        exception_handlers={HTTPException: not_found, BodyTooLarge: too_large, Exception: server_error},
        lifespan=lifespan,
        style_hash=service.style_hash,
    )
    app.state.service = service
    return app


class _Application(Starlette):
    """Starlette with :class:`SecurityHeaders` around everything. Added as user middleware, it would sit
    inside Starlette's ServerErrorMiddleware, and a 500 would go out without the headers."""

    def __init__(self, *args: Any, style_hash: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.style_hash = style_hash

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeaders(super().build_middleware_stack(), self.style_hash)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or one line saying why not (before anything else starts)."""
    where = f"{host}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError) as error:
        raise ServeError(f"cannot listen on {where}: {getattr(error, 'strerror', None) or error}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as error:
        sock.close()
        hint = " (another server is running there; choose one with --port)" if error.errno == 98 else ""
        raise ServeError(f"cannot listen on {where}: {error.strerror}{hint}") from None
    return sock


def make_server(app: Starlette) -> Any:
    """The uvicorn server ``serve`` runs (tests run the same one)."""
    import uvicorn

    return uvicorn.Server(
        uvicorn.Config(
            app,
            proxy_headers=True,
            forwarded_allow_ips=Environment.from_os().forwarded_allow_ips,
            server_header=False,
            access_log=False,  # its lines carry whole URLs, tokens included; we log our own
            log_config=None,
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
    )


def serve(config: Config, host: str, port: int) -> None:
    """Run the service until Ctrl-C. A taken port or a bad host is a ServeError (one line)."""
    sock = bind(host, port)
    try:
        app = create_app(config)
        _log_to_stderr()
        bound = sock.getsockname()
        if not config.events.topic_arns:
            log.warning(
                "%s: [events] topic_arns is empty: the SES webhook (POST /webhooks/ses) refuses every "
                "SNS message until it is set to the ARN of your SES events topic",
                config.path,
            )
        log.info("listening on http://%s:%d/ for %s (Ctrl-C stops)", bound[0], bound[1], config.public_url)
        make_server(app).run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # uvicorn has already shut down gracefully and re-raised the signal
    finally:
        sock.close()
    log.info("stopped")


def _log_to_stderr() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("pipeline", "uvicorn"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False
