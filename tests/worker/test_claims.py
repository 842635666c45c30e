"""A worker killed between its claim (PENDING) and its run's process: the restart settles it.

The run record starts before the PENDING proposal (``_process/_claims.py``);
without it such a run stayed PENDING for good.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import trio

from tests.helpers import (
    clean_env,
    make_deployment,
    process_alive,
    python_command,
    wait_for,
    wait_for_state,
)
from tests.proxy import Fault, faulty_proxy
from tests.worker.conftest import WorkerFactory
from trio_worker._client._client import PrefectClient
from trio_worker._core._models import State, StateType
from trio_worker._process._claims import find_run_process
from trio_worker._process._run_records import CLAIMED, EXITED, STARTING, RunRecord, RunRecords

FINAL = (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED)
APPEND_LINE = "import sys; open(sys.argv[1], 'a').write('ran\\n')"


def _hold_deployment_reads(path: str, number: int) -> Fault:
    """Hang every deployment read: a worker that claimed a run never gets to start it."""
    return "hold" if path.startswith("/api/deployments/") else None


async def _pending(client: PrefectClient, run_id: uuid.UUID) -> bool:
    run = await client.read_flow_run(run_id)
    return run.state is not None and run.state.type is StateType.PENDING


async def test_sigkill_between_claim_and_start_reschedules_the_run_to_run_once(
    api_url: str,
    client: PrefectClient,
    running_worker: WorkerFactory,
    pool_name: str,
    state_dir: Path,
    tmp_path: Path,
) -> None:
    marker = tmp_path / "ran"
    deployment = await make_deployment(
        client, pool_name, job_variables={"command": python_command(APPEND_LINE, str(marker))}
    )
    run = await client.create_flow_run_from_deployment(deployment.id)
    env = {
        **clean_env(),
        "PREFECT_WORKER_QUERY_SECONDS": "0.2",
        "TRIO_WORKER_STATE_DIR": str(state_dir),
    }
    argv = [sys.executable, "-m", "trio_worker", "start", "-p", pool_name, "-n", "claimer"]
    async with faulty_proxy(api_url, _hold_deployment_reads) as (_, proxy_url):
        worker = await trio.lowlevel.open_process(
            argv,
            env={**env, "PREFECT_API_URL": proxy_url},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            # Claimed (PENDING, recorded) and stuck reading its deployment: the window.
            await wait_for(lambda: _pending(client, run.id), what="run claimed")
            records = await RunRecords("claimer", state_dir).load()
            assert [(r.flow_run_id, r.phase) for r in records] == [(str(run.id), CLAIMED)]
        finally:
            worker.kill()
            await worker.wait()
    assert not marker.exists()
    async with running_worker(name="claimer"):
        done = await wait_for_state(client, run.id, FINAL)
    assert done.state is not None
    assert done.state.type is StateType.COMPLETED
    assert marker.read_text() == "ran\n"
    history = await client.read_flow_run_states(run.id)
    assert "Rescheduled" in [s.name for s in history]
    assert await RunRecords("claimer", state_dir).load() == []


async def _claim(client: PrefectClient, run_id: uuid.UUID) -> str:
    """Put the run in a PENDING of our own, as a worker's claim does; its transition id."""
    pending = State.of(StateType.PENDING)
    verdict = await client.set_flow_run_state(run_id, pending)
    assert verdict.state is not None
    assert verdict.state.type is StateType.PENDING
    return str(pending.state_details.transition_id)


def _record(run_id: uuid.UUID, phase: str, transition_id: str | None) -> RunRecord:
    return RunRecord(str(run_id), None, None, "2026-01-01T00:00:00+00:00", phase, transition_id)


async def test_restart_crashes_a_run_whose_start_was_cut_short_and_leaves_others_claims(
    client: PrefectClient, running_worker: WorkerFactory, pool_name: str, state_dir: Path
) -> None:
    deployment = await make_deployment(client, pool_name, job_variables={"command": "true"})
    starting = await client.create_flow_run_from_deployment(deployment.id)
    foreign = await client.create_flow_run_from_deployment(deployment.id)
    transition = await _claim(client, starting.id)
    await _claim(client, foreign.id)  # another worker's PENDING: not our transition id
    records = RunRecords("settler", state_dir)
    await records.add(_record(starting.id, STARTING, transition))
    await records.add(_record(foreign.id, CLAIMED, str(uuid.uuid4())))
    async with running_worker(name="settler"):
        done = await wait_for_state(client, starting.id, FINAL)
        await wait_for(
            lambda: _records_gone(state_dir, "settler"), what="the claims settled and dropped"
        )
    assert done.state is not None
    assert done.state.type is StateType.CRASHED
    assert "whether the run ran is unknown" in (done.state.message or "")
    left = await client.read_flow_run(foreign.id)
    assert left.state is not None
    assert left.state.type is StateType.PENDING


