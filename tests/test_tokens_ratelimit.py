from __future__ import annotations

import pytest

from pipeline.ratelimit import RateLimiter
from pipeline.tokens import MissingSecret, load_secret, make_token, verify_token

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


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_holds_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(100, clock)
    taken = 0
    for _ in range(1000):  # 10 simulated seconds in 10 ms steps, always asking for more than allowed
        taken += limiter.take(50)
        clock.now += 0.01
    assert 990 <= taken <= 1010
    assert limiter.capacity == 5  # bursts are capped at 50 ms worth


def test_rate_limiter_delay() -> None:
    clock = Clock()
    limiter = RateLimiter(4, clock)
    assert limiter.take(10) == 1
    assert limiter.delay() == pytest.approx(0.25)
    clock.now += 0.25
    assert limiter.take(10) == 1
