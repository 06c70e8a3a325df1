"""A small thread-safe cache whose entries expire: what the SNS verifier remembers certificates and
failed fetches in, bounded in time and in size so a stream of forged messages cannot grow it."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    """At most ``max_size`` entries, each kept ``ttl`` seconds (or the ``ttl`` given to :meth:`put`)
    by ``clock``; past the bound, the entry put longest ago is dropped first."""

    def __init__(self, max_size: int, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.max_size, self.ttl, self.clock = max_size, ttl, clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()  # key -> (expires at, value)
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """The value put for ``key``, or None when there is none or it has expired."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] <= self.clock():
                del self._entries[key]
                return None
            return entry[1]

    def put(self, key: K, value: V, ttl: float | None = None) -> None:
        with self._lock:
            self._entries.pop(key, None)  # a key put again counts as new: it is dropped last
            while len(self._entries) >= self.max_size:
                self._entries.popitem(last=False)
            self._entries[key] = (self.clock() + (self.ttl if ttl is None else ttl), value)

    def __len__(self) -> int:
        """Entries held, expired ones not yet dropped included."""
        with self._lock:
            return len(self._entries)
