"""The submitter's claim hooks: recorded before PENDING is proposed, dropped at the end.

The process worker's restart settles a run from these records
(``tests/worker/test_claims.py`` kills real workers); here the API is another
host (``httpx.MockTransport``) and the backend a ``Backend`` of plain
callables, so the order of the hook calls and the proposal is seen exactly.
"""

from __future__ import annotations

import json
import uuid

import httpx
import trio

from tests.worker.test_cancellation_watcher import never_run
from tests.worker.test_reporter import mock_api, reporter_for, verdict
from trio_worker._core._jobs import BaseJobConfiguration
from trio_worker._core._models import FlowRun, SetStateStatus, State, StateType
from trio_worker._worker._context import Backend
from trio_worker._worker._events import EventEmitter
from trio_worker._worker._metrics import WorkerMetrics
from trio_worker._worker._run_table import RunTable
from trio_worker._worker._submitter import Submitter
from trio_worker._worker._wakeups import SCHEDULED_EVENTS, Wakeups, WakeupTap


async def test_the_claim_is_recorded_before_pending_and_forgotten_after_an_aborted_claim() -> None:
    steps: list[str] = []
    recorded: list[State] = []

    async def api(request: httpx.Request) -> httpx.Response:
        assert request.url.path.endswith("/set_state")
        proposed = json.loads(request.content)["state"]
        steps.append(f"propose {proposed['type']}")
        # The very claim that was recorded, identified by its transition id.
        transition = recorded[0].state_details.transition_id
        assert proposed["state_details"]["transition_id"] == str(transition)
        return verdict(SetStateStatus.REJECT, StateType.RUNNING, request)  # another worker's

    async def record_claim(flow_run_id: uuid.UUID, pending: State) -> None:
        steps.append("record")
        recorded.append(pending)

    async def forget_claim(flow_run_id: uuid.UUID) -> None:
        steps.append("forget")

    backend: Backend[BaseJobConfiguration] = Backend(
        job_configuration=BaseJobConfiguration,
        prepare=lambda configuration, *_: configuration,
        run=never_run,
        default_command=None,
        is_abandoned=lambda flow_run, pid: True,
        kill=lambda pid, configuration, grace: trio.sleep(0),
        record_claim=record_claim,
        forget_claim=forget_claim,
    )
    metrics = WorkerMetrics()
    table = RunTable(None, metrics=metrics)
    run = FlowRun(id=uuid.uuid4(), name="r", flow_id=uuid.uuid4())
    async with mock_api(api) as client:
        submitter = Submitter(
            client,
            table=table,
            reporter=reporter_for(client, metrics),
            events=EventEmitter(worker_type="test", worker_name="w", work_pool=lambda: None),
            metrics=metrics,
            backend=backend,
            work_pool=lambda: None,
            worker_name="w",
            cancel_grace_seconds=1,
        )
        await submitter.submit(run)
    assert steps == ["record", "propose PENDING", "forget"]
    assert recorded[0].type is StateType.PENDING
    assert len(table) == 0


def test_the_tap_asks_for_scheduled_events_and_scopes_them_to_its_pool() -> None:
    wakeups = Wakeups()
    tap = WakeupTap(wakeups, "mine", ("etl",))
    assert set(SCHEDULED_EVENTS) <= set(tap.event_names)
    tap.stream_up()
    assert wakeups.live
    related = [
        {"prefect.resource.role": "work-pool", "prefect.resource.name": "mine"},
        {"prefect.resource.role": "work-queue", "prefect.resource.name": "etl"},
    ]
    event = {"type": "event", "event": {"event": SCHEDULED_EVENTS[0], "related": related}}
    assert tap.on_event(event)
    cancelling = {"type": "event", "event": {"event": "prefect.flow-run.Cancelling"}}
    assert not tap.on_event(cancelling)  # left to the watcher
    tap.stream_down()
    assert not wakeups.live
