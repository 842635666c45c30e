"""The task worker: serves background task runs pushed over a websocket.

Shape of a running :class:`TaskWorker` (``start()``)::

    PrefectClient
    └── services nursery           state reporter, status server (hypercorn): up until the very end
        └── runs nursery           every run this worker holds; nothing outlives it
            └── subscription       /task_runs/subscriptions/scheduled, reconnecting
                  loop: await runs.start(_receive_and_run, socket)

One task owns each run from the moment its message is read: it borrows a
limiter token on behalf of the run id, moves the run to PENDING (deferred),
and only then acks (anchors.md row 18: Prefect acks on receipt, before it has
a slot, and a worker dying in between loses the run). ``task_status.started()``
hands the run over to the runs nursery, which lets the subscription read the
next message; the token is released in the same task's ``finally``. RUNNING
and the final state are recorded through ``_task_reports`` (batched events).
While a run is in our hands its lease is renewed (``_task_leases``), so the
embedded API can take back the runs of a task worker that died.

Stopping is a drain: :meth:`TaskWorker.stop` ends the subscription, the runs
nursery gets ``drain_timeout_seconds`` to finish, then its runs are cancelled;
each records a final state under a shielded, time-bounded scope.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import socket
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Generator
from types import TracebackType
from typing import Any, Final, Self, final

import attrs
import trio

from trio_worker._client._client import DEFAULT_MAX_CONNECTIONS, MOST_CONNECTIONS, PrefectClient
from trio_worker._client._subscriptions import (
    JsonWebSocket,
    SubscriptionClosedError,
    serve_subscription,
    websocket_token,
)
from trio_worker._core._converter import structure
from trio_worker._core._exceptions import (
    APIError,
    ConfigurationError,
    ModelError,
    TrioWorkerError,
    UnauthorizedError,
)
from trio_worker._core._models import SetStateStatus, State, StateType, TaskRun, now
from trio_worker._core._settings import Settings
from trio_worker._taskworker._leases import LeaseKeeper
from trio_worker._taskworker._reports import TaskRunReporter, task_run_record
from trio_worker._taskworker._status import serve_task_status
from trio_worker._taskworker._store import (
    TaskStore,
    check_json,
    decode_record,
    default_task_store,
    encode_record,
    parameters_key,
    result_key,
)
from trio_worker._taskworker._tasks import Task

__all__ = ["StopTaskWorker", "TaskWorker", "serve"]

logger = logging.getLogger("trio_worker.task_worker")

SUBSCRIPTION_PATH: Final = "task_runs/subscriptions/scheduled"
DEFAULT_LIMIT: Final = 10
DEFAULT_DRAIN_TIMEOUT_SECONDS: Final = 30.0
DEFAULT_LANES: Final = 4
HANDOFF_TIMEOUT_SECONDS: Final = 15.0  # PENDING + ack, shielded from a stop
REPORT_TIMEOUT_SECONDS: Final = 10.0  # a final state after cancellation
ACK: Final = {"type": "ack"}


class StopTaskWorker(TrioWorkerError):
    """Raise it inside a task to make its worker drain and stop.

    The run that raised it ends FAILED with that message; the others in flight
    finish (up to the drain timeout).
    """


def _reference(key: str) -> dict[str, Any]:
    # What a final state's ``data`` carries: where the record is, not the value.
    return {"storage_key": key, "serializer": {"type": "json"}}


def _state(type_: StateType, message: str | None = None, **details: Any) -> State:
    state = State.of(type_, message)
    return attrs.evolve(state, state_details=attrs.evolve(state.state_details, **details))


@attrs.define
class _Progress:
    """What a run's task knows of it: its record for the events, and its current state."""

    record: dict[str, Any]
    state: State


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
        # The API sends a subscriber its next run only after the last ack, and we
        # ack only after PENDING is recorded: one connection is one handoff per
        # round trip. A few connections ("lanes") hand off in parallel; each may
        # hold one un-acked run while the worker is full, so never more than limit.
        self.lanes = lanes if lanes is not None else min(limit or DEFAULT_LANES, DEFAULT_LANES)
        self._connected_lanes: set[int] = set()
        self.status_url: str | None = None
        tokens = math.inf if limit is None else limit
        self._limiter = trio.CapacityLimiter(tokens)
        # Every sync run already holds one of ``limit`` tokens, so this never
        # blocks; it exists so trio's default 40-thread cap does not apply.
        self._thread_limiter = trio.CapacityLimiter(tokens)
        self._held: set[uuid.UUID] = set()
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
        """Runs holding a slot right now."""
        return int(self._limiter.borrowed_tokens)

    @property
    def available_tasks(self) -> int | None:
        """Free slots, or None without a limit."""
        return None if self.limit is None else int(self._limiter.available_tokens)

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
        logger.info("task worker %s stopped", self.client_id)

    async def _serve_runs(self, settings: Settings, task_status: trio.TaskStatus[None]) -> None:
        assert settings.api_url is not None
        assert self._client is not None
        ssl_context = self._client.ssl_context  # the websockets trust what REST trusts
        async with trio.open_nursery() as runs:
            try:
                with trio.CancelScope() as scope:
                    self._subscription_scope = scope
                    if self._stopping:
                        scope.cancel()
                    async with trio.open_nursery() as lanes:
                        for lane in range(self.lanes):
                            await lanes.start(
                                functools.partial(
                                    serve_subscription,
                                    settings.api_url,
                                    SUBSCRIPTION_PATH,
                                    functools.partial(self._on_socket, runs, lane),
                                    token=websocket_token(settings),
                                    ssl_context=ssl_context,
                                    on_connected=functools.partial(self._set_connected, lane),
                                    log_outages=lane == 0,
                                )
                            )
                        task_status.started()
            finally:
                self._connected_lanes.clear()
                # The drain: runs in flight get a bounded time to finish.
                runs.cancel_scope.deadline = trio.current_time() + self.drain_timeout_seconds

    @property
    def connected(self) -> bool:
        """Whether at least one subscription to the API is up."""
        return bool(self._connected_lanes)

    def _set_connected(self, lane: int, connected: bool) -> None:
        if connected:
            self._connected_lanes.add(lane)
        else:
            self._connected_lanes.discard(lane)

    async def _on_socket(self, runs: trio.Nursery, lane: int, ws: JsonWebSocket) -> None:
        keys = sorted(self.tasks)
        await ws.send_json({"type": "subscribe", "keys": keys, "client_id": self.client_id})
        # Every lane subscribes; one line says so (as lane 0 alone logs outages).
        level = logging.INFO if lane == 0 else logging.DEBUG
        logger.log(level, "subscribed to %s as %s", ", ".join(keys), self.client_id)
        while True:
            try:
                await runs.start(self._receive_and_run, ws)
            except UnauthorizedError:
                raise
            except APIError as exc:
                # Could not move the run to PENDING: leave it un-acked; the
                # server redelivers it once this connection is gone.
                raise SubscriptionClosedError(f"API error during a handoff: {exc}") from exc

    # -- one run -----------------------------------------------------------------

    async def _receive_and_run(
        self, ws: JsonWebSocket, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        message = await ws.receive_json()
        try:
            task_run = structure(message, TaskRun)
        except ModelError as exc:
            logger.error("ignoring a message that is not a task run: %s", exc)
            await ws.send_json(ACK)
            task_status.started()
            return
        if task_run.id in self._held:  # redelivered while we still hold it
            await ws.send_json(ACK)
            task_status.started()
            return
        self._held.add(task_run.id)
        try:
            await self._acquire(task_run)
            try:
                with trio.CancelScope(shield=True) as handoff:
                    handoff.deadline = trio.current_time() + HANDOFF_TIMEOUT_SECONDS
                    pending = await self._claim(task_run)
                    try:
                        await ws.send_json(ACK)
                    except SubscriptionClosedError:
                        # We own it (PENDING is ours); run it. The next receive reconnects.
                        logger.debug("ack for %s not sent: connection lost", task_run.id)
                if handoff.cancelled_caught:
                    raise SubscriptionClosedError(f"handoff of task run {task_run.id} timed out")
                task_status.started()
                if pending is not None:
                    with self._leases.holding(task_run.id):
                        await self._execute(
                            task_run, _Progress(task_run_record(task_run, message), pending)
                        )
            finally:
                self._limiter.release_on_behalf_of(task_run.id)
        finally:
            self._held.discard(task_run.id)

    async def _acquire(self, task_run: TaskRun) -> None:
        try:
            self._limiter.acquire_on_behalf_of_nowait(task_run.id)
        except trio.WouldBlock:
            logger.info(
                "task run %s received; waiting for a free slot (limit %s)",
                task_run.id,
                self.limit,
            )
            await self._limiter.acquire_on_behalf_of(task_run.id)

    async def _claim(self, task_run: TaskRun) -> State | None:
        """Move the run to PENDING (deferred); the state, or None when it is no longer ours."""
        assert self._client is not None
        details = task_run.state.state_details if task_run.state else None
        pending = _state(
            StateType.PENDING,
            deferred=True,
            task_parameters_id=details.task_parameters_id if details else None,
        )
        result = await self._client.set_task_run_state(task_run.id, pending)
        if result.status is not SetStateStatus.ACCEPT:
            logger.info(
                "task run %s not claimed (%s %s); skipping it",
                task_run.id,
                result.status.value,
                result.reason,
            )
            return None
        return result.state or pending

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
        await self._acquire(task_run)
        try:
            pending = await self._claim(task_run)
            if pending is not None:
                await self._execute(task_run, _Progress(task_run_record(task_run), pending))
        finally:
            self._limiter.release_on_behalf_of(task_run.id)

    async def _execute(self, task_run: TaskRun, progress: _Progress) -> None:
        key = task_run.task_key
        self.in_flight_task_runs.setdefault(key, {})[task_run.id] = now()
        started = trio.current_time()
        final_state: State | None = None
        delete = False
        try:
            final_state, delete = await self._run(task_run, progress)
        except StopTaskWorker as exc:
            final_state = _state(StateType.FAILED, f"StopTaskWorker: {exc}")
            self._request_stop()
        except BaseException:
            if self._leases.lost(task_run.id):
                raise  # taken back by the API: another worker has it, or it is CRASHED
            why = (
                f"not finished within the {self.drain_timeout_seconds:g} s drain timeout"
                if self._stopping
                else "cancelled"
            )
            final_state = _state(
                StateType.CRASHED, f"the task worker {self.client_id} stopped: run {why}"
            )
            raise
        finally:
            if final_state is not None and not self._leases.lost(task_run.id):
                # (A run whose lease the API took back is another worker's now, or
                # CRASHED: whatever it ended as here is not reported.)
                with trio.CancelScope(shield=True) as report:
                    report.deadline = trio.current_time() + REPORT_TIMEOUT_SECONDS
                    await self._report(task_run, progress, final_state, delete=delete)
                self.outcomes[key, final_state.type.value] += 1
                _log_finished(task_run, final_state, trio.current_time() - started)
            self.in_flight_task_runs[key].pop(task_run.id, None)
            self._leases.forget(task_run.id)
            self.finished_task_runs[key] = self.finished_task_runs.get(key, 0) + 1

    async def _run(self, task_run: TaskRun, progress: _Progress) -> tuple[State | None, bool]:
        """Run the task; return its final state and whether to delete the run."""
        assert self._client is not None
        task = self.tasks.get(task_run.task_key)
        if task is None:
            reason = (
                f"no task with key {task_run.task_key!r} here (serving {', '.join(self.tasks)})"
            )
            logger.error("task run %s: %s", task_run.id, reason)
            return _state(StateType.FAILED, reason), self.delete_failed_submissions
        # The default store is read from the environment (through Settings) even
        # when this worker was handed settings: submitters find it there too.
        store = (
            task.store
            if task.store is not None
            else self.store or self._default_store or default_task_store()
        )
        try:
            parameters = await self._read_parameters(task, task_run, store)
            args, kwargs = task.call_arguments(parameters)
        except (OSError, ValueError, TypeError) as exc:
            reason = f"cannot read the parameters of task run {task_run.id}: {exc}"
            logger.error("%s", reason)
            return _state(StateType.FAILED, reason), self.delete_failed_submissions
        try:
            await self._record(task_run, progress, _state(StateType.RUNNING))
        except APIError as exc:
            logger.error("task run %s not started: RUNNING was not recorded: %s", task_run.id, exc)
            return None, False
        key = result_key(task_run.id)
        try:
            if task.is_async:
                value = await task.fn(*args, **kwargs)
            else:
                value = await trio.to_thread.run_sync(
                    functools.partial(task.fn, *args, **kwargs),
                    limiter=self._thread_limiter,
                    abandon_on_cancel=True,
                )
        except StopTaskWorker:
            raise
        except Exception as exc:
            error = _describe(exc)
            await trio.to_thread.run_sync(store.write, key, encode_record(key, error))
            message = f"Task run encountered an exception {type(exc).__name__}: {exc}"
            return _state(StateType.FAILED, message), False
        try:
            check_json(value, f"the return value of {task.key}")
            await trio.to_thread.run_sync(store.write, key, encode_record(key, value))
        except (TypeError, OSError) as exc:
            return _state(StateType.FAILED, f"cannot store the result: {exc}"), False
        completed = _state(StateType.COMPLETED)
        return attrs.evolve(completed, data=_reference(key)), False

    async def _read_parameters(
        self, task: Task[..., Any], task_run: TaskRun, store: TaskStore
    ) -> dict[str, Any]:
        details = task_run.state.state_details if task_run.state else None
        parameters_id = details.task_parameters_id if details else None
        if parameters_id is None:
            return {}
        data = await trio.to_thread.run_sync(store.read, parameters_key(parameters_id))
        payload = decode_record(data)
        if not isinstance(payload, dict) or not isinstance(payload.get("parameters"), dict):
            raise ValueError("the parameters record has no 'parameters' object")
        parameters: dict[str, Any] = payload["parameters"]
        return parameters

    async def _record(self, task_run: TaskRun, progress: _Progress, state: State) -> None:
        assert self._reporter is not None
        progress.state = await self._reporter.record(
            task_run.id, progress.record, progress.state, state
        )

    async def _report(
        self, task_run: TaskRun, progress: _Progress, state: State, *, delete: bool
    ) -> None:
        assert self._client is not None
        try:
            if not delete:
                await self._record(task_run, progress, state)
                return
            # A run that could not start at all, about to be deleted: through
            # set_state, so that no event arriving late re-creates it.
            result = await self._client.set_task_run_state(task_run.id, state)
            if result.status is not SetStateStatus.ACCEPT:
                logger.warning(
                    "task run %s: %s not accepted (%s)", task_run.id, state.type, result.reason
                )
            await self._client.delete_task_run(task_run.id)
        except APIError as exc:
            logger.error("could not record %s for task run %s: %s", state.type, task_run.id, exc)


def _log_finished(task_run: TaskRun, state: State, seconds: float) -> None:
    """One line per run that ended here: which task, which run, how, how long."""
    level = logging.INFO if state.type is StateType.COMPLETED else logging.WARNING
    why = f": {state.message}" if state.message and state.type is not StateType.COMPLETED else ""
    logger.log(
        level,
        "%s %r %s in %.2f s%s",
        task_run.task_key,
        task_run.name,
        state.type.value,
        seconds,
        why,
    )


def _describe(exc: Exception) -> dict[str, Any]:
    """Turn an exception into the JSON error record ``.result()`` re-raises from."""
    args: list[Any] | None = list(exc.args)
    try:
        check_json(args, "args")
    except TypeError:
        args = None
    return {
        "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "message": str(exc),
        "args": args,
        "traceback": "".join(traceback.format_exception(exc)),
    }


async def serve(
    *tasks: Task[..., Any] | Callable[..., Any],
    limit: int | None = DEFAULT_LIMIT,
    status_server_port: int | None = None,
    settings: Settings | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``tasks`` until cancelled: ``trio.run(serve, add, mul)``.

    The library installs no signal handlers: Ctrl-C cancels, runs in flight
    are recorded CRASHED, and a plain :class:`KeyboardInterrupt` leaves
    ``trio.run`` (catch it for a quiet exit, as ``examples/task_worker/serve.py``
    does). The ``trio-worker task-worker serve`` command adds a drain on the
    first SIGINT/SIGTERM.
    """
    worker = TaskWorker(
        *tasks, limit=limit, settings=settings, status_server_port=status_server_port
    )
    try:
        await worker.start(task_status=task_status)
    except BaseExceptionGroup as group:
        # Ctrl-C reaches us inside nurseries; a script catching KeyboardInterrupt
        # around trio.run must see one, not a group of groups of it.
        matched, rest = group.split(KeyboardInterrupt)
        if matched is not None and rest is None:
            raise KeyboardInterrupt from None
        raise
