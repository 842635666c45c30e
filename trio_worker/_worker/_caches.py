"""Bounded read-through caches and per-key locks for a long-running worker.

A daemon that lives for months sees an unbounded number of deployments and
flows; a cache keyed by them must shrink. :class:`BoundedCache` keeps at most
``max_entries`` (least recently used go first), each for at most
``ttl_seconds``; :class:`KeyedLocks` forgets a key's lock as soon as nobody
holds or waits for it. Time is trio's clock, so tests drive it with
``MockClock``.
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from collections.abc import AsyncIterator, Hashable
from typing import Generic, TypeVar

import trio

__all__ = ["BoundedCache", "KeyedLocks"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class BoundedCache(Generic[K, T]):
    """At most ``max_entries`` values, each kept for at most ``ttl_seconds``.

    Args:
        max_entries: beyond it, the least recently used entry is dropped.
        ttl_seconds: an entry older than this is a miss (``inf``: never).
    """

    def __init__(self, *, max_entries: int, ttl_seconds: float = math.inf) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries={max_entries} must be at least 1")
        self.max_entries = max_entries
        self.ttl_seconds = ttl_seconds
        self._entries: OrderedDict[K, tuple[float, T]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> T | None:
        """The fresh value for ``key``, or None (a stale one is dropped)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        stored, value = entry
        if trio.current_time() - stored >= self.ttl_seconds:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: T) -> None:
        """Store ``value``, dropping the least recently used entry when full."""
        self._entries[key] = (trio.current_time(), value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


class KeyedLocks(Generic[K]):
    """One ``trio.Lock`` per key while anyone holds or waits for it; none otherwise."""

    def __init__(self) -> None:
        self._locks: dict[K, tuple[trio.Lock, list[int]]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @contextlib.asynccontextmanager
    async def hold(self, key: K) -> AsyncIterator[None]:
        """Hold the lock of ``key`` (waiting for it); forget it once unused."""
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = (trio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[key]
