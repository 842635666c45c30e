"""Running the worker in production: limits, health, metrics, events, logs, reconciliation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import (
    clean_env,
    make_deployment,
    process_alive,
    python_command,
    wait_for,
    wait_for_state,
)
from tests.worker.conftest import WorkerFactory, fast_settings
from trio_worker._client._client import PrefectClient
from trio_worker._core._models import State, StateType
from trio_worker._process._group import process_start_time
from trio_worker._process._run_records import RunRecord, RunRecords

FINAL = (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED)
SLEEP_FOREVER = python_command("import time; time.sleep(300)")


async def test_timeout_seconds_crashes_the_run_with_the_reason(
    client: PrefectClient, running_worker: WorkerFactory, pool_name: str
) -> None:
    async with running_worker():
        deployment = await make_deployment(
            client, pool_name, job_variables={"command": SLEEP_FOREVER, "timeout_seconds": 0.5}
        )
        run = await client.create_flow_run_from_deployment(deployment.id)
        done = await wait_for_state(client, run.id, FINAL)
    assert done.state is not None
    assert done.state.type is StateType.CRASHED
    assert "timed out after 0.5 s" in (done.state.message or "")


async def test_memory_limit_is_enforced_and_reported(
    client: PrefectClient, running_worker: WorkerFactory, pool_name: str
) -> None:
    hog = python_command("x = bytearray(512 * 1024 * 1024)")
    async with running_worker():
        deployment = await make_deployment(
            client, pool_name, job_variables={"command": hog, "memory_limit_mb": 200}
        )
        run = await client.create_flow_run_from_deployment(deployment.id)
        done = await wait_for_state(client, run.id, FINAL)
    assert done.state is not None
    assert done.state.type is StateType.CRASHED
    assert "memory limit of 200 MB" in (done.state.message or "")


async def test_memory_limit_holds_for_a_command_that_allocates_at_once(
    client: PrefectClient, running_worker: WorkerFactory, pool_name: str
) -> None:
    # dd allocates its 600 MB buffer in its first instructions: a cap set from
    # the parent after the spawn came too late for it.
    dd = "dd if=/dev/zero of=/dev/null bs=600M count=1"
    async with running_worker():
        deployment = await make_deployment(
            client, pool_name, job_variables={"command": dd, "memory_limit_mb": 100}
        )
        run = await client.create_flow_run_from_deployment(deployment.id)
        done = await wait_for_state(client, run.id, FINAL)
    assert done.state is not None
    assert done.state.type is StateType.CRASHED
    assert "memory limit of 100 MB" in (done.state.message or "")


async def test_absurd_memory_limits_crash_with_a_plain_message(
    client: PrefectClient, running_worker: WorkerFactory, pool_name: str
) -> None:
    values: list[object] = [1e30, -1, 0, "lots"]
    async with running_worker():
        runs = []
        for index, value in enumerate(values):
            deployment = await make_deployment(
                client,
                pool_name,
                name=f"absurd-{index}",
                job_variables={"command": "true", "memory_limit_mb": value},
            )
            runs.append(await client.create_flow_run_from_deployment(deployment.id))
        finals = [await wait_for_state(client, run.id, FINAL) for run in runs]
    for value, done in zip(values, finals, strict=True):
        assert done.state is not None
        assert done.state.type is StateType.CRASHED
        assert (
            f"job variable memory_limit_mb={value!r} must be a number of MB from 1 to 1073741824"
            in (done.state.message or "")
        )


async def test_bad_limit_value_crashes_only_that_run(
    client: PrefectClient, running_worker: WorkerFactory, pool_name: str
) -> None:
    async with running_worker():
        bad = await make_deployment(
            client, pool_name, name="bad", job_variables={"command": "true", "timeout_seconds": "x"}
        )
        good = await make_deployment(
            client, pool_name, name="good", job_variables={"command": "true"}
        )
        bad_run = await client.create_flow_run_from_deployment(bad.id)
        good_run = await client.create_flow_run_from_deployment(good.id)
        bad_done = await wait_for_state(client, bad_run.id, FINAL)
        good_done = await wait_for_state(client, good_run.id, FINAL)
    assert bad_done.state is not None
    assert bad_done.state.type is StateType.CRASHED
    assert "timeout_seconds" in (bad_done.state.message or "")
    assert good_done.state is not None
    assert good_done.state.type is StateType.COMPLETED


async def test_health_ready_status_and_metrics(
    client: PrefectClient, running_worker: WorkerFactory, pool_name: str
) -> None:
    async with running_worker(with_healthcheck=True) as worker:
        base = worker.health_urls[0]
        deployment = await make_deployment(
            client, pool_name, job_variables={"command": python_command("raise SystemExit(2)")}
        )
        ok = await make_deployment(client, pool_name, name="ok", job_variables={"command": "true"})
        crashed = await client.create_flow_run_from_deployment(deployment.id)
        completed = await client.create_flow_run_from_deployment(ok.id)
        await wait_for_state(client, crashed.id, FINAL)
        await wait_for_state(client, completed.id, FINAL)
        await wait_for(lambda: _no_runs(worker), what="runs released")
        async with httpx.AsyncClient(base_url=base) as http:
            health = await http.get("/health")
            ready = await http.get("/ready")
            status = (await http.get("/status")).json()
            metrics_text = (await http.get("/metrics")).text
            # The poll loop stops (not a drain): /health must turn 503 once 30
            # query intervals pass.
            worker.loops.stop_polling()
            worker.query_seconds = 0.02

            async def unhealthy() -> bool:
                return (await http.get("/health")).status_code == 503

            await wait_for(unhealthy, what="/health 503 after polling stopped")
            body = (await http.get("/health")).json()
    assert health.status_code == 200
    assert health.json() == {"message": "OK"}
    assert ready.status_code == 200
    assert status["name"] == worker.name
    assert status["runs_in_flight"] == []
    assert body == {"message": "Worker may be unresponsive at this time"}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics_text)
        for s in family.samples
    }
    assert samples[("trio_worker_flow_runs_submitted_total", ())] == 2
    assert samples[("trio_worker_flow_runs_finished_total", (("outcome", "crashed"),))] == 1
    assert samples[("trio_worker_flow_runs_finished_total", (("outcome", "completed"),))] == 1
    assert samples[("trio_worker_flow_runs_in_flight", ())] == 0


async def test_health_stays_ok_while_a_drain_lets_runs_finish(
    running_worker: WorkerFactory,
) -> None:
    """A drain stops polling on purpose; /health must not call the worker unresponsive.

    A drain longer than 30 query intervals (5 minutes by default) would
    otherwise have a liveness probe kill the worker, and its runs, mid-drain.
    """
    async with httpx.AsyncClient() as http, running_worker(with_healthcheck=True) as worker:
        worker.stop_polling()  # a drain's first step
        worker.loops.poller.last_polled = time.monotonic() - 3600  # long since
        health = await http.get(f"{worker.health_urls[0]}/health")
    assert health.status_code == 200, health.text


async def _no_runs(worker: object) -> bool:
    return not worker.in_flight  # type: ignore[attr-defined]


async def test_ready_is_503_until_the_pool_is_known(api_url: str, state_dir: Path) -> None:
    from trio_worker._process._worker import ProcessWorker

    worker = ProcessWorker(
        "never-created",
        settings=fast_settings(api_url, state_dir),
        create_pool_if_not_found=False,
    )
    async with worker, trio.open_nursery() as nursery:
        nursery.start_soon(lambda: worker.start(with_healthcheck=True, printer=lambda _: None))
        await wait_for(lambda: _has_urls(worker), what="health server up")
        async with httpx.AsyncClient(base_url=worker.health_urls[0]) as http:
            ready = await http.get("/ready")
        nursery.cancel_scope.cancel()
    assert ready.status_code == 503
    assert "never-created" in ready.json()["message"]


async def _has_urls(worker: object) -> bool:
    return bool(worker.health_urls)  # type: ignore[attr-defined]


async def test_events_reach_the_api_with_related_resources(
    client: PrefectClient, running_worker: WorkerFactory, pool_name: str
) -> None:
    async with running_worker(name="eventful"):
        deployment = await make_deployment(client, pool_name, job_variables={"command": "true"})
        run = await client.create_flow_run_from_deployment(deployment.id)
        await wait_for_state(client, run.id, FINAL)

        async def executed() -> list[object]:
            events = await client.read_events({"event": {"prefix": ["prefect.worker."]}}, limit=50)
            names = {e.event for e in events}
            return events if "prefect.worker.executed-flow-run" in names else []

        events = await wait_for(executed, what="executed-flow-run event")
    by_name = {e.event: e for e in events}  # type: ignore[attr-defined]
    assert "prefect.worker.started" in by_name
    submitted = by_name["prefect.worker.submitted-flow-run"]
    assert submitted.resource["prefect.resource.id"] == "prefect.worker.process.eventful"
    related = {r["prefect.resource.role"]: r["prefect.resource.id"] for r in submitted.related}
    assert related["flow-run"] == f"prefect.flow-run.{run.id}"
    assert related["deployment"] == f"prefect.deployment.{deployment.id}"
    assert related["work-pool"].startswith("prefect.work-pool.")
    assert by_name["prefect.worker.executed-flow-run"].follows == submitted.id


async def test_run_logs_are_shipped_and_readable_from_the_cli(
    api_url: str, client: PrefectClient, running_worker: WorkerFactory, pool_name: str
) -> None:
    async with running_worker(name="logger"):
        deployment = await make_deployment(
            client, pool_name, job_variables={"command": python_command("raise SystemExit(4)")}
        )
        run = await client.create_flow_run_from_deployment(deployment.id)
        await wait_for_state(client, run.id, FINAL)

        async def crash_logged() -> bool:
            logs = await client.read_logs(run.id)
            return any("status code 4" in log.message for log in logs)

        await wait_for(crash_logged, what="crash log line shipped")
    result = await trio.run_process(
        [sys.executable, "-m", "trio_worker", "flow-run", "logs", str(run.id)],
        env={**clean_env(), "PREFECT_API_URL": api_url},
        capture_stdout=True,
        capture_stderr=True,
    )
    out = result.stdout.decode()
    assert "submitting flow run" in out
    assert "status code 4" in out


def _worker_command(pool: str, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "trio_worker", "start", "-p", pool, "-n", name, *extra]


def _worker_env(api_url: str, state_dir: Path) -> dict[str, str]:
    return {
        **clean_env(),
        "PREFECT_API_URL": api_url,
        "PREFECT_WORKER_QUERY_SECONDS": "0.2",
        "TRIO_WORKER_STATE_DIR": str(state_dir),
    }


async def test_sigterm_drains_then_crashes_runs_and_leaves_no_process(
    api_url: str, client: PrefectClient, pool_name: str, state_dir: Path, tmp_path: Path
) -> None:
    stubborn = textwrap.dedent(
        """
        import signal, subprocess, sys, time, pathlib
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"])
        pathlib.Path(sys.argv[1]).write_text(f"{child.pid}")
        time.sleep(300)
        """
    )
    grandchild_file = tmp_path / "grandchild.pid"
    plain = await make_deployment(client, pool_name, job_variables={"command": SLEEP_FOREVER})
    tough = await make_deployment(
        client,
        pool_name,
        name="tough",
        job_variables={"command": python_command(stubborn, str(grandchild_file))},
    )
    runs = [
        await client.create_flow_run_from_deployment(plain.id),
        await client.create_flow_run_from_deployment(plain.id),
        await client.create_flow_run_from_deployment(tough.id),
    ]
    process = await trio.lowlevel.open_process(
        _worker_command(
            pool_name, "drainer", "--drain-timeout", "1", "--cancel-grace-seconds", "1"
        ),
        env=_worker_env(api_url, state_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    leaders = []
    for run in runs:
        running = await wait_for(lambda r=run: _pid_of(client, r.id), what="run started")
        leaders.append(int(running.rsplit(":", 1)[1]))
    await wait_for(lambda: _nonempty(grandchild_file), what="grandchild started")
    grandchild = int(grandchild_file.read_text())
    process.send_signal(signal.SIGTERM)
    with trio.fail_after(1 + 1 + 8):  # drain + grace + margin
        code = await process.wait()
    assert code == 0
    for pid in [*leaders, grandchild]:
        assert not process_alive(pid), pid
    for run in runs:
        done = await client.read_flow_run(run.id)
        assert done.state is not None
        assert done.state.type is StateType.CRASHED
        assert "'drainer' shut down before the run finished" in (done.state.message or "")


async def test_second_signal_cuts_the_drain_short(
    api_url: str, client: PrefectClient, pool_name: str, state_dir: Path
) -> None:
    deployment = await make_deployment(client, pool_name, job_variables={"command": SLEEP_FOREVER})
    run = await client.create_flow_run_from_deployment(deployment.id)
    process = await trio.lowlevel.open_process(
        _worker_command(
            pool_name, "impatient", "--drain-timeout", "120", "--cancel-grace-seconds", "1"
        ),
        env=_worker_env(api_url, state_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    running = await wait_for(lambda: _pid_of(client, run.id), what="run started")
    process.send_signal(signal.SIGTERM)
    # The first signal only stops polling; the run goes on.
    await wait_for(lambda: _still_running(client, run.id), what="run still going after 1st signal")
    process.send_signal(signal.SIGINT)
    with trio.fail_after(10):
        await process.wait()
    assert not process_alive(int(running.rsplit(":", 1)[1]))
    done = await client.read_flow_run(run.id)
    assert done.state is not None
    assert done.state.type is StateType.CRASHED


async def _pid_of(client: PrefectClient, run_id: object) -> str | None:
    return (await client.read_flow_run(run_id)).infrastructure_pid  # type: ignore[arg-type]


async def _still_running(client: PrefectClient, run_id: object) -> bool:
    run = await client.read_flow_run(run_id)  # type: ignore[arg-type]
    return run.state is not None and not run.state.is_final


async def _nonempty(path: Path) -> bool:
    return path.exists() and bool(path.read_text())


async def _kill_worker_leaving_run(
    api_url: str, client: PrefectClient, pool: str, state_dir: Path, name: str
) -> tuple[object, int]:
    """Start a CLI worker, let it start a long run, SIGKILL the worker: the run lives on."""
    deployment = await make_deployment(client, pool, job_variables={"command": SLEEP_FOREVER})
    run = await client.create_flow_run_from_deployment(deployment.id)
    process = await trio.lowlevel.open_process(
        _worker_command(pool, name),
        env=_worker_env(api_url, state_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    running = await wait_for(lambda: _pid_of(client, run.id), what="run started")
    records = RunRecords(name, state_dir)
    await wait_for(records.load, what="run recorded")
    process.kill()
    await process.wait()
    pid = int(running.rsplit(":", 1)[1])
    assert process_alive(pid)
    return run.id, pid


async def test_restart_adopts_a_live_run_and_can_cancel_it(
    api_url: str,
    client: PrefectClient,
    running_worker: WorkerFactory,
    pool_name: str,
    state_dir: Path,
) -> None:
    run_id, pid = await _kill_worker_leaving_run(api_url, client, pool_name, state_dir, "phoenix")
    async with running_worker(name="phoenix", cancel_grace_seconds=0.5) as worker:
        assert run_id in worker.in_flight
        await client.set_flow_run_state(run_id, State.of(StateType.CANCELLING))  # type: ignore[arg-type]
        done = await wait_for_state(client, run_id, FINAL)  # type: ignore[arg-type]
    assert done.state is not None
    assert done.state.type is StateType.CANCELLED
    assert not process_alive(pid)


async def test_restart_adopted_run_that_ends_is_crashed_with_unknown_exit(
    api_url: str,
    client: PrefectClient,
    running_worker: WorkerFactory,
    pool_name: str,
    state_dir: Path,
) -> None:
    run_id, pid = await _kill_worker_leaving_run(api_url, client, pool_name, state_dir, "adopter")
    async with running_worker(name="adopter"):
        os.killpg(pid, signal.SIGKILL)
        done = await wait_for_state(client, run_id, FINAL)  # type: ignore[arg-type]
    assert done.state is not None
    assert done.state.type is StateType.CRASHED
    assert "exit status is unknown" in (done.state.message or "")


async def test_restart_with_reconcile_kill_kills_the_group(
    api_url: str,
    client: PrefectClient,
    running_worker: WorkerFactory,
    pool_name: str,
    state_dir: Path,
) -> None:
    run_id, pid = await _kill_worker_leaving_run(api_url, client, pool_name, state_dir, "killer")
    async with running_worker(name="killer", reconcile="kill", cancel_grace_seconds=0.5):
        done = await wait_for_state(client, run_id, FINAL)  # type: ignore[arg-type]
    assert done.state is not None
    assert done.state.type is StateType.CRASHED
    assert not process_alive(pid)


async def test_restart_crashes_runs_whose_process_is_gone_and_guards_pid_reuse(
    client: PrefectClient, running_worker: WorkerFactory, pool_name: str, state_dir: Path
) -> None:
    deployment = await make_deployment(client, pool_name, job_variables={"command": "true"})
    gone = await client.create_flow_run_from_deployment(deployment.id)
    reused = await client.create_flow_run_from_deployment(deployment.id)
    for run in (gone, reused):
        await client.set_flow_run_state(run.id, State.of(StateType.PENDING))
    # A bystander whose pid we record with a wrong start time: a reused pid.
    bystander = await trio.lowlevel.open_process(
        [sys.executable, "-c", "import time; time.sleep(300)"]
    )
    try:
        ticks = process_start_time(bystander.pid)
        assert ticks is not None
        records = RunRecords("reconciler", state_dir)
        await records.add(RunRecord(str(gone.id), 2**22 - 3, 1, "2026-01-01T00:00:00+00:00"))
        await records.add(
            RunRecord(str(reused.id), bystander.pid, ticks - 1, "2026-01-01T00:00:00+00:00")
        )
        async with running_worker(name="reconciler"):
            for run in (gone, reused):
                done = await wait_for_state(client, run.id, FINAL)
                assert done.state is not None
                assert done.state.type is StateType.CRASHED
                assert "process no longer exists" in (done.state.message or "")
        assert process_alive(bystander.pid)
        assert await RunRecords("reconciler", state_dir).load() == []
    finally:
        bystander.kill()
        await bystander.wait()


async def test_json_log_lines_parse(api_url: str, pool_name: str, state_dir: Path) -> None:
    result = await trio.run_process(
        [*_worker_command(pool_name, "jsonlog", "--run-once", "--log-format", "json")],
        env=_worker_env(api_url, state_dir),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    lines = [line for line in result.stderr.decode().splitlines() if line.strip()]
    assert lines
    entries = [json.loads(line) for line in lines]
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
