"""The run table's slot accounting: a token comes back exactly once, whatever ends the run."""

from __future__ import annotations

import uuid

import pytest
import trio
import trio.testing

from trio_worker._core._models import FlowRun
from trio_worker._worker._context import CancelReason
from trio_worker._worker._metrics import WorkerMetrics
from trio_worker._worker._run_table import RunTable


def _run() -> FlowRun:
    return FlowRun(id=uuid.uuid4(), name="run", flow_id=uuid.uuid4())


def _table(limit: int | None) -> RunTable:
    return RunTable(limit, metrics=WorkerMetrics())


async def test_slot_returns_its_token_when_the_run_is_cancelled() -> None:
    table = _table(2)
    run = _run()
    entered = trio.Event()

    async def hold() -> None:
        async with table.slot(run):
            entered.set()
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold)
        await entered.wait()
        assert run.id in table
        assert table.limiter.borrowed_tokens == 1
        nursery.cancel_scope.cancel()
    assert run.id not in table
    assert table.limiter.borrowed_tokens == 0
    assert table.free_slots() == 2
    with trio.move_on_after(1) as scope:
        await table.wait_idle()
    assert not scope.cancelled_caught


async def test_slot_returns_its_token_when_the_run_raises() -> None:
    table = _table(1)
    with pytest.raises(RuntimeError, match="backend bug"):
        async with table.slot(_run()):
            raise RuntimeError("backend bug")
    assert table.limiter.borrowed_tokens == 0
    assert len(table) == 0


async def test_slot_refuses_a_run_when_every_token_is_borrowed() -> None:
    table = _table(1)
    async with table.slot(_run()):
        other = _run()
        with pytest.raises(trio.WouldBlock):
            async with table.slot(other):
                pytest.fail("entered a slot over the limit")  # pragma: no cover
        assert other.id not in table
        assert table.limiter.borrowed_tokens == 1
    assert table.limiter.borrowed_tokens == 0


async def test_slot_holds_an_adopted_run_over_the_limit_without_a_token() -> None:
    table = _table(1)
    async with table.slot(_run()):
        adopted = _run()
        async with table.slot(adopted, require_token=False) as tracked:
            assert not tracked.holds_token
            assert len(table) == 2
            assert table.limiter.borrowed_tokens == 1
        assert table.limiter.borrowed_tokens == 1  # the adopted run returned none
    assert table.limiter.borrowed_tokens == 0


async def test_slot_refuses_a_run_already_in_the_table() -> None:
    table = _table(None)
    run = _run()
    async with table.slot(run):
        with pytest.raises(RuntimeError, match="in flight already"):
            async with table.slot(run):
                pytest.fail("entered twice")  # pragma: no cover
        assert table.limiter.borrowed_tokens == 1


async def test_wait_free_slots_wakes_when_enough_slots_are_returned(
    autojump_clock: trio.testing.MockClock,
) -> None:
    table = _table(4)
    releases = [trio.Event() for _ in range(4)]
    woke_at: list[float] = []

    async def hold(release: trio.Event, *, task_status: trio.TaskStatus[None]) -> None:
        async with table.slot(_run()):
            task_status.started()
            await release.wait()

    async def waiter() -> None:
        await table.wait_free_slots(2)
        woke_at.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        for release in releases:
            await nursery.start(hold, release)
        nursery.start_soon(waiter)
        await trio.sleep(10)
        releases[0].set()
        await trio.sleep(10)
        assert woke_at == []  # one slot free: not enough
        releases[1].set()
        await trio.sleep(1)
        assert woke_at == [pytest.approx(20)]
        for release in releases[2:]:
            release.set()


async def test_cancel_records_the_first_reason_only() -> None:
    table = _table(None)
    async with table.slot(_run()) as tracked:
        assert tracked.cancel(CancelReason.TIMED_OUT)
        assert not tracked.cancel(CancelReason.CANCELLED)
        assert tracked.cancel_reason is CancelReason.TIMED_OUT
        assert tracked.cancel_scope.cancel_called
