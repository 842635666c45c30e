"""Bounded caches and per-key locks: what a months-long daemon keeps must shrink."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_worker._worker._caches import BoundedCache, KeyedLocks


async def test_cache_forgets_an_entry_once_its_ttl_passed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cache: BoundedCache[str, int] = BoundedCache(max_entries=10, ttl_seconds=5)
    cache.put("a", 1)
    await trio.sleep(4.9)
    assert cache.get("a") == 1
    await trio.sleep(0.2)
    assert cache.get("a") is None
    assert len(cache) == 0


async def test_cache_drops_the_least_recently_used_beyond_its_size() -> None:
    cache: BoundedCache[int, str] = BoundedCache(max_entries=3)
    for key in range(3):
        cache.put(key, str(key))
    assert cache.get(0) == "0"  # 0 is now the most recently used
    cache.put(3, "3")
    assert len(cache) == 3
    assert cache.get(1) is None
    assert [cache.get(key) for key in (0, 2, 3)] == ["0", "2", "3"]


def test_cache_refuses_a_size_below_one() -> None:
    with pytest.raises(ValueError, match="max_entries=0"):
        BoundedCache(max_entries=0)


async def test_keyed_locks_forget_a_key_nobody_holds_or_waits_for(
    autojump_clock: trio.testing.MockClock,
) -> None:
    locks: KeyedLocks[str] = KeyedLocks()
    order: list[str] = []

    async def hold(name: str) -> None:
        async with locks.hold("deployment"):
            order.append(f"{name} in")
            await trio.sleep(1)
            order.append(f"{name} out")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold, "first")
        await trio.sleep(0.5)
        nursery.start_soon(hold, "second")
        await trio.sleep(0.1)
        assert len(locks) == 1  # one lock, held and waited for
    assert order == ["first in", "first out", "second in", "second out"]
    assert len(locks) == 0


async def test_keyed_locks_forget_the_key_when_a_waiter_is_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    locks: KeyedLocks[str] = KeyedLocks()
    release = trio.Event()

    async def hold(*, task_status: trio.TaskStatus[None]) -> None:
        async with locks.hold("k"):
            task_status.started()
            await release.wait()

    async with trio.open_nursery() as nursery:
        await nursery.start(hold)
        with trio.move_on_after(1):
            async with locks.hold("k"):
                pytest.fail("the lock was held")  # pragma: no cover
        assert len(locks) == 1
        release.set()
    assert len(locks) == 0
