"""The web service's per-client limits: IPv6 counted by /64, a bounded table, O(1) per hit."""

from __future__ import annotations

import time

import pytest

from pipeline.web import security as web
from pipeline.web.security import MAX_TRACKED_KEYS, SlidingWindow, client_key
from tests.support.fakes import ManualClock


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
