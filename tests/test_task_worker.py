"""TaskWorker against the embedded API over a real websocket (and real processes)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.helpers import clean_env, wait_for
from trio_worker._client._client import PrefectClient
from trio_worker._core._exceptions import ConfigurationError
from trio_worker._core._models import StateType, TaskRun
from trio_worker._core._settings import Settings
from trio_worker._server import serve_api
from trio_worker._taskworker._handles import TaskRunFailedError
from trio_worker._taskworker._status import worker_status
from trio_worker._taskworker._store import parameters_key
from trio_worker._taskworker._tasks import Task, task
from trio_worker._taskworker._worker import TaskWorker


class BoomError(Exception):
    """A task's own error; ``.result()`` must raise this very class."""


@task(key="tw-add")
def add(x: int, y: int) -> int:
    return x + y


@task(key="tw-mul")
async def mul(x: int, y: int) -> int:
    await trio.sleep(0)
    return x * y


@task(key="tw-boom")
def boom(message: str) -> None:
    raise BoomError(message)


# A module the subprocess workers import with `-m trio_worker task-worker serve`.
HOLD_MODULE = """
import pathlib
import trio
from trio_worker._taskworker import _tasks

@_tasks.task(key="tw-hold")
async def hold(n: int, release: str | None = None) -> int:
    # Finish once the file `release` exists (never, when it is None).
    while release is None or not pathlib.Path(release).exists():
        await trio.sleep(0.02)
    return n
"""


async def _hold(n: int, release: str | None = None) -> int:
    raise AssertionError("submit-only twin of the subprocess task")


hold = Task(_hold, key="tw-hold")


@pytest.fixture(autouse=True)
def task_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # (A sync fixture that used the async api_url fixture would not run under
    # pytest-trio, so tests that need PREFECT_API_URL set it themselves.)
    monkeypatch.setenv("TRIO_WORKER_TASK_STORAGE", str(tmp_path / "store"))


@pytest.fixture
async def client(api_url: str) -> AsyncIterator[PrefectClient]:
    async with PrefectClient(api_url, backoff_seconds=0.05) as opened:
        yield opened


@asynccontextmanager
async def running(api_url: str, *tasks: Any, **kwargs: Any) -> AsyncIterator[TaskWorker]:
    worker = TaskWorker(
        *tasks, settings=Settings(api_url=api_url), client_backoff_seconds=0.05, **kwargs
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.start)
        yield worker
        nursery.cancel_scope.cancel()


async def wait_state(client: PrefectClient, run_id: uuid.UUID, *types: StateType) -> TaskRun:
    async def check() -> TaskRun | None:
        run = await client.read_task_run(run_id)
        return run if run.state is not None and run.state.type in types else None

    return await wait_for(check, what=f"task run {run_id} in {types}")


