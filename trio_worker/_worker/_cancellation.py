"""Finding cancelled flow runs and stopping them.

Two sources, one action. The API's ``/events/out`` stream tells the worker
about a ``prefect.flow-run.Cancelling`` at once; a polling loop reads the
pool's CANCELLING runs (and legacy CANCELLED runs named "Cancelling") every
two query intervals and catches whatever the stream missed. While the stream
is connected and has not dropped since the last check, the polling check runs
only every ``CHECK_ROUNDS_WHILE_STREAMING`` rounds: an idle fleet then costs
the server one poll per worker per interval, not three requests. Both call
:func:`cancel_run`:

- a run this worker owns is cancelled through its cancel scope; its task
  kills the process group and then forces CANCELLED (``_submission.py``);
- a run started on this host by a worker that has since died is killed by its
  recorded process group, then forced CANCELLED;
- a run of another host, or of a live worker on this host, is left to it;
- a run with no infrastructure recorded is forced CANCELLED.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import TYPE_CHECKING, Any, Final

import attrs

from trio_worker._client._subscriptions import JsonWebSocket, serve_subscription, websocket_token
from trio_worker._core._exceptions import APIError, InfrastructureError
from trio_worker._core._models import FlowRun, State, StateType, now
from trio_worker._worker._submission import CANCELLED_MESSAGE, propose_final_state
from trio_worker._worker._wakeups import SCHEDULED_EVENTS

if TYPE_CHECKING:
    from trio_worker._worker._base import BaseWorker

__all__ = [
    "CancelStream",
    "cancel_run",
    "check_for_cancelled_flow_runs",
    "listen_for_cancellations",
]

logger = logging.getLogger("trio_worker.cancellation")

CANCELLING_EVENT: Final = "prefect.flow-run.Cancelling"
FLOW_RUN_RESOURCE_PREFIX: Final = "prefect.flow-run."
#: While the stream is up, the polling check runs every this many rounds (it
#: still catches an event the server failed to deliver, only later).
CHECK_ROUNDS_WHILE_STREAMING: Final = 15  # 30 s at 1 s polls, as _wakeups.py's cap
NO_INFRASTRUCTURE_MESSAGE: Final = (
    "This flow run is missing infrastructure tracking information and cancellation "
    "cannot be guaranteed."
)


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


async def check_for_cancelled_flow_runs(worker: BaseWorker) -> None:
    """Poll the pool's cancelling runs and cancel each (the events stream's fallback)."""
    if worker.work_pool is None:
        return
    stream = worker.cancel_stream
    if stream.live and not stream.gap and stream.skipped + 1 < CHECK_ROUNDS_WHILE_STREAMING:
        stream.skipped += 1
        return
    # Whatever the stream missed while it was down is in the API now: read it.
    stream.gap = not stream.live
    stream.skipped = 0
    scope: dict[str, Any] = {"work_pools": {"name": {"any_": [worker.work_pool_name]}}}
    if worker.work_queues:
        scope["work_pool_queues"] = {"name": {"any_": list(worker.work_queues)}}
    client = worker.client
    cancelling = await client.read_flow_runs(
        flow_runs={"state": {"type": {"any_": ["CANCELLING"]}}}, **scope
    )
    legacy = await client.read_flow_runs(
        flow_runs={"state": {"type": {"any_": ["CANCELLED"]}, "name": {"any_": ["Cancelling"]}}},
        **scope,
    )
    for flow_run in [*cancelling, *legacy]:
        await cancel_run(worker, flow_run)


async def cancel_run(worker: BaseWorker, flow_run: FlowRun) -> None:
    """Stop ``flow_run``'s infrastructure if this worker may, and mark it CANCELLED."""
    tracked = worker.in_flight.get(flow_run.id)
    if tracked is not None:
        if tracked.cancel_reason is None:
            logger.info("Cancelling flow run '%s'", flow_run.name)
            tracked.cancel_reason = "cancelled"
            tracked.cancel_scope.cancel()
        return
    pid = flow_run.infrastructure_pid
    if not pid:
        await propose_final_state(
            worker,
            flow_run.id,
            State.of(StateType.CANCELLED, NO_INFRASTRUCTURE_MESSAGE),
            force=True,
        )
        return
    if flow_run.id in worker.cancelling or not worker.infrastructure_is_abandoned(flow_run, pid):
        # Being stopped already (the stream and the poll both saw it), or its
        # own worker (elsewhere, or alive on this host) will stop it.
        return
    worker.cancelling.add(flow_run.id)
    try:
        try:
            await worker.kill_infrastructure(pid, None, worker.cancel_grace_seconds)
        except (InfrastructureError, NotImplementedError) as exc:
            logger.warning("Could not stop flow run '%s': %s", flow_run.id, exc)
            return
        await propose_final_state(
            worker, flow_run.id, State.of(StateType.CANCELLED, CANCELLED_MESSAGE), force=True
        )
    finally:
        worker.cancelling.discard(flow_run.id)


