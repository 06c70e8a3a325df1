"""Signed, unguessable tokens for unsubscribe links and (expiring) confirmation links.

A token is ``<subscriber id>.<signature>``; the signature is an HMAC over the
purpose, the id and the address, so it cannot be forged, moved to another
subscriber, or reused for another purpose. It does not reveal the address.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import time

from .errors import MissingSecret

SECRET_ENV = "NEWSLETTER_SECRET"
# Only for the local maildir transport: nothing leaves the machine, so links need not be unforgeable.
DEVELOPMENT_SECRET = "development-secret-not-for-real-mail"
MIN_SECRET_LENGTH = 16

log = logging.getLogger(__name__)



def load_secret(allow_development: bool) -> bytes:
    secret = os.environ.get(SECRET_ENV, "")
    if secret:
        if len(secret) < MIN_SECRET_LENGTH:
            raise MissingSecret(f"{SECRET_ENV} is too short: use at least {MIN_SECRET_LENGTH} random characters")
        return secret.encode("utf-8")
    if allow_development:
        log.warning("%s is not set: using a development secret (fine for the local maildir transport only)", SECRET_ENV)
        return DEVELOPMENT_SECRET.encode("utf-8")
    raise MissingSecret(
        f"{SECRET_ENV} is not set: unsubscribe links must be signed with a secret "
        f'(e.g. export {SECRET_ENV}="$(python3 -c \'import secrets; print(secrets.token_urlsafe(32))\')")'
    )


def _signature(secret: bytes, purpose: str, subscriber_id: int, email: str, expires: int | None) -> str:
    message = f"{purpose}\x00{subscriber_id}\x00{email.casefold()}"
    if expires is not None:
        message += f"\x00{expires}"
    digest = hmac.new(secret, message.encode(), hashlib.sha256).digest()[:18]
    return base64.urlsafe_b64encode(digest).decode("ascii")


def make_token(secret: bytes, purpose: str, subscriber_id: int, email: str, expires: int | None = None) -> str:
    """``<id>.<signature>``, or ``<id>.<expiry>.<signature>`` for a link that stops working at ``expires``
    (Unix seconds, signed with the rest)."""
    signature = _signature(secret, purpose, subscriber_id, email, expires)
    return f"{subscriber_id}.{signature}" if expires is None else f"{subscriber_id}.{expires}.{signature}"


def token_subscriber_id(token: str) -> int | None:
    """The id a token claims; verify it with :func:`verify_token` before trusting it."""
    head, dot, _ = token.partition(".")
    return int(head) if dot and head.isdigit() and len(head) < 19 else None


def token_expiry(token: str) -> int | None:
    """The expiry an expiring token claims (unverified), or None for a token without one."""
    parts = token.split(".")
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() and len(parts[1]) < 12 else None


def verify_token(secret: bytes, purpose: str, token: str, email: str, now: float | None = None) -> bool:
    """Whether ``token`` was made by us for this purpose and address, and has not expired."""
    subscriber_id = token_subscriber_id(token)
    if subscriber_id is None:
        return False
    expires = token_expiry(token)
    if token.count(".") == 2 and expires is None:
        return False
    expected = make_token(secret, purpose, subscriber_id, email, expires)
    if not hmac.compare_digest(expected.encode(), token.encode("utf-8", "replace")):
        return False
    return expires is None or (time.time() if now is None else now) < expires
