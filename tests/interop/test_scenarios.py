"""Interop scenarios: the same code against the embedded API and a real Prefect server.

Each scenario drives ``trio-worker start`` as a user would; ``nox -s prefect``
runs them against Prefect 3 (``-m prefect --api=URL``), ``nox -s tests`` against
the embedded API.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
import trio

from tests.helpers import make_deployment, process_alive, python_command, wait_for, wait_for_state
from tests.interop.conftest import PREFECT_INSTALLED, Cli, WorkerFactory
from trio_worker._client._client import PrefectClient
from trio_worker._core._models import StateType

pytestmark = pytest.mark.prefect

FINAL = (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED)
TEMPLATE = Path(__file__).parent.parent / "data" / "process-base-job-template.json"


def prefect_default_template() -> dict[str, object]:
    """Prefect's own ProcessWorker template: from Prefect when installed, else the saved copy."""
    if PREFECT_INSTALLED:
        from prefect.workers.process import ProcessWorker

        return dict(ProcessWorker.get_default_base_job_template())
    return dict(json.loads(TEMPLATE.read_text()))


async def create_pool_as_prefect_would(cli: Cli, client: PrefectClient, name: str) -> None:
    """``prefect work-pool create --type process`` where Prefect is installed, else the same
    pool (Prefect's default template) through the client."""
    if PREFECT_INSTALLED:
        await cli("work-pool", "create", name, "--type", "process")
    else:
        await client.create_work_pool(
            name, type="process", base_job_template=prefect_default_template()
        )


async def final(client: PrefectClient, run_id: object, timeout: float = 60) -> StateType:
    done = await wait_for_state(client, run_id, FINAL, timeout=timeout)  # type: ignore[arg-type]
    assert done.state is not None
    return done.state.type


async def test_prefect_created_pool_runs_a_plain_function_through_the_engine(
    cli: Cli, client: PrefectClient, start_worker: WorkerFactory, pool_name: str, tmp_path: Path
) -> None:
    await create_pool_as_prefect_would(cli, client, pool_name)
    (tmp_path / "plain_flows.py").write_text(
        textwrap.dedent(
            """
            import logging, pathlib

            def greet(name, times=1):
                logging.getLogger("plain").info("greeting %s", name)
                pathlib.Path("greeting.txt").write_text(f"hello {name} x{times}")
                return name
            """
        )
    )
    deployment = await make_deployment(
        client,
        pool_name,
        name=pool_name,
        flow_name="plain-greet",
        entrypoint="plain_flows.py:greet",
        path=str(tmp_path),
        parameters={"name": "dep"},
        job_variables={"working_dir": str(tmp_path)},
    )
    async with start_worker():
        run = await client.create_flow_run_from_deployment(deployment.id, parameters={"times": 3})
        assert await final(client, run.id) is StateType.COMPLETED
    assert (tmp_path / "greeting.txt").read_text() == "hello dep x3"
    pool = await client.read_work_pool(pool_name)
    assert pool.base_job_template == prefect_default_template()

    async def logged() -> bool:
        return any("greeting dep" in log.message for log in await client.read_logs(run.id))

    await wait_for(logged, what="the flow's log line through the API")


async def test_trio_worker_pool_has_prefects_base_job_template(
    cli: Cli, client: PrefectClient, env: dict[str, str], pool_name: str, tmp_path: Path
) -> None:
    done = await trio.run_process(
        [
            sys.executable,
            "-m",
            "trio_worker",
            "work-pool",
            "create",
            pool_name,
            "--type",
            "process",
        ],
        env={**env, "PATH": os.environ["PATH"]},
        cwd=tmp_path,
        capture_stdout=True,
        capture_stderr=True,
    )
    assert done.returncode == 0
    pool = await client.read_work_pool(pool_name)
    assert pool.type == "process"
    assert pool.base_job_template == prefect_default_template()
    # Prefect's own CLI reads it back (or ours, without Prefect).
    shown = await cli("work-pool", "inspect", pool_name)
    assert pool_name in shown.output


async def test_non_zero_exit_is_crashed(
    client: PrefectClient, start_worker: WorkerFactory, pool_name: str
) -> None:
    deployment = await make_deployment(
        client,
        pool_name,
        name=pool_name,
        job_variables={"command": python_command("raise SystemExit(3)")},
    )
    async with start_worker():
        run = await client.create_flow_run_from_deployment(deployment.id)
        done = await wait_for_state(client, run.id, FINAL, timeout=60)
    assert done.state is not None and done.state.type is StateType.CRASHED
    assert "status code 3" in (done.state.message or "")