async def listen_for_cancellations(worker: BaseWorker) -> None:
    """Hear of cancellations as they happen, through ``/events/out``; reconnect forever.

    The filter asks for ``prefect.flow-run.Cancelling`` events from now on; a
    run this worker owns is cancelled at once, any other of its pool is read
    and handed to :func:`cancel_run`. The polling loop covers the gaps while
    the stream is down.
    """
    assert worker.api_url is not None

    async def listen(socket: JsonWebSocket) -> None:
        # Prefect's filter defaults ``until`` to the moment it is parsed, which
        # would exclude every live event: ask for a year ahead, as Prefect does.
        start = now()
        occurred = {
            "since": start.isoformat(),
            "until": (start + dt.timedelta(days=365)).isoformat(),
        }
        names = [CANCELLING_EVENT, *SCHEDULED_EVENTS]  # the latter for _wakeups.py
        event_filter = {"occurred": occurred, "event": {"name": names}}
        await socket.send_json({"type": "filter", "filter": event_filter, "backfill": False})
        worker.cancel_stream.live = True
        worker.wakeups.stream_up()
        try:
            while True:
                message = await socket.receive_json()
                if worker.wakeups.on_event(message, worker.work_pool_name, worker.work_queues):
                    continue
                if not isinstance(message, dict) or message.get("type") != "event":
                    continue
                resource = message.get("event", {}).get("resource", {})
                resource_id = str(resource.get("prefect.resource.id", ""))
                if resource_id.startswith(FLOW_RUN_RESOURCE_PREFIX):
                    run_id = resource_id.removeprefix(FLOW_RUN_RESOURCE_PREFIX)
                    await _on_cancelling(worker, run_id)
        finally:
            worker.cancel_stream.live = False
            worker.cancel_stream.gap = True
            worker.wakeups.stream_down()

    await serve_subscription(
        worker.api_url,
        "events/out",
        listen,
        token=websocket_token(worker.settings),
        ssl_context=worker.client.ssl_context,
    )


async def _on_cancelling(worker: BaseWorker, flow_run_id: str) -> None:
    try:
        run_id = uuid.UUID(flow_run_id)
    except ValueError:
        return
    tracked = worker.in_flight.get(run_id)
    if tracked is not None:
        await cancel_run(worker, tracked.flow_run)
        return
    try:
        flow_run = await worker.client.read_flow_run(run_id)
    except APIError as exc:
        logger.debug("Could not read cancelling flow run '%s': %s", run_id, exc)
        return
    if flow_run.work_pool_name != worker.work_pool_name:
        return
    if worker.work_queues and flow_run.work_queue_name not in worker.work_queues:
        return
    if _is_cancelling(flow_run):  # not already handled by someone else
        await cancel_run(worker, flow_run)


def _is_cancelling(flow_run: FlowRun) -> bool:
    """CANCELLING, or the legacy CANCELLED state named "Cancelling"."""
    state = flow_run.state
    if state is None:
        return False
    return state.type is StateType.CANCELLING or (
        state.type is StateType.CANCELLED and state.name == "Cancelling"
    )
