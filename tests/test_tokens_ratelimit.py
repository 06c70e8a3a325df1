from __future__ import annotations

import time

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
from pipeline.send.ratelimit import RateLimiter
from pipeline.web import security as web
from pipeline.web.security import MAX_TRACKED_KEYS, SlidingWindow, client_key
from tests.support.fakes import ManualClock

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


def test_rate_limiter_holds_the_rate() -> None:
    clock = ManualClock()
    limiter = RateLimiter(100, clock)
    taken = 0
    for _ in range(1000):  # 10 simulated seconds in 10 ms steps, always asking for more than allowed
        taken += limiter.take(50)
        clock.now += 0.01
    assert 990 <= taken <= 1010
    assert limiter.capacity == 5  # bursts are capped at 50 ms worth


def test_rate_limiter_delay() -> None:
    clock = ManualClock()
    limiter = RateLimiter(4, clock)
    assert limiter.take(10) == 1
    assert limiter.delay() == pytest.approx(0.25)
    clock.now += 0.25
    assert limiter.take(10) == 1


# --- The sign-up limits of the web service -------------------------------------------------------


def test_an_ipv6_client_counts_by_its_64() -> None:
    assert (
        client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff:ffff:ffff:ffff") == "2001:db8:1:2::/64"
    )
    assert client_key("2001:db8:1:3::1") == "2001:db8:1:3::/64"
    assert client_key("203.0.113.9") == "203.0.113.9"
    assert client_key("::ffff:203.0.113.9") == "203.0.113.9"
    assert client_key("unknown") == "unknown"


def test_the_window_forgets_the_least_recently_seen_past_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(web, "MAX_TRACKED_KEYS", 3)
    clock = ManualClock()
    window = SlidingWindow(1, 3600, clock)
    for key in ("a", "b", "c"):
        assert window.hit(key) == 0
    assert window.hit("a") > 0  # refused, and now the most recently seen
    assert window.hit("d") == 0
    assert list(window._events) == ["c", "a", "d"]  # b went
    assert window.hit("a") > 0  # a still counts


def test_the_window_drops_idle_keys_as_it_goes() -> None:
    clock = ManualClock()
    window = SlidingWindow(2, 10, clock)
    for index in range(100):
        window.hit(f"k{index}")
    clock.now += 11
    assert window.hit("new") == 0
    assert list(window._events) == ["new"]


def test_a_hit_from_a_new_address_does_not_scan_the_table() -> None:
    window = SlidingWindow(20, 3600, time.time)
    for index in range(MAX_TRACKED_KEYS):
        window.hit(f"2001:db8::{index:x}")
    started = time.perf_counter()
    for index in range(1000):
        window.hit(f"2001:db8:1::{index:x}")
    elapsed = time.perf_counter() - started
    assert len(window._events) == MAX_TRACKED_KEYS
    assert elapsed < 1.0, f"1000 hits took {elapsed:.2f} s"
