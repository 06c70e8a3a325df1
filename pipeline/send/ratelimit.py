"""A token bucket: holds a steady rate, allows a short burst of at most 50 ms worth."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable


class RateLimiter:
    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.capacity = max(1.0, rate / 20)
        self._clock = clock
        self._tokens = 1.0
        self._stamp = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def take(self, most: int) -> int:
        """Take up to ``most`` whole tokens without waiting; returns how many were taken."""
        with self._lock:
            self._refill()
            taken = min(most, math.floor(self._tokens))
            self._tokens -= taken
            return max(taken, 0)

    def delay(self) -> float:
        """Seconds until the next whole token."""
        with self._lock:
            self._refill()
            return max(0.0, (1 - self._tokens) / self.rate)


class Unlimited:
    rate = math.inf

    def take(self, most: int) -> int:
        return most

    def delay(self) -> float:
        return 0.0
