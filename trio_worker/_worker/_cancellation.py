"""``CancellationWatcher``: finding cancelled flow runs and stopping them.

Two sources, one action. The API's ``/events/out`` stream tells the worker
about a ``prefect.flow-run.Cancelling`` at once; a polling check reads the
pool's CANCELLING runs (and legacy CANCELLED runs named "Cancelling") every
two query intervals and catches whatever the stream missed. While the stream
is connected and has not dropped since the last check, the polling check runs
only every ``CHECK_ROUNDS_WHILE_STREAMING`` rounds. Both call
:meth:`CancellationWatcher.cancel_run`:

- a run in flight here is cancelled through its cancel scope; its submitter
  stops the infrastructure and reports CANCELLED;
- a run started on this host by a worker that has since died is killed by the
  backend, in a task of its own in the watcher's nursery (shielded, bounded),
  so one slow kill never stops the stream from being read;
- a run of another host, or of a live worker on this host, is left to it;
- a run with no infrastructure recorded is forced CANCELLED.

The watcher owns the set of runs it is stopping, so a run the stream and the
poll both report is killed once.

The worker holds one ``/events/out`` subscription: the watcher's. An
:class:`EventTap` (the loops hand it a ``WakeupTap``, ``_wakeups.py``) adds
its event names to the filter and sees each message first, so the poll loop
hears of runs that became due without a second websocket, and without the
watcher knowing anything of polls.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import ssl
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Final, Generic, Protocol

import attrs
import trio

from trio_worker._client._client import PrefectClient
from trio_worker._client._subscriptions import JsonWebSocket, serve_subscription, websocket_token
from trio_worker._core._exceptions import (
    APIError,
    ConfigurationError,
    InfrastructureError,
    NotFoundError,
)
from trio_worker._core._models import FlowRun, State, StateType, now
from trio_worker._core._services import service_loop
from trio_worker._core._settings import Settings
from trio_worker._core._time import format_datetime
from trio_worker._worker._context import Backend, C, CancelReason, RunContext
from trio_worker._worker._reporter import CANCELLED_MESSAGE, Reporter
from trio_worker._worker._run_table import RunTable

__all__ = ["CancelStream", "CancellationWatcher", "EventTap", "cancelling_run_id"]

logger = logging.getLogger("trio_worker.cancellation")

CANCELLING_EVENT: Final = "prefect.flow-run.Cancelling"
FLOW_RUN_RESOURCE_PREFIX: Final = "prefect.flow-run."
#: While the stream is up, the polling check runs every this many rounds (it
#: still catches an event the server failed to deliver, only later).
CHECK_ROUNDS_WHILE_STREAMING: Final = 15  # 30 s at 1 s polls, as _wakeups.py's cap
#: Beyond the grace period, how long a kill (and its report) may take.
KILL_MARGIN_SECONDS: Final = 30.0
NO_INFRASTRUCTURE_MESSAGE: Final = (
    "This flow run is missing infrastructure tracking information and cancellation "
    "cannot be guaranteed."
)


class EventTap(Protocol):
    """Another reader of the watcher's ``/events/out`` stream (pick-up by event).

    The worker holds one subscription: the watcher adds the tap's event names
    to its filter, says when the stream comes up and drops, and offers each
    message to the tap before looking at it itself.
    """

    @property
    def event_names(self) -> Sequence[str]:
        """The events the tap wants, besides the watcher's own."""
        ...

    def stream_up(self) -> None:
        """The stream is connected and its filter sent."""

    def stream_down(self) -> None:
        """The stream dropped (it reconnects on its own)."""

    def on_event(self, message: Any) -> bool:
        """Handle one message; True when it was the tap's (the watcher skips it)."""
        ...


@attrs.define
class CancelStream:
    """What the polling check knows of the ``/events/out`` stream.

    Attributes:
        live: the stream is connected and its filter sent.
        gap: the stream was down at some point since the last polling check.
        skipped: polling checks skipped since the last one that ran.
    """

    live: bool = False
    gap: bool = True
    skipped: int = 0


