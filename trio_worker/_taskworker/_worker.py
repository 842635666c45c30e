"""The task worker: serves background task runs pushed over a websocket.

Shape of a running :class:`TaskWorker` (``start()``)::

    PrefectClient
    └── services nursery           state reporter, lease keeper, status server: up until the end
        └── runs nursery           every run this worker holds; nothing outlives it
            └── subscription       /task_runs/subscriptions/scheduled lanes, reconnecting
                  loop: await runs.start(_receive_and_run, socket)   (``_subscription``)

This module is the lifecycle and the bookkeeping of each run (in flight,
finished, outcomes, the final state it records). The parts it composes: the
subscription and its handoff (``_subscription``: slot, PENDING, then ack), the
slots (``_slots``: a sync run's thread keeps its slot until it really ends),
running the task itself (``_execution``), the batched state reports
(``_reports``) and the leases (``_leases``), renewed while a run is in our
hands so the embedded API can take back the runs of a task worker that died.

Stopping is a drain: :meth:`TaskWorker.stop` ends the subscription, the runs
nursery gets ``drain_timeout_seconds`` to finish, then its runs are cancelled;
each records a final state under a shielded, time-bounded scope.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import uuid
from collections import Counter
from collections.abc import Callable, Generator
from types import TracebackType
from typing import Any, Final, Self, final

import trio

from trio_worker._client._client import DEFAULT_MAX_CONNECTIONS, MOST_CONNECTIONS, PrefectClient
from trio_worker._core._exceptions import (
    ConfigurationError,
)
from trio_worker._core._models import State, StateType, TaskRun, now
from trio_worker._core._settings import Settings
from trio_worker._taskworker._execution import (
    Progress,
    StopTaskWorker,
    log_finished,
    record_state,
    report,
    run_task,
    state_of,
)
from trio_worker._taskworker._leases import LeaseKeeper
from trio_worker._taskworker._reports import TaskRunReporter, task_run_record
from trio_worker._taskworker._slots import RunSlots, Slot
from trio_worker._taskworker._status import serve_task_status
from trio_worker._taskworker._store import TaskStore, default_task_store
from trio_worker._taskworker._subscription import TaskRunSubscription, claim
from trio_worker._taskworker._tasks import Task

__all__ = ["DEFAULT_DRAIN_TIMEOUT_SECONDS", "DEFAULT_LIMIT", "StopTaskWorker", "TaskWorker"]

logger = logging.getLogger("trio_worker.task_worker")

DEFAULT_LIMIT: Final = 10
DEFAULT_DRAIN_TIMEOUT_SECONDS: Final = 30.0
DEFAULT_LANES: Final = 4


@final
class Stopping:
    """What :meth:`TaskWorker.stop` returns: awaiting it waits until the worker has stopped.

    The stop itself was requested when ``stop()`` was called, so a plain
    ``worker.stop()`` (not awaited) still stops the worker.
    """

    def __init__(self, finished: trio.Event | None) -> None:
        self._finished = finished

    def __await__(self) -> Generator[Any, None, None]:
        return self._wait().__await__()

    async def _wait(self) -> None:
        if self._finished is None:
            await trio.lowlevel.checkpoint()
        else:
            await self._finished.wait()


@final
class TaskWorker:
    """Serve ``tasks`` to the API: run what it pushes, at most ``limit`` at once.

    Args:
        *tasks: :class:`~trio_worker.Task` objects (plain functions are wrapped).
        limit: most runs at once, sync and async together; ``None`` = no limit.
        settings: API URL and credentials; ``Settings.from_env()`` when None.
        store: where parameters are read and results written for tasks without
            their own store; the env-configured directory when None.
        drain_timeout_seconds: how long :meth:`stop` waits for runs in flight.
        delete_failed_submissions: delete runs that cannot be run at all
            (unknown key, unreadable parameters) after marking them FAILED, as
            Prefect's ``PREFECT_TASKS_SCHEDULING_DELETE_FAILED_SUBMISSIONS`` does.
        status_server_port: serve ``/status``, ``/health``, ``/metrics`` on this
            port (0 = any free port; see :attr:`status_url`); None = no server.
        client_backoff_seconds: first wait before retrying an API request (tests shrink it).
        lanes: parallel subscriptions (default ``min(limit, 4)``); more lanes, more
            handoffs per second, but each can hold one un-acked run while all slots are busy.
    """

    def __init__(
        self,
        *tasks: Task[..., Any] | Callable[..., Any],
        limit: int | None = DEFAULT_LIMIT,
        settings: Settings | None = None,
        store: TaskStore | None = None,
        drain_timeout_seconds: float = DEFAULT_DRAIN_TIMEOUT_SECONDS,
        delete_failed_submissions: bool = False,
        status_server_port: int | None = None,
        client_backoff_seconds: float = 1.0,
        lanes: int | None = None,
    ) -> None:
        if not tasks:
            raise ValueError("a TaskWorker needs at least one task to serve")
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be at least 1 (or None for no limit), got {limit}")
        self.tasks: dict[str, Task[..., Any]] = {}
        for item in tasks:
            wrapped = item if isinstance(item, Task) else Task(item)
            if wrapped.key in self.tasks:
                raise ValueError(f"two tasks share the key {wrapped.key!r}; give one a key=")
            self.tasks[wrapped.key] = wrapped
        self.limit = limit
        self.settings = settings
        self.store = store
        self.drain_timeout_seconds = drain_timeout_seconds
        self.delete_failed_submissions = delete_failed_submissions
        self.status_server_port = status_server_port
        self.client_backoff_seconds = client_backoff_seconds
        self.client_id = f"{socket.gethostname()}-{os.getpid()}"
        #: task key -> {run id: when it started here}
        self.in_flight_task_runs: dict[str, dict[uuid.UUID, Any]] = {k: {} for k in self.tasks}
        #: task key -> how many runs of it ended here (any final state)
        self.finished_task_runs: dict[str, int] = dict.fromkeys(self.tasks, 0)
        #: (task key, final state type) -> count, for /metrics
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self.started_at: Any = None
        # (Why lanes, and how many: see _subscription.)
        self.lanes = lanes if lanes is not None else min(limit or DEFAULT_LANES, DEFAULT_LANES)
        self.status_url: str | None = None
        # A sync run's thread keeps its slot until it ends, abandoned or not.
        self._slots = RunSlots(limit)
        self._subscription = TaskRunSubscription(
            client_id=self.client_id,
            keys=self.tasks,
            lanes=self.lanes,
            slots=self._slots,
            claim=self._claim,
            run=self._run_claimed,
        )
        #: The environment's store, read by :meth:`start` for tasks without their own.
        self._default_store: TaskStore | None = None
        self._client: PrefectClient | None = None
        self._reporter: TaskRunReporter | None = None
        self._subscription_scope: trio.CancelScope | None = None
        self._stopping = False
        self._leases = LeaseKeeper(self.client_id)
        # Set when start() has returned, for `await worker.stop()`.
        self._finished = trio.Event()
        self._entered = False

    def __repr__(self) -> str:
        return f"TaskWorker({', '.join(self.tasks)}, limit={self.limit})"

    # -- the seed's read-only attributes -------------------------------------------

    @property
    def task_keys(self) -> list[str]:
        """The keys this worker subscribes to."""
        return list(self.tasks)

    @property
    def started(self) -> bool:
        """Whether :meth:`start` has begun."""
        return self.started_at is not None

    @property
    def current_tasks(self) -> int:
        """Slots taken right now: runs in hand, and abandoned threads still running."""
        return self._slots.borrowed

    @property
    def available_tasks(self) -> int | None:
        """Free slots, or None without a limit."""
        return self._slots.available

    @property
    def abandoned_threads(self) -> int:
        """Threads of cancelled sync runs still running; each keeps its run's slot."""
        return self._slots.abandoned

    # -- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Scope the worker's life, as Prefect's ``async with TaskWorker(...)``.

        Inside, run :meth:`start` (directly or in a nursery); leaving the block
        stops the worker and waits for a running :meth:`start` to drain and return.
        """
        if self._entered:
            raise RuntimeError(f"{self!r} was already entered; create a new TaskWorker")
        self._entered = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def stop(self) -> Stopping:
        """Stop taking runs and drain: runs in flight get ``drain_timeout_seconds``.

        Safe to call repeatedly, from any Trio task, before or during ``start``.
        The stop is requested at once; the result may also be awaited, as
        Prefect's ``await worker.stop()``, to wait until :meth:`start` has
        drained and returned (at once when it is not running). Do not await it
        from inside a task run: the drain waits for that run.
        """
        self._request_stop()
        return Stopping(self._finished if self.started else None)

    def _request_stop(self) -> None:
        if not self._stopping:
            logger.info(
                "task worker %s stopping; %d run(s) in flight get up to %.0f s",
                self.client_id,
                self.current_tasks,
                self.drain_timeout_seconds,
            )
        self._stopping = True
        if self._subscription_scope is not None:
            self._subscription_scope.cancel()

    async def start(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until :meth:`stop` (then drain) or cancellation (then record crashes).

        Supports ``nursery.start``: started once the first subscription is up.

        Raises:
            ConfigurationError: no API URL configured.
            UnauthorizedError: the API refused our credentials.
        """
        if self.started:
            raise RuntimeError("a TaskWorker runs once; create a new one to start again")
        settings = self.settings or Settings.from_env()
        if not settings.api_url:
            raise ConfigurationError("PREFECT_API_URL is not set; the task worker needs an API")
        if self.store is None and any(t.store is None for t in self.tasks.values()):
            # Read once, here: a value Settings refuses fails the start, not
            # every run taken (each would crash the worker with it).
            self._default_store = default_task_store()
        self.started_at = now()
        try:
            await self._serve(settings, task_status)
        finally:
            self._finished.set()

    async def _serve(self, settings: Settings, task_status: trio.TaskStatus[None]) -> None:
        assert settings.api_url is not None
        # A connection per run that may be reporting at once, and one per lane.
        connections = min((self.limit or MOST_CONNECTIONS) + self.lanes, MOST_CONNECTIONS)
        async with PrefectClient(
            settings.api_url,
            settings=settings,
            backoff_seconds=self.client_backoff_seconds,
            max_connections=max(connections, DEFAULT_MAX_CONNECTIONS),
        ) as client:
            # Fail at start-up, as `trio-worker start` does, rather than retry
            # a websocket forever against an API that is not there.
            await client.hello()
            logger.info("task worker %s serving %s", self.client_id, ", ".join(self.tasks))
            self._client = client
            self._reporter = TaskRunReporter(client)
            try:
                async with trio.open_nursery() as services:
                    # Up until the very end: runs drained or cancelled still report.
                    await services.start(self._reporter.serve)
                    services.start_soon(self._leases.serve, client)
                    if self.status_server_port is not None:
                        self.status_url = await services.start(
                            functools.partial(
                                serve_task_status,
                                self,
                                host=settings.webserver_host,
                                port=self.status_server_port,
                            )
                        )
                    await self._serve_runs(settings, task_status)
                    services.cancel_scope.cancel()
            finally:
                self._client = None
                self._reporter = None
        self._slots.log_abandoned()
        logger.info("task worker %s stopped", self.client_id)

    async def _serve_runs(self, settings: Settings, task_status: trio.TaskStatus[None]) -> None:
        assert self._client is not None
        ssl_context = self._client.ssl_context  # the websockets trust what REST trusts
        async with trio.open_nursery() as runs:
            try:
                with trio.CancelScope() as scope:
                    self._subscription_scope = scope
                    if self._stopping:
                        scope.cancel()
                    await self._subscription.serve(
                        settings, ssl_context, runs, task_status=task_status
                    )
            finally:
                # The drain: runs in flight get a bounded time to finish.
                runs.cancel_scope.deadline = trio.current_time() + self.drain_timeout_seconds

    @property
    def connected(self) -> bool:
        """Whether at least one subscription to the API is up."""
        return self._subscription.connected

    async def _run_claimed(self, task_run: TaskRun, slot: Slot, progress: Progress) -> None:
        # A run handed over by the subscription: ours while the API leaves us its lease.
        with self._leases.holding(task_run.id):
            await self._execute(task_run, slot, progress)

    async def _claim(self, task_run: TaskRun) -> State | None:
        assert self._client is not None
        return await claim(self._client, task_run)

    async def execute_task_run(self, task_run: TaskRun) -> None:
        """Run one task run here and now, outside the subscription.

        Takes a slot, claims the run (PENDING) and runs it to a final state.
        Needs :meth:`start` to be running, or opens its own API client.
        """
        if self._client is None:
            settings = self.settings or Settings.from_env()
            assert settings.api_url, "PREFECT_API_URL is not set"
            async with PrefectClient(settings.api_url, settings=settings) as client:
                self._client = client
                self._reporter = TaskRunReporter(client)  # not serving: posts each report
                try:
                    await self.execute_task_run(task_run)
                finally:
                    self._client = None
                    self._reporter = None
                return
        async with self._slots.slot(task_run.id) as slot:
            pending = await self._claim(task_run)
            if pending is not None:
                await self._execute(task_run, slot, Progress(task_run_record(task_run), pending))

    async def _execute(self, task_run: TaskRun, slot: Slot, progress: Progress) -> None:
        key = task_run.task_key
        self.in_flight_task_runs.setdefault(key, {})[task_run.id] = now()
        started = trio.current_time()
        final_state: State | None = None
        delete = False
        try:
            final_state, delete = await run_task(
                self.tasks,
                task_run,
                store=self.store or self._default_store,
                slots=self._slots,
                slot=slot,
                record_running=functools.partial(
                    record_state, self._reporter, task_run, progress, state_of(StateType.RUNNING)
                ),
                delete_failed=self.delete_failed_submissions,
            )
        except StopTaskWorker as exc:
            final_state = state_of(StateType.FAILED, f"StopTaskWorker: {exc}")
            self._request_stop()
        except BaseException:
            if self._leases.lost(task_run.id):
                raise  # taken back by the API: another worker has it, or it is CRASHED
            why = (
                f"not finished within the {self.drain_timeout_seconds:g} s drain timeout"
                if self._stopping
                else "cancelled"
            )
            if slot.thread_running:
                why += "; its thread is still running and keeps its slot until it returns"
            final_state = state_of(
                StateType.CRASHED, f"the task worker {self.client_id} stopped: run {why}"
            )
            raise
        finally:
            if final_state is not None and not self._leases.lost(task_run.id):
                # (A run whose lease the API took back is another worker's now, or
                # CRASHED: whatever it ended as here is not reported.)
                assert self._client is not None
                await report(
                    self._client, self._reporter, task_run, progress, final_state, delete=delete
                )
                self.outcomes[key, final_state.type.value] += 1
                log_finished(task_run, final_state, trio.current_time() - started)
            self.in_flight_task_runs[key].pop(task_run.id, None)
            self._leases.forget(task_run.id)
            self.finished_task_runs[key] = self.finished_task_runs.get(key, 0) + 1
