"""The task worker's state reporter: batched events, and nothing dropped when cancelled."""

from __future__ import annotations

from pathlib import Path

import trio

from tests.helpers import assert_ran_once_to_completion
from trio_worker._client._client import PrefectClient
from trio_worker._core._models import State, StateType
from trio_worker._taskworker._reports import TaskRunReporter, task_run_record
from trio_worker._taskworker._store import LocalTaskStore
from trio_worker._taskworker._tasks import Task


async def noop() -> None:
    """Only submitted, never run: the reporter records its states."""


async def test_states_recorded_in_one_batch_set_times_and_run_count(
    api_url: str, tmp_path: Path
) -> None:
    submitted = Task(noop, key="reports-noop", store=LocalTaskStore(tmp_path))
    async with PrefectClient(api_url) as client:
        runs = [await client.read_task_run((await submitted.enqueue(client)).task_run_id)]
        runs.append(await client.read_task_run((await submitted.enqueue(client)).task_run_id))
        reporter = TaskRunReporter(client)
        async with trio.open_nursery() as nursery:
            await nursery.start(reporter.serve)

            async def run_through(index: int) -> None:
                run = runs[index]
                record = task_run_record(run)
                running = await reporter.record(
                    run.id, record, run.state, State.of(StateType.RUNNING)
                )
                await reporter.record(run.id, record, running, State.of(StateType.COMPLETED))

            async with trio.open_nursery() as both:
                both.start_soon(run_through, 0)
                both.start_soon(run_through, 1)
            nursery.cancel_scope.cancel()
        for run in runs:
            assert_ran_once_to_completion(await client.read_task_run(run.id))


async def test_a_report_queued_as_the_reporter_is_cancelled_is_still_sent(
    api_url: str, tmp_path: Path
) -> None:
    submitted = Task(noop, key="reports-noop", store=LocalTaskStore(tmp_path))
    async with PrefectClient(api_url) as client:
        run = await client.read_task_run((await submitted.enqueue(client)).task_run_id)
        reporter = TaskRunReporter(client)
        async with trio.open_nursery() as services:
            await services.start(reporter.serve)
            # A second Ctrl-C cancels the reporter and the runs at once; a run's
            # final report, queued from its shielded cleanup, must still go out.
            services.cancel_scope.cancel()
            with trio.CancelScope(shield=True), trio.fail_after(10):
                crashed = State.of(StateType.CRASHED, "the task worker stopped")
                await reporter.record(run.id, task_run_record(run), run.state, crashed)
        done = await client.read_task_run(run.id)
    assert done.state is not None
    assert done.state.type is StateType.CRASHED
