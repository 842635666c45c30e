"""The reporter: final states proposed shielded and bounded, outcomes counted.

The API is another host here (``httpx.MockTransport``); time is trio's
``MockClock``, so the bounds are checked to the second without waiting them out.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import httpx
import trio
import trio.testing

from trio_worker._client._client import PrefectClient
from trio_worker._core._converter import unstructure
from trio_worker._core._models import FlowRun, SetStateStatus, State, StateType
from trio_worker._core._settings import Settings
from trio_worker._worker._context import CancelReason, RunLimits
from trio_worker._worker._events import EventEmitter
from trio_worker._worker._metrics import WorkerMetrics
from trio_worker._worker._reporter import CANCELLED_MESSAGE, Reporter

Handler = Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]


def verdict(
    status: SetStateStatus, state_type: StateType, request: httpx.Request
) -> httpx.Response:
    """An orchestration answer; ACCEPT echoes the proposed state (its transition id too)."""
    proposed = json.loads(request.content)["state"]
    state = proposed if status is SetStateStatus.ACCEPT else unstructure(State.of(state_type))
    state = {**state, "id": str(uuid.uuid4()), "type": state_type.value}
    return httpx.Response(200, json={"status": status.value, "state": state, "details": {}})


@asynccontextmanager
async def mock_api(handler: Handler) -> AsyncIterator[PrefectClient]:
    """A real client whose requests reach ``handler`` instead of the network."""
    settings = Settings(api_url="http://api.test/api", max_retries=0)
    client = PrefectClient(
        "http://api.test/api", settings=settings, transport=httpx.MockTransport(handler)
    )
    async with client:
        yield client


def reporter_for(client: PrefectClient, metrics: WorkerMetrics, **kw: Any) -> Reporter:
    events = EventEmitter(worker_type="test", worker_name="w", work_pool=lambda: None)
    return Reporter(client, metrics=metrics, events=events, worker_name="w", **kw)


def finished(metrics: WorkerMetrics, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "trio_worker_flow_runs_finished_total", {"outcome": outcome}
    )
    return value or 0.0


def a_run() -> FlowRun:
    return FlowRun(id=uuid.uuid4(), name="run", flow_id=uuid.uuid4())


async def test_proposal_is_made_and_bounded_while_the_caller_is_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    asked = trio.Event()

    async def never_answers(request: httpx.Request) -> httpx.Response:
        asked.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    async with mock_api(never_answers) as client:
        reporter = reporter_for(client, WorkerMetrics(), report_timeout_seconds=10)
        start = trio.current_time()
        with trio.CancelScope() as caller:
            caller.cancel()  # the run's task is being cancelled (a shutdown)
            landed = await reporter.propose_shielded(
                uuid.uuid4(), State.of(StateType.CRASHED, "cut short")
            )
        assert asked.is_set()  # shielded: the proposal went out anyway
        assert landed is False
        assert trio.current_time() - start == 10  # and gave up at its bound, not later


async def test_proposal_that_lands_counts_its_outcome() -> None:
    async def accept(request: httpx.Request) -> httpx.Response:
        return verdict(SetStateStatus.ACCEPT, StateType.COMPLETED, request)

    metrics = WorkerMetrics()
    async with mock_api(accept) as client:
        reporter = reporter_for(client, metrics)
        assert await reporter.propose(uuid.uuid4(), State.of(StateType.COMPLETED))
    assert finished(metrics, "completed") == 1


async def test_rejected_proposal_counts_how_the_run_had_ended() -> None:
    async def already_failed(request: httpx.Request) -> httpx.Response:
        return verdict(SetStateStatus.REJECT, StateType.FAILED, request)

    metrics = WorkerMetrics()
    async with mock_api(already_failed) as client:
        reporter = reporter_for(client, metrics)
        assert not await reporter.propose(uuid.uuid4(), State.of(StateType.CRASHED, "exit 1"))
    assert finished(metrics, "crashed") == 0
    assert finished(metrics, "failed") == 1


async def test_cancel_reason_timeout_reports_crashed_without_force() -> None:
    bodies: list[dict[str, Any]] = []

    async def record(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return verdict(SetStateStatus.ACCEPT, StateType.CRASHED, request)

    async with mock_api(record) as client:
        reporter = reporter_for(client, WorkerMetrics())
        await reporter.cancelled(a_run(), CancelReason.TIMED_OUT, RunLimits(timeout_seconds=5))
    (body,) = bodies
    assert body["force"] is False  # an engine that reported in time keeps its state
    assert body["state"]["type"] == "CRASHED"
    assert body["state"]["message"] == "Flow run timed out after 5 s."


async def test_cancel_reason_cancelled_reports_cancelled_with_force() -> None:
    bodies: list[dict[str, Any]] = []

    async def record(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return verdict(SetStateStatus.ACCEPT, StateType.CANCELLED, request)

    metrics = WorkerMetrics()
    async with mock_api(record) as client:
        reporter = reporter_for(client, metrics)
        await reporter.cancelled(a_run(), CancelReason.CANCELLED, RunLimits())
    (body,) = bodies
    assert body["force"] is True
    assert (body["state"]["type"], body["state"]["message"]) == ("CANCELLED", CANCELLED_MESSAGE)
    assert finished(metrics, "cancelled") == 1
