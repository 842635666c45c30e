"""What the worker does when a run's handling fails or a shutdown meets a cancellation."""

from __future__ import annotations

from pathlib import Path

import trio

from tests.helpers import make_deployment, python_command, wait_for, wait_for_state
from tests.worker.conftest import fast_settings
from trio_worker._client._client import PrefectClient
from trio_worker._core._models import State, StateType
from trio_worker._process._config import ProcessJobConfiguration
from trio_worker._process._worker import ProcessWorker
from trio_worker._worker._context import BaseWorkerResult, RunContext

FINAL = (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED)


class ExplodingWorker(ProcessWorker):
    """A backend with a bug: its run() fails for commands that say so."""

    async def run(
        self,
        ctx: RunContext[ProcessJobConfiguration],
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> BaseWorkerResult:
        if ctx.configuration.command == "explode":
            raise RuntimeError("backend bug")
        return await super().run(ctx, task_status=task_status)


async def test_a_failing_run_crashes_alone_and_the_worker_goes_on(
    api_url: str, client: PrefectClient, pool_name: str, state_dir: Path
) -> None:
    bad = await make_deployment(client, pool_name, name="bad", job_variables={"command": "explode"})
    good = await make_deployment(client, pool_name, name="good", job_variables={"command": "true"})
    bad_run = await client.create_flow_run_from_deployment(bad.id)
    worker = ExplodingWorker(pool_name, settings=fast_settings(api_url, state_dir))
    async with worker, trio.open_nursery() as nursery:
        nursery.start_soon(lambda: worker.start(printer=lambda _: None))
        crashed = await wait_for_state(client, bad_run.id, FINAL)
        # The worker survived: it still takes and finishes new runs.
        good_run = await client.create_flow_run_from_deployment(good.id)
        completed = await wait_for_state(client, good_run.id, FINAL)
        nursery.cancel_scope.cancel()
    assert crashed.state is not None
    assert crashed.state.type is StateType.CRASHED
    assert "RuntimeError: backend bug" in (crashed.state.message or "")
    assert completed.state is not None
    assert completed.state.type is StateType.COMPLETED


async def test_a_drain_during_a_cancellation_still_ends_cancelled(
    api_url: str, client: PrefectClient, pool_name: str, state_dir: Path
) -> None:
    stubborn = python_command(
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"
    )
    deployment = await make_deployment(client, pool_name, job_variables={"command": stubborn})
    run = await client.create_flow_run_from_deployment(deployment.id)
    worker = ProcessWorker(
        pool_name, settings=fast_settings(api_url, state_dir), cancel_grace_seconds=2.0
    )
    async with worker, trio.open_nursery() as nursery:
        nursery.start_soon(lambda: worker.start(printer=lambda _: None))

        async def started() -> bool:
            tracked = worker.in_flight.get(run.id)
            return tracked is not None and tracked.infrastructure_pid is not None

        await wait_for(started, what="run started")
        await client.set_flow_run_state(run.id, State.of(StateType.CANCELLING))

        async def cancelling() -> bool:
            tracked = worker.in_flight.get(run.id)
            return tracked is not None and tracked.cancel_reason is not None

        await wait_for(cancelling, what="worker heard of the cancellation")
        # The run ignores SIGTERM and is in its grace period: shut down now.
        await worker.drain(0)
    done = await client.read_flow_run(run.id)
    assert done.state is not None
    assert done.state.type is StateType.CANCELLED
