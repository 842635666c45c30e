"""The process worker against the embedded API: real HTTP, real subprocesses."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import attrs
import trio

from tests.helpers import make_deployment, process_alive, python_command, wait_for, wait_for_state
from tests.worker.conftest import WorkerFactory, fast_settings
from trio_worker._client._client import PrefectClient
from trio_worker._core._jobs import default_base_job_template
from trio_worker._core._models import State, StateType
from trio_worker._process._config import ProcessJobConfiguration, ProcessVariables
from trio_worker._process._worker import ProcessWorker

FINAL = (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED)


async def test_run_completes_through_the_engine_with_its_parameters(
    client: PrefectClient, running_worker: WorkerFactory, pool_name: str, tmp_path: Path
) -> None:
    (tmp_path / "flows.py").write_text(
        textwrap.dedent(
            """
            import pathlib

            def greet(name, times=1):
                pathlib.Path("greeting.txt").write_text(f"hello {name} x{times}")
            """
        )
    )
    async with running_worker():
        deployment = await make_deployment(
            client,
            pool_name,
            entrypoint="flows.py:greet",
            path=str(tmp_path),
            parameters={"name": "dep"},
            job_variables={"working_dir": str(tmp_path)},
        )
        run = await client.create_flow_run_from_deployment(deployment.id, parameters={"times": 3})
        done = await wait_for_state(client, run.id, FINAL)
    assert done.state is not None and done.state.type is StateType.COMPLETED, done.state
    assert (tmp_path / "greeting.txt").read_text() == "hello dep x3"


async def test_non_zero_exit_is_crashed_with_the_code(
    client: PrefectClient, running_worker: WorkerFactory, pool_name: str
) -> None:
    async with running_worker():
        deployment = await make_deployment(
            client, pool_name, job_variables={"command": python_command("raise SystemExit(3)")}
        )
        run = await client.create_flow_run_from_deployment(deployment.id)
        done = await wait_for_state(client, run.id, FINAL)
    assert done.state is not None and done.state.type is StateType.CRASHED
    assert "status code 3" in (done.state.message or "")


async def test_quoted_arguments_survive(
    client: PrefectClient, running_worker: WorkerFactory, pool_name: str, tmp_path: Path
) -> None:
    code = (
        "import sys, json, pathlib; pathlib.Path('argv.json').write_text(json.dumps(sys.argv[1:]))"
    )
    async with running_worker():
        deployment = await make_deployment(
            client,
            pool_name,
            job_variables={
                "command": python_command(code, "a b", "c d", "e"),
                "working_dir": str(tmp_path),
            },
        )
        run = await client.create_flow_run_from_deployment(deployment.id)
        done = await wait_for_state(client, run.id, FINAL)
    assert json.loads((tmp_path / "argv.json").read_text()) == ["a b", "c d", "e"]
    # A plain command that exits 0 without reporting a state is marked completed.
    assert done.state is not None and done.state.type is StateType.COMPLETED
    assert "without reporting a final state" in (done.state.message or "")


async def test_missing_command_and_working_dir_are_crashes_with_reasons(
    client: PrefectClient, running_worker: WorkerFactory, pool_name: str, tmp_path: Path
) -> None:
    async with running_worker():
        missing_cmd = await make_deployment(
            client, pool_name, name="a", job_variables={"command": "no-such-command-xyz --flag"}
        )
        missing_dir = await make_deployment(
            client,
            pool_name,
            name="b",
            job_variables={"command": "true", "working_dir": str(tmp_path / "nope")},
        )
        run_a = await client.create_flow_run_from_deployment(missing_cmd.id)
        run_b = await client.create_flow_run_from_deployment(missing_dir.id)
        done_a = await wait_for_state(client, run_a.id, FINAL)
        done_b = await wait_for_state(client, run_b.id, FINAL)
    assert done_a.state is not None and done_a.state.type is StateType.CRASHED
    assert "no-such-command-xyz" in (done_a.state.message or "")
    assert done_b.state is not None and done_b.state.type is StateType.CRASHED
    assert str(tmp_path / "nope") in (done_b.state.message or "")


async def test_limit_caps_concurrent_processes(
    client: PrefectClient, running_worker: WorkerFactory, pool_name: str, tmp_path: Path
) -> None:
    code = textwrap.dedent(
        """
        import os, sys, time, pathlib
        log = pathlib.Path(sys.argv[1])
        with log.open("a") as f: f.write(f"start {time.monotonic()}\\n")
        time.sleep(0.3)
        with log.open("a") as f: f.write(f"end {time.monotonic()}\\n")
        """
    )
    log = tmp_path / "events.log"
    deployment = await make_deployment(
        client, pool_name, job_variables={"command": python_command(code, str(log))}
    )
    runs = [await client.create_flow_run_from_deployment(deployment.id) for _ in range(10)]
    async with running_worker(limit=3):
        for run in runs:
            await wait_for_state(client, run.id, FINAL)
    events = sorted(
        (float(stamp), kind)
        for kind, stamp in (line.split() for line in log.read_text().splitlines())
    )
    alive = peak = 0
    for _, kind in events:
        alive += 1 if kind == "start" else -1
        peak = max(peak, alive)
    assert len(events) == 20
    assert peak <= 3
    assert peak >= 2  # the limit was actually used, not serialised


async def test_two_workers_never_start_the_same_run(
    client: PrefectClient, running_worker: WorkerFactory, pool_name: str, tmp_path: Path
) -> None:
    code = (
        "import os, sys, pathlib; "
        "pathlib.Path(sys.argv[1], os.environ['PREFECT__FLOW_RUN_ID']).open('a').write('x')"
    )
    marks = tmp_path / "marks"
    marks.mkdir()
    deployment = await make_deployment(
        client, pool_name, job_variables={"command": python_command(code, str(marks))}
    )
    runs = [await client.create_flow_run_from_deployment(deployment.id) for _ in range(20)]
    async with running_worker(name="first"), running_worker(name="second"):
        for run in runs:
            await wait_for_state(client, run.id, FINAL)
    for run in runs:
        assert (marks / str(run.id)).read_text() == "x"


async def test_run_once_returns_after_its_runs_end(
    api_url: str, client: PrefectClient, pool_name: str, state_dir: Path
) -> None:
    from tests.worker.conftest import fast_settings

    deployment = await make_deployment(
        client, pool_name, job_variables={"command": python_command("import time; time.sleep(0.2)")}
    )
    runs = [await client.create_flow_run_from_deployment(deployment.id) for _ in range(3)]
    lines: list[str] = []
    async with ProcessWorker(pool_name, settings=fast_settings(api_url, state_dir)) as worker:
        with trio.fail_after(30):
            await worker.start(run_once=True, printer=lines.append)
    assert lines == [f"Worker {worker.name!r} started!"]
    for run in runs:
        done = await client.read_flow_run(run.id)
        assert done.state is not None and done.state.type is StateType.COMPLETED


async def test_cancelling_a_run_kills_its_group_and_ends_cancelled(
    client: PrefectClient, running_worker: WorkerFactory, pool_name: str, tmp_path: Path
) -> None:
    # The child ignores SIGTERM and has a grandchild that ignores it too:
    # both must be gone after the grace period.
    code = textwrap.dedent(
        """
        import signal, subprocess, sys, time, pathlib
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"])
        pathlib.Path(sys.argv[1]).write_text(f"{child.pid}")
        time.sleep(300)
        """
    )
    pid_file = tmp_path / "grandchild.pid"
    async with running_worker(cancel_grace_seconds=0.5) as worker:
        deployment = await make_deployment(
            client, pool_name, job_variables={"command": python_command(code, str(pid_file))}
        )
        run = await client.create_flow_run_from_deployment(deployment.id)
        running = await wait_for(
            lambda: _pid_recorded(client, run.id), what="infrastructure_pid recorded"
        )
        await wait_for(lambda: _file_exists(pid_file), what="grandchild started")
        grandchild = int(pid_file.read_text())
        leader = int(running.split(":")[-1])
        assert process_alive(grandchild) and process_alive(leader)
        verdict = await client.set_flow_run_state(run.id, State.of(StateType.CANCELLING))
        assert verdict.state is not None
        done = await wait_for_state(client, run.id, FINAL)
        assert not worker.in_flight
    assert done.state is not None and done.state.type is StateType.CANCELLED
    assert not process_alive(leader)
    assert not process_alive(grandchild)


async def _pid_recorded(client: PrefectClient, run_id: object) -> str | None:
    run = await client.read_flow_run(run_id)  # type: ignore[arg-type]
    return run.infrastructure_pid


async def _file_exists(path: Path) -> bool:
    return path.exists() and bool(path.read_text())


async def test_new_pool_gets_exactly_the_default_template(
    client: PrefectClient, running_worker: WorkerFactory, pool_name: str
) -> None:
    async with running_worker():
        pool = await client.read_work_pool(pool_name)
    expected = json.loads(
        (Path(__file__).parents[1] / "data" / "process-base-job-template.json").read_text()
    )
    assert pool.type == "process"
    assert pool.base_job_template == expected
    assert default_base_job_template(ProcessJobConfiguration, ProcessVariables) == expected


async def test_paused_pool_runs_nothing_until_resumed(
    client: PrefectClient, running_worker: WorkerFactory, pool_name: str
) -> None:
    await client.create_work_pool(pool_name, type="process", is_paused=True)
    deployment = await make_deployment(client, pool_name, job_variables={"command": "true"})
    run = await client.create_flow_run_from_deployment(deployment.id)
    async with running_worker() as worker:
        # Several polls happen while paused; the run stays scheduled.
        polled = worker.last_polled
        await wait_for(
            lambda: _later(worker.last_polled, polled, 3), what="three polls while paused"
        )
        still = await client.read_flow_run(run.id)
        assert still.state is not None and still.state.type is StateType.SCHEDULED
        await client.update_work_pool(pool_name, is_paused=False)
        done = await wait_for_state(client, run.id, FINAL)
    assert done.state is not None and done.state.type is StateType.COMPLETED


async def _later(now: float | None, before: float | None, _: int) -> bool:
    return now is not None and (before is None or now > before + 0.5)


async def test_queue_filter_serves_only_named_queues(
    client: PrefectClient, running_worker: WorkerFactory, pool_name: str
) -> None:
    await client.create_work_pool(pool_name, type="process")
    await client.create_work_queue(pool_name, "fast")
    await client.create_work_queue(pool_name, "slow")
    fast = await make_deployment(
        client, pool_name, name="fast", work_queue_name="fast", job_variables={"command": "true"}
    )
    slow = await make_deployment(
        client, pool_name, name="slow", work_queue_name="slow", job_variables={"command": "true"}
    )
    slow_run = await client.create_flow_run_from_deployment(slow.id)
    fast_run = await client.create_flow_run_from_deployment(fast.id)
    async with running_worker(work_queues=["fast"]):
        await wait_for_state(client, fast_run.id, FINAL)
    still = await client.read_flow_run(slow_run.id)
    assert still.state is not None and still.state.type is StateType.SCHEDULED


async def test_heartbeat_makes_the_worker_online(
    client: PrefectClient, running_worker: WorkerFactory, pool_name: str
) -> None:
    async with running_worker(name="beating"):
        workers = await client.read_workers(pool_name)
    assert [(w.name, w.status) for w in workers] == [("beating", "ONLINE")]


async def test_a_backlog_is_polled_again_as_slots_free_not_after_the_interval(
    api_url: str,
    client: PrefectClient,
    pool_name: str,
    running_worker: WorkerFactory,
    state_dir: Path,
) -> None:
    # An hour between polls: without a backlog-aware poll only the first two
    # of these six runs would start within the test.
    deployment = await make_deployment(client, pool_name, job_variables={"command": "true"})
    runs = [await client.create_flow_run_from_deployment(deployment.id) for _ in range(6)]
    settings = attrs.evolve(fast_settings(api_url, state_dir), query_seconds=3600.0)
    async with running_worker(limit=2, settings=settings):
        for run in runs:
            done = await wait_for_state(client, run.id, FINAL)
            assert done.state is not None
            assert done.state.type is StateType.COMPLETED