async def test_cancel_from_the_cli_kills_the_process_group(
    cli: Cli, client: PrefectClient, start_worker: WorkerFactory, pool_name: str, tmp_path: Path
) -> None:
    code = textwrap.dedent(
        """
        import os, signal, subprocess, sys, time, pathlib
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        pathlib.Path(sys.argv[1]).write_text(f"{os.getpid()} {child.pid}")
        time.sleep(300)
        """
    )
    pids = tmp_path / "pids"
    deployment = await make_deployment(
        client,
        pool_name,
        name=pool_name,
        job_variables={"command": python_command(code, str(pids))},
    )
    async with start_worker():
        run = await client.create_flow_run_from_deployment(deployment.id)

        async def started() -> bool:
            return pids.exists() and len(pids.read_text().split()) == 2

        await wait_for(started, timeout=60, what="the run's processes")
        await cli("flow-run", "cancel", str(run.id))
        done = await wait_for_state(client, run.id, FINAL, timeout=60)
        assert done.state is not None and done.state.type is StateType.CANCELLED, done.state
        leader, grandchild = (int(p) for p in pids.read_text().split())

        async def gone() -> bool:
            return not process_alive(leader) and not process_alive(grandchild)

        await wait_for(gone, timeout=10, what="the run's process group to be gone")


async def test_limit_caps_concurrent_runs(
    client: PrefectClient, start_worker: WorkerFactory, pool_name: str, tmp_path: Path
) -> None:
    code = textwrap.dedent(
        """
        import sys, time, pathlib
        log = pathlib.Path(sys.argv[1])
        with log.open("a") as f: f.write(f"start {time.time()}\\n")
        time.sleep(1.0)
        with log.open("a") as f: f.write(f"end {time.time()}\\n")
        """
    )
    log = tmp_path / "events.log"
    deployment = await make_deployment(
        client, pool_name, name=pool_name, job_variables={"command": python_command(code, str(log))}
    )
    runs = [await client.create_flow_run_from_deployment(deployment.id) for _ in range(4)]
    async with start_worker("--limit", "2"):
        for run in runs:
            assert await final(client, run.id) is StateType.COMPLETED
    events = sorted(
        (float(stamp), kind)
        for kind, stamp in (line.split() for line in log.read_text().splitlines())
    )
    alive = peak = 0
    for _, kind in events:
        alive += 1 if kind == "start" else -1
        peak = max(peak, alive)
    assert len(events) == 8
    assert peak == 2


async def test_queue_filter_serves_only_its_queue(
    client: PrefectClient, start_worker: WorkerFactory, pool_name: str
) -> None:
    await client.create_work_pool(pool_name, type="process")
    await client.create_work_queue(pool_name, "served")
    await client.create_work_queue(pool_name, "other")
    command = {"command": python_command("pass")}
    served = await make_deployment(
        client, pool_name, name=f"{pool_name}-a", job_variables=command, work_queue_name="served"
    )
    other = await make_deployment(
        client, pool_name, name=f"{pool_name}-b", job_variables=command, work_queue_name="other"
    )
    skipped = await client.create_flow_run_from_deployment(other.id)
    async with start_worker("--work-queue", "served"):
        run = await client.create_flow_run_from_deployment(served.id)
        assert await final(client, run.id) is StateType.COMPLETED
        await trio.sleep(1.5)  # three more polls
    left = await client.read_flow_run(skipped.id)
    assert left.state is not None and left.state.type is StateType.SCHEDULED


async def test_run_once_runs_what_is_due_and_exits(
    client: PrefectClient, env: dict[str, str], pool_name: str, tmp_path: Path
) -> None:
    deployment = await make_deployment(
        client,
        pool_name,
        name=pool_name,
        job_variables={"command": python_command("import time; time.sleep(0.5)")},
    )
    runs = [await client.create_flow_run_from_deployment(deployment.id) for _ in range(2)]
    with trio.fail_after(120):
        done = await trio.run_process(
            [sys.executable, "-m", "trio_worker", "start", "--pool", pool_name, "--run-once"],
            env={**env, "PATH": os.environ["PATH"]},
            cwd=tmp_path,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode()
    for run in runs:
        read = await client.read_flow_run(run.id)
        assert read.state is not None and read.state.type is StateType.COMPLETED


async def test_paused_pool_gets_no_runs_until_resumed(
    cli: Cli, client: PrefectClient, start_worker: WorkerFactory, pool_name: str
) -> None:
    await create_pool_as_prefect_would(cli, client, pool_name)
    deployment = await make_deployment(
        client, pool_name, name=pool_name, job_variables={"command": python_command("pass")}
    )
    await cli("work-pool", "pause", pool_name)
    async with start_worker():
        run = await client.create_flow_run_from_deployment(deployment.id)
        await trio.sleep(2.0)  # four polls
        read = await client.read_flow_run(run.id)
        assert read.state is not None and read.state.type is StateType.SCHEDULED
        await cli("work-pool", "resume", pool_name)
        assert await final(client, run.id) is StateType.COMPLETED


async def test_worker_is_online_and_its_events_are_visible(
    client: PrefectClient, start_worker: WorkerFactory, pool_name: str
) -> None:
    async with start_worker() as worker:

        async def online() -> bool:
            workers = await client.read_workers(pool_name)
            return any(w.name == worker.name and w.status == "ONLINE" for w in workers)

        await wait_for(online, timeout=30, what="the worker ONLINE in the pool's worker list")
        resource_id = f"prefect.worker.process.{worker.name}"

        async def started_event() -> bool:
            events = await client.read_events(
                {"event": {"name": ["prefect.worker.started"]}, "resource": {"id": [resource_id]}}
            )
            return bool(events)

        await wait_for(started_event, timeout=30, what="the worker's started event")
