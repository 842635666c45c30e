"""The task worker's run slots: at most ``limit`` runs, and at most ``limit`` threads.

A sync task runs in a thread, and a thread cannot be stopped: when its run is
cancelled (a drain past its deadline, a lease the API took back, a caller
cancelling :meth:`~trio_worker.TaskWorker.execute_task_run`) Trio abandons the
thread and the run's task ends while the thread goes on. If the run's slot were
returned then, the next run would start a second thread beside the first, and
the limit would no longer bound the threads that really run. So a slot whose
run left a thread behind stays taken until that thread returns: the thread's
end (which Trio reports to the run loop through the ``limiter`` it was started
with) gives it back, and a warning says so when it happens. Status and metrics
read :attr:`RunSlots.abandoned` for the threads still running that way.

One part owns the limiter, so the rule lives in one place: :meth:`RunSlots.slot`
borrows the token and is the only code that returns it, in its own ``finally``
or, for an abandoned thread, when that thread ends.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Final, TypeVar, cast, final

import trio

__all__ = ["RunSlots", "Slot"]

logger = logging.getLogger("trio_worker.task_worker")

R = TypeVar("R")


@final
class Slot:
    """One borrowed token: what :meth:`RunSlots.slot` yields to the run holding it.

    The borrower is this object rather than the run id, so a run redelivered
    while the thread of its earlier attempt still holds a token borrows anew.
    """

    def __init__(self, run_id: uuid.UUID) -> None:
        self.run_id: Final = run_id
        #: True while a thread started through :meth:`RunSlots.run_sync` runs.
        self.thread_running = False
        #: True once the run ended with its thread still running.
        self.abandoned = False

    def __repr__(self) -> str:
        return f"Slot({self.run_id})"


@final
class _ThreadEnd:
    """The ``limiter`` handed to ``trio.to_thread.run_sync`` for one run's thread.

    Trio documents any object with these two methods as a limiter; it calls
    ``release_on_behalf_of`` on the run loop when the thread has *really*
    ended, abandoned or not, which is the moment this part needs. It bounds
    nothing itself: the run's slot already does.
    """

    def __init__(self, slot: Slot, on_end: Callable[[Slot], None]) -> None:
        self._slot = slot
        self._on_end = on_end

    async def acquire_on_behalf_of(self, borrower: object) -> None:
        await trio.lowlevel.checkpoint()
        self._slot.thread_running = True  # after the checkpoint: a thread will start

    def release_on_behalf_of(self, borrower: object) -> None:
        self._slot.thread_running = False
        self._on_end(self._slot)


@final
class RunSlots:
    """At most ``limit`` runs hold a slot; a run's thread keeps it until the thread ends.

    Args:
        limit: most slots, or None for no limit.
    """

    def __init__(self, limit: int | None) -> None:
        self.limit: Final = limit
        self._limiter = trio.CapacityLimiter(math.inf if limit is None else limit)
        self._abandoned: set[Slot] = set()

    @property
    def borrowed(self) -> int:
        """Slots taken: runs in hand, and the threads of cancelled runs still running."""
        return int(self._limiter.borrowed_tokens)

    @property
    def available(self) -> int | None:
        """Free slots, or None without a limit."""
        return None if self.limit is None else int(self._limiter.available_tokens)

    @property
    def abandoned(self) -> int:
        """Threads of cancelled runs still running, each holding its run's slot."""
        return len(self._abandoned)

    @asynccontextmanager
    async def slot(self, run_id: uuid.UUID) -> AsyncIterator[Slot]:
        """Hold a slot for ``run_id`` while the block runs (waiting for one if all are taken).

        Leaving the block returns the slot, unless the run's thread is still
        running: then the slot is returned when the thread ends.
        """
        slot = Slot(run_id)
        try:
            self._limiter.acquire_on_behalf_of_nowait(slot)
        except trio.WouldBlock:
            logger.info(
                "task run %s received; waiting for a free slot (limit %s)", run_id, self.limit
            )
            await self._limiter.acquire_on_behalf_of(slot)
        try:
            yield slot
        finally:
            if slot.thread_running:
                slot.abandoned = True
                self._abandoned.add(slot)
                logger.warning(
                    "task run %s ended but its thread is still running (a thread cannot be"
                    " cancelled); its slot stays taken until the thread returns"
                    " (%d abandoned thread(s) now)",
                    run_id,
                    len(self._abandoned),
                )
            else:
                self._limiter.release_on_behalf_of(slot)

    async def run_sync(self, slot: Slot, fn: Callable[[], R]) -> R:
        """Run ``fn`` in a thread for the run holding ``slot``; cancelling abandons the thread."""
        limiter = _ThreadEnd(slot, self._thread_ended)
        # trio types ``limiter`` as CapacityLimiter but documents any object
        # with acquire_on_behalf_of/release_on_behalf_of (CapacityLimiter is final).
        return await trio.to_thread.run_sync(
            fn, limiter=cast(trio.CapacityLimiter, limiter), abandon_on_cancel=True
        )

    def _thread_ended(self, slot: Slot) -> None:
        if slot.abandoned:
            self._abandoned.discard(slot)
            self._limiter.release_on_behalf_of(slot)
            logger.warning(
                "the abandoned thread of task run %s returned; its slot is free again",
                slot.run_id,
            )

    def log_abandoned(self) -> None:
        """Say, at shutdown, how many abandoned threads are still running."""
        if self._abandoned:
            runs = ", ".join(sorted(str(s.run_id) for s in self._abandoned))
            logger.warning(
                "%d abandoned task thread(s) still running (runs %s); they end with the process",
                len(self._abandoned),
                runs,
            )
