"""The task worker's status server: ``/status``, ``/health``, ``/metrics``.

It runs in the worker's own nursery on the worker's own loop (hypercorn on
trio), so what it reports is read from the live worker, not from a thread
that might still answer while the loop is wedged. Metrics are produced at
scrape time by a collector reading the worker, in a registry of our own: no
process-global state, so several workers (or tests) in one process do not mix.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any, Protocol

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from trio_worker._core._asgi import serve_asgi
from trio_worker._core._time import format_datetime

__all__ = ["TaskWorkerView", "create_status_app", "serve_task_status", "worker_status"]

logger = logging.getLogger("trio_worker.task_status")


class TaskWorkerView(Protocol):
    """What the status server reads of a task worker (``TaskWorker`` has it all).

    A protocol rather than the class: the server is a part the worker
    composes, and a part never imports what composes it.
    """

    client_id: str
    limit: int | None
    in_flight_task_runs: dict[str, dict[Any, Any]]
    finished_task_runs: dict[str, int]
    outcomes: Counter[tuple[str, str]]
    started_at: Any

    @property
    def started(self) -> bool: ...

    @property
    def connected(self) -> bool: ...

    @property
    def current_tasks(self) -> int: ...

    @property
    def available_tasks(self) -> int | None: ...

    @property
    def task_keys(self) -> list[str]: ...

    @property
    def abandoned_threads(self) -> int: ...


def worker_status(worker: TaskWorkerView) -> dict[str, Any]:
    """Return the worker's counters as JSON (the body of ``/status``)."""
    return {
        "client_id": worker.client_id,
        "started": worker.started,
        "started_at": format_datetime(worker.started_at),
        "connected": worker.connected,
        "limit": worker.limit,
        "current_tasks": worker.current_tasks,
        "available_tasks": worker.available_tasks,
        "abandoned_threads": worker.abandoned_threads,
        "task_keys": worker.task_keys,
        "in_flight_task_runs": {
            key: [str(run_id) for run_id in runs]
            for key, runs in worker.in_flight_task_runs.items()
        },
        "finished_task_runs": dict(worker.finished_task_runs),
    }


class _WorkerCollector:
    """Prometheus collector that reads the worker when scraped."""

    def __init__(self, worker: TaskWorkerView) -> None:
        self._worker = worker

    def collect(self) -> Iterator[Metric]:
        worker = self._worker
        in_flight = GaugeMetricFamily(
            "trio_worker_task_runs_in_flight", "Task runs running now.", labels=["task_key"]
        )
        for key, runs in worker.in_flight_task_runs.items():
            in_flight.add_metric([key], len(runs))
        yield in_flight
        finished = CounterMetricFamily(
            "trio_worker_task_runs_finished",
            "Task runs that ended here, by final state.",
            labels=["task_key", "state"],
        )
        for (key, state), count in sorted(worker.outcomes.items()):
            finished.add_metric([key, state], count)
        yield finished
        slots = GaugeMetricFamily("trio_worker_task_slots_available", "Free run slots.")
        slots.add_metric(
            [], float("inf") if worker.available_tasks is None else worker.available_tasks
        )
        yield slots
        abandoned = GaugeMetricFamily(
            "trio_worker_task_threads_abandoned",
            "Threads of cancelled sync runs still running; each keeps its run's slot.",
        )
        abandoned.add_metric([], worker.abandoned_threads)
        yield abandoned
        connected = GaugeMetricFamily(
            "trio_worker_task_subscription_connected", "1 while subscribed to the API."
        )
        connected.add_metric([], 1.0 if worker.connected else 0.0)
        yield connected


def create_status_app(worker: TaskWorkerView) -> Starlette:
    """Build the ASGI app that reports on ``worker``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_WorkerCollector(worker))

    async def status(request: Request) -> Response:
        return JSONResponse(worker_status(worker))

    async def health(request: Request) -> Response:
        # Healthy = subscribed; a worker in an outage cannot receive runs.
        healthy = worker.connected
        return JSONResponse(
            {"status": "ok" if healthy else "disconnected"}, status_code=200 if healthy else 503
        )

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/status", status),
            Route("/health", health),
            Route("/metrics", metrics),
        ]
    )


async def serve_task_status(
    worker: TaskWorkerView,
    *,
    host: str,
    port: int,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the status app until cancelled; ``nursery.start`` returns its base URL.

    Args:
        worker: the worker to report on.
        host: interface to bind (loopback by default in Settings).
        port: TCP port; 0 picks a free one.
        task_status: started with ``http://host:port`` once listening.
    """
    app = create_status_app(worker)
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            functools.partial(serve_asgi, app, host=host, port=port, logger=logger)
        )
        url = binds[0] if binds else f"http://{host}:{port}"
        logger.info("task worker status server on %s", url)
        task_status.started(url)
