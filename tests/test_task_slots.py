"""The task worker's run slots: a sync run's abandoned thread keeps its slot until it returns.

Real threads and Trio's own ``to_thread``; no API (the end-to-end case is in
tests/test_task_worker.py).
"""

from __future__ import annotations

import logging
import threading
import uuid

import pytest
import trio
import trio.testing

from tests.helpers import wait_for
from trio_worker._taskworker._slots import RunSlots


async def test_an_abandoned_thread_keeps_its_slot_until_it_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    slots = RunSlots(1)
    entered, release = threading.Event(), threading.Event()
    second_in = trio.Event()

    def blocking() -> str:
        entered.set()
        release.wait(60)
        return "done"

    async def first_run() -> None:
        async with slots.slot(uuid.uuid4()) as slot:
            await slots.run_sync(slot, blocking)

    async def second_run() -> None:
        async with slots.slot(uuid.uuid4()):
            second_in.set()

    caplog.set_level(logging.WARNING, logger="trio_worker.task_worker")
    try:
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as scope:
                nursery.start_soon(first_run)
                await trio.to_thread.run_sync(entered.wait, 30)
                scope.cancel()
                nursery.cancel_scope.cancel()  # the first run's task ends: thread abandoned
        assert (slots.borrowed, slots.available, slots.abandoned) == (1, 0, 1)
        assert "its slot stays taken until the thread returns" in caplog.text

        async with trio.open_nursery() as nursery:
            nursery.start_soon(second_run)
            await trio.testing.wait_all_tasks_blocked()
            assert not second_in.is_set()  # waits: the limit counts the running thread
            release.set()
            await second_in.wait()  # the thread's end gave the slot back
        assert (slots.borrowed, slots.available, slots.abandoned) == (0, 1, 0)
        assert "its slot is free again" in caplog.text
    finally:
        release.set()


async def test_a_thread_that_returns_gives_its_slot_back_with_its_run() -> None:
    slots = RunSlots(2)
    async with slots.slot(uuid.uuid4()) as slot:
        assert await slots.run_sync(slot, lambda: 42) == 42
        assert not slot.thread_running
        assert slots.borrowed == 1
    assert (slots.borrowed, slots.available, slots.abandoned) == (0, 2, 0)


async def test_a_run_redelivered_while_its_old_thread_runs_gets_a_slot_of_its_own() -> None:
    # The borrower is the slot, not the run id: a second attempt of the same
    # run does not collide with the token its abandoned thread still holds.
    slots = RunSlots(None)
    run_id = uuid.uuid4()
    entered, release = threading.Event(), threading.Event()

    def blocking() -> None:
        entered.set()
        release.wait(60)

    try:
        with trio.CancelScope() as scope:
            async with slots.slot(run_id) as slot, trio.open_nursery() as nursery:
                nursery.start_soon(slots.run_sync, slot, blocking)
                await trio.to_thread.run_sync(entered.wait, 30)
                scope.cancel()
        async with slots.slot(run_id):
            assert (slots.borrowed, slots.abandoned, slots.available) == (2, 1, None)
    finally:
        release.set()

    async def thread_ended() -> bool:
        await trio.lowlevel.checkpoint()
        return slots.abandoned == 0  # (reported through the run loop)

    await wait_for(thread_ended, what="the abandoned thread's end")
    assert slots.borrowed == 0