class Child:
    """A CLI task worker in a subprocess, whose stderr we can wait on."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.output = ""

    async def wait_for_line(self, fragment: str, *, timeout: float = 30.0) -> str:
        assert self.process.stderr is not None
        with trio.move_on_after(timeout):
            while fragment not in self.output:
                chunk = await self.process.stderr.receive_some()
                if not chunk:
                    break
                self.output += chunk.decode(errors="replace")
        for line in self.output.splitlines():
            if fragment in line:
                return line
        raise AssertionError(f"no {fragment!r} in the worker's output:\n{self.output}")


def child_env(api_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        **clean_env(),
        "PREFECT_API_URL": api_url,
        "TRIO_WORKER_TASK_STORAGE": str(tmp_path / "store"),
        "PYTHONUNBUFFERED": "1",
    }


@asynccontextmanager
async def child_worker(
    api_url: str,
    tmp_path: Path,
    *args: str,
    command: list[str] | None = None,
    cwd: Path | None = None,
) -> AsyncIterator[Child]:
    """A task worker subprocess, by default the CLI serving ``holdtasks:hold``."""
    (tmp_path / "holdtasks.py").write_text(HOLD_MODULE)
    if command is None:
        command = [sys.executable, "-m", "trio_worker", "task-worker", "serve", "holdtasks:hold"]
    process = await trio.lowlevel.open_process(
        [*command, *args],
        env=child_env(api_url, tmp_path),
        cwd=cwd or tmp_path,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    child = Child(process)
    try:
        await child.wait_for_line("subscribed to")
        yield child
    finally:
        if process.returncode is None:
            process.kill()
        with trio.move_on_after(10):
            await process.wait()


# -- results ------------------------------------------------------------------


async def test_delay_returns_results_of_sync_and_async_tasks(
    api_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", api_url)
    async with running(api_url, add, mul):
        # Plain (non-Trio) code: the blocking API, from a thread.
        handle = await trio.to_thread.run_sync(add.delay, 2, 3)
        assert await trio.to_thread.run_sync(handle.result, 30) == 5
        assert (await trio.to_thread.run_sync(handle.wait, 1)).type is StateType.COMPLETED
        # Trio code: the awaitable API.
        async_handle = await mul.delay_async(4, 5)
        assert await async_handle.result_async(30) == 20


async def test_failed_run_reraises_the_tasks_own_exception(
    api_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", api_url)
    async with running(api_url, boom):
        handle = await boom.delay_async("kaput")
        with pytest.raises(BoomError, match="kaput") as info:
            await handle.result_async(30)
    assert any("raised by task run" in note for note in info.value.__notes__)
    assert handle.state is not None
    assert handle.state.type is StateType.FAILED
    assert handle.state.message == "Task run encountered an exception BoomError: kaput"


async def test_limit_bounds_concurrency_of_sync_and_async_runs_together(api_url: str) -> None:
    lock = threading.Lock()
    current = 0
    peak = 0
    worker_peak = 0
    workers: list[TaskWorker] = []

    def enter() -> None:
        nonlocal current, peak, worker_peak
        with lock:
            current += 1
            peak = max(peak, current)
            worker_peak = max(worker_peak, workers[0].current_tasks)

    def leave() -> None:
        nonlocal current
        with lock:
            current -= 1

    def sync_work(i: int) -> int:
        enter()
        time.sleep(0.02)  # the task's own work, not a wait for a condition
        leave()
        return i

    async def async_work(i: int) -> int:
        enter()
        await trio.sleep(0.02)
        leave()
        return i

    sync_task = Task(sync_work, key="tw-sync-work")
    async_task = Task(async_work, key="tw-async-work")
    async with running(api_url, sync_task, async_task, limit=5) as worker:
        workers.append(worker)
        async with PrefectClient(api_url) as client:
            handles = [
                await (sync_task if i % 2 else async_task).enqueue(client, (i,)) for i in range(50)
            ]
            results = [await h.result_async(60, client=client) for h in handles]
    assert results == list(range(50))
    assert peak <= 5
    assert worker_peak <= 5
    assert peak > 1, "runs never overlapped: the limit was not exercised"
    assert sum(worker.finished_task_runs.values()) == 50


# -- runs that cannot run ------------------------------------------------------


async def test_unknown_task_key_fails_the_run_and_the_worker_goes_on(
    api_url: str, client: PrefectClient
) -> None:
    stranger = Task(add.fn, key="tw-nobody-serves-this")
    async with running(api_url, add) as worker:
        handle = await stranger.enqueue(client, (1, 2))
        run = await client.read_task_run(handle.task_run_id)
        await worker.execute_task_run(run)
        with pytest.raises(TaskRunFailedError, match="no task with key 'tw-nobody-serves-this'"):
            await handle.result_async(5, client=client)
        assert await (await add.enqueue(client, (1, 1))).result_async(30, client=client) == 2


async def test_unknown_task_key_is_deleted_when_asked(api_url: str, client: PrefectClient) -> None:
    stranger = Task(add.fn, key="tw-nobody-serves-this")
    async with running(api_url, add, delete_failed_submissions=True) as worker:
        handle = await stranger.enqueue(client, (1, 2))
        await worker.execute_task_run(await client.read_task_run(handle.task_run_id))
    assert [r.id for r in await client.read_task_runs()] == []


async def test_unreadable_parameters_fail_the_run_and_the_worker_goes_on(
    api_url: str, client: PrefectClient, tmp_path: Path
) -> None:
    bad = await add.enqueue(client, (1, 2))
    run = await client.read_task_run(bad.task_run_id)
    assert run.state is not None
    parameters_id = run.state.state_details.task_parameters_id
    assert parameters_id is not None
    # What Prefect's default (pickle) serializer writes: we must refuse, not unpickle.
    record = {"metadata": {"serializer": {"type": "pickle"}}, "result": "gAVLDC4=\n"}
    key = parameters_key(parameters_id)
    (tmp_path / "store" / key).write_text(json.dumps(record))
    missing = await add.enqueue(client, (3, 4))
    missing_run = await client.read_task_run(missing.task_run_id)
    assert missing_run.state is not None
    missing_id = missing_run.state.state_details.task_parameters_id
    assert missing_id is not None
    (tmp_path / "store" / parameters_key(missing_id)).unlink()
    good = await add.enqueue(client, (5, 6))
    async with running(api_url, add):
        assert await good.result_async(30, client=client) == 11
        with pytest.raises(TaskRunFailedError, match="'pickle' serializer"):
            await bad.result_async(30, client=client)
        with pytest.raises(TaskRunFailedError, match="cannot read the parameters"):
            await missing.result_async(30, client=client)


# -- delivery guarantees --------------------------------------------------------


async def test_killed_worker_releases_unacked_run_to_another_worker(
    api_url: str, client: PrefectClient, tmp_path: Path
) -> None:
    async with child_worker(api_url, tmp_path, "--limit", "1") as first:
        stuck = await hold.enqueue(client, (1,))  # never released: holds the only slot
        await wait_state(client, stuck.task_run_id, StateType.RUNNING)
        waiting = await hold.enqueue(client, (2, str(tmp_path / "go")))
        # The worker has the second run in hand, un-acked, waiting for a slot...
        await first.wait_for_line(f"task run {waiting.task_run_id} received; waiting for a free")
        first.process.send_signal(signal.SIGKILL)
        await first.process.wait()
    run = await client.read_task_run(waiting.task_run_id)
    assert run.state is not None
    assert run.state.type is StateType.SCHEDULED, "a run was claimed by a worker with no slot"
    (tmp_path / "go").touch()
    # ...so the API hands it to the next worker.
    async with child_worker(api_url, tmp_path, "--limit", "1"):
        assert await waiting.result_async(30, client=client) == 2


async def test_worker_reconnects_after_the_api_restarts_and_keeps_its_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_worker.subscriptions")
    release = trio.Event()

    async def gated(n: int) -> int:
        await release.wait()
        return n

    gated_task = Task(gated, key="tw-gated")
    db = tmp_path / "restart.db"
    async with trio.open_nursery() as nursery:
        api_scope = trio.CancelScope()

        async def api(port: int, scope: trio.CancelScope, *, task_status: Any) -> None:
            with scope:
                await serve_api(port=port, db_path=db, task_status=task_status)

        url: str = await nursery.start(api, 0, api_scope)
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        # One lane: the outage and the reconnect are logged by lane 0 only.
        async with running(url, gated_task, lanes=1) as worker:
            async with PrefectClient(url, backoff_seconds=0.05) as client:
                in_flight = await gated_task.enqueue(client, (7,))
                await wait_state(client, in_flight.task_run_id, StateType.RUNNING)
            api_scope.cancel()
            await wait_for(_async(lambda: not worker.connected), what="worker sees the outage")
            release.set()  # the acked run finishes while the API is down
            await nursery.start(api, port, trio.CancelScope())
            await wait_for(_async(lambda: worker.connected), what="worker reconnects")
            async with PrefectClient(url, backoff_seconds=0.05) as client:
                assert await in_flight.result_async(30, client=client) == 7
                after = await gated_task.enqueue(client, (8,))
                assert await after.result_async(30, client=client) == 8
        nursery.cancel_scope.cancel()
    lost = [r for r in caplog.records if r.getMessage().startswith("lost ")]
    assert len(lost) == 1, "an outage must be logged once, not per attempt"
    assert any(r.getMessage().startswith("reconnected") for r in caplog.records)


def _async(predicate: Any) -> Any:
    async def check() -> bool:
        return bool(predicate())

    return check


# -- shutdown -------------------------------------------------------------------


async def test_sigterm_drains_in_flight_runs_and_takes_no_new_ones(
    api_url: str, client: PrefectClient, tmp_path: Path
) -> None:
    async with child_worker(api_url, tmp_path) as child:
        running_run = await hold.enqueue(client, (1, str(tmp_path / "go")))
        await wait_state(client, running_run.task_run_id, StateType.RUNNING)
        child.process.send_signal(signal.SIGTERM)
        await child.wait_for_line("SIGTERM received: draining")
        late = await hold.enqueue(client, (2, str(tmp_path / "go")))
        assert child.process.returncode is None, "the worker quit without draining"
        (tmp_path / "go").touch()
        with trio.fail_after(30):
            assert await child.process.wait() == 0
        assert await running_run.result_async(5, client=client) == 1
    run = await client.read_task_run(late.task_run_id)
    assert run.state is not None
    assert run.state.type is StateType.SCHEDULED, "a draining worker took a new run"


async def test_drain_timeout_records_unfinished_runs_as_crashed(
    api_url: str, client: PrefectClient, tmp_path: Path
) -> None:
    async with child_worker(api_url, tmp_path, "--drain-timeout", "0.5") as child:
        stuck = await hold.enqueue(client, (1,))
        await wait_state(client, stuck.task_run_id, StateType.RUNNING)
        child.process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await child.process.wait() == 0
    run = await client.read_task_run(stuck.task_run_id)
    assert run.state is not None
    assert run.state.type is StateType.CRASHED
    assert "0.5 s drain timeout" in (run.state.message or "")


async def test_second_signal_cancels_at_once_and_records_crashed(
    api_url: str, client: PrefectClient, tmp_path: Path
) -> None:
    async with child_worker(api_url, tmp_path, "--drain-timeout", "600") as child:
        stuck = await hold.enqueue(client, (1,))
        await wait_state(client, stuck.task_run_id, StateType.RUNNING)
        child.process.send_signal(signal.SIGINT)
        await child.wait_for_line("SIGINT received: draining")
        child.process.send_signal(signal.SIGINT)
        with trio.fail_after(30):
            await child.process.wait()
    run = await wait_state(client, stuck.task_run_id, StateType.CRASHED)
    assert run.state is not None
    assert "stopped" in (run.state.message or "")


# -- status server ----------------------------------------------------------------


async def test_status_endpoint_counts_match_what_happened(
    api_url: str, client: PrefectClient
) -> None:
    release = trio.Event()

    async def gated(n: int) -> int:
        await release.wait()
        return n

    gated_task = Task(gated, key="tw-status-gated")
    async with running(api_url, add, boom, gated_task, limit=4, status_server_port=0) as worker:
        assert worker.status_url is not None
        for i in range(3):
            assert (
                await (await add.enqueue(client, (i, i))).result_async(30, client=client) == 2 * i
            )
        with pytest.raises(BoomError):
            await (await boom.enqueue(client, ("x",))).result_async(30, client=client)
        held = await gated_task.enqueue(client, (1,))
        await wait_state(client, held.task_run_id, StateType.RUNNING)
        async with httpx.AsyncClient(base_url=worker.status_url) as http:
            status = (await http.get("/status")).json()
            assert status["finished_task_runs"] == {"tw-add": 3, "tw-boom": 1, "tw-status-gated": 0}
            assert status["in_flight_task_runs"]["tw-status-gated"] == [str(held.task_run_id)]
            assert status["current_tasks"] == 1
            assert status["available_tasks"] == 3
            assert status["abandoned_threads"] == 0
            assert status["limit"] == 4
            assert status["started"] is True
            assert status["client_id"] == f"{socket.gethostname()}-{os.getpid()}"
            health = await http.get("/health")
            assert health.status_code == 200
            metrics = (await http.get("/metrics")).text
            assert (
                'trio_worker_task_runs_finished_total{state="COMPLETED",task_key="tw-add"} 3.0'
                in metrics
            )
            assert (
                'trio_worker_task_runs_finished_total{state="FAILED",task_key="tw-boom"} 1.0'
                in metrics
            )
            assert 'trio_worker_task_runs_in_flight{task_key="tw-status-gated"} 1.0' in metrics
            assert "trio_worker_task_threads_abandoned 0.0" in metrics
            release.set()
            assert await held.result_async(30, client=client) == 1
            status = (await http.get("/status")).json()
            assert status["finished_task_runs"]["tw-status-gated"] == 1
            assert status["current_tasks"] == 0


# -- CLI: task-run ls / inspect ---------------------------------------------------------


async def test_task_run_ls_and_inspect(api_url: str, client: PrefectClient) -> None:
    handle = await add.enqueue(client, (1, 2))
    env = {**clean_env(), "PREFECT_API_URL": api_url}

    async def cli(*args: str) -> str:
        done = await trio.run_process(
            [sys.executable, "-m", "trio_worker", *args], env=env, capture_stdout=True
        )
        return done.stdout.decode()

    listing = await cli("task-run", "ls")
    assert str(handle.task_run_id) in listing
    assert "tw-add" in listing and "Scheduled" in listing
    shown = await cli("task-run", "inspect", str(handle.task_run_id))
    assert "task key:" in shown and "tw-add" in shown
    assert "parameters id:" in shown
    assert "No task runs found." in await cli("task-run", "ls", "--state", "COMPLETED")


def test_worker_refuses_duplicate_keys_and_bad_limits() -> None:
    with pytest.raises(ValueError, match="share the key 'tw-add'"):
        TaskWorker(add, Task(add.fn, key="tw-add"))
    with pytest.raises(ValueError, match="limit must be at least 1"):
        TaskWorker(add, limit=0)


# -- the example in examples/task_worker ------------------------------------------------

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "task_worker"


async def test_example_serve_and_submit_scripts(api_url: str, tmp_path: Path) -> None:
    serve_script = [sys.executable, str(EXAMPLE / "serve.py"), "4"]
    async with child_worker(api_url, tmp_path, command=serve_script, cwd=EXAMPLE):
        with trio.fail_after(60):
            done = await trio.run_process(
                [sys.executable, str(EXAMPLE / "submit.py")],
                env=child_env(api_url, tmp_path),
                cwd=EXAMPLE,
                capture_stdout=True,
            )
    assert done.stdout.decode().splitlines() == ["add: 42", "slugify: hello-background-tasks"]


# -- Prefect's lifecycle: async with, await stop() ------------------------------


async def test_async_with_stops_the_worker_and_waits_for_start_to_return(
    api_url: str, client: PrefectClient
) -> None:
    settings = Settings(api_url=api_url)
    async with trio.open_nursery() as nursery:
        async with TaskWorker(add, settings=settings, client_backoff_seconds=0.05) as worker:
            await nursery.start(worker.start)
            handle = await add.enqueue(client, (2, 3))
            assert await handle.result_async(30, client=client) == 5
        # Leaving the block stopped the worker and waited for its drain.
        assert not nursery.child_tasks
    with pytest.raises(RuntimeError, match="already entered"):
        async with worker:
            pass


async def test_awaited_stop_returns_once_the_worker_has_drained(
    api_url: str, client: PrefectClient
) -> None:
    worker = TaskWorker(add, settings=Settings(api_url=api_url), client_backoff_seconds=0.05)
    await worker.stop()  # before start: nothing to wait for
    second = TaskWorker(mul, settings=Settings(api_url=api_url), client_backoff_seconds=0.05)
    async with trio.open_nursery() as nursery:
        await nursery.start(second.start)
        handle = await mul.enqueue(client, (4, 5))
        assert await handle.result_async(30, client=client) == 20
        with trio.fail_after(30):
            await second.stop()
        assert not nursery.child_tasks


async def test_an_abandoned_sync_run_keeps_its_slot_until_its_thread_returns(
    api_url: str, client: PrefectClient, caplog: pytest.LogCaptureFixture
) -> None:
    # A thread cannot be cancelled: the run ends CRASHED, its thread goes on,
    # and the limit must go on counting it, or threads pile up past the limit.
    entered, release = threading.Event(), threading.Event()
    started: list[int] = []

    def blocking(n: int) -> int:
        started.append(n)
        entered.set()
        release.wait(60)
        return n

    blocking_task = Task(blocking, key="tw-abandoned-blocking")
    worker = TaskWorker(blocking_task, limit=1, settings=Settings(api_url=api_url))
    first = await blocking_task.enqueue(client, (1,))
    second = await blocking_task.enqueue(client, (2,))
    caplog.set_level(logging.WARNING, logger="trio_worker.task_worker")
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                worker.execute_task_run, await client.read_task_run(first.task_run_id)
            )
            await trio.to_thread.run_sync(entered.wait, 30)
            nursery.cancel_scope.cancel()
        crashed = await wait_state(client, first.task_run_id, StateType.CRASHED)
        assert crashed.state is not None
        assert "cancelled; its thread is still running" in (crashed.state.message or "")
        assert (worker.current_tasks, worker.available_tasks, worker.abandoned_threads) == (1, 0, 1)
        assert "its slot stays taken until the thread returns" in caplog.text
        assert worker_status(worker)["abandoned_threads"] == 1  # what /status says

        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                worker.execute_task_run, await client.read_task_run(second.task_run_id)
            )
            await trio.testing.wait_all_tasks_blocked()
            assert started == [1]  # no second thread beside the abandoned one
            waiting = await client.read_task_run(second.task_run_id)
            assert waiting.state is not None and waiting.state.type is StateType.SCHEDULED
            release.set()  # the first thread returns: its slot goes to the second run
        assert started == [1, 2]
        assert await second.result_async(30, client=client) == 2
        assert (worker.current_tasks, worker.available_tasks, worker.abandoned_threads) == (0, 1, 0)
    finally:
        release.set()


async def test_a_malformed_environment_stops_the_start_not_the_first_run(
    api_url: str, client: PrefectClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default task store is read from the environment, through Settings.

    A worker handed its settings still reads the environment for the store: a
    value Settings refuses (here an unrelated one) must fail the start, loudly,
    before any run is taken; not crash the first run taken and then the worker.
    """
    monkeypatch.setenv("PREFECT_API_URL", api_url)
    handle = await mul.delay_async(2, 3)  # queued: no worker yet
    monkeypatch.setenv("PREFECT_WORKER_QUERY_SECONDS", "soon")
    worker = TaskWorker(mul, settings=Settings(api_url=api_url), client_backoff_seconds=0.05)
    with (
        trio.fail_after(30),
        pytest.raises(ConfigurationError, match="PREFECT_WORKER_QUERY_SECONDS"),
    ):
        await worker.start()
    run = await client.read_task_run(handle.task_run_id)
    assert run.state is not None and run.state.type is StateType.SCHEDULED, run.state
