"""pipeline.events.cache.TTLCache with an injected clock."""

from __future__ import annotations

import pytest

from pipeline.events.cache import TTLCache
from tests.support.fakes import ManualClock


def test_an_entry_expires_after_its_ttl() -> None:
    clock = ManualClock(100.0)
    cache: TTLCache[str, int] = TTLCache(max_size=4, ttl=10, clock=clock)
    cache.put("a", 1)
    cache.put("b", 2, ttl=30)
    clock.now += 9.9
    assert (cache.get("a"), cache.get("b")) == (1, 2)
    clock.now += 0.1
    assert (cache.get("a"), cache.get("b")) == (None, 2)
    assert len(cache) == 1  # the expired entry is dropped when it is met
    clock.now += 20
    assert cache.get("b") is None and cache.get("never put") is None


def test_putting_again_restarts_the_ttl() -> None:
    clock = ManualClock(100.0)
    cache: TTLCache[str, int] = TTLCache(max_size=4, ttl=10, clock=clock)
    cache.put("a", 1)
    clock.now += 8
    cache.put("a", 2)
    clock.now += 8
    assert cache.get("a") == 2


def test_the_size_is_bounded_dropping_the_oldest_first() -> None:
    cache: TTLCache[int, str] = TTLCache(max_size=3, ttl=60, clock=ManualClock(100.0))
    for key in range(5):
        cache.put(key, str(key))
        assert len(cache) <= 3
    assert [cache.get(key) for key in range(5)] == [None, None, "2", "3", "4"]
    cache.put(2, "two")  # put again: now the newest, so 3 goes next
    cache.put(5, "5")
    assert [cache.get(key) for key in range(2, 6)] == ["two", None, "4", "5"]


def test_a_cache_holds_at_least_one_entry() -> None:
    with pytest.raises(ValueError):
        TTLCache(max_size=0, ttl=1)