async def _found(run_id: uuid.UUID) -> int | None:
    return find_run_process(run_id)


async def _records_gone(state_dir: Path, name: str) -> bool:
    return await RunRecords(name, state_dir).load() == []


async def test_restart_adopts_a_process_started_in_the_window_found_by_its_run_id(
    client: PrefectClient, running_worker: WorkerFactory, pool_name: str, state_dir: Path
) -> None:
    deployment = await make_deployment(client, pool_name, job_variables={"command": "true"})
    run = await client.create_flow_run_from_deployment(deployment.id)
    transition = await _claim(client, run.id)
    # The process the dead worker spawned: its own session, the run's id in its env.
    orphan = await trio.lowlevel.open_process(
        [sys.executable, "-c", "import time; time.sleep(300)"],
        env={**clean_env(), "PREFECT__FLOW_RUN_ID": str(run.id)},
        start_new_session=True,
    )
    try:
        # Its environment is readable once its exec completes (just after the spawn returns).
        found = await wait_for(lambda: _found(run.id), what="the process found by its run id")
        assert found == orphan.pid
        records = RunRecords("finder", state_dir)
        await records.add(_record(run.id, STARTING, transition))
        async with running_worker(name="finder") as worker:
            assert run.id in worker.in_flight
            orphan.kill()
            await orphan.wait()  # reaped: a zombie would still look alive
            done = await wait_for_state(client, run.id, FINAL)
        assert done.state is not None
        assert done.state.type is StateType.CRASHED
        assert "exit status is unknown" in (done.state.message or "")
    finally:
        orphan.kill()
        await orphan.wait()
    assert not process_alive(orphan.pid)


async def test_restart_reports_runs_whose_process_exited_before_the_report(
    client: PrefectClient, running_worker: WorkerFactory, pool_name: str, state_dir: Path
) -> None:
    deployment = await make_deployment(client, pool_name, job_variables={"command": "true"})
    ok = await client.create_flow_run_from_deployment(deployment.id)
    failed = await client.create_flow_run_from_deployment(deployment.id)
    records = RunRecords("reporter", state_dir)
    for run, status in ((ok, 0), (failed, 3)):
        transition = await _claim(client, run.id)
        await records.add(
            RunRecord(
                str(run.id), 2**22 - 5, 1, "2026-01-01T00:00:00+00:00", EXITED, transition, status
            )
        )
    async with running_worker(name="reporter"):
        completed = await wait_for_state(client, ok.id, FINAL)
        crashed = await wait_for_state(client, failed.id, FINAL)
        await wait_for(lambda: _records_gone(state_dir, "reporter"), what="records dropped")
    assert completed.state is not None
    assert completed.state.type is StateType.COMPLETED
    assert "died before reporting" in (completed.state.message or "")
    assert crashed.state is not None
    assert crashed.state.type is StateType.CRASHED
    assert "status code 3" in (crashed.state.message or "")


async def test_a_claim_that_landed_over_a_finished_run_restores_it_instead_of_rescheduling(
    client: PrefectClient, running_worker: WorkerFactory, pool_name: str, state_dir: Path
) -> None:
    # Another worker ran it to COMPLETED; our PENDING, delayed by a busy server, landed
    # after that (the API accepts PENDING over a COMPLETED run), then we were killed.
    deployment = await make_deployment(client, pool_name, job_variables={"command": "true"})
    run = await client.create_flow_run_from_deployment(deployment.id)
    await _claim(client, run.id)
    await client.set_flow_run_state(run.id, State.of(StateType.COMPLETED, "by the other worker"))
    transition = await _claim(client, run.id)
    await RunRecords("late", state_dir).add(_record(run.id, CLAIMED, transition))
    async with running_worker(name="late"):
        done = await wait_for_state(client, run.id, FINAL)
        await wait_for(lambda: _records_gone(state_dir, "late"), what="the claim dropped")
    assert done.state is not None
    assert done.state.type is StateType.COMPLETED
    history = await client.read_flow_run_states(run.id)
    assert "Rescheduled" not in [s.name for s in history]
