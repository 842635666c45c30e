"""Scenarios that need Prefect's own Python API and worker: collected only where
``prefect`` is importable (``nox -s prefect``), so nothing here is ever skipped."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import pytest
import trio

from tests.helpers import wait_for, wait_for_state
from tests.interop.conftest import Cli, WorkerFactory
from trio_worker._client._client import PrefectClient
from trio_worker._core._models import StateType

pytestmark = pytest.mark.prefect

FINAL = (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED)

FLOWS = textwrap.dedent(
    """
    import pathlib, time
    from prefect import flow, get_run_logger
    from prefect.runtime import flow_run

    @flow
    def greet(name: str, times: int = 1) -> str:
        get_run_logger().info("greeting %s x%d", name, times)
        pathlib.Path("greeting.txt").write_text(f"hello {name} x{times}")
        return name

    @flow
    def where(out: str) -> None:
        # Where Prefect's engine ran this flow, and what the previous run left.
        import json, os
        from prefect.settings import get_current_settings
        get_run_logger().info("where am I")
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            parent = f.read().decode().split("\\0")
        with open("/proc/self/cmdline", "rb") as f:
            own = f.read().decode().split("\\0")
        with open(out, "a") as f:
            f.write(json.dumps({
                "pid": os.getpid(), "ppid": os.getppid(), "parent": parent, "own": own,
                "leak": os.environ.get("WHERE_LEAK"),
                "heartbeat": get_current_settings().flows.heartbeat_frequency,
            }) + "\\n")
        os.environ["WHERE_LEAK"] = "1"

    @flow
    def mark(marks: str) -> None:
        with (pathlib.Path(marks) / flow_run.id).open("a") as f:
            f.write("x")
        time.sleep(0.3)
    """
)

DEPLOY = textwrap.dedent(
    """
    import json, sys
    from prefect import flow
    source, entrypoint, name, pool, parameters = sys.argv[1:]
    deployment_id = flow.from_source(source=source, entrypoint=entrypoint).deploy(
        name=name, work_pool_name=pool, parameters=json.loads(parameters),
        build=False, push=False, print_next_steps=False,
    )
    print("DEPLOYMENT", deployment_id)
    """
)

RUN = textwrap.dedent(
    """
    import json, sys
    from prefect.deployments import run_deployment
    run = run_deployment(sys.argv[1], parameters=json.loads(sys.argv[2]), timeout=0)
    print("RUN", run.id)
    """
)


async def prefect_python(env: dict[str, str], cwd: Path, code: str, *args: str) -> str:
    """Run ``code`` with Prefect's Python API in a subprocess (Prefect runs on asyncio)."""
    with trio.fail_after(120):
        done = await trio.run_process(
            [sys.executable, "-c", code, *args],
            env=env,
            cwd=cwd,
            capture_stdout=True,
            stderr=subprocess.STDOUT,
            check=False,
        )
    output = done.stdout.decode(errors="replace")
    assert done.returncode == 0, output
    return output


def tagged(output: str, tag: str) -> uuid.UUID:
    lines = [line for line in output.splitlines() if line.startswith(tag + " ")]
    assert lines, output
    return uuid.UUID(lines[-1].split()[1])


async def deploy(
    env: dict[str, str], src: Path, entrypoint: str, name: str, pool: str, params: str
) -> uuid.UUID:
    output = await prefect_python(env, src, DEPLOY, str(src), entrypoint, name, pool, params)
    return tagged(output, "DEPLOYMENT")


@asynccontextmanager
async def prefect_worker(env: dict[str, str], pool: str, log: Path) -> AsyncIterator[None]:
    """``prefect worker start`` on ``pool``, stopped (its whole process group) on exit."""
    command = [shutil.which("prefect") or "prefect", "worker", "start", "--pool", pool]
    command += ["--type", "process", "--name", f"prefect-{uuid.uuid4().hex[:6]}"]
    with log.open("wb") as out:
        process = await trio.lowlevel.open_process(
            command, env=env, stdout=out, stderr=out, start_new_session=True
        )
    try:

        async def started() -> bool:
            assert process.poll() is None, log.read_text()
            return "started!" in log.read_text(errors="replace")

        await wait_for(started, timeout=60, what="prefect worker to start")
        yield
    finally:
        with trio.CancelScope(shield=True):
            for sig, seconds in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, sig)
                with trio.move_on_after(seconds):
                    await process.wait()


