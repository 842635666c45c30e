"""Drain deadlines: runs get until the deadline to end, then are cancelled; never longer.

The runs here are slots held in the run table for a set (mock) time; the API
is another host that is never asked anything.
"""

from __future__ import annotations

import logging
import math
import uuid

import httpx
import trio
import trio.testing

from tests.worker.test_cancellation_watcher import never_run
from tests.worker.test_reporter import mock_api
from trio_worker._client._client import PrefectClient
from trio_worker._core._jobs import BaseJobConfiguration
from trio_worker._core._models import FlowRun
from trio_worker._worker._context import Backend
from trio_worker._worker._events import EventEmitter
from trio_worker._worker._loops import WorkerLoops
from trio_worker._worker._metrics import WorkerMetrics
from trio_worker._worker._pool_sync import WarnOnce
from trio_worker._worker._run_table import RunTable
from trio_worker._worker._start_rate import StartRate


async def no_requests(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"unexpected request {request.url}")  # pragma: no cover


def loops_for(
    client: PrefectClient, runs: trio.Nursery, table: RunTable
) -> WorkerLoops[BaseJobConfiguration]:
    metrics = WorkerMetrics()
    backend: Backend[BaseJobConfiguration] = Backend(
        job_configuration=BaseJobConfiguration,
        prepare=lambda configuration, *_: configuration,
        run=never_run,
        default_command=None,
        is_abandoned=lambda flow_run, pid: True,
        kill=lambda pid, configuration, grace: trio.sleep(0),
    )
    return WorkerLoops(
        client,
        runs,
        api_url=client.api_url,
        prefetch_seconds=0,
        heartbeat_interval_seconds=30,
        query_seconds=10,
        create_pool_if_not_found=False,
        base_job_template=None,
        work_pool_name="pool",
        work_queues=(),
        worker_type="test",
        worker_name="w",
        table=table,
        metrics=metrics,
        events=EventEmitter(worker_type="test", worker_name="w", work_pool=lambda: None),
        start_rate=StartRate(None, None),
        warn_once=WarnOnce(logging.getLogger("test")),
        backend=backend,
        default_template=dict,
        on_shutdown="crash",
        cancel_grace_seconds=1,
        stopping=lambda: True,
    )


async def hold(
    table: RunTable, seconds: float, ended: list[str], *, task_status: trio.TaskStatus[None]
) -> None:
    run = FlowRun(id=uuid.uuid4(), name=f"{seconds:g}s", flow_id=uuid.uuid4())
    async with table.slot(run):
        task_status.started()
        await trio.sleep(seconds)
        ended.append(run.name)


async def own_runs(closing: trio.Event, *, task_status: trio.TaskStatus[trio.Nursery]) -> None:
    async with trio.open_nursery() as runs:
        task_status.started(runs)
        await closing.wait()


async def test_drain_cancels_the_runs_still_going_at_its_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    table = RunTable(None, metrics=WorkerMetrics())
    closing, ended = trio.Event(), list[str]()
    async with mock_api(no_requests) as client, trio.open_nursery() as outer:
        runs = await outer.start(own_runs, closing)
        loops = loops_for(client, runs, table)
        await runs.start(hold, table, 3, ended)
        await runs.start(hold, table, math.inf, ended)
        start = trio.current_time()
        await loops.drain(10)
        assert trio.current_time() - start == 10
        assert ended == ["3s"]  # the endless one was cancelled
        assert len(table) == 0
        assert table.limiter.borrowed_tokens == 0
        closing.set()


async def test_drain_returns_when_the_last_run_ends_before_its_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    table = RunTable(2, metrics=WorkerMetrics())
    closing, ended = trio.Event(), list[str]()
    async with mock_api(no_requests) as client, trio.open_nursery() as outer:
        runs = await outer.start(own_runs, closing)
        loops = loops_for(client, runs, table)
        await runs.start(hold, table, 3, ended)
        await runs.start(hold, table, 5, ended)
        start = trio.current_time()
        await loops.drain(10)
        assert trio.current_time() - start == 5
        assert ended == ["3s", "5s"]
        closing.set()


async def test_drain_with_no_runs_in_flight_returns_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    table = RunTable(None, metrics=WorkerMetrics())
    closing = trio.Event()
    async with mock_api(no_requests) as client, trio.open_nursery() as outer:
        runs = await outer.start(own_runs, closing)
        loops = loops_for(client, runs, table)
        start = trio.current_time()
        await loops.drain(10)
        assert trio.current_time() == start
        closing.set()
