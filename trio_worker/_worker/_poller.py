"""``Poller``: ask for due runs, hand each to the submitter, decide when to ask again.

The poll takes only as many runs as there are free slots and start tokens:
a page of runs the worker could not take would cost the API and the worker
the parsing. Each run is handed over with ``nursery.start``, which returns
once the run holds its slot in the table, so the count of free slots is
exact when the next run is considered. Between polls it waits the query
interval, or less while a backlog is left and slots free up; while the events
stream is up it rests longer and polls when its
:class:`~trio_worker._worker._wakeups.Wakeups` says a run is due.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence

import trio

from trio_worker._client._client import PrefectClient
from trio_worker._core._models import FlowRun, WorkPool, now
from trio_worker._worker._metrics import WorkerMetrics
from trio_worker._worker._run_table import RunTable
from trio_worker._worker._start_rate import StartRate
from trio_worker._worker._wakeups import Wakeups

__all__ = ["Poller"]

logger = logging.getLogger("trio_worker.worker")

Submit = Callable[..., Awaitable[None]]


class Poller:
    """Poll a pool for due runs and submit the ones there is room for.

    Args:
        client: the worker's open API client.
        table: slots are counted (and held) here.
        start_rate: paces the starts.
        metrics: poll timings and outcomes.
        submit: ``submit(flow_run, *, task_status)``: takes a slot, then runs.
        runs_nursery: where submitted runs live.
        work_pool: returns the pool as last read (None: not known, no poll).
        work_pool_name: the pool polled.
        work_queues: the queues polled (all of the pool's when empty).
        prefetch_seconds: runs due this far ahead are taken too.
        wakeups: what the poller rests on between polls (pick-up by event);
            a fresh one (which never rests longer than the interval while no
            stream feeds it) when not given.
    """

    def __init__(
        self,
        client: PrefectClient,
        *,
        table: RunTable,
        start_rate: StartRate,
        metrics: WorkerMetrics,
        submit: Submit,
        runs_nursery: trio.Nursery,
        work_pool: Callable[[], WorkPool | None],
        work_pool_name: str,
        work_queues: Sequence[str],
        prefetch_seconds: float,
        wakeups: Wakeups | None = None,
    ) -> None:
        self._client = client
        self._table = table
        self._rate = start_rate
        self._metrics = metrics
        self._submit = submit
        self._runs = runs_nursery
        self._work_pool = work_pool
        self._pool_name = work_pool_name
        self._queues = tuple(work_queues)
        self._prefetch = prefetch_seconds
        self.wakeups = Wakeups() if wakeups is None else wakeups
        #: When the last poll ended (monotonic seconds), or None before the first.
        self.last_polled: float | None = None
        #: Set when the last poll may have left due runs behind.
        self.backlog = False

    async def poll(self) -> list[FlowRun]:
        """Poll for due runs and submit as many as the slots and the start rate allow.

        A run already in flight is skipped; a run for which no slot (or start
        token) is free ends the cycle: it will be polled again. Returns the
        runs submitted.
        """
        if self._work_pool() is None:
            self.last_polled = time.monotonic()
            return []
        table = self._table
        free = min(table.free_slots(), self._rate.available())
        if free <= 0:
            # Every token is borrowed: the next poll looks again, as soon as
            # slots free up.
            self.last_polled = time.monotonic()
            self.backlog = True
            return []
        self.backlog = False
        scheduled_before = now() + dt.timedelta(seconds=int(self._prefetch))
        with self._metrics.poll_seconds.time():
            responses = await self._client.get_scheduled_flow_runs(
                self._pool_name,
                work_queue_names=self._queues,
                scheduled_before=scheduled_before,
                limit=None if math.isinf(free) else int(free),
            )
        self.last_polled = time.monotonic()
        self._metrics.last_poll.set_to_current_time()
        self._metrics.poll_failures_in_a_row.set(0)
        submitted = []
        for response in responses:
            flow_run = response.flow_run
            if flow_run.id in table:
                continue
            if not self._rate.try_take():
                logger.debug("Start rate reached; the rest wait for a later poll")
                self.backlog = True
                break
            try:
                await self._runs.start(self._submit, flow_run)
            except trio.WouldBlock:
                self._rate.give_back()
                logger.debug("No slot free; the rest wait for the next poll")
                self.backlog = True
                break
            submitted.append(flow_run)
        if not math.isinf(free) and len(responses) >= free:
            self.backlog = True  # a full page: there may be more
        return submitted

    async def until_next_poll(self, seconds: float) -> None:
        """Wait ``seconds``, or less when the last poll left runs behind and slots free up.

        A poll that filled every free slot may have left due runs waiting; with
        a fixed interval a worker could never start more than ``limit`` runs
        per interval however short the runs. So while there is a backlog the
        next poll comes once a quarter of the slots are free again (never more
        often than that, so the API is not asked once per finished run).
        While the events stream is up the rest is longer, and an event (or a
        known run coming due) ends it (``_wakeups.py``).
        """
        with trio.move_on_after(self.wakeups.pause_seconds(seconds)):
            if not self.backlog:
                await self.wakeups.wait()
            await self._table.wait_free_slots(self._refill_batch())
            # Paced starts: come back when the bucket holds a batch's worth of tokens.
            await trio.sleep(self._rate.seconds_until(self._start_batch()))

    def _refill_batch(self) -> int:
        total = self._table.total_slots
        return 1 if math.isinf(total) else max(1, int(total) // 4)

    def _start_batch(self) -> int:
        """How many start tokens a paced worker waits for before it polls again.

        A quarter of the slots (as for freed slots), or without a limit a quarter
        of the burst: never a poll per token at a high rate.
        """
        if math.isinf(self._table.total_slots) and not self._rate.unlimited:
            return max(1, int(self._rate.burst) // 4)
        return self._refill_batch()
