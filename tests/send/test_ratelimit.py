"""The token bucket that paces a campaign at the account's rate."""

from __future__ import annotations

import pytest

from pipeline.send.ratelimit import RateLimiter
from tests.support.fakes import ManualClock


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
