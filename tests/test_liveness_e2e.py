"""Nothing is ever stuck, end to end: real workers, real SIGKILLs, the embedded API's rules.

The thresholds are set small (3 s) so each scenario takes seconds; the rules
themselves, at their defaults and under a fake clock, are in
``tests/server/test_liveness.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from tests.helpers import clean_env, make_deployment, python_command, wait_for, wait_for_state
from tests.test_task_worker import child_worker, wait_state
from trio_worker._client._client import PrefectClient
from trio_worker._core._models import Event, State, StateType
from trio_worker._core._settings import Settings
from trio_worker._process._worker import ProcessWorker
from trio_worker._taskworker._handles import TaskRunFailedError
from trio_worker._taskworker._tasks import Task
from trio_worker.testing import LivenessRules, open_embedded_api

SMALL = LivenessRules(heartbeat_timeout=3, pending_timeout=3, task_lease=3)
BEAT = "0.3"
FINAL = (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED)


@pytest.fixture
async def small_api(tmp_path: Path) -> AsyncIterator[str]:
    async with open_embedded_api(tmp_path / "api.db", liveness=SMALL) as url:
        yield url


@pytest.fixture
async def client(small_api: str) -> AsyncIterator[PrefectClient]:
    async with PrefectClient(small_api, backoff_seconds=0.05) as opened:
        yield opened


@pytest.fixture(autouse=True)
def task_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIO_WORKER_TASK_STORAGE", str(tmp_path / "store"))


async def _heartbeats(client: PrefectClient, run_id: uuid.UUID) -> list[Event]:
    return await client.read_events(
        {
            "event": {"name": ["prefect.flow-run.heartbeat"]},
            "resource": {"id": [f"prefect.flow-run.{run_id}"]},
        },
        limit=50,
    )


async def test_worker_killed_with_its_runs_leaves_them_crashed(
    small_api: str, client: PrefectClient, tmp_path: Path
) -> None:
    (tmp_path / "flows.py").write_text("import time\n\ndef slow():\n    time.sleep(300)\n")
    pool = f"pool-{uuid.uuid4().hex[:8]}"
    beat_env = {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": BEAT}
    engine_dep = await make_deployment(
        client, pool, name="engine", entrypoint="flows.py:slow", path=str(tmp_path),
        job_variables={"working_dir": str(tmp_path), "env": beat_env},
    )  # fmt: skip
    command_dep = await make_deployment(
        client, pool, name="command",
        job_variables={"command": python_command("import time; time.sleep(300)")},
    )  # fmt: skip
    engine_run = await client.create_flow_run_from_deployment(engine_dep.id)
    command_run = await client.create_flow_run_from_deployment(command_dep.id)
    worker = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trio_worker", "start", "-p", pool, "-n", "doomed"],
        env={
            **clean_env(),
            "PREFECT_API_URL": small_api,
            "PREFECT_WORKER_QUERY_SECONDS": "0.2",
            "PREFECT_WORKER_HEARTBEAT_SECONDS": BEAT,
            "TRIO_WORKER_STATE_DIR": str(tmp_path / "state"),
            **beat_env,
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_for_state(client, engine_run.id, (StateType.RUNNING,))

        async def both_held() -> bool:
            runs = [await client.read_flow_run(r.id) for r in (engine_run, command_run)]
            return all(r.infrastructure_pid for r in runs)

        await wait_for(both_held, what="both runs started")
        # Alive past the 3 s timeout: the engine's heartbeats and the worker's listing keep them.
        await wait_for(
            lambda: _many(client, engine_run.id, 12), what="12 engine heartbeats (3.6 s)"
        )
        for run in (engine_run, command_run):
            now = await client.read_flow_run(run.id)
            assert now.state is not None and not now.state.is_final, now.state
        listing = await _cli(small_api, "flow-run", "ls")
        assert "HELD BY" in listing and listing.count("doomed") == 2, listing
        pids = [
            int(str((await client.read_flow_run(r.id)).infrastructure_pid).rsplit(":", 1)[1])
            for r in (engine_run, command_run)
        ]
        # A lost host: the worker and every run process die at once.
        worker.kill()
        for pid in pids:
            os.killpg(pid, signal.SIGKILL)
    finally:
        if worker.returncode is None:
            worker.kill()
        await worker.wait()
    for run in (engine_run, command_run):
        done = await wait_for_state(client, run.id, FINAL)
        assert done.state is not None and done.state.type is StateType.CRASHED, done.state
        assert "heartbeat" in (done.state.message or "")
        assert "'doomed'" in (done.state.message or "")


async def _cli(api_url: str, *args: str) -> str:
    done = await trio.run_process(
        [sys.executable, "-m", "trio_worker", *args],
        env={**clean_env(), "PREFECT_API_URL": api_url},
        capture_stdout=True,
        capture_stderr=True,
    )
    return done.stdout.decode()


async def _many(client: PrefectClient, run_id: uuid.UUID, count: int) -> bool:
    return len(await _heartbeats(client, run_id)) >= count


async def test_claim_that_never_starts_is_released_and_run_by_a_live_worker(
    small_api: str, client: PrefectClient, tmp_path: Path
) -> None:
    pool = f"pool-{uuid.uuid4().hex[:8]}"
    deployment = await make_deployment(
        client, pool, job_variables={"command": python_command("print('done')")}
    )
    run = await client.create_flow_run_from_deployment(deployment.id)
    # A worker claimed it, listed it once, and died before starting it.
    claimed = await client.set_flow_run_state(run.id, State.of(StateType.PENDING))
    assert claimed.status.value == "ACCEPT"
    await client.send_worker_heartbeat(
        pool, "gone", heartbeat_interval_seconds=0.3, flow_run_ids=[run.id]
    )
    await wait_for_state(client, run.id, (StateType.SCHEDULED,))
    settings = Settings(
        api_url=small_api, query_seconds=0.2, heartbeat_seconds=0.3, prefetch_seconds=0,
        state_dir=str(tmp_path / "state"), webserver_port=0,
    )  # fmt: skip
    live = ProcessWorker(pool, name="alive", settings=settings, client_backoff_seconds=0.05)
    async with live, trio.open_nursery() as nursery:
        nursery.start_soon(lambda: live.start(printer=lambda _line: None))
        done = await wait_for_state(client, run.id, FINAL)
        nursery.cancel_scope.cancel()
    assert done.state is not None and done.state.type is StateType.COMPLETED, done.state
    history = await client.read_flow_run_states(run.id)
    released = [s for s in history if s.type is StateType.SCHEDULED and s.message]
    assert len(released) == 1 and "'gone'" in (released[0].message or "")


async def _hold(n: int, release: str | None = None) -> int:
    raise AssertionError("submit-only twin of the subprocess task")


hold = Task(_hold, key="tw-hold")
hold_idempotent = Task(_hold, key="tw-hold", idempotent=True)


async def test_task_worker_killed_with_three_runs_running(
    small_api: str, client: PrefectClient, tmp_path: Path
) -> None:
    release = str(tmp_path / "go")
    async with child_worker(small_api, tmp_path, "--limit", "3") as first:
        plain = [await hold.enqueue(client, (i, release)) for i in (1, 2)]
        again = await hold_idempotent.enqueue(client, (3, release))
        for handle in (*plain, again):
            await wait_state(client, handle.task_run_id, StateType.RUNNING)

        async def leased() -> bool:
            runs = await client.read_task_runs(limit=10)
            return len([r for r in runs if r.state_type is StateType.RUNNING]) == 3

        await wait_for(leased, what="three runs running")
        listing = await _cli(small_api, "task-run", "ls")
        assert listing.count(f"-{first.process.pid}") == 3, listing
        first.process.send_signal(signal.SIGKILL)
        await first.process.wait()
    # The two plain runs end CRASHED and their callers get the reason, not a timeout.
    for handle in plain:
        with pytest.raises(TaskRunFailedError, match="stopped renewing its lease"):
            await handle.result_async(30, client=client)
    # The idempotent one is delivered again, to the next task worker, and completes.
    await wait_state(client, again.task_run_id, StateType.SCHEDULED)
    Path(release).touch()
    async with child_worker(small_api, tmp_path, "--limit", "3"):
        assert await again.result_async(30, client=client) == 3
    runs = {r.id: r for r in await client.read_task_runs(limit=10)}
    assert runs[again.task_run_id].run_count == 2


async def test_a_run_once_worker_keeps_its_runs_alive_and_cancellable(
    small_api: str, client: PrefectClient, tmp_path: Path
) -> None:
    """``start(run_once=True)`` waits for its runs: meanwhile it must heartbeat and hear cancels.

    A plain command run stays PENDING with its pid; without the worker's
    heartbeat listing it, the API crashes it after the heartbeat timeout
    although it is running fine. And a user's cancellation must still stop a run.
    """
    pool = f"pool-{uuid.uuid4().hex[:8]}"
    long_enough = await make_deployment(
        client, pool, name="steady",
        job_variables={"command": python_command("import time; time.sleep(6)")},
    )  # fmt: skip
    forever = await make_deployment(
        client, pool, name="forever",
        job_variables={"command": python_command("import time; time.sleep(300)")},
    )  # fmt: skip
    steady_run = await client.create_flow_run_from_deployment(long_enough.id)
    cancelled_run = await client.create_flow_run_from_deployment(forever.id)
    settings = Settings(
        api_url=small_api, query_seconds=0.2, heartbeat_seconds=0.5, prefetch_seconds=0,
        state_dir=str(tmp_path / "state"), webserver_port=0,
    )  # fmt: skip
    worker = ProcessWorker(pool, settings=settings, cancel_grace_seconds=1.0)

    async def cancel_when_running() -> None:
        async def started() -> bool:
            run = await client.read_flow_run(cancelled_run.id)
            return bool(run.infrastructure_pid)

        await wait_for(started, what="the run to be cancelled started")
        await client.set_flow_run_state(cancelled_run.id, State.of(StateType.CANCELLING))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_when_running)
            await worker.start(run_once=True, printer=lambda _: None)
    steady = await client.read_flow_run(steady_run.id)
    assert steady.state is not None and steady.state.type is StateType.COMPLETED, steady.state
    cancelled = await client.read_flow_run(cancelled_run.id)
    assert cancelled.state is not None and cancelled.state.type is StateType.CANCELLED
