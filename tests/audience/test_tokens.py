from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from pipeline.audience.tokens import (
    MissingSecret,
    load_previous_secret,
    load_secret,
    make_token,
    token_expiry,
    token_issued,
    token_subscriber_id,
    verify_token,
)

SECRET = b"0123456789abcdef0123"
LIST = "Crate Notes <crate-notes.example.org>"


def test_token_round_trip_and_tampering() -> None:
    token = make_token(SECRET, "unsubscribe", 42, "Ada@Example.org", list_id=LIST)
    assert token.startswith("42.") and "ada" not in token.lower()
    assert verify_token(SECRET, "unsubscribe", token, "ada@example.org", list_id=LIST)
    assert not verify_token(SECRET, "unsubscribe", token, "bob@example.org", list_id=LIST)
    assert not verify_token(SECRET, "confirm", token, "ada@example.org", list_id=LIST)
    assert not verify_token(b"another-secret-0000", "unsubscribe", token, "ada@example.org", list_id=LIST)
    assert not verify_token(SECRET, "unsubscribe", "43" + token[2:], "ada@example.org", list_id=LIST)
    for garbage in ("", ".", "42", "x.y", "42." + "A" * 24, "\u00e9.\u00e9"):
        assert not verify_token(SECRET, "unsubscribe", garbage, "ada@example.org", list_id=LIST)


def test_a_confirmation_token_signs_when_it_was_sent() -> None:
    token = make_token(SECRET, "confirm", 7, "ada@example.org", expires=2000, issued=1000, list_id=LIST)
    assert token.startswith("7.1000.2000.")
    assert (token_subscriber_id(token), token_issued(token), token_expiry(token)) == (7, 1000, 2000)
    assert verify_token(SECRET, "confirm", token, "ada@example.org", now=1500, list_id=LIST)
    assert not verify_token(SECRET, "confirm", token, "ada@example.org", now=2000, list_id=LIST)
    signature = token.rsplit(".", 1)[1]
    for forged in (
        f"7.1001.2000.{signature}",
        f"7.1000.2001.{signature}",
        f"7.2000.{signature}",
        f"7.1000.{signature}",
        f"7.{signature}",
        f"7.1000.2000.1.{signature}",
    ):
        assert not verify_token(SECRET, "confirm", forged, "ada@example.org", now=1500, list_id=LIST), forged
    # The earlier forms keep their meaning: <id>.<sig> and <id>.<expiry>.<sig>.
    unsubscribe = make_token(SECRET, "unsubscribe", 7, "ada@example.org", list_id=LIST)
    assert (
        unsubscribe.count(".") == 1
        and token_issued(unsubscribe) is None
        and token_expiry(unsubscribe) is None
    )
    expiring = make_token(SECRET, "confirm", 7, "ada@example.org", 2000, list_id=LIST)
    assert expiring.count(".") == 2 and token_issued(expiring) is None and token_expiry(expiring) == 2000
    assert verify_token(SECRET, "confirm", expiring, "ada@example.org", now=1500, list_id=LIST)
    with pytest.raises(ValueError):
        make_token(SECRET, "confirm", 7, "ada@example.org", issued=1000, list_id=LIST)


@pytest.mark.parametrize(
    "token",
    ["\u00b2.abc", "1.\u00b2.abc", "1.\u00b9\u00b2", "1.1.\u00b2.abc", "1.\u00b2.1.abc", "\u00b2\u00b3"],
)
def test_digits_int_cannot_read_make_no_token(token: str) -> None:
    # "²".isdigit() is True, int("²") raises: these must be refused, not crash.
    assert not verify_token(SECRET, "unsubscribe", token, "ada@example.org", list_id=LIST)
    assert not verify_token(SECRET, "confirm", token, "ada@example.org", list_id=LIST)
    assert token_expiry(token) is None and token_issued(token) is None
    assert token_subscriber_id(token) in (None, 1)


def test_secret_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEWSLETTER_SECRET", raising=False)
    with pytest.raises(MissingSecret, match="NEWSLETTER_SECRET is not set"):
        load_secret(allow_development=False)
    assert load_secret(allow_development=True)
    monkeypatch.setenv("NEWSLETTER_SECRET", "short")
    with pytest.raises(MissingSecret, match="too short"):
        load_secret(allow_development=True)
    monkeypatch.setenv("NEWSLETTER_SECRET", "x" * 32)
    assert load_secret(allow_development=False) == b"x" * 32


