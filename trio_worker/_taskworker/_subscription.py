"""The task worker's subscription: the lanes that receive runs and the handoff of each.

The API pushes scheduled task runs over ``/task_runs/subscriptions/scheduled``
websockets. Receiving one is a handoff with an order that matters: a slot first
(:mod:`._slots`), then PENDING (the claim), then the ack, all before the next
message is read (anchors.md row 18: Prefect acks on receipt, before it has a
slot, and a worker dying in between loses the run). Each run then belongs to
its own task in the worker's runs nursery; what it does there is the worker's
(``run``). The worker owns the lifecycle (the runs nursery, the drain); this
part owns the lanes, which of them are connected, and the runs held.

The API sends a subscriber its next run only after the last ack, and we ack
only after PENDING is recorded: one connection is one handoff per round trip.
A few connections ("lanes") hand off in parallel; each may hold one un-acked
run while the worker is full, so there are never more lanes than the limit.
"""

from __future__ import annotations

import functools
import logging
import ssl
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Final, final

import trio

from trio_worker._client._client import PrefectClient
from trio_worker._client._subscriptions import (
    JsonWebSocket,
    SubscriptionClosedError,
    serve_subscription,
    websocket_token,
)
from trio_worker._core._converter import structure
from trio_worker._core._exceptions import APIError, ModelError, UnauthorizedError
from trio_worker._core._models import SetStateStatus, State, StateType, TaskRun
from trio_worker._core._settings import Settings
from trio_worker._taskworker._execution import Progress, state_of
from trio_worker._taskworker._reports import task_run_record
from trio_worker._taskworker._slots import RunSlots, Slot

__all__ = ["SUBSCRIPTION_PATH", "TaskRunSubscription", "claim"]

logger = logging.getLogger("trio_worker.task_worker")

SUBSCRIPTION_PATH: Final = "task_runs/subscriptions/scheduled"
HANDOFF_TIMEOUT_SECONDS: Final = 15.0  # PENDING + ack, shielded from a stop
ACK: Final = {"type": "ack"}


@final
class TaskRunSubscription:
    """Receive runs on ``lanes`` parallel subscriptions; hand each to ``run`` once claimed.

    Args:
        client_id: who we are to the API (also the lease holder).
        keys: the task keys to subscribe to.
        lanes: parallel subscriptions.
        slots: where each run borrows its slot before it is claimed.
        claim: moves a run to PENDING; its state, or None when it is not ours.
        run: what a claimed run does, in its own task, holding its slot.
    """

    def __init__(
        self,
        *,
        client_id: str,
        keys: Iterable[str],
        lanes: int,
        slots: RunSlots,
        claim: Callable[[TaskRun], Awaitable[State | None]],
        run: Callable[[TaskRun, Slot, Progress], Awaitable[None]],
    ) -> None:
        self._client_id = client_id
        self._keys = list(keys)
        self._lanes = lanes
        self._slots = slots
        self._claim = claim
        self._run = run
        self._connected: set[int] = set()
        self._held: set[uuid.UUID] = set()

    @property
    def connected(self) -> bool:
        """Whether at least one lane is subscribed."""
        return bool(self._connected)

    async def serve(
        self,
        settings: Settings,
        ssl_context: ssl.SSLContext | None,
        runs: trio.Nursery,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Keep the lanes subscribed until cancelled; each run received starts in ``runs``.

        Started once every lane has connected once.
        """
        assert settings.api_url is not None
        try:
            async with trio.open_nursery() as lanes:
                for lane in range(self._lanes):
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
            self._connected.clear()

    def _set_connected(self, lane: int, connected: bool) -> None:
        if connected:
            self._connected.add(lane)
        else:
            self._connected.discard(lane)

    async def _on_socket(self, runs: trio.Nursery, lane: int, ws: JsonWebSocket) -> None:
        keys = sorted(self._keys)
        await ws.send_json({"type": "subscribe", "keys": keys, "client_id": self._client_id})
        # Every lane subscribes; one line says so (as lane 0 alone logs outages).
        level = logging.INFO if lane == 0 else logging.DEBUG
        logger.log(level, "subscribed to %s as %s", ", ".join(keys), self._client_id)
        while True:
            try:
                await runs.start(self._receive_and_run, ws)
            except UnauthorizedError:
                raise
            except APIError as exc:
                # Could not move the run to PENDING: leave it un-acked; the
                # server redelivers it once this connection is gone.
                raise SubscriptionClosedError(f"API error during a handoff: {exc}") from exc

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
            async with self._slots.slot(task_run.id) as slot:
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
                    await self._run(
                        task_run, slot, Progress(task_run_record(task_run, message), pending)
                    )
        finally:
            self._held.discard(task_run.id)


async def claim(client: PrefectClient, task_run: TaskRun) -> State | None:
    """Move the run to PENDING (deferred); the state, or None when it is no longer ours."""
    details = task_run.state.state_details if task_run.state else None
    pending = state_of(
        StateType.PENDING,
        deferred=True,
        task_parameters_id=details.task_parameters_id if details else None,
    )
    result = await client.set_task_run_state(task_run.id, pending)
    if result.status is not SetStateStatus.ACCEPT:
        logger.info(
            "task run %s not claimed (%s %s); skipping it",
            task_run.id,
            result.status.value,
            result.reason,
        )
        return None
    return result.state or pending
