"""Signed, unguessable tokens for unsubscribe links and (expiring) confirmation links.

A token is ``<subscriber id>.<signature>``; the signature is an HMAC over the
purpose, the list (its List-Id), the id and the address, so it cannot be forged,
moved to another subscriber or another list, or reused for another purpose. It
does not reveal the address. A confirmation link's token also carries, signed
with the rest, when it was sent and when it expires: ``<id>.<sent>.<expiry>.<signature>``
(Unix seconds).

Tokens are made with ``NEWSLETTER_SECRET``, and verified against it or, while the
secret is being rotated, against ``NEWSLETTER_SECRET_PREVIOUS``: the links already
mailed keep working. Tokens made before they were bound to the list (no List-Id in
the signature) still verify against either secret, so no link already mailed
breaks; they can only act on the one address they were made for, as before.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time

from pipeline.config import PREVIOUS_SECRET_ENV, SECRET_ENV, Environment
from pipeline.errors import MissingSecret

# Only for the local maildir transport: nothing leaves the machine, so links need not be unforgeable.
DEVELOPMENT_SECRET = "development-secret-not-for-real-mail"
MIN_SECRET_LENGTH = 16

log = logging.getLogger(__name__)


def load_secret(allow_development: bool) -> bytes:
    secret = Environment.from_os().secret
    if secret:
        if len(secret) < MIN_SECRET_LENGTH:
            raise MissingSecret(
                f"{SECRET_ENV} is too short: use at least {MIN_SECRET_LENGTH} random characters"
            )
        return secret.encode("utf-8")
    if allow_development:
        log.warning(
            "%s is not set: using a development secret (fine for the local maildir transport only)",
            SECRET_ENV,
        )
        return DEVELOPMENT_SECRET.encode("utf-8")
    raise MissingSecret(
        f"{SECRET_ENV} is not set: unsubscribe links must be signed with a secret "
        f"(e.g. export {SECRET_ENV}=\"$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')\")"
    )


def load_previous_secret() -> bytes | None:
    """NEWSLETTER_SECRET_PREVIOUS, the secret being rotated out: tokens made with it still verify."""
    secret = Environment.from_os().previous_secret
    if not secret:
        return None
    if len(secret) < MIN_SECRET_LENGTH:
        raise MissingSecret(
            f"{PREVIOUS_SECRET_ENV} is too short: it must be the secret {SECRET_ENV} held before"
        )
    return secret.encode("utf-8")


def _signature(
    secret: bytes,
    purpose: str,
    subscriber_id: int,
    email: str,
    expires: int | None,
    issued: int | None = None,
    list_id: str | None = None,
) -> str:
    # No list: the form tokens had before they were bound to one (verified, never made).
    bound = "" if list_id is None else f"list\x00{list_id}\x00"
    message = f"{purpose}\x00{bound}{subscriber_id}\x00{email.casefold()}"
    if expires is not None:
        message += f"\x00{expires}"
    if issued is not None:
        message += f"\x00issued\x00{issued}"
    digest = hmac.new(secret, message.encode(), hashlib.sha256).digest()[:18]
    return base64.urlsafe_b64encode(digest).decode("ascii")


def make_token(
    secret: bytes,
    purpose: str,
    subscriber_id: int,
    email: str,
    expires: int | None = None,
    issued: int | None = None,
    *,
    list_id: str,
) -> str:
    """``<id>.<signature>``; ``<id>.<expiry>.<signature>`` for a link that stops working at ``expires``
    (Unix seconds, signed with the rest); ``<id>.<issued>.<expiry>.<signature>`` when the time the link
    was sent is signed in too (Unix seconds: the confirmation link, so only the latest one works).
    ``list_id`` is the List-Id of the list it belongs to; a token verifies for that list only."""
    return _token(secret, purpose, subscriber_id, email, expires, issued, list_id)


def _token(
    secret: bytes,
    purpose: str,
    subscriber_id: int,
    email: str,
    expires: int | None,
    issued: int | None,
    list_id: str | None,
) -> str:
    if issued is not None and expires is None:
        raise ValueError("a token with an issue time needs an expiry too")
    signature = _signature(secret, purpose, subscriber_id, email, expires, issued, list_id)
    numbers = [str(n) for n in (subscriber_id, issued, expires) if n is not None]
    return ".".join([*numbers, signature])


def _number(text: str, digits: int) -> int | None:
    # isascii() too: "²".isdigit() is True, and int("²") fails.
    return int(text) if text.isascii() and text.isdigit() and len(text) <= digits else None


def _parts(token: str) -> tuple[int, int | None, int | None, str] | None:
    """(id, issued, expires, signature) as the token claims them (unverified); None when malformed."""
    parts = token.split(".")
    if not 2 <= len(parts) <= 4:
        return None
    subscriber_id = _number(parts[0], 18)
    numbers = [_number(part, 11) for part in parts[1:-1]]
    if subscriber_id is None or None in numbers:
        return None
    issued = numbers[0] if len(numbers) == 2 else None
    expires = numbers[-1] if numbers else None
    return subscriber_id, issued, expires, parts[-1]


def token_subscriber_id(token: str) -> int | None:
    """The id a token claims; verify it with :func:`verify_token` before trusting it."""
    head, dot, _ = token.partition(".")
    return _number(head, 18) if dot else None


def token_expiry(token: str) -> int | None:
    """The expiry an expiring token claims (unverified), or None for a token without one."""
    parts = _parts(token)
    return None if parts is None else parts[2]


def token_issued(token: str) -> int | None:
    """When the link was sent, as a token with an issue time claims it (unverified); else None."""
    parts = _parts(token)
    return None if parts is None else parts[1]


def verify_token(
    secret: bytes,
    purpose: str,
    token: str,
    email: str,
    now: float | None = None,
    *,
    list_id: str,
    previous_secret: bytes | None = None,
) -> bool:
    """Whether ``token`` was made by us for this purpose, address and list (or before tokens named
    their list), with ``secret`` or ``previous_secret``, and has not expired."""
    parts = _parts(token)
    if parts is None:
        return False
    subscriber_id, issued, expires, _ = parts
    given = token.encode("utf-8", "replace")
    keys = [secret] if previous_secret is None else [secret, previous_secret]
    matches = [
        hmac.compare_digest(
            _token(key, purpose, subscriber_id, email, expires, issued, bound).encode(), given
        )
        for key in keys
        for bound in (list_id, None)
    ]
    if not any(matches):
        return False
    return expires is None or (time.time() if now is None else now) < expires
