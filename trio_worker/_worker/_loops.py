"""``WorkerLoops``: the parts that talk to the API, composed and run.

Built when the worker opens (it needs the client and the runs nursery), it
creates each part with only what that part needs, runs the periodic loops in
the worker's loops nursery (poll, heartbeat, the cancellation watcher, the
look-ahead reads of pick-up by event), and
carries out a drain. It records the last API error of any loop for
``/ready``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Final, Generic, Literal

import trio

from trio_worker._client._client import PrefectClient
from trio_worker._client._log_handler import APILogHandler
from trio_worker._client._log_shipping import ship_logs
from trio_worker._core._services import service_loop
from trio_worker._core._settings import Settings
from trio_worker._worker._cancellation import CancellationWatcher
from trio_worker._worker._context import RUN_LOGGER_NAME, Backend, C
from trio_worker._worker._events import EventEmitter
from trio_worker._worker._metrics import WorkerMetrics
from trio_worker._worker._poller import Poller
from trio_worker._worker._pool_sync import PoolSync, WarnOnce
from trio_worker._worker._reporter import Reporter
from trio_worker._worker._run_table import RunTable
from trio_worker._worker._start_rate import StartRate
from trio_worker._worker._status import HealthSource
from trio_worker._worker._submitter import Submitter
from trio_worker._worker._wakeups import Wakeups, WakeupTap, read_next_due

__all__ = ["WorkerLoops"]

logger = logging.getLogger("trio_worker.worker")

#: Seconds the stopped event and the last events may take at shutdown.
SHUTDOWN_REPORT_SECONDS: Final = 10.0
#: Seconds the last flush of the worker's run log lines may take at shutdown.
LOG_FLUSH_TIMEOUT_SECONDS: Final = 5.0


class WorkerLoops(Generic[C]):
    """Compose the API-facing parts of a worker and run their loops.

    Args:
        client: the worker's open API client.
        runs: the runs nursery (owned by the worker).
        api_url: the API's URL (for the websockets).
        prefetch_seconds: runs due this far ahead are taken.
        heartbeat_interval_seconds: seconds between heartbeats.
        query_seconds: seconds between polls (and half the cancellation check's).
        create_pool_if_not_found: create the pool when it does not exist.
        base_job_template: the template a new pool gets (None: the default).
        work_pool_name: the pool served.
        work_queues: the queues served.
        worker_type: the worker's type.
        worker_name: the worker's name.
        table: the run table (owned by the worker, which reports on it).
        metrics: the worker's metrics.
        events: the worker's event emitter.
        start_rate: the start pacing.
        warn_once: where one-time warnings go.
        backend: what the parts may ask of the backend.
        default_template: returns the worker type's default template.
        on_shutdown: what a shutdown does to the runs it interrupts.
        cancel_grace_seconds: how long a stopped run may take.
        stopping: whether the worker has stopped taking runs.
    """

    def __init__(
        self,
        client: PrefectClient,
        runs: trio.Nursery,
        *,
        api_url: str,
        prefetch_seconds: float,
        heartbeat_interval_seconds: float,
        query_seconds: float,
        create_pool_if_not_found: bool,
        base_job_template: Mapping[str, Any] | None,
        work_pool_name: str,
        work_queues: Sequence[str],
        worker_type: str,
        worker_name: str,
        table: RunTable,
        metrics: WorkerMetrics,
        events: EventEmitter,
        start_rate: StartRate,
        warn_once: WarnOnce,
        backend: Backend[C],
        default_template: Callable[[], dict[str, Any]],
        on_shutdown: Literal["crash", "reschedule"],
        cancel_grace_seconds: float,
        stopping: Callable[[], bool],
    ) -> None:
        self.client = client
        self.runs = runs
        self.api_url = api_url
        self._metrics = metrics
        self._table = table
        self._heartbeat_seconds = heartbeat_interval_seconds
        self._query_seconds = query_seconds
        self._stopping = stopping
        #: The last API error of a loop, cleared by the next success.
        self.last_api_error: str | None = None
        #: The loops nursery's scope, once :meth:`start` ran.
        self.scope: trio.CancelScope | None = None
        self._poll_scope = trio.CancelScope()
        self._first_poll = trio.Event()
        self.pool = PoolSync(
            client,
            work_pool_name=work_pool_name,
            worker_type=worker_type,
            worker_name=worker_name,
            create_pool_if_not_found=create_pool_if_not_found,
            base_job_template=base_job_template,
            default_template=default_template,
            heartbeat_interval_seconds=heartbeat_interval_seconds,
            in_flight=lambda: table.runs.keys(),
            warn_once=warn_once,
        )
        self.reporter = Reporter(
            client,
            metrics=metrics,
            events=events,
            worker_name=worker_name,
            on_shutdown=on_shutdown,
        )
        self.submitter: Submitter[C] = Submitter(
            client,
            table=table,
            reporter=self.reporter,
            events=events,
            metrics=metrics,
            backend=backend,
            work_pool=lambda: self.pool.work_pool,
            worker_name=worker_name,
            cancel_grace_seconds=cancel_grace_seconds,
        )
        #: Pick-up by event: the watcher's stream feeds it, the poller rests on it.
        self.wakeups = Wakeups()
        self._next_due = functools.partial(
            read_next_due,
            client,
            work_pool_name=work_pool_name,
            work_queues=work_queues,
            prefetch_seconds=prefetch_seconds,
        )
        self.poller = Poller(
            client,
            table=table,
            start_rate=start_rate,
            metrics=metrics,
            submit=self.submitter.submit,
            runs_nursery=runs,
            work_pool=lambda: self.pool.work_pool,
            work_pool_name=work_pool_name,
            work_queues=work_queues,
            prefetch_seconds=prefetch_seconds,
            wakeups=self.wakeups,
        )
        self.watcher: CancellationWatcher[C] = CancellationWatcher(
            client,
            table=table,
            reporter=self.reporter,
            backend=backend,
            configure=self.submitter.configure,
            work_pool_name=work_pool_name,
            work_queues=work_queues,
            cancel_grace_seconds=cancel_grace_seconds,
            tap=WakeupTap(self.wakeups, work_pool_name, tuple(work_queues)),
        )

    @contextlib.asynccontextmanager
    async def serving(
        self, events: EventEmitter, log_handler: APILogHandler
    ) -> AsyncIterator[trio.Nursery]:
        """Open the loops nursery; run lines are shipped while it is open.

        On the way out (shielded, bounded) the ``stopped`` event follows the
        ``started`` one, and what is still queued is posted over HTTP.
        """
        run_logger = logging.getLogger(RUN_LOGGER_NAME)
        if run_logger.level == logging.NOTSET:
            # Run lines at INFO must exist to be shipped, whatever the root level.
            run_logger.setLevel(logging.INFO)
        run_logger.addHandler(log_handler)
        try:
            async with trio.open_nursery() as nursery:
                self.scope = nursery.cancel_scope
                yield nursery
        finally:
            run_logger.removeHandler(log_handler)
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + SHUTDOWN_REPORT_SECONDS
                if events.started_event_id is not None:
                    events.stopped()
                    await events.flush_over_http(self.client)

    async def serve_health(
        self, nursery: trio.Nursery, source: HealthSource, settings: Settings
    ) -> list[str]:
        """Serve the health app in ``nursery``; return the URLs it listens on."""
        # Loaded when asked for: hypercorn and starlette cost start-up time.
        from trio_worker._worker._health import serve_health

        urls: list[str] = await nursery.start(serve_health, source, settings)
        return urls

    def ship(
        self,
        nursery: trio.Nursery,
        events: EventEmitter,
        log_handler: APILogHandler,
        *,
        settings: Settings,
    ) -> None:
        """Stream events over ``/events/in`` and ship run log lines, in ``nursery``."""
        ssl_context = self.client.ssl_context
        serve_events = functools.partial(
            events.serve, self.api_url, settings=settings, ssl_context=ssl_context
        )
        nursery.start_soon(serve_events)
        nursery.start_soon(
            functools.partial(
                ship_logs,
                self.client,
                log_handler.buffer,
                flush_timeout_seconds=LOG_FLUSH_TIMEOUT_SECONDS,
            )
        )

    async def start(self, nursery: trio.Nursery, *, settings: Settings) -> None:
        """Start the poll, heartbeat, cancellation and look-ahead loops in ``nursery``.

        Returns once the first poll has been made (or failed, or was stopped).
        """
        nursery.start_soon(self._poll_loop)
        await self.keep_runs(nursery, settings=settings)
        await self._first_poll.wait()

    async def keep_runs(self, nursery: trio.Nursery, *, settings: Settings) -> None:
        """Start the heartbeat and cancellation loops in ``nursery``, without the poll.

        What runs in flight need (a run-once worker waits for its runs with
        these): the heartbeat lists them (an API that hears of no one holding a
        started run crashes it), and a user's cancellation reaches them.
        """
        nursery.start_soon(self._heartbeat_loop)
        nursery.start_soon(self.wakeups.serve, self._next_due)
        await nursery.start(
            lambda task_status: self.watcher.serve(
                self.api_url,
                settings=settings,
                ssl_context=self.client.ssl_context,
                check_interval_seconds=2 * self._query_seconds,
                on_error=self.count_error,
                task_status=task_status,
            )
        )

    async def _poll_loop(self) -> None:
        async def poll() -> None:
            try:
                if not self._stopping():
                    await self.poller.poll()
                    self.last_api_error = None
            finally:
                self._first_poll.set()

        try:
            with self._poll_scope:
                await service_loop(
                    poll,
                    interval=self._query_seconds,
                    name="poll",
                    on_error=self._count_poll_error,
                    pause=self.poller.until_next_poll,
                )
        finally:
            self._first_poll.set()

    async def _heartbeat_loop(self) -> None:
        async def sync() -> None:
            await self.pool.sync()
            self.last_api_error = None

        await service_loop(
            sync,
            interval=self._heartbeat_seconds,
            name="heartbeat",
            on_error=self.count_error,
            first_pause=True,  # the worker's start() has just synced and sent one
        )

    def stop_polling(self) -> None:
        """Stop the poll loop; the other loops and the runs go on."""
        self._poll_scope.cancel()

    async def drain(self, timeout_seconds: float) -> None:
        """Let runs finish for up to ``timeout_seconds``, cancel the rest, then stop the loops."""
        table = self._table
        if len(table):
            names = ", ".join(repr(run.flow_run.name) for run in table)
            logger.info(
                "Draining: waiting up to %g s for %d run(s) to finish: %s",
                timeout_seconds,
                len(table),
                names,
            )
        with trio.move_on_after(timeout_seconds):
            await table.wait_idle()
        if len(table):
            logger.warning(
                "Drain timeout (%g s) reached: stopping %d run(s) still going",
                timeout_seconds,
                len(table),
            )
        self.runs.cancel_scope.cancel()
        await table.wait_idle()
        if self.scope is not None:
            self.scope.cancel()

    def _count_poll_error(self, exc: BaseException) -> None:
        self._metrics.polls_failed.inc()
        self._metrics.poll_failures_in_a_row.inc()
        self.count_error(exc)

    def count_error(self, exc: BaseException) -> None:
        """Remember and count a loop's API error (``/ready`` reports it)."""
        self.last_api_error = f"{type(exc).__name__}: {exc}"
        self._metrics.api_errors.labels(type(exc).__name__).inc()
