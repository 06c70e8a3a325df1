"""Sign-up with double opt-in: the form, the "check your inbox" answer, the mail it calls for, and
the confirmation link's pages.

Sign-up answers the same bytes, status and timing whatever the address's state (new, pending,
active, unsubscribed, bounced): all the work, database and mail alike, happens after the response,
in a background task, so the page reveals nothing about who is on the list. The confirmation
email carries nothing the visitor typed but the address: not even the name, so nobody can put
their own words in a message from our domain.

``GET /confirm/{token}`` shows a page with one button and changes nothing (mail scanners follow
links); ``POST /confirm/{token}`` is the button.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import secrets
import sqlite3

from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from pipeline.audience.addresses import check_address, check_name
from pipeline.audience.signup import Signup, confirm, confirm_outcome, request_signup, undo_signup_mail
from pipeline.audience.tokens import make_token, token_expiry, token_issued
from pipeline.errors import NewsletterError, TransportUnavailable
from pipeline.send.message import sender_address, service_message
from pipeline.send.transports import Envelope
from pipeline.web import links
from pipeline.web.security import HOUR, MAX_FORM_BYTES, client_key, parse_form, read_body
from pipeline.web.state import Service
from pipeline.web.welcome import welcome_after

log = logging.getLogger(__name__)

MAX_NAME_LENGTH = 100
HONEYPOT = "website"
# In a name: a scheme, "www.", or a domain (two or more letters, a dot, a top-level domain of letters).
# "J.R.R. Tolkien" and "A.Smith" pass; "St.John" does not, and its owner can add a space.
_URL_IN_NAME = re.compile(
    r"[a-z][a-z0-9+.-]*:/|www\.|(?<![\w.-])[^\W_][\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,63}(?![\w-])", re.IGNORECASE
)


# --- Sign-up ---------------------------------------------------------------------------------------


async def signup(request: Request) -> Response:
    service: Service = request.app.state.service
    pages = service.pages
    if request.method != "POST":
        return pages.page("signup.html")
    client = request.client.host if request.client else "unknown"
    wait = service.per_ip.hit(client_key(client))
    if wait:
        log.warning("sign-up refused: more than %d from %s in an hour", service.per_ip.limit, client)
        response = pages.page("rate_limited.html", 429)
        response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return response
    form = await parse_form(request.headers, await read_body(request, MAX_FORM_BYTES)) or {}
    if form.get(HONEYPOT):
        log.info("sign-up ignored: the honeypot field was filled (from %s)", client)
        return pages.page("check_inbox.html")
    email, name = form.get("email", ""), form.get("name", "")
    try:
        email = check_address(email)
    except ValueError as error:
        return pages.page(
            "signup.html", 400, error=_address_problem(email, error), email=email.strip(), name=name
        )
    try:
        name = check_signup_name(name)
    except ValueError as error:
        return pages.page("signup.html", 400, name_error=str(error), email=email, name=name.strip())
    if service.per_address.hit(email.casefold()):
        # The same answer as always: a different one would tell who is on the list.
        log.warning("sign-up dropped: more than %d requests for one address today", service.per_address.limit)
        return pages.page("check_inbox.html")
    return HTMLResponse(
        pages.render("check_inbox.html"), background=BackgroundTask(record_signup, service, email, name)
    )


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


def record_signup(service: Service, email: str, name: str) -> None:
    """After the response: record the sign-up and mail what it calls for."""
    try:
        _record_signup(service, email, name)
    finally:
        service.signup_handled()


def _record_signup(service: Service, email: str, name: str) -> None:
    at = service.clock()
    try:
        with service.db_lock:
            signup = request_signup(
                service.db, email, name, at=at, resend_seconds=service.config.serve.resend_minutes * 60
            )
    except (NewsletterError, sqlite3.Error) as error:
        log.error("sign-up not recorded: %s", error)
        return
    if signup.mail is None:
        log.info("sign-up: s%d (%s): nothing mailed", signup.subscriber_id, signup.status)
        return
    try:
        mail(service, signup, at)
    except NewsletterError as error:
        log.error(
            "sign-up: s%d (%s): %s mail not sent: %s", signup.subscriber_id, signup.status, signup.mail, error
        )
        if isinstance(error, TransportUnavailable):
            service.drop_transport()  # reopened for the next sign-up: the server may be back by then
        with service.db_lock:
            undo_signup_mail(service.db, signup, at)
        return
    log.info("sign-up: s%d (%s): %s mail sent", signup.subscriber_id, signup.status, signup.mail)


def mail(service: Service, signup: Signup, at: float) -> None:
    """Send the confirmation mail a sign-up calls for, or the "already subscribed" one."""
    config = service.config
    if signup.mail == "confirm":
        expires = int(at + config.serve.confirm_hours * HOUR)
        # The time it is sent (as stored in confirmation_sent_at), so only the latest link works.
        token = make_token(
            service.secret,
            "confirm",
            signup.subscriber_id,
            signup.email,
            expires=expires,
            issued=int(at),
            list_id=service.list_id,
        )
        link, template = f"{config.public_url}/confirm/{token}", "confirm_email"
        subject = f"Confirm your subscription to {config.name}"
    else:
        token = make_token(
            service.secret, "unsubscribe", signup.subscriber_id, signup.email, list_id=service.list_id
        )
        link, template = f"{config.public_url}/unsubscribe/{token}", "already_email"
        subject = f"You are already subscribed to {config.name}"
    # Not the name: whoever filled in the form chose it, and this goes to someone who may not have.
    values = {"email": signup.email, "name": "", "link": link, "subject": subject}
    recipient, data = service_message(
        config,
        email=signup.email,
        subject=subject,
        text=service.pages.render(f"{template}.txt", **values),
        html=service.pages.render(f"{template}.html", **values),
        date=dt.datetime.fromtimestamp(at, dt.UTC),
    )
    # Unique per message (dots are not allowed in maildir keys): each resend is a new delivery.
    key = f"{signup.mail}-s{signup.subscriber_id}-{int(at)}-{secrets.token_hex(4)}"
    service.transport().send(Envelope(sender=sender_address(config), recipient=recipient, data=data, key=key))


# --- The confirmation link ------------------------------------------------------------------------


async def confirm_link(request: Request) -> Response:
    service: Service = request.app.state.service
    token = request.path_params["token"]
    if request.method != "POST":
        return await run_in_threadpool(_confirm_page, service, token)
    await read_body(request, MAX_FORM_BYTES)  # what the button sends does not matter
    return await run_in_threadpool(_confirm, service, token)


def _confirm_link(service: Service, token: str) -> links.LinkCheck | Response:
    """The subscriber a confirmation link names, or the page to answer when it is forged or expired."""
    link = links.check_link(service, "confirm", token)
    if link.row is None:
        log.warning("confirm: refused link %s (%d)", links.short(token), link.status)
        return service.pages.page("link_invalid.html", link.status)
    if service.clock() >= (token_expiry(token) or 0):
        log.info("confirm: s%d: link expired", link.row["id"])
        return service.pages.page("confirm_expired.html", 410, email=link.row["email"])
    return link


def _confirm_page(service: Service, token: str) -> Response:
    """GET: what the button would do, and the button; nothing changes (mail scanners open links)."""
    link = _confirm_link(service, token)
    if not isinstance(link, links.LinkCheck):
        return link
    assert link.row is not None
    sent_at = token_issued(token)
    outcome = "stale" if sent_at is None else confirm_outcome(link.row, sent_at)
    if outcome == "confirm":
        action = f"{service.pages.prefix}/confirm/{token}"
        return service.pages.page("confirm.html", email=link.row["email"], action=action)
    return _confirmed_page(service, outcome, link.row["email"])


def _confirm(service: Service, token: str) -> Response:
    """POST: the button."""
    link = _confirm_link(service, token)
    if not isinstance(link, links.LinkCheck):
        return link
    assert link.row is not None
    subscriber_id, sent_at = link.row["id"], token_issued(token)
    if sent_at is None:  # a link from before links carried the time they were sent
        outcome = "stale"
    else:
        with service.db_lock:
            outcome = confirm(service.db, subscriber_id, "confirmed by link", sent_at=sent_at)
    log.info("confirm: s%d: %s", subscriber_id, outcome)
    return welcome_after(
        service, outcome, subscriber_id, _confirmed_page(service, outcome, link.row["email"])
    )


def _confirmed_page(service: Service, outcome: str, email: str) -> Response:
    if outcome in ("confirmed", "already"):
        return service.pages.page("confirmed.html")
    if outcome == "refused":
        return service.pages.page("confirm_refused.html", 403)
    if outcome == "stale":
        return service.pages.page("confirm_stale.html", 410, email=email)
    return service.pages.page("link_invalid.html", 404)
