from __future__ import annotations

import pytest

from pipeline.audience.tokens import (
    MissingSecret,
    load_secret,
    make_token,
    token_expiry,
    token_issued,
    token_subscriber_id,
    verify_token,
)

SECRET = b"0123456789abcdef0123"


def test_token_round_trip_and_tampering() -> None:
    token = make_token(SECRET, "unsubscribe", 42, "Ada@Example.org")
    assert token.startswith("42.") and "ada" not in token.lower()
    assert verify_token(SECRET, "unsubscribe", token, "ada@example.org")
    assert not verify_token(SECRET, "unsubscribe", token, "bob@example.org")
    assert not verify_token(SECRET, "confirm", token, "ada@example.org")
    assert not verify_token(b"another-secret-0000", "unsubscribe", token, "ada@example.org")
    assert not verify_token(SECRET, "unsubscribe", "43" + token[2:], "ada@example.org")
    for garbage in ("", ".", "42", "x.y", "42." + "A" * 24, "\u00e9.\u00e9"):
        assert not verify_token(SECRET, "unsubscribe", garbage, "ada@example.org")


def test_a_confirmation_token_signs_when_it_was_sent() -> None:
    token = make_token(SECRET, "confirm", 7, "ada@example.org", expires=2000, issued=1000)
    assert token.startswith("7.1000.2000.")
    assert (token_subscriber_id(token), token_issued(token), token_expiry(token)) == (7, 1000, 2000)
    assert verify_token(SECRET, "confirm", token, "ada@example.org", now=1500)
    assert not verify_token(SECRET, "confirm", token, "ada@example.org", now=2000)
    signature = token.rsplit(".", 1)[1]
    for forged in (
        f"7.1001.2000.{signature}",
        f"7.1000.2001.{signature}",
        f"7.2000.{signature}",
        f"7.1000.{signature}",
        f"7.{signature}",
        f"7.1000.2000.1.{signature}",
    ):
        assert not verify_token(SECRET, "confirm", forged, "ada@example.org", now=1500), forged
    # The earlier forms keep their meaning: <id>.<sig> and <id>.<expiry>.<sig>.
    unsubscribe = make_token(SECRET, "unsubscribe", 7, "ada@example.org")
    assert (
        unsubscribe.count(".") == 1
        and token_issued(unsubscribe) is None
        and token_expiry(unsubscribe) is None
    )
    expiring = make_token(SECRET, "confirm", 7, "ada@example.org", 2000)
    assert expiring.count(".") == 2 and token_issued(expiring) is None and token_expiry(expiring) == 2000
    assert verify_token(SECRET, "confirm", expiring, "ada@example.org", now=1500)
    with pytest.raises(ValueError):
        make_token(SECRET, "confirm", 7, "ada@example.org", issued=1000)


@pytest.mark.parametrize(
    "token",
    ["\u00b2.abc", "1.\u00b2.abc", "1.\u00b9\u00b2", "1.1.\u00b2.abc", "1.\u00b2.1.abc", "\u00b2\u00b3"],
)
def test_digits_int_cannot_read_make_no_token(token: str) -> None:
    # "²".isdigit() is True, int("²") raises: these must be refused, not crash.
    assert not verify_token(SECRET, "unsubscribe", token, "ada@example.org")
    assert not verify_token(SECRET, "confirm", token, "ada@example.org")
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