async def test_prefect_flow_deployment_completes_with_parameters_and_logs(
    cli: Cli,
    client: PrefectClient,
    env: dict[str, str],
    start_worker: WorkerFactory,
    pool_name: str,
    tmp_path: Path,
) -> None:
    await cli("work-pool", "create", pool_name, "--type", "process")
    (tmp_path / "pflows.py").write_text(FLOWS)
    deployment_id = await deploy(
        env, tmp_path, "pflows.py:greet", pool_name, pool_name, '{"name": "dep"}'
    )
    run_id = tagged(
        await prefect_python(env, tmp_path, RUN, str(deployment_id), '{"times": 2}'), "RUN"
    )
    async with start_worker():
        done = await wait_for_state(client, run_id, FINAL, timeout=120)
    assert done.state is not None and done.state.type is StateType.COMPLETED, done.state
    assert (tmp_path / "greeting.txt").read_text() == "hello dep x2"
    messages = [log.message for log in await client.read_logs(run_id)]
    assert "greeting dep x2" in messages, messages


async def test_mixed_fleet_never_runs_a_flow_run_twice(
    cli: Cli,
    client: PrefectClient,
    env: dict[str, str],
    start_worker: WorkerFactory,
    pool_name: str,
    tmp_path: Path,
) -> None:
    await cli("work-pool", "create", pool_name, "--type", "process")
    (tmp_path / "pflows.py").write_text(FLOWS)
    marks = tmp_path / "marks"
    marks.mkdir()
    deployment_id = await deploy(
        env, tmp_path, "pflows.py:mark", pool_name, pool_name, f'{{"marks": "{marks}"}}'
    )
    runs = [await client.create_flow_run_from_deployment(deployment_id) for _ in range(6)]
    async with start_worker(), prefect_worker(env, pool_name, tmp_path / "prefect-worker.log"):
        for run in runs:
            done = await wait_for_state(client, run.id, FINAL, timeout=180)
            assert done.state is not None and done.state.type is StateType.COMPLETED, done.state
    for run in runs:
        assert (marks / str(run.id)).read_text() == "x", run.id


async def test_prefect_flow_runs_warm_in_a_fork_of_the_zygote(
    cli: Cli,
    client: PrefectClient,
    env: dict[str, str],
    start_worker: WorkerFactory,
    pool_name: str,
    tmp_path: Path,
) -> None:
    # A Prefect @flow on the default command: forked from the zygote that
    # imported Prefect, and run by Prefect's engine in that process (not an
    # exec of a fresh interpreter), isolated from the run before it.
    await cli("work-pool", "create", pool_name, "--type", "process")
    (tmp_path / "pflows.py").write_text(FLOWS)
    out = tmp_path / "where.jsonl"
    deployment_id = await deploy(
        env, tmp_path, "pflows.py:where", pool_name, pool_name, json.dumps({"out": str(out)})
    )
    async with start_worker() as worker:
        runs = []
        for _ in range(2):
            run = await client.create_flow_run_from_deployment(deployment_id)
            done = await wait_for_state(client, run.id, FINAL, timeout=120)
            assert done.state is not None and done.state.type is StateType.COMPLETED, done.state
            runs.append(run)
        worker_pid = worker.process.pid
    seen = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(seen) == 2
    for one in seen:
        assert "trio_worker._process._zygote" in one["parent"], one
        assert one["ppid"] != worker_pid
        # Never exec'd: the process still carries the zygote's command line.
        assert one["own"] == one["parent"], one
    assert seen[0]["ppid"] == seen[1]["ppid"]  # one zygote served both
    assert [one["leak"] for one in seen] == [None, None]
    # As when exec'd cold: heartbeats often enough for the embedded API's dead-run rule.
    assert [one["heartbeat"] for one in seen] == [30, 30]
    for run in runs:
        messages = [log.message for log in await client.read_logs(run.id)]
        assert "where am I" in messages, messages
