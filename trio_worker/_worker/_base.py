"""``BaseWorker``: the loops, the runs nursery and the lifecycle of a worker.

A worker is an async context manager that owns an API client and the **runs
nursery**, the one place where every submitted flow run lives; nothing a
worker starts outlives it. :meth:`BaseWorker.start` runs the loops of
design.md in a **loops nursery**: polling for scheduled runs, heartbeating,
and watching for cancellations. How one run is taken from SCHEDULED to a
started process is in ``_submission.py``; how cancellations are found and
carried out is in ``_cancellation.py``. Subclasses supply :meth:`run` (start
the infrastructure) and may supply :meth:`kill_infrastructure`.

    async with ProcessWorker("my-pool", api_url=url) as worker:
        await worker.start()
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import functools
import logging
import math
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, ClassVar, Final, Literal, Self

import attrs
import trio

from trio_worker._client._client import PrefectClient
from trio_worker._client._log_shipping import APILogHandler, ship_logs
from trio_worker._client._run_reads import RunReader
from trio_worker._core._exceptions import ConfigurationError, ConflictError, NotFoundError
from trio_worker._core._jobs import BaseJobConfiguration, BaseVariables, default_base_job_template
from trio_worker._core._models import Deployment, Flow, FlowRun, State, WorkPool, now
from trio_worker._core._services import service_loop
from trio_worker._core._settings import Settings
from trio_worker._worker._events import EventEmitter
from trio_worker._worker._metrics import WorkerMetrics
from trio_worker._worker._start_rate import StartRate
from trio_worker._worker._wakeups import Wakeups, read_next_due

__all__ = ["BaseWorker", "BaseWorkerResult", "InFlightRun", "WorkerStatistics"]

logger = logging.getLogger("trio_worker.worker")

HOSTNAME: Final = socket.gethostname()
#: The logger of flow-run lines; records with a ``flow_run_id`` reach the API.
RUN_LOGGER_NAME: Final = "trio_worker.flow_runs"
#: Seconds a state proposal may take while the worker shuts down.
SHUTDOWN_REPORT_SECONDS: Final = 10.0
#: Seconds the last flush of the worker's run log lines may take at shutdown.
LOG_FLUSH_TIMEOUT_SECONDS: Final = 5.0


@attrs.frozen
class BaseWorkerResult:
    """What :meth:`BaseWorker.run` returns once the infrastructure has exited.

    Attributes:
        identifier: the infrastructure id also recorded as ``infrastructure_pid``.
        status_code: the exit status; 0 is success, negative is a signal number.
    """

    identifier: str
    status_code: int

    def __bool__(self) -> bool:
        return self.status_code == 0


@attrs.define
class InFlightRun:
    """A run this worker holds a limiter token for, from the poll until it ends.

    Attributes:
        flow_run: the run as the poll returned it.
        cancel_scope: cancelling it stops the run and kills its infrastructure.
        accepted_at: when the worker took the run (monotonic seconds).
        infrastructure_pid: set as soon as the infrastructure exists.
        owned: whether this worker's PENDING proposal was accepted, making the
            run its own to start and to report on.
        cancel_reason: why the run is being cancelled (a user's cancellation or
            a timeout), or ``None``.
        timeout_seconds: the run's ``timeout_seconds`` job variable, if any.
        memory_limit_mb: the run's ``memory_limit_mb`` job variable, if any.
    """

    flow_run: FlowRun
    cancel_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    accepted_at: float = attrs.field(factory=time.monotonic)
    infrastructure_pid: str | None = None
    owned: bool = False
    cancel_reason: str | None = None
    timeout_seconds: float | None = None
    memory_limit_mb: int | None = None


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


def _validate_name(name: str) -> str:
    if not name or "/" in name or "%" in name:
        raise ConfigurationError(
            f"worker name {name!r} is not allowed: it must be non-empty and contain no '/' or '%'"
        )
    return name


class BaseWorker:
    """Poll a work pool and run its flow runs on some infrastructure.

    Subclass it to add an infrastructure type: set :attr:`type`,
    :attr:`job_configuration` and :attr:`job_configuration_variables`, and
    implement :meth:`run`. Register the class under the ``trio_worker.workers``
    entry-point group so ``trio-worker start --type NAME`` finds it.

    Args:
        work_pool_name: the pool to serve.
        work_queues: the queues to serve; all of the pool's when empty.
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

    #: The worker type's name, as in a pool's ``type``.
    type: ClassVar[str] = ""
    #: The job configuration class that the pool's template renders into.
    job_configuration: ClassVar[builtins.type[BaseJobConfiguration]] = BaseJobConfiguration
    #: The variables class the default template's schema comes from.
    job_configuration_variables: ClassVar[builtins.type[Any] | None] = BaseVariables

    def __init__(
        self,
        work_pool_name: str,
        *,
        work_queues: Sequence[str] = (),
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
        self.work_pool_name = work_pool_name
        self.work_queues = tuple(work_queues)
        self.name = _validate_name(
            name if name is not None else f"{type(self).__name__} {uuid.uuid4()}"
        )
        self.prefetch_seconds = (
            self.settings.prefetch_seconds if prefetch_seconds is None else prefetch_seconds
        )
        self.create_pool_if_not_found = create_pool_if_not_found
        self.limit = limit
        self.heartbeat_interval_seconds = (
            self.settings.heartbeat_seconds
            if heartbeat_interval_seconds is None
            else heartbeat_interval_seconds
        )
        self.query_seconds = self.settings.query_seconds
        self.cancel_grace_seconds = cancel_grace_seconds
        if on_shutdown not in ("crash", "reschedule"):
            raise ConfigurationError(f"on_shutdown={on_shutdown!r} must be 'crash' or 'reschedule'")
        self.on_shutdown = on_shutdown
        if reconcile not in ("adopt", "kill"):
            raise ConfigurationError(f"reconcile={reconcile!r} must be 'adopt' or 'kill'")
        self.reconcile = reconcile
        #: The last API error of a loop, cleared by the next success (for ``/ready``).
        self.last_api_error: str | None = None
        self._base_job_template = dict(base_job_template) if base_job_template else None
        self._client_backoff_seconds = client_backoff_seconds

        self.work_pool: WorkPool | None = None
        self.in_flight: dict[uuid.UUID, InFlightRun] = {}
        self.limiter = trio.CapacityLimiter(math.inf if limit is None else limit)
        #: Paces claims (and so starts) of runs; separate from the limit on runs at once.
        self.start_rate = StartRate(
            self.settings.max_starts_per_second
            if max_starts_per_second is None
            else max_starts_per_second,
            self.settings.start_burst if start_burst is None else start_burst,
        )
        self.last_polled: float | None = None
        #: Where the health server listens, once started (``http://host:port``).
        self.health_urls: list[str] = []
        self.started_at: dt.datetime | None = None
        self._client: PrefectClient | None = None
        self._runs_nursery: trio.Nursery | None = None
        self._poll_scope: trio.CancelScope | None = None
        self._loops_scope: trio.CancelScope | None = None
        self._idle = trio.Event()
        self._idle.set()
        # Set when the last poll filled every free slot: more runs may be due.
        self._backlog = False
        self._slots_freed = trio.Event()
        #: Event-driven pick-up: what the poll loop rests on while the stream is up.
        self.wakeups = Wakeups()
        self._exit_stack: contextlib.AsyncExitStack | None = None
        self._closing = trio.Event()
        self._warned: set[str] = set()
        self._stopping = False
        # Read-through caches for the submission pipeline: a burst of runs of
        # one deployment costs one read (see _submission.py).
        self.deployment_cache: dict[uuid.UUID, tuple[float, Deployment]] = {}
        self.flow_cache: dict[uuid.UUID, Flow] = {}
        #: Locks that make concurrent submissions of one deployment read it
        #: (and its flow) once instead of once per run.
        self.read_locks: dict[tuple[str, uuid.UUID], trio.Lock] = {}
        #: Runs of other (dead) workers this worker is stopping right now.
        self.cancelling: set[uuid.UUID] = set()
        from trio_worker._worker._cancellation import CancelStream

        #: The cancellation stream's state, so the polling fallback can rest while it is up.
        self.cancel_stream = CancelStream()
        self.metrics = WorkerMetrics()
        self.events = EventEmitter(self)
        self.log_handler = APILogHandler(
            worker_name=self.name, capacity=self.settings.log_buffer_lines
        )
        self.metrics.limiter_tokens.labels("total").set(self.limiter.total_tokens)
        self.metrics.slots_free.set(self.limiter.total_tokens)

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
            self._client = await stack.enter_async_context(
                PrefectClient(
                    self.api_url,
                    settings=self.settings,
                    backoff_seconds=self._client_backoff_seconds,
                )
            )
            #: Reads of runs whose process exited, batched when they overlap.
            self.run_reader = RunReader(self._client)
            outer = await stack.enter_async_context(trio.open_nursery())
            self._runs_nursery = await outer.start(self._own_runs)
            self._exit_stack = stack.pop_all()
        return self

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
        if exc is not None and self._runs_nursery is not None:
            self._runs_nursery.cancel_scope.cancel()
        self._closing.set()
        return await self._exit_stack.__aexit__(exc_type, exc, tb)

    @property
    def client(self) -> PrefectClient:
        """The open API client (only inside ``async with worker``)."""
        if self._client is None:
            raise RuntimeError(f"{self!r} is not open; use 'async with worker:'")
        return self._client

    @property
    def runs_nursery(self) -> trio.Nursery:
        """The nursery that owns every submitted run."""
        if self._runs_nursery is None:
            raise RuntimeError(f"{self!r} is not open; use 'async with worker:'")
        return self._runs_nursery

    async def start(
        self,
        *,
        run_once: bool = False,
        with_healthcheck: bool = False,
        printer: Callable[[str], object] = print,
    ) -> None:
        """Serve the pool until cancelled or :meth:`drain`-ed.

        Args:
            run_once: poll once, wait for the runs it started, and return.
            with_healthcheck: serve ``/health`` (and friends) on the settings'
                webserver host and port, inside the loops nursery.
            printer: where the started/stopped lines go.

        Raises:
            UnauthorizedError: the API refused our credentials.
            ConfigurationError: a problem no retry can fix (e.g. no pool and
                ``create_pool_if_not_found`` is false for a run-once worker).
        """
        self.started_at = now()
        run_logger = logging.getLogger(RUN_LOGGER_NAME)
        if run_logger.level == logging.NOTSET:
            # Run lines at INFO must exist to be shipped, whatever the root level.
            run_logger.setLevel(logging.INFO)
        run_logger.addHandler(self.log_handler)
        try:
            async with trio.open_nursery() as loops:
                self._loops_scope = loops.cancel_scope
                if self._stopping:  # drained before it started
                    return
                if with_healthcheck:
                    from trio_worker._worker._health import serve_health

                    self.health_urls = await loops.start(serve_health, self)
                await self.sync_with_backend()
                await self.reconcile_infrastructure()
                loops.start_soon(self.events.serve)
                loops.start_soon(
                    functools.partial(
                        ship_logs,
                        self.client,
                        self.log_handler.buffer,
                        flush_timeout_seconds=LOG_FLUSH_TIMEOUT_SECONDS,
                    )
                )
                self.events.started()
                printer(f"Worker {self.name!r} started!")
                if run_once:
                    await self.get_and_submit_flow_runs()
                    await self.wait_for_runs()
                    loops.cancel_scope.cancel()
                    return
                self._start_loops(loops)
        finally:
            run_logger.removeHandler(self.log_handler)
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + SHUTDOWN_REPORT_SECONDS
                if self.events.started_event_id is not None:
                    self.events.stopped()
                    await self.events.flush_over_http()

    def _start_loops(self, loops: trio.Nursery) -> None:
        from trio_worker._worker._cancellation import (
            check_for_cancelled_flow_runs,
            listen_for_cancellations,
        )

        self._poll_scope = trio.CancelScope()
        loops.start_soon(self._poll_loop)
        loops.start_soon(
            lambda: service_loop(
                self.sync_with_backend,
                interval=self.heartbeat_interval_seconds,
                name="heartbeat",
                on_error=self._count_error,
                first_pause=True,  # start() has just synced and sent one
            )
        )
        loops.start_soon(
            lambda: service_loop(
                lambda: check_for_cancelled_flow_runs(self),
                interval=2 * self.query_seconds,
                name="cancellation check",
                on_error=self._count_error,
            )
        )
        loops.start_soon(listen_for_cancellations, self)
        loops.start_soon(self.wakeups.serve, functools.partial(read_next_due, self))

    async def _poll_loop(self) -> None:
        assert self._poll_scope is not None
        with self._poll_scope:
            await service_loop(
                self.get_and_submit_flow_runs,
                interval=self.query_seconds,
                name="poll",
                on_error=self._count_poll_error,
                pause=self._until_next_poll,
            )

    async def _until_next_poll(self, seconds: float) -> None:
        """Wait ``seconds``, or less when the last poll left runs behind and slots free up.

        A poll that filled every free slot may have left due runs waiting; with
        a fixed interval a worker could never start more than ``limit`` runs
        per interval however short the runs. So while there is a backlog the
        next poll comes once a quarter of the slots are free again (never more
        often than that, so the API is not asked once per finished run).
        """
        self._slots_freed = trio.Event()
        with trio.move_on_after(self.wakeups.pause_seconds(seconds)):
            if not self._backlog:
                await self.wakeups.wait()
            if self._free_slots() < self._refill_batch():
                await self._slots_freed.wait()
            # Paced starts: come back when the bucket holds a batch's worth of tokens.
            await trio.sleep(self.start_rate.seconds_until(self._start_batch()))

    def _free_slots(self) -> float:
        return self.limiter.total_tokens - self.limiter.borrowed_tokens

    def _refill_batch(self) -> int:
        total = self.limiter.total_tokens
        return 1 if math.isinf(total) else max(1, int(total) // 4)

    def _start_batch(self) -> int:
        """How many start tokens a paced worker waits for before it polls again.

        A quarter of the slots (as for freed slots), or without a limit a quarter
        of the burst: never a poll per token at a high rate.
        """
        if math.isinf(self.limiter.total_tokens) and not self.start_rate.unlimited:
            return max(1, int(self.start_rate.burst) // 4)
        return self._refill_batch()

    def _count_poll_error(self, exc: BaseException) -> None:
        self.metrics.polls_failed.inc()
        self.metrics.poll_failures_in_a_row.inc()
        self._count_error(exc)

    def _count_error(self, exc: BaseException) -> None:
        self.last_api_error = f"{type(exc).__name__}: {exc}"
        self.metrics.api_errors.labels(type(exc).__name__).inc()

    @property
    def stopping(self) -> bool:
        """Whether the worker has stopped taking new runs (a drain has begun)."""
        return self._stopping

    def stop_polling(self) -> None:
        """Take no new runs; runs in flight go on (the first step of a drain)."""
        self._stopping = True
        if self._poll_scope is not None:
            self._poll_scope.cancel()

    async def wait_for_runs(self) -> None:
        """Wait until no run is in flight."""
        while self.in_flight:
            await self._idle.wait()

    async def drain(self, timeout_seconds: float) -> None:
        """Stop polling, let runs finish for up to ``timeout_seconds``, then cancel them.

        Cancelled runs report CRASHED ("worker NAME shut down before the run
        finished"), or go back to SCHEDULED with ``on_shutdown="reschedule"``,
        unless they had already ended; this returns once every run has
        reported and its infrastructure is gone.
        """
        self.stop_polling()
        if self.in_flight:
            names = ", ".join(repr(run.flow_run.name) for run in self.in_flight.values())
            logger.info(
                "Draining: waiting up to %g s for %d run(s) to finish: %s",
                timeout_seconds,
                len(self.in_flight),
                names,
            )
        with trio.move_on_after(timeout_seconds):
            await self.wait_for_runs()
        if self.in_flight:
            logger.warning(
                "Drain timeout (%g s) reached: stopping %d run(s) still going",
                timeout_seconds,
                len(self.in_flight),
            )
        self.runs_nursery.cancel_scope.cancel()
        await self.wait_for_runs()
        if self._loops_scope is not None:
            self._loops_scope.cancel()

    # -- the loops ------------------------------------------------------------

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)

    @classmethod
    def get_default_base_job_template(cls) -> dict[str, Any]:
        """Return the base job template a new pool of this type gets."""
        return default_base_job_template(cls.job_configuration, cls.job_configuration_variables)

    async def sync_with_backend(self) -> None:
        """Read (or create) the pool, give it a template if it has none, and heartbeat."""
        client = self.client
        try:
            pool = await client.read_work_pool(self.work_pool_name)
        except NotFoundError:
            if not self.create_pool_if_not_found:
                self._warn_once(
                    "no-pool",
                    "Work pool %r not found and creating it is disabled; will look again",
                    self.work_pool_name,
                )
                self.work_pool = None
                return
            template = self._base_job_template or self.get_default_base_job_template()
            try:
                pool = await client.create_work_pool(
                    self.work_pool_name, type=self.type, base_job_template=template
                )
                logger.info("Created work pool %r of type %r", pool.name, pool.type)
            except ConflictError:  # another worker created it a moment ago
                pool = await client.read_work_pool(self.work_pool_name)
        else:
            if self._base_job_template is not None:
                self._warn_once(
                    "template-ignored",
                    "Work pool %r already exists; the given base job template is ignored",
                    pool.name,
                )
        if not pool.base_job_template:
            template = self.get_default_base_job_template()
            await client.update_work_pool(pool.name, base_job_template=template)
            pool = attrs.evolve(pool, base_job_template=template)
        if pool.type != self.type:
            self._warn_once(
                "type-mismatch",
                "Work pool %r has type %r but this worker is of type %r; runs may not start",
                pool.name,
                pool.type,
                self.type,
            )
        if pool.is_paused and (self.work_pool is None or not self.work_pool.is_paused):
            logger.warning(
                "Work pool %r is paused: no runs will start until it is resumed", pool.name
            )
        self.work_pool = pool
        await client.send_worker_heartbeat(
            pool.name,
            self.name,
            heartbeat_interval_seconds=self.heartbeat_interval_seconds,
            flow_run_ids=list(self.in_flight),
        )
        self.last_api_error = None

    async def get_and_submit_flow_runs(self) -> list[FlowRun]:
        """Poll for due runs and submit as many as the limiter allows.

        A run already in flight is skipped; a run for which no token is free
        ends the cycle (it will be polled again). Returns the runs submitted.
        """
        if self.work_pool is None or self._stopping:
            self.last_polled = time.monotonic()
            return []
        from trio_worker._worker._submission import submit_flow_run

        free = min(self._free_slots(), self.start_rate.available())
        if free <= 0:
            # Every token is borrowed: a page of runs we could not take would
            # only cost the API and this worker the parsing (a backlog of
            # hundreds of runs re-read every poll); the next poll looks again,
            # as soon as slots free up.
            self.last_polled = time.monotonic()
            self._backlog = True
            return []
        self._backlog = False
        scheduled_before = now() + dt.timedelta(seconds=int(self.prefetch_seconds))
        with self.metrics.poll_seconds.time():
            responses = await self.client.get_scheduled_flow_runs(
                self.work_pool_name,
                work_queue_names=self.work_queues,
                scheduled_before=scheduled_before,
                limit=None if math.isinf(free) else int(free),
            )
        self.last_polled = time.monotonic()
        self.last_api_error = None
        self.metrics.last_poll.set_to_current_time()
        self.metrics.poll_failures_in_a_row.set(0)
        submitted = []
        for response in responses:
            flow_run = response.flow_run
            if flow_run.id in self.in_flight:
                continue
            if not self.start_rate.try_take():
                logger.debug("Start rate reached; the rest wait for a later poll")
                self._backlog = True
                break
            try:
                self.limiter.acquire_on_behalf_of_nowait(flow_run.id)
            except trio.WouldBlock:
                self.start_rate.give_back()
                logger.debug(
                    "Limit of %s runs reached; the rest wait for the next poll", self.limit
                )
                self._backlog = True
                break
            # The run's own task releases the token in its ``finally``; until
            # it starts, nothing can fail between here and ``start_soon``.
            self._track(InFlightRun(flow_run=flow_run))
            self.runs_nursery.start_soon(submit_flow_run, self, flow_run)
            submitted.append(flow_run)
        if not math.isinf(free) and len(responses) >= free:
            self._backlog = True  # a full page: there may be more
        return submitted

    def _track(self, run: InFlightRun) -> None:
        if not self.in_flight:
            self._idle = trio.Event()
        self.in_flight[run.flow_run.id] = run
        self._count_in_flight()

    def _count_in_flight(self) -> None:
        self.metrics.runs_in_flight.set(len(self.in_flight))
        self.metrics.limiter_tokens.labels("borrowed").set(self.limiter.borrowed_tokens)
        self.metrics.slots_free.set(self._free_slots())

    def _untrack(self, flow_run_id: uuid.UUID, *, release: bool = True) -> None:
        """Forget a run and return its token; called once, from the run's ``finally``."""
        self.in_flight.pop(flow_run_id, None)
        if release:
            self.limiter.release_on_behalf_of(flow_run_id)
            if self._backlog and self._free_slots() >= self._refill_batch():
                self._slots_freed.set()
        self._count_in_flight()
        if not self.in_flight:
            self._idle.set()

    # -- what subclasses provide ---------------------------------------------

    async def reconcile_infrastructure(self) -> None:
        """Deal with infrastructure an earlier worker of this name left behind.

        Called once at start, before the first poll. The base class keeps no
        record of what it started, so there is nothing to do.
        """

    async def record_claim(self, flow_run_id: uuid.UUID, pending: State) -> None:
        """Note, before ``pending`` is proposed, that this worker claims the run.

        A backend that keeps records across restarts (the process worker)
        writes one, so a restart after a death between the claim and the
        process can settle the run. The base class keeps none.
        """

    async def forget_claim(self, flow_run_id: uuid.UUID) -> None:
        """Drop the claim of a run this worker is done with (a no-op without one)."""

    def base_env(self) -> dict[str, str]:
        """Return the env a run's infrastructure needs to reach the API (lowest layer)."""
        env = {"PREFECT_API_URL": self.api_url or ""}
        if self.settings.api_key:
            env["PREFECT_API_KEY"] = self.settings.api_key
        if self.settings.api_auth_string:
            env["PREFECT_API_AUTH_STRING"] = self.settings.api_auth_string
        return env

    def default_command(self) -> str | None:
        """Return the command a run gets when its configuration sets none."""
        return None

    async def run(
        self,
        flow_run: FlowRun,
        configuration: Any,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> BaseWorkerResult:
        """Start ``flow_run``'s infrastructure and wait for it to exit.

        Call ``task_status.started(identifier)`` the moment the infrastructure
        exists; the worker records it as the run's ``infrastructure_pid``.
        When cancelled, stop the infrastructure before returning (or raising).

        Raises:
            InfrastructureError: the infrastructure could not be started; its
                message becomes the run's CRASHED message.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement run()")

    def infrastructure_is_abandoned(self, flow_run: FlowRun, infrastructure_pid: str) -> bool:
        """Whether this worker should stop a cancelled run it did not start.

        Called for a cancelling run of this pool that is not in flight here.
        The base class says yes and lets :meth:`kill_infrastructure` decide
        (raising ``NotImplementedError`` when it cannot); a backend whose
        infrastructure has an owner that may still be alive (the process
        worker: a worker on the same host) says no for those.
        """
        return True

    async def kill_infrastructure(
        self, infrastructure_pid: str, configuration: Any, grace_seconds: float
    ) -> None:
        """Stop infrastructure that this worker process did not start (e.g. before a restart).

        Raises:
            InfrastructureError: when it cannot be reached or stopped.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot kill infrastructure")

    # -- introspection ----------------------------------------------------------

    def is_worker_still_polling(self, query_interval_seconds: float | None = None) -> bool:
        """Whether a poll happened within 30 query intervals (Prefect's health rule)."""
        interval = query_interval_seconds or self.query_seconds
        reference = self.last_polled
        if reference is None:
            return True  # still starting up
        return time.monotonic() - reference < 30 * interval

    def statistics(self) -> WorkerStatistics:
        """Return a snapshot of the worker's load."""
        age = None if self.last_polled is None else time.monotonic() - self.last_polled
        stats = self.limiter.statistics()
        return WorkerStatistics(
            runs_in_flight=len(self.in_flight),
            limit=self.limiter.total_tokens,
            borrowed_tokens=stats.borrowed_tokens,
            last_poll_age_seconds=age,
        )

    def get_status(self) -> dict[str, Any]:
        """Describe the worker as JSON for ``/status``."""
        stats = self.statistics()
        return {
            "name": self.name,
            "type": self.type,
            "work_pool": self.work_pool_name,
            "work_queues": list(self.work_queues),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "limit": None if self.limit is None else self.limit,
            "borrowed_tokens": stats.borrowed_tokens,
            "last_poll_age_seconds": stats.last_poll_age_seconds,
            "runs_in_flight": [
                {
                    "id": str(run.flow_run.id),
                    "name": run.flow_run.name,
                    "infrastructure_pid": run.infrastructure_pid,
                    "seconds_in_flight": round(time.monotonic() - run.accepted_at, 3),
                }
                for run in self.in_flight.values()
            ],
        }
