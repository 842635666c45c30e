"""What a worker says about itself: :class:`WorkerStatistics`, ``/status``, the health source.

Kept apart from the health server so that a worker imports no web server
unless it serves health checks (start-up time is a feature).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from trio_worker._core._time import format_datetime
from trio_worker._worker._run_table import RunTable

__all__ = ["HealthSource", "WorkerStatistics", "describe_worker", "statistics"]


@attrs.frozen
class WorkerStatistics:
    """A snapshot of a worker's load, for ``/status`` and metrics.

    Attributes:
        runs_in_flight: runs holding a limiter token.
        limit: the most runs at once (``inf`` when unlimited).
        borrowed_tokens: tokens currently borrowed from the limiter.
        last_poll_age_seconds: seconds since the last successful poll, or None.
    """

    runs_in_flight: int
    limit: float
    borrowed_tokens: int
    last_poll_age_seconds: float | None


@attrs.frozen
class HealthSource:
    """What the health app reads, as callables (the app never sees the worker).

    Attributes:
        polling: whether the worker polled recently (``/health``).
        not_ready: why the worker cannot take runs now, or None (``/ready``).
        status: the worker described as JSON (``/status``).
        metrics: the metrics in Prometheus' text format (``/metrics``).
    """

    polling: Callable[[], bool]
    not_ready: Callable[[], str | None]
    status: Callable[[], dict[str, Any]]
    metrics: Callable[[], bytes]


def statistics(table: RunTable, last_polled: float | None) -> WorkerStatistics:
    """Return a snapshot of ``table`` and the poll's age."""
    age = None if last_polled is None else time.monotonic() - last_polled
    return WorkerStatistics(
        runs_in_flight=len(table),
        limit=table.total_slots,
        borrowed_tokens=table.limiter.statistics().borrowed_tokens,
        last_poll_age_seconds=age,
    )


def describe_worker(
    *,
    name: str,
    worker_type: str,
    work_pool_name: str,
    work_queues: Sequence[str],
    started_at: dt.datetime | None,
    limit: int | None,
    table: RunTable,
    last_polled: float | None,
) -> dict[str, Any]:
    """Describe a worker as JSON (the body of ``/status``)."""
    stats = statistics(table, last_polled)
    return {
        "name": name,
        "type": worker_type,
        "work_pool": work_pool_name,
        "work_queues": list(work_queues),
        "started_at": format_datetime(started_at),
        "limit": limit,
        "borrowed_tokens": stats.borrowed_tokens,
        "last_poll_age_seconds": stats.last_poll_age_seconds,
        "runs_in_flight": [
            {
                "id": str(run.flow_run.id),
                "name": run.flow_run.name,
                "infrastructure_pid": run.infrastructure_pid,
                "seconds_in_flight": round(time.monotonic() - run.accepted_at, 3),
            }
            for run in table
        ],
    }
