"""``WorkerIntrospection``: what a worker says about itself, read from its parts.

The read-only half of :class:`~trio_worker.BaseWorker`: the runs in flight,
the pool, the last poll, statistics, ``/status`` and the health source. Every
answer is read from the part that owns it (the run table, the pool sync, the
poller); nothing here holds state of its own.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any, ClassVar

import trio

from trio_worker._core._models import WorkPool
from trio_worker._worker._cancellation import CancelStream
from trio_worker._worker._loops import WorkerLoops
from trio_worker._worker._metrics import WorkerMetrics
from trio_worker._worker._run_table import InFlightRun, RunTable
from trio_worker._worker._status import (
    HealthSource,
    WorkerStatistics,
    describe_worker,
    statistics,
)
from trio_worker._worker._wakeups import Wakeups

__all__ = ["WorkerIntrospection"]


class WorkerIntrospection:
    """Read-only views of a worker's parts (mixed into ``BaseWorker``)."""

    # Set by BaseWorker.__init__ (and __aenter__ for the loops).
    type: ClassVar[str]
    name: str
    work_pool_name: str
    work_queues: tuple[str, ...]
    limit: int | None
    query_seconds: float
    started_at: Any
    metrics: WorkerMetrics
    table: RunTable
    _loops: WorkerLoops[Any] | None
    _stopping: bool

    def _health_source(self) -> HealthSource:
        """What the health app reads, as callables."""

        def not_ready() -> str | None:
            if self.work_pool is None:
                return f"work pool {self.work_pool_name!r} is not known yet"
            if self.last_api_error is not None:
                return f"last API call failed: {self.last_api_error}"
            return None

        def polling() -> bool:
            # A drain stops polling on purpose while the runs finish: the worker
            # is alive, and a liveness probe must not kill it (and them) mid-drain.
            return self._stopping or self.is_worker_still_polling()

        return HealthSource(
            polling=polling,
            not_ready=not_ready,
            status=self.get_status,
            metrics=self.metrics.render,
        )

    @property
    def in_flight(self) -> Mapping[uuid.UUID, InFlightRun]:
        """The runs in flight, by id (read-only; the run table owns them)."""
        return self.table.runs

    @property
    def work_pool(self) -> WorkPool | None:
        """The pool as last read, or None while it is unknown."""
        return None if self._loops is None else self._loops.pool.work_pool

    @property
    def last_polled(self) -> float | None:
        """When the last poll ended (monotonic seconds), or None."""
        return None if self._loops is None else self._loops.poller.last_polled

    @property
    def last_api_error(self) -> str | None:
        """The last API error of a loop, cleared by the next success (for ``/ready``)."""
        return None if self._loops is None else self._loops.last_api_error

    @property
    def cancel_stream(self) -> CancelStream:
        """What is known of the cancellation event stream (``live``, ``gap``)."""
        if self._loops is None:
            raise RuntimeError(f"{self!r} is not open; use 'async with worker:'")
        return self._loops.watcher.stream

    @property
    def wakeups(self) -> Wakeups:
        """What the poll loop rests on between polls (pick-up by event, ``live``)."""
        if self._loops is None:
            raise RuntimeError(f"{self!r} is not open; use 'async with worker:'")
        return self._loops.wakeups

    @property
    def limiter(self) -> trio.CapacityLimiter:
        """The limiter of runs at once (owned by the run table)."""
        return self.table.limiter

    def is_worker_still_polling(self, query_interval_seconds: float | None = None) -> bool:
        """Whether a poll happened within 30 query intervals (Prefect's health rule)."""
        interval = query_interval_seconds or self.query_seconds
        reference = self.last_polled
        if reference is None:
            return True  # still starting up
        return time.monotonic() - reference < 30 * interval

    def statistics(self) -> WorkerStatistics:
        """Return a snapshot of the worker's load."""
        return statistics(self.table, self.last_polled)

    def get_status(self) -> dict[str, Any]:
        """Describe the worker as JSON for ``/status``."""
        return describe_worker(
            name=self.name,
            worker_type=self.type,
            work_pool_name=self.work_pool_name,
            work_queues=self.work_queues,
            started_at=self.started_at,
            limit=self.limit,
            table=self.table,
            last_polled=self.last_polled,
        )