OTHER_LIST = "Other Notes <other-notes.example.org>"
PREVIOUS = b"the-secret-before-0123"


def _unbound(secret: bytes, purpose: str, subscriber_id: int, email: str, expires: int | None = None) -> str:
    """A token as made before tokens named their list (HMAC over purpose, id, address, expiry), built
    here from that rule, so the test pins what was mailed then."""
    message = f"{purpose}\x00{subscriber_id}\x00{email.casefold()}"
    if expires is not None:
        message += f"\x00{expires}"
    signature = base64.urlsafe_b64encode(hmac.new(secret, message.encode(), hashlib.sha256).digest()[:18])
    return ".".join(str(n) for n in (subscriber_id, expires) if n is not None) + "." + signature.decode()


def test_a_token_is_bound_to_its_list() -> None:
    token = make_token(SECRET, "unsubscribe", 42, "ada@example.org", list_id=LIST)
    assert verify_token(SECRET, "unsubscribe", token, "ada@example.org", list_id=LIST)
    assert not verify_token(SECRET, "unsubscribe", token, "ada@example.org", list_id=OTHER_LIST)
    confirm = make_token(SECRET, "confirm", 7, "ada@example.org", expires=2000, issued=1000, list_id=LIST)
    assert verify_token(SECRET, "confirm", confirm, "ada@example.org", now=1500, list_id=LIST)
    assert not verify_token(SECRET, "confirm", confirm, "ada@example.org", now=1500, list_id=OTHER_LIST)


def test_tokens_mailed_before_binding_still_verify_for_their_address_only() -> None:
    unbound = _unbound(SECRET, "unsubscribe", 42, "ada@example.org")
    assert unbound != make_token(SECRET, "unsubscribe", 42, "ada@example.org", list_id=LIST)
    assert verify_token(SECRET, "unsubscribe", unbound, "ada@example.org", list_id=LIST)
    assert not verify_token(SECRET, "unsubscribe", unbound, "bob@example.org", list_id=LIST)
    assert not verify_token(SECRET, "confirm", unbound, "ada@example.org", list_id=LIST)
    expiring = _unbound(SECRET, "confirm", 7, "ada@example.org", expires=2000)
    assert verify_token(SECRET, "confirm", expiring, "ada@example.org", now=1500, list_id=LIST)
    assert not verify_token(SECRET, "confirm", expiring, "ada@example.org", now=2000, list_id=LIST)


def test_links_signed_with_the_previous_secret_work_while_it_is_rotated_out() -> None:
    mailed = make_token(PREVIOUS, "unsubscribe", 42, "ada@example.org", list_id=LIST)
    mailed_before_binding = _unbound(PREVIOUS, "unsubscribe", 42, "ada@example.org")
    for token in (mailed, mailed_before_binding):
        assert not verify_token(SECRET, "unsubscribe", token, "ada@example.org", list_id=LIST)
        assert verify_token(
            SECRET, "unsubscribe", token, "ada@example.org", list_id=LIST, previous_secret=PREVIOUS
        )
        assert not verify_token(
            SECRET, "unsubscribe", token, "bob@example.org", list_id=LIST, previous_secret=PREVIOUS
        )
    new = make_token(SECRET, "unsubscribe", 42, "ada@example.org", list_id=LIST)
    assert verify_token(SECRET, "unsubscribe", new, "ada@example.org", list_id=LIST, previous_secret=PREVIOUS)
    assert not verify_token(
        SECRET, "unsubscribe", mailed, "ada@example.org", list_id=OTHER_LIST, previous_secret=PREVIOUS
    )


def test_previous_secret_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEWSLETTER_SECRET_PREVIOUS", raising=False)
    assert load_previous_secret() is None
    monkeypatch.setenv("NEWSLETTER_SECRET_PREVIOUS", "short")
    with pytest.raises(MissingSecret, match=r"^NEWSLETTER_SECRET_PREVIOUS is too short"):
        load_previous_secret()
    monkeypatch.setenv("NEWSLETTER_SECRET_PREVIOUS", "y" * 32)
    assert load_previous_secret() == b"y" * 32
