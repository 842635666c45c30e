"""Background task runs through trio-worker's task worker, on either backend.

Against Prefect this proves the protocol: the subscription and its handshake,
the PENDING claim through ``set_state``, and the RUNNING / COMPLETED states
recorded as client-orchestrated events that Prefect's task-run recorder
writes onto the run, times and run count included.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import trio

from tests.helpers import assert_ran_once_to_completion
from trio_worker._client._client import PrefectClient
from trio_worker._core._models import StateType
from trio_worker._core._settings import Settings
from trio_worker._taskworker._store import LocalTaskStore
from trio_worker._taskworker._tasks import Task
from trio_worker._taskworker._worker import TaskWorker

pytestmark = pytest.mark.prefect


async def triple(x: int) -> int:
    """The task under test."""
    await trio.sleep(0)
    return 3 * x


async def test_delayed_task_runs_complete_with_results_and_times(
    api_url: str, client: PrefectClient, tmp_path: Path
) -> None:
    store = LocalTaskStore(tmp_path / "store")
    served = Task(triple, key=f"interop-triple-{tmp_path.name}", store=store)
    worker = TaskWorker(served, limit=3, settings=Settings(api_url=api_url), lanes=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.start)
        handles = [await served.enqueue(client, (n,)) for n in range(6)]
        results = [await handle.result_async(60, client=client) for handle in handles]
        worker.stop()
    assert results == [0, 3, 6, 9, 12, 15]
    for handle in handles:
        assert_ran_once_to_completion(await client.read_task_run(handle.task_run_id))
    assert sum(worker.finished_task_runs.values()) == 6
    assert worker.outcomes == {(served.key, "COMPLETED"): 6}


async def test_a_failing_task_run_is_failed_with_its_error(
    api_url: str, client: PrefectClient, tmp_path: Path
) -> None:
    def refuse(reason: str) -> None:
        raise ValueError(reason)

    store = LocalTaskStore(tmp_path / "store")
    served = Task(refuse, key=f"interop-refuse-{tmp_path.name}", store=store)
    worker = TaskWorker(served, limit=1, settings=Settings(api_url=api_url))
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(worker.start))
        handle = await served.enqueue(client, ("no thanks",))
        with pytest.raises(ValueError, match="no thanks"):
            await handle.result_async(60, client=client)
        worker.stop()
    run = await client.read_task_run(handle.task_run_id)
    assert run.state is not None
    assert run.state.type is StateType.FAILED
    assert "ValueError: no thanks" in (run.state.message or "")
