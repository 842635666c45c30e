"""How a task worker records RUNNING and final states: client-orchestrated events, in batches.

The PENDING claim goes through ``set_state``: the API's verdict says whether
this worker owns the run. From then on the run is ours, and like Prefect's own
task engine we record its states as ``prefect.task-run.<State name>`` events
labelled ``prefect.orchestration = client``, which the API writes onto the run
(Prefect's task-run recorder; the embedded API in the same transaction).
Prefect's server orchestrates a ``set_state`` with many queries, so this is
what lets one Prefect server keep up with a busy task worker.

Two things differ from Prefect, both for "no lost work": the events go over
HTTP ``POST /events`` in batches (one request for every report waiting at that
moment), and :meth:`TaskRunReporter.record` returns only once the API has
accepted the batch, retrying through outages; a run keeps its slot until then,
so a report never sits forgotten in a websocket buffer.
"""

from __future__ import annotations

import functools
import logging
import uuid
from typing import Any, Final

import attrs
import trio

from trio_worker._client._client import PrefectClient, state_body
from trio_worker._core._converter import unstructure
from trio_worker._core._exceptions import APIError
from trio_worker._core._models import State, StateType, TaskRun, now
from trio_worker._core._retry import until_answered
from trio_worker._core._time import format_datetime, parse_datetime

__all__ = ["TaskRunReporter", "task_run_record"]

logger = logging.getLogger("trio_worker.task_worker")

BATCH_SIZE: Final = 200
"""Most events in one ``POST /events``."""

FLUSH_TIMEOUT_SECONDS: Final = 10.0
"""How long a cancelled reporter keeps posting the reports already queued."""

REPORT_PATIENCE_SECONDS: Final = 300.0
"""How long a batch is retried through an API outage before its runs are told it failed."""

_RUN_IDS: Final = ("flow_run_id", "task_run_id")

#: Fields of a task run the API fills in itself; Prefect's engine leaves them out too.
_SERVER_FIELDS: Final = frozenset(
    {"id", "created", "updated", "flow_run_id", "state_id", "state_type", "state_name", "state"}
    | {"estimated_start_time_delta", "estimated_run_time"}
)


def task_run_record(task_run: TaskRun, raw: dict[str, Any] | None = None) -> dict[str, Any]:
    """The task run as the events carry it: the API's JSON (``raw``) or the model's."""
    record = dict(raw) if raw is not None else unstructure(task_run)
    return {k: v for k, v in record.items() if k not in _SERVER_FIELDS and v is not None}


def _state_json(state: State, *, data: bool = True) -> dict[str, Any]:
    """The state as Prefect's task engine puts it in an event: no run ids in its details."""
    body = state_body(state)
    details = body["state_details"]
    body["state_details"] = {k: v for k, v in details.items() if k not in _RUN_IDS}
    if not data:
        del body["data"]
    return body


def state_event(
    task_run_id: uuid.UUID, record: dict[str, Any], initial: State | None, state: State
) -> dict[str, Any]:
    """The ``prefect.task-run.*`` event for ``state``, as Prefect's task engine emits it.

    ``record`` is updated in place with the times and counts a state change
    implies (Prefect's recorder takes them from the event, not from the state).
    """
    assert state.timestamp is not None
    assert state.id is not None
    if state.type is StateType.RUNNING:
        record["run_count"] = int(record.get("run_count") or 0) + 1
        record["start_time"] = format_datetime(state.timestamp)
    elif state.is_final:
        record["end_time"] = format_datetime(state.timestamp)
        started = record.get("start_time")
        if started:
            began = parse_datetime(str(started))
            record["total_run_time"] = (state.timestamp - began).total_seconds()
    return {
        "id": str(state.id),
        "occurred": format_datetime(state.timestamp),
        "event": f"prefect.task-run.{state.name}",
        "resource": {
            "prefect.resource.id": f"prefect.task-run.{task_run_id}",
            "prefect.resource.name": str(record.get("name", "")),
            "prefect.run-count": str(record.get("run_count", 0)),
            "prefect.state-message": state.message or "",
            "prefect.state-name": state.name or "",
            "prefect.state-timestamp": format_datetime(state.timestamp),
            "prefect.state-type": state.type.value,
            "prefect.orchestration": "client",
        },
        "related": [
            {"prefect.resource.id": f"prefect.tag.{tag}", "prefect.resource.role": "tag"}
            for tag in sorted(record.get("tags") or [])
        ],
        "payload": {
            "intended": {"from": initial.type.value if initial else None, "to": state.type.value},
            "initial_state": _state_json(initial, data=False) if initial else None,
            "validated_state": _state_json(state),
            "task_run": dict(record),
        },
    }


@attrs.define
class _Report:
    event: dict[str, Any]
    done: trio.Event = attrs.Factory(trio.Event)
    error: APIError | None = None


class TaskRunReporter:
    """Send task-run state events in batches; each caller waits for its batch's answer.

    :meth:`serve` must run (in a nursery that outlives the runs) for
    :meth:`record` to batch; without it each report is posted on its own.
    """

    def __init__(self, client: PrefectClient) -> None:
        self._client = client
        self._send, self._receive = trio.open_memory_channel[_Report](float("inf"))
        self._serving = False

    async def record(
        self,
        task_run_id: uuid.UUID,
        record: dict[str, Any],
        initial: State | None,
        state: State,
    ) -> State:
        """Record ``state`` for the run; return it with its id and timestamp.

        Raises:
            APIError: the API refused the events, or stayed unavailable for
                ``REPORT_PATIENCE_SECONDS``.
        """
        stamped = attrs.evolve(
            state, id=state.id or uuid.uuid4(), timestamp=state.timestamp or now()
        )
        report = _Report(state_event(task_run_id, record, initial, stamped))
        if not self._serving:
            await self._post([report])
        else:
            self._send.send_nowait(report)
            await report.done.wait()
        if report.error is not None:
            raise report.error
        return stamped

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Post whatever reports are waiting, one batch at a time, until cancelled.

        Cancelled (a second Ctrl-C cancels everything at once), it still posts
        what is queued, for up to ``FLUSH_TIMEOUT_SECONDS``: those are the
        final states of the runs the cancellation just ended.
        """
        self._serving = True
        task_status.started()
        batch: list[_Report] = []
        try:
            while True:
                batch = [await self._receive.receive()]
                batch += self._waiting(BATCH_SIZE - 1)
                await self._post(batch)
        finally:
            self._serving = False  # from now on each report is posted by its caller
            with trio.CancelScope(shield=True) as flush:
                flush.deadline = trio.current_time() + FLUSH_TIMEOUT_SECONDS
                # A batch cut short by the cancellation may not have been recorded.
                batch = [report for report in batch if not report.done.is_set()]
                while batch := batch + self._waiting(BATCH_SIZE - len(batch)):
                    await self._post(batch)
                    batch = []

    def _waiting(self, most: int) -> list[_Report]:
        batch: list[_Report] = []
        while len(batch) < most:
            try:
                batch.append(self._receive.receive_nowait())
            except trio.WouldBlock:
                break
        return batch

    async def _post(self, batch: list[_Report]) -> None:
        post = functools.partial(
            self._client.request, "POST", "events", json_body=[r.event for r in batch]
        )
        try:
            await until_answered(
                post,
                what=f"record {len(batch)} task-run state(s)",
                patience=REPORT_PATIENCE_SECONDS,
            )
        except APIError as exc:
            logger.error("could not record %d task-run state(s): %s", len(batch), exc)
            for report in batch:
                report.error = exc
        # Not on cancellation: an unanswered batch is not known to be recorded.
        for report in batch:
            report.done.set()
