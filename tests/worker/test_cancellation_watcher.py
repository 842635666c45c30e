"""The cancellation watcher: each kill in its own task, shielded and bounded; one kill per run.

The API is another host (``httpx.MockTransport``), time is ``MockClock``; the
backend's kill is a function that records its calls and waits as told.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable

import attrs
import httpx
import pytest
import trio
import trio.testing

from tests.worker.test_reporter import mock_api, reporter_for, verdict
from trio_worker._client._client import PrefectClient
from trio_worker._core._exceptions import NotFoundError
from trio_worker._core._jobs import BaseJobConfiguration
from trio_worker._core._models import FlowRun, SetStateStatus, StateType
from trio_worker._worker._cancellation import (
    KILL_MARGIN_SECONDS,
    CancellationWatcher,
    cancelling_run_id,
)
from trio_worker._worker._context import (
    Backend,
    BaseWorkerResult,
    CancelReason,
    RunContext,
    run_logger,
)
from trio_worker._worker._metrics import WorkerMetrics
from trio_worker._worker._run_table import RunTable

GRACE_SECONDS = 2.0
Kill = Callable[[str, BaseJobConfiguration, float], Awaitable[None]]


def abandoned_run(pid: str = "host:42") -> FlowRun:
    return FlowRun(
        id=uuid.uuid4(), name="left-behind", flow_id=uuid.uuid4(), infrastructure_pid=pid
    )


async def configure(flow_run: FlowRun) -> RunContext[BaseJobConfiguration]:
    return RunContext(
        flow_run=flow_run,
        configuration=BaseJobConfiguration(),
        logger=run_logger(flow_run, worker_name="w"),
    )


async def never_run(
    ctx: RunContext[BaseJobConfiguration], task_status: trio.TaskStatus[str]
) -> BaseWorkerResult:
    raise AssertionError("the watcher never starts runs")  # pragma: no cover


def watcher_for(
    client: PrefectClient,
    table: RunTable,
    kill: Kill,
    configure: Callable[[FlowRun], Awaitable[RunContext[BaseJobConfiguration]]] = configure,
) -> CancellationWatcher[BaseJobConfiguration]:
    backend: Backend[BaseJobConfiguration] = Backend(
        job_configuration=BaseJobConfiguration,
        prepare=lambda configuration, *_: configuration,
        run=never_run,
        default_command=None,
        is_abandoned=lambda flow_run, pid: True,
        kill=kill,
    )
    return CancellationWatcher(
        client,
        table=table,
        reporter=reporter_for(client, WorkerMetrics()),
        backend=backend,
        configure=configure,
        work_pool_name="pool",
        work_queues=(),
        cancel_grace_seconds=GRACE_SECONDS,
    )


class Api:
    """Answers every proposal ACCEPT and remembers which runs were marked CANCELLED."""

    def __init__(self) -> None:
        self.cancelled: list[uuid.UUID] = []
        self.changed = trio.Event()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path.endswith("/set_state"), request.url
        run_id = uuid.UUID(request.url.path.split("/")[-2])
        assert json.loads(request.content)["state"]["type"] == "CANCELLED"
        self.cancelled.append(run_id)
        self.changed.set()
        self.changed = trio.Event()
        return verdict(SetStateStatus.ACCEPT, StateType.CANCELLED, request)


async def test_a_slow_kill_does_not_hold_up_the_next() -> None:
    slow, fast = abandoned_run("host:1"), abandoned_run("host:2")
    release = trio.Event()

    async def kill(pid: str, configuration: BaseJobConfiguration, grace: float) -> None:
        if pid == slow.infrastructure_pid:
            await release.wait()  # the slow kill hangs until released

    api = Api()
    async with mock_api(api) as client:
        watcher = watcher_for(client, RunTable(None, metrics=WorkerMetrics()), kill)
        with trio.fail_after(5):
            async with watcher.killing():
                await watcher.cancel_run(slow)  # returns at once: the kill has a task
                await watcher.cancel_run(fast)
                while fast.id not in api.cancelled:
                    await api.changed.wait()
                assert api.cancelled == [fast.id]  # the slow one is still being killed
                assert watcher.cancelling == {slow.id}
                release.set()
    assert sorted(api.cancelled) == sorted([slow.id, fast.id])
    assert watcher.cancelling == frozenset()


async def test_a_kill_that_hangs_is_given_up_after_the_grace_and_a_margin(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def hangs(pid: str, configuration: BaseJobConfiguration, grace: float) -> None:
        await trio.sleep_forever()

    api = Api()
    async with mock_api(api) as client:
        watcher = watcher_for(client, RunTable(None, metrics=WorkerMetrics()), hangs)
        start = trio.current_time()
        async with watcher.killing() as nursery:
            await watcher.cancel_run(abandoned_run())
            nursery.cancel_scope.cancel()  # a shutdown: the shielded kill still has its bound
        assert trio.current_time() - start == GRACE_SECONDS + KILL_MARGIN_SECONDS
    assert api.cancelled == []  # not marked CANCELLED: nothing says it stopped
    assert watcher.cancelling == frozenset()


async def test_a_run_reported_twice_while_being_killed_is_killed_once() -> None:
    run = abandoned_run()
    release = trio.Event()
    killed: list[str] = []

    async def kill(pid: str, configuration: BaseJobConfiguration, grace: float) -> None:
        killed.append(pid)
        await release.wait()

    async with mock_api(Api()) as client:
        watcher = watcher_for(client, RunTable(None, metrics=WorkerMetrics()), kill)
        with trio.fail_after(5):
            async with watcher.killing():
                await watcher.cancel_run(run)  # the stream
                await trio.testing.wait_all_tasks_blocked()
                await watcher.cancel_run(run)  # the polling check, a moment later
                release.set()
    assert killed == ["host:42"]


async def test_a_run_in_flight_here_is_cancelled_through_its_scope_with_a_typed_reason() -> None:
    async def kill(pid: str, configuration: BaseJobConfiguration, grace: float) -> None:
        raise AssertionError("a run of our own is stopped by its own task")  # pragma: no cover

    table = RunTable(None, metrics=WorkerMetrics())
    run = abandoned_run()
    async with mock_api(Api()) as client:
        watcher = watcher_for(client, table, kill)
        async with table.slot(run) as tracked:
            await watcher.cancel_run(run)
            assert tracked.cancel_reason is CancelReason.CANCELLED
            assert tracked.cancel_scope.cancel_called


async def test_a_kill_that_fails_unexpectedly_is_logged_and_the_watcher_goes_on() -> None:
    """A backend's kill that raises (a cloud SDK's own error) must not end the worker.

    The kills run in the watcher's nursery, beside the stream and the polling
    check, inside the worker's loops nursery: an error escaping one would stop
    cancellation handling, the poll and the heartbeat, and crash every run in
    flight. As in Prefect, it is logged, and the run is left for a later check.
    """
    failing, fine = abandoned_run("host:1"), abandoned_run("host:2")

    async def kill(pid: str, configuration: BaseJobConfiguration, grace: float) -> None:
        if pid == failing.infrastructure_pid:
            raise RuntimeError("the cloud SDK failed")

    api = Api()
    async with mock_api(api) as client:
        watcher = watcher_for(client, RunTable(None, metrics=WorkerMetrics()), kill)
        with trio.fail_after(5):
            async with watcher.killing():
                await watcher.cancel_run(failing)
                await trio.testing.wait_all_tasks_blocked()
                await watcher.cancel_run(fine)
                while fine.id not in api.cancelled:
                    await api.changed.wait()
    assert api.cancelled == [fine.id]  # the failed one is not said to be cancelled
    assert watcher.cancelling == frozenset()  # and a later check may try it again


async def test_a_run_whose_deployment_was_deleted_is_still_killed() -> None:
    """Killing an abandoned process needs the run's configuration, not its deployment.

    A deployment deleted while its run went on leaves the run pointing at it;
    rendering the configuration then fails with 404. The pool's template and
    the run's own variables still render one, and the process is stopped.
    """
    run = attrs.evolve(abandoned_run(), deployment_id=uuid.uuid4())
    killed: list[str] = []

    async def kill(pid: str, configuration: BaseJobConfiguration, grace: float) -> None:
        killed.append(pid)

    async def configure_without_the_deployment(
        flow_run: FlowRun,
    ) -> RunContext[BaseJobConfiguration]:
        if flow_run.deployment_id is not None:
            raise NotFoundError(f"deployment {flow_run.deployment_id} not found")
        return await configure(flow_run)

    api = Api()
    async with mock_api(api) as client:
        table = RunTable(None, metrics=WorkerMetrics())
        watcher = watcher_for(client, table, kill, configure_without_the_deployment)
        with trio.fail_after(5):
            await watcher.cancel_run(run)
    assert killed == ["host:42"]
    assert api.cancelled == [run.id]


@pytest.mark.parametrize(
    "message",
    [
        None,
        [],
        {"type": "event"},
        {"type": "event", "event": None},
        {"type": "event", "event": "x"},
        {"type": "event", "event": {"resource": []}},
        {"type": "event", "event": {"resource": {"prefect.resource.id": 7}}},
        {"type": "event", "event": {"resource": {"prefect.resource.id": "prefect.flow.1"}}},
    ],
)
def test_a_stream_message_of_any_other_shape_is_skipped(message: object) -> None:
    """The listener runs in the worker's loops nursery: an unreadable message must not stop it."""
    assert cancelling_run_id(message) is None


def test_a_cancelling_event_names_its_flow_run() -> None:
    run_id = str(uuid.uuid4())
    resource = {"prefect.resource.id": f"prefect.flow-run.{run_id}"}
    assert cancelling_run_id({"type": "event", "event": {"resource": resource}}) == run_id
