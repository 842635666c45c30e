"""``BaseWorker``: the lifecycle of a worker and the parts it composes.

A worker is an async context manager that owns an API client and the **runs
nursery**, the one place where every submitted flow run lives; nothing a
worker starts outlives it. It composes parts that own their state and are
handed only what they need (never the worker):

- :class:`~trio_worker._worker._run_table.RunTable`: the limiter and the runs in flight;
- :class:`~trio_worker._worker._pool_sync.PoolSync`: the pool and the heartbeat;
- :class:`~trio_worker._worker._poller.Poller`: asks for due runs;
- :class:`~trio_worker._worker._submitter.Submitter`: one run from PENDING to its end;
- :class:`~trio_worker._worker._reporter.Reporter`: final states and outcomes;
- :class:`~trio_worker._worker._cancellation.CancellationWatcher`: cancellations.

:meth:`BaseWorker.start` runs the loops in a **loops nursery**. Subclasses
supply :meth:`run` (start the infrastructure, given a typed
:class:`~trio_worker._worker._context.RunContext`) and may supply
:meth:`kill_infrastructure`.

    async with ProcessWorker("my-pool", api_url=url) as worker:
        await worker.start()
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Self

import trio

from trio_worker._client._client import PrefectClient
from trio_worker._client._log_handler import APILogHandler
from trio_worker._core._exceptions import ConfigurationError
from trio_worker._core._models import FlowRun, now
from trio_worker._core._settings import Settings
from trio_worker._worker._context import BaseWorkerResult, C, V
from trio_worker._worker._contract import BackendContract
from trio_worker._worker._events import EventEmitter
from trio_worker._worker._introspection import WorkerIntrospection
from trio_worker._worker._loops import WorkerLoops
from trio_worker._worker._metrics import WorkerMetrics
from trio_worker._worker._pool_sync import WarnOnce
from trio_worker._worker._run_table import InFlightRun, RunTable
from trio_worker._worker._start_rate import StartRate
from trio_worker._worker._status import (
    WorkerStatistics,
)

__all__ = ["BaseWorker", "BaseWorkerResult", "InFlightRun", "WorkerStatistics"]

logger = logging.getLogger("trio_worker.worker")


def _validate_name(name: str) -> str:
    if not name or "/" in name or "%" in name:
        raise ConfigurationError(
            f"worker name {name!r} is not allowed: it must be non-empty and contain no '/' or '%'"
        )
    return name


class BaseWorker(BackendContract[C, V], WorkerIntrospection):
    """Poll a work pool and run its flow runs on some infrastructure.

    Subclass ``BaseWorker[MyConfiguration, MyVariables]`` to add an
    infrastructure type: set :attr:`type`, :attr:`job_configuration` and
    :attr:`job_configuration_variables`, and implement :meth:`run`. Register
    the class under the ``trio_worker.workers`` entry-point group so
    ``trio-worker start --type NAME`` finds it.

    Args:
        work_pool_name: the pool to serve.
        work_queues: the queues to serve; all of the pool's when empty or None.
        name: the worker's name (no '/' or '%'); generated when None.
        prefetch_seconds: start runs scheduled up to this far in the future.
        create_pool_if_not_found: create the pool when it does not exist.
        limit: the most flow runs at once; unlimited when None.
        heartbeat_interval_seconds: seconds between heartbeats.
        base_job_template: the template a new pool gets (default: the type's).
        api_url: the API to talk to (default: ``settings.api_url``).
        settings: credentials, intervals and timeouts (default: from the environment).
        cancel_grace_seconds: how long a cancelled run may take to stop after
            SIGTERM before it is killed.
        client_backoff_seconds: the first retry wait of the API client.
        on_shutdown: what becomes of runs a shutdown interrupts: ``"crash"``
            reports them CRASHED; ``"reschedule"`` returns them to SCHEDULED for
            another worker (only for flows that are safe to run twice).
        reconcile: what to do with infrastructure an earlier worker of the same
            name left running on this host: ``"adopt"`` it or ``"kill"`` it.
        max_starts_per_second: pace run starts to this many per second on
            average (default: ``settings.max_starts_per_second``, unlimited);
            runs beyond it stay SCHEDULED until a later poll.
        start_burst: how many runs may start at once under that pace
            (default: ``settings.start_burst``, else one second's worth).
    """

    def __init__(
        self,
        work_pool_name: str,
        *,
        work_queues: Sequence[str] | None = (),
        name: str | None = None,
        prefetch_seconds: float | None = None,
        create_pool_if_not_found: bool = True,
        limit: int | None = None,
        heartbeat_interval_seconds: float | None = None,
        base_job_template: Mapping[str, Any] | None = None,
        api_url: str | None = None,
        settings: Settings | None = None,
        cancel_grace_seconds: float = 30.0,
        client_backoff_seconds: float = 1.0,
        on_shutdown: Literal["crash", "reschedule"] = "crash",
        reconcile: Literal["adopt", "kill"] = "adopt",
        max_starts_per_second: float | None = None,
        start_burst: int | None = None,
    ) -> None:
        if limit is not None and limit < 1:
            raise ConfigurationError(f"limit={limit} must be at least 1 (or unset for no limit)")
        self.settings = settings if settings is not None else Settings.from_env()
        self.api_url = api_url or self.settings.api_url
        if not self.api_url:
            raise ConfigurationError(
                "PREFECT_API_URL is not set: point it at an API "
                "(e.g. run `trio-worker server start`) or pass api_url"
            )
        if on_shutdown not in ("crash", "reschedule"):
            raise ConfigurationError(f"on_shutdown={on_shutdown!r} must be 'crash' or 'reschedule'")
        if reconcile not in ("adopt", "kill"):
            raise ConfigurationError(f"reconcile={reconcile!r} must be 'adopt' or 'kill'")
        self.work_pool_name = work_pool_name
        self.work_queues = tuple(work_queues or ())
        self.name = _validate_name(
            name if name is not None else f"{type(self).__name__} {uuid.uuid4()}"
        )
        settings = self.settings
        self.prefetch_seconds = (
            settings.prefetch_seconds if prefetch_seconds is None else prefetch_seconds
        )
        self.heartbeat_interval_seconds = (
            settings.heartbeat_seconds
            if heartbeat_interval_seconds is None
            else heartbeat_interval_seconds
        )
        self.query_seconds = settings.query_seconds
        self.create_pool_if_not_found = create_pool_if_not_found
        self._base_job_template = dict(base_job_template) if base_job_template else None
        self.limit = limit
        self.cancel_grace_seconds = cancel_grace_seconds
        self.on_shutdown = on_shutdown
        self.reconcile = reconcile
        self._client_backoff_seconds = client_backoff_seconds
        self.metrics = WorkerMetrics()
        self.table = RunTable(limit, metrics=self.metrics)
        #: Paces claims (and so starts) of runs; separate from the limit on runs at once.
        self.start_rate = StartRate(
            settings.max_starts_per_second
            if max_starts_per_second is None
            else max_starts_per_second,
            settings.start_burst if start_burst is None else start_burst,
        )
        self.warn_once = WarnOnce(logger)
        self.events = EventEmitter(
            worker_type=self.type, worker_name=self.name, work_pool=lambda: self.work_pool
        )
        self.log_handler = APILogHandler(worker_name=self.name, capacity=settings.log_buffer_lines)
        #: Where the health server listens, once started (``http://host:port``).
        self.health_urls: list[str] = []
        self.started_at: Any = None
        self._client: PrefectClient | None = None
        self._loops: WorkerLoops[C] | None = None
        self._exit_stack: contextlib.AsyncExitStack | None = None
        self._torn_down = False
        self._closing = trio.Event()
        self._stopping = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, pool={self.work_pool_name!r})"

    # -- lifecycle ------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._exit_stack is not None:
            raise RuntimeError(f"{self!r} was already opened; create a new worker")
        assert self.api_url is not None  # checked in __init__
        # Closed here if opening fails (a cancellation included): a nursery
        # left open would corrupt the caller's nursery stack.
        async with contextlib.AsyncExitStack() as stack:
            self._client = client = await stack.enter_async_context(
                PrefectClient(
                    self.api_url,
                    settings=self.settings,
                    backoff_seconds=self._client_backoff_seconds,
                )
            )
            # Unwound after the runs have ended and before the client closes,
            # so teardown() may still call the API.
            stack.push_async_exit(self._teardown_on_exit)
            outer = await stack.enter_async_context(trio.open_nursery())
            runs = await outer.start(self._own_runs)
            self._loops = WorkerLoops(
                client,
                runs,
                api_url=self.api_url,
                prefetch_seconds=self.prefetch_seconds,
                heartbeat_interval_seconds=self.heartbeat_interval_seconds,
                query_seconds=self.query_seconds,
                create_pool_if_not_found=self.create_pool_if_not_found,
                base_job_template=self._base_job_template,
                work_pool_name=self.work_pool_name,
                work_queues=self.work_queues,
                worker_type=self.type,
                worker_name=self.name,
                table=self.table,
                metrics=self.metrics,
                events=self.events,
                start_rate=self.start_rate,
                warn_once=self.warn_once,
                backend=self._backend(),
                default_template=self.get_default_base_job_template,
                on_shutdown=self.on_shutdown,
                cancel_grace_seconds=self.cancel_grace_seconds,
                stopping=lambda: self._stopping,
            )
            self._exit_stack = stack.pop_all()
        # Outside the stack: an error raised inside its nursery would reach the
        # caller wrapped in an exception group.
        try:
            await self.setup()
        except BaseException as exc:
            self._torn_down = True
            self._closing.set()
            try:
                await self.teardown(type(exc), exc, exc.__traceback__)
            finally:
                await self._exit_stack.__aexit__(None, None, None)
            raise
        return self

    async def _teardown_on_exit(
        self,
        exc_type: builtins.type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._torn_down:
            self._torn_down = True
            await self.teardown(exc_type, exc, tb)

    async def _own_runs(self, *, task_status: trio.TaskStatus[trio.Nursery]) -> None:
        """Hold the runs nursery in a task of its own until the worker closes.

        Cancelling the runs (the end of a drain) then cancels only them, not
        the caller's ``async with worker`` body and the loops inside it, which
        keep shipping the runs' events and logs while they report.
        """
        async with trio.open_nursery() as runs:
            task_status.started(runs)
            await self._closing.wait()

    async def __aexit__(
        self,
        exc_type: builtins.type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        # Leaving waits for every run; an exception (or a cancellation) on the
        # way out cancels them first, and each run reports its final state
        # from a shielded scope before it returns.
        assert self._exit_stack is not None
        if exc is not None and self._loops is not None:
            self._loops.runs.cancel_scope.cancel()
        self._closing.set()
        return await self._exit_stack.__aexit__(exc_type, exc, tb)

    @property
    def loops(self) -> WorkerLoops[C]:
        """The parts that need the API (only inside ``async with worker``)."""
        if self._loops is None:
            raise RuntimeError(f"{self!r} is not open; use 'async with worker:'")
        return self._loops

    @property
    def client(self) -> PrefectClient:
        """The open API client (only inside ``async with worker``)."""
        return self.loops.client

    @property
    def runs_nursery(self) -> trio.Nursery:
        """The nursery that owns every submitted run."""
        return self.loops.runs

    async def start(
        self,
        *,
        run_once: bool = False,
        with_healthcheck: bool = False,
        printer: Callable[[str], object] = print,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve the pool until cancelled or :meth:`drain`-ed.

        A worker that is not open yet is opened here and closed on return, as
        Prefect's ``start()`` does; inside ``async with worker`` it is used as is.

        Args:
            run_once: poll once, wait for the runs it started (heartbeating and
                hearing cancellations meanwhile), and return.
            with_healthcheck: serve ``/health`` (and friends) on the settings'
                webserver host and port, inside the loops nursery.
            printer: where the started/stopped lines go.
            task_status: ``started()`` once the worker polls (``nursery.start``).

        Raises:
            UnauthorizedError: the API refused our credentials.
            ConfigurationError: a problem no retry can fix (e.g. no pool and
                ``create_pool_if_not_found`` is false for a run-once worker).
        """
        if self._exit_stack is None:
            async with self:
                await self.start(
                    run_once=run_once,
                    with_healthcheck=with_healthcheck,
                    printer=printer,
                    task_status=task_status,
                )
            return
        loops = self.loops
        self.started_at = now()
        async with loops.serving(self.events, self.log_handler) as nursery:
            if self._stopping:  # drained before it started
                task_status.started()
                return
            if with_healthcheck:
                source = self._health_source()
                self.health_urls = await loops.serve_health(nursery, source, self.settings)
            await self.sync_with_backend()
            await self.reconcile_infrastructure()
            loops.ship(nursery, self.events, self.log_handler, settings=self.settings)
            self.events.started()
            printer(f"Worker {self.name!r} started!")
            if run_once:
                await self.get_and_submit_flow_runs()
                task_status.started()
                await loops.keep_runs(nursery, settings=self.settings)
                await self.wait_for_runs()
                nursery.cancel_scope.cancel()
                return
            await loops.start(nursery, settings=self.settings)
            task_status.started()

    @property
    def stopping(self) -> bool:
        """Whether the worker has stopped taking new runs (a drain has begun)."""
        return self._stopping

    def stop_polling(self) -> None:
        """Take no new runs; runs in flight go on (the first step of a drain)."""
        self._stopping = True
        if self._loops is not None:
            self._loops.stop_polling()

    async def wait_for_runs(self) -> None:
        """Wait until no run is in flight."""
        await self.table.wait_idle()

    async def drain(self, timeout_seconds: float) -> None:
        """Stop polling, let runs finish for up to ``timeout_seconds``, then cancel them.

        Cancelled runs report CRASHED ("worker NAME shut down before the run
        finished"), or go back to SCHEDULED with ``on_shutdown="reschedule"``,
        unless they had already ended; this returns once every run has
        reported and its infrastructure is gone.
        """
        self.stop_polling()
        await self.loops.drain(timeout_seconds)

    # -- what the loops do (seed names, kept as API) ----------------------------

    async def sync_with_backend(self) -> None:
        """Read (or create) the pool, give it a template if it has none, and heartbeat."""
        await self.loops.pool.sync()
        self.loops.last_api_error = None

    async def get_and_submit_flow_runs(self) -> list[FlowRun]:
        """Poll for due runs and submit as many as the slots and start rate allow."""
        if self._stopping:
            return []
        submitted = await self.loops.poller.poll()
        self.loops.last_api_error = None
        return submitted
