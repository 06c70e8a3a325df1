"""The links in our mails, checked, and the unsubscribe pages they lead to.

``GET /unsubscribe/{token}`` shows a page with one button and changes nothing (mail scanners follow
links); ``POST /unsubscribe/{token}`` is that button, or a mail provider's one-click POST (RFC 8058),
which gets a line of plain text instead of a page.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from pipeline.audience.signup import by_id, unsubscribe
from pipeline.audience.tokens import token_expiry, token_subscriber_id, verify_token
from pipeline.web.security import MAX_FORM_BYTES, parse_form, read_body
from pipeline.web.state import Service

log = logging.getLogger(__name__)

ONE_CLICK = ("List-Unsubscribe", "One-Click")


@dataclass(frozen=True)
class LinkCheck:
    """A token from a URL, checked against the subscriber it names."""

    row: sqlite3.Row | None
    status: int
    """200 when the token is ours for this subscriber; else the status to answer."""


def check_link(service: Service, purpose: str, token: str) -> LinkCheck:
    """Whether ``token`` is a ``purpose`` link we made for the subscriber it names (the signature
    alone: a confirmation link's expiry is judged by the caller, who words it differently)."""
    subscriber_id = token_subscriber_id(token)
    if subscriber_id is None or (purpose == "confirm") != (token_expiry(token) is not None):
        return LinkCheck(None, 400)
    with service.db_lock:
        row = by_id(service.db, subscriber_id)
    expires = token_expiry(token)
    checked_at = None if expires is None else expires - 1
    if row is None or not verify_token(
        service.secret,
        purpose,
        token,
        row["email"],
        now=checked_at,
        list_id=service.list_id,
        previous_secret=service.previous_secret,
    ):
        return LinkCheck(None, 404)
    return LinkCheck(row, 200)


def short(token: str) -> str:
    """A token as logs may show it: the subscriber id and a few characters, never enough to use."""
    return token[:12] + "…" if len(token) > 12 else token


async def unsubscribe_link(request: Request) -> Response:
    service: Service = request.app.state.service
    token = request.path_params["token"]
    if request.method != "POST":
        return await run_in_threadpool(_unsubscribe_page, service, token)
    form = await parse_form(request.headers, await read_body(request, MAX_FORM_BYTES)) or {}
    one_click = form.get(ONE_CLICK[0]) == ONE_CLICK[1]
    return await run_in_threadpool(_unsubscribe, service, token, one_click)


def _unsubscribe_page(service: Service, token: str) -> Response:
    """GET: the button; nothing changes."""
    link = check_link(service, "unsubscribe", token)
    if link.row is None:
        log.warning("unsubscribe page: refused link %s (%d)", short(token), link.status)
        return service.pages.page("link_invalid.html", link.status)
    if link.row["status"] in ("active", "pending"):
        action = f"{service.pages.prefix}/unsubscribe/{token}"
        return service.pages.page("unsubscribe.html", email=link.row["email"], action=action)
    return service.pages.page("unsubscribed.html", email=link.row["email"])


def _unsubscribe(service: Service, token: str, one_click: bool) -> Response:
    """POST: the button, or a mail provider's one-click request."""
    link = check_link(service, "unsubscribe", token)
    if link.row is None:
        log.warning("unsubscribe: refused link %s (%d)", short(token), link.status)
        if one_click:
            return PlainTextResponse("This unsubscribe link is not valid.\n", link.status)
        return service.pages.page("link_invalid.html", link.status)
    cause = "one-click (RFC 8058)" if one_click else "unsubscribe page"
    with service.db_lock:
        before = unsubscribe(service.db, link.row["id"], cause)
    log.info("unsubscribe: s%d: %s (was %s)", link.row["id"], cause, before)
    if one_click:  # a mail provider's request: no page, nobody to read it
        return PlainTextResponse("Unsubscribed.\n")
    return service.pages.page("unsubscribed.html", email=link.row["email"])