class CancellationWatcher(Generic[C]):
    """Hear of cancellations, stop the runs, and own the set being stopped.

    Args:
        client: the worker's open API client.
        table: runs in flight here are cancelled through it.
        reporter: reports CANCELLED for runs killed here.
        backend: decides whether a run is abandoned, renders its
            configuration, and kills its infrastructure.
        configure: renders a run's context (its configuration for ``kill``).
        work_pool_name: the pool whose runs are watched.
        work_queues: the queues watched (all of the pool's when empty).
        cancel_grace_seconds: how long a killed run may take to stop.
        tap: fed the stream's other events (the poll loop's wake-ups), if any.
    """

    def __init__(
        self,
        client: PrefectClient,
        *,
        table: RunTable,
        reporter: Reporter,
        backend: Backend[C],
        configure: Callable[[FlowRun], Any],
        work_pool_name: str,
        work_queues: Sequence[str],
        cancel_grace_seconds: float,
        tap: EventTap | None = None,
    ) -> None:
        self._client = client
        self._table = table
        self._reporter = reporter
        self._backend = backend
        self._configure = configure
        self._pool = work_pool_name
        self._queues = tuple(work_queues)
        self._grace = cancel_grace_seconds
        self._tap = tap
        self.stream = CancelStream()
        self._cancelling: set[uuid.UUID] = set()
        self._kills: trio.Nursery | None = None

    @property
    def cancelling(self) -> frozenset[uuid.UUID]:
        """Runs of other (dead) workers this watcher is stopping right now."""
        return frozenset(self._cancelling)

    async def serve(
        self,
        api_url: str,
        *,
        settings: Settings,
        ssl_context: ssl.SSLContext | None,
        check_interval_seconds: float,
        on_error: Callable[[BaseException], None],
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on the stream and run the polling check until cancelled.

        Kills run in this call's own nursery: cancelling it (the worker's
        shutdown) waits for each shielded kill to end or reach its bound.
        """
        async with self.killing() as nursery:
            nursery.start_soon(self._listen, api_url, settings, ssl_context)
            nursery.start_soon(
                lambda: service_loop(
                    self.check,
                    interval=check_interval_seconds,
                    name="cancellation check",
                    on_error=on_error,
                )
            )
            task_status.started()

    @contextlib.asynccontextmanager
    async def killing(self) -> AsyncIterator[trio.Nursery]:
        """Open the nursery the kills run in; closing it waits for each (bounded) kill."""
        try:
            async with trio.open_nursery() as kills:
                self._kills = kills
                yield kills
        finally:
            self._kills = None

    async def check(self) -> None:
        """Poll the pool's cancelling runs and cancel each (the stream's fallback)."""
        stream = self.stream
        if stream.live and not stream.gap and stream.skipped + 1 < CHECK_ROUNDS_WHILE_STREAMING:
            stream.skipped += 1
            return
        # Whatever the stream missed while it was down is in the API now: read it.
        stream.gap = not stream.live
        stream.skipped = 0
        scope: dict[str, Any] = {"work_pools": {"name": {"any_": [self._pool]}}}
        if self._queues:
            scope["work_pool_queues"] = {"name": {"any_": list(self._queues)}}
        cancelling = await self._client.read_flow_runs(
            flow_runs={"state": {"type": {"any_": ["CANCELLING"]}}}, **scope
        )
        legacy = await self._client.read_flow_runs(
            flow_runs={
                "state": {"type": {"any_": ["CANCELLED"]}, "name": {"any_": ["Cancelling"]}}
            },
            **scope,
        )
        for flow_run in [*cancelling, *legacy]:
            await self.cancel_run(flow_run)

    async def cancel_run(self, flow_run: FlowRun) -> None:
        """Stop ``flow_run``'s infrastructure if this worker may, and mark it CANCELLED.

        Returns at once: a kill goes on in a task of the watcher's own.
        """
        tracked = self._table.get(flow_run.id)
        if tracked is not None:
            if tracked.cancel(CancelReason.CANCELLED):
                logger.info("Cancelling flow run '%s'", flow_run.name)
            return
        pid = flow_run.infrastructure_pid
        if not pid:
            state = State.of(StateType.CANCELLED, NO_INFRASTRUCTURE_MESSAGE)
            await self._reporter.propose(flow_run.id, state, force=True)
            return
        if flow_run.id in self._cancelling or not self._backend.is_abandoned(flow_run, pid):
            # Being stopped already (the stream and the poll both saw it), or its
            # own worker (elsewhere, or alive on this host) will stop it.
            return
        self._cancelling.add(flow_run.id)
        if self._kills is None:  # not serving: kill here (a one-off check)
            await self._kill(flow_run, pid)
        else:
            self._kills.start_soon(self._kill, flow_run, pid)

    async def _kill(self, flow_run: FlowRun, pid: str) -> None:
        """Kill one abandoned run, shielded and bounded; always forget it after."""
        try:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + self._grace + KILL_MARGIN_SECONDS
                try:
                    ctx = await self._configuration(flow_run)
                    await self._backend.kill(pid, ctx.configuration, self._grace)
                except (
                    InfrastructureError,
                    ConfigurationError,
                    APIError,
                    NotImplementedError,
                ) as exc:
                    logger.warning("Could not stop flow run '%s': %s", flow_run.id, exc)
                    return
                except Exception:
                    # A backend's own error (a cloud SDK's): this task runs in the
                    # worker's loops nursery, so letting it escape would stop the
                    # worker and crash every run in flight. A later check retries.
                    logger.exception(
                        "Stopping flow run '%s' failed; it may still be running", flow_run.id
                    )
                    return
                cancelled = State.of(StateType.CANCELLED, CANCELLED_MESSAGE)
                await self._reporter.propose(flow_run.id, cancelled, force=True)
            if scope.cancelled_caught:
                logger.warning(
                    "Stopping flow run '%s' took longer than %.0f s; gave up",
                    flow_run.id,
                    self._grace + KILL_MARGIN_SECONDS,
                )
        finally:
            self._cancelling.discard(flow_run.id)

    async def _configuration(self, flow_run: FlowRun) -> RunContext[C]:
        """The run's context for a kill; rendered without its deployment if that is gone.

        A deployment deleted while its run went on leaves the run pointing at
        it; the pool's template and the run's own variables still say where
        the run is, and a process worker needs nothing from them at all.
        """
        try:
            ctx: RunContext[C] = await self._configure(flow_run)
        except NotFoundError:
            if flow_run.deployment_id is None:
                raise
            ctx = await self._configure(attrs.evolve(flow_run, deployment_id=None))
        return ctx

    async def _listen(
        self, api_url: str, settings: Settings, ssl_context: ssl.SSLContext | None
    ) -> None:
        """Hear of cancellations as they happen, through ``/events/out``; reconnect forever.

        The filter asks for ``prefect.flow-run.Cancelling`` events (and the
        tap's) from now on; a run in flight here is cancelled at once, any
        other of the pool is read and handed to :meth:`cancel_run`. The
        polling check covers the gaps while the stream is down.
        """

        async def listen(socket: JsonWebSocket) -> None:
            # Prefect's filter defaults ``until`` to the moment it is parsed, which
            # would exclude every live event: ask for a year ahead, as Prefect does.
            start = now()
            occurred = {
                "since": format_datetime(start),
                "until": format_datetime(start + dt.timedelta(days=365)),
            }
            tap = self._tap
            names = [CANCELLING_EVENT, *(tap.event_names if tap is not None else ())]
            event_filter = {"occurred": occurred, "event": {"name": names}}
            await socket.send_json({"type": "filter", "filter": event_filter, "backfill": False})
            self.stream.live = True
            if tap is not None:
                tap.stream_up()
            try:
                while True:
                    message = await socket.receive_json()
                    if tap is not None and tap.on_event(message):
                        continue
                    run_id = cancelling_run_id(message)
                    if run_id is not None:
                        await self._on_cancelling(run_id)
            finally:
                self.stream.live = False
                self.stream.gap = True
                if tap is not None:
                    tap.stream_down()

        await serve_subscription(
            api_url, "events/out", listen, token=websocket_token(settings), ssl_context=ssl_context
        )

    async def _on_cancelling(self, flow_run_id: str) -> None:
        try:
            run_id = uuid.UUID(flow_run_id)
        except ValueError:
            return
        tracked = self._table.get(run_id)
        if tracked is not None:
            await self.cancel_run(tracked.flow_run)
            return
        try:
            flow_run = await self._client.read_flow_run(run_id)
        except APIError as exc:
            logger.debug("Could not read cancelling flow run '%s': %s", run_id, exc)
            return
        if flow_run.work_pool_name != self._pool:
            return
        if self._queues and flow_run.work_queue_name not in self._queues:
            return
        if _is_cancelling(flow_run):  # not already handled by someone else
            await self.cancel_run(flow_run)


def cancelling_run_id(message: object) -> str | None:
    """The flow run id an ``/events/out`` message names, or ``None``.

    Any shape is accepted: a message this worker cannot read is skipped, never
    raised out of the listener (which would stop the worker).
    """
    if not isinstance(message, dict) or message.get("type") != "event":
        return None
    event = message.get("event")
    resource = event.get("resource") if isinstance(event, dict) else None
    resource_id = resource.get("prefect.resource.id") if isinstance(resource, dict) else None
    if not isinstance(resource_id, str) or not resource_id.startswith(FLOW_RUN_RESOURCE_PREFIX):
        return None
    return resource_id.removeprefix(FLOW_RUN_RESOURCE_PREFIX)


def _is_cancelling(flow_run: FlowRun) -> bool:
    """CANCELLING, or the legacy CANCELLED state named "Cancelling"."""
    state = flow_run.state
    if state is None:
        return False
    return state.type is StateType.CANCELLING or (
        state.type is StateType.CANCELLED and state.name == "Cancelling"
    )
