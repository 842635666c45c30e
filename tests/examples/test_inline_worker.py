"""examples/inline_worker: a third-party backend, found through its entry point.

The example is used the way a user would after ``pip install``: a
``.dist-info`` with its ``entry_points.txt`` on ``PYTHONPATH`` makes
``trio-worker start --type inline`` load it (no install, so the test venv is
left as it is). The other tests drive the class directly: cancellation through
its ``run`` and ``kill_infrastructure`` on a group it did not start.
"""

from __future__ import annotations

import functools
import importlib
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import trio

from tests.helpers import clean_env, make_deployment, process_alive, wait_for, wait_for_state
from trio_worker._client._client import PrefectClient
from trio_worker._core._models import State, StateType
from trio_worker._core._settings import Settings

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "inline_worker"
FINAL = (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED)


def _write_dist_info(root: Path) -> None:
    """What ``pip install examples/inline_worker`` leaves: metadata and the entry point."""
    dist = root / "trio_worker_inline-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: trio-worker-inline\nVersion: 0.1.0\n"
    )
    # The same entry point as the example's pyproject.toml declares.
    pyproject = (EXAMPLE / "pyproject.toml").read_text()
    assert 'inline = "inline_worker:InlineWorker"' in pyproject
    (dist / "entry_points.txt").write_text(
        "[trio_worker.workers]\ninline = inline_worker:InlineWorker\n"
    )


async def _cli(*args: str, env: dict[str, str], cwd: Path) -> str:
    with trio.fail_after(120):
        done = await trio.run_process(
            [sys.executable, "-m", "trio_worker", *args],
            env=env,
            cwd=cwd,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode() + done.stderr.decode()


async def test_start_type_inline_runs_a_flow_run_to_completed(api_url: str, tmp_path: Path) -> None:
    _write_dist_info(tmp_path / "site")
    env = {
        **clean_env(),
        "PREFECT_API_URL": api_url,
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(EXAMPLE)]),
    }
    (tmp_path / "flows.py").write_text(
        textwrap.dedent(
            """
            import os, pathlib

            def greet(name, out):
                pathlib.Path(out).write_text(f"{os.environ['GREETING']}, {name}")
            """
        )
    )
    out_file = tmp_path / "greeting.txt"
    # As docs/custom-worker.md shows: a pool of the new type, a deployment whose
    # job variable `setup` is the inline script, a run, and a worker.
    await _cli("work-pool", "create", "shells", "--type", "inline", env=env, cwd=tmp_path)
    await _cli(
        "deployment", "create", "hello", "--pool", "shells", "--entrypoint", "flows.py:greet",
        "--param", "name=Ada", "--param", f"out={out_file}",
        "--job-variable", "setup=export GREETING=Hello",
        env=env, cwd=tmp_path,
    )  # fmt: skip
    await _cli("deployment", "run", "greet/hello", env=env, cwd=tmp_path)
    out = await _cli(
        "start", "--pool", "shells", "--type", "inline", "--run-once", env=env, cwd=tmp_path
    )
    assert "started!" in out and "stopped!" in out
    async with PrefectClient(api_url) as client:
        (run,) = await client.read_flow_runs()
        pool = await client.read_work_pool("shells")
    assert run.state is not None and run.state.type is StateType.COMPLETED, run.state
    assert out_file.read_text() == "Hello, Ada"  # the setup line ran before the flow
    assert run.infrastructure_pid is not None and ":" in run.infrastructure_pid
    # The worker gave the pool (created without a template) its type's template.
    assert {"setup", "shell"} <= set(pool.base_job_template["variables"]["properties"])


@pytest.fixture
def inline_worker(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The example package, imported from its directory."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    return importlib.import_module("inline_worker.worker")


@asynccontextmanager
async def _running(module: ModuleType, api_url: str, pool: str) -> AsyncIterator[Any]:
    settings = Settings(api_url=api_url, query_seconds=0.2, prefetch_seconds=0)
    worker = module.InlineWorker(pool, settings=settings, cancel_grace_seconds=0.5)
    async with worker, trio.open_nursery() as nursery:
        # Returns once the worker polls (start's task_status), as docs/custom-worker.md shows.
        await nursery.start(functools.partial(worker.start, printer=lambda _: None))
        assert worker.last_polled is not None
        yield worker
        nursery.cancel_scope.cancel()


# A script whose process and child both ignore SIGTERM: only SIGKILL ends them.
STUBBORN = textwrap.dedent(
    """
    import signal, subprocess, sys, time, pathlib
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"])
    pathlib.Path(sys.argv[1]).write_text(f"{child.pid}")
    time.sleep(300)
    """
)


async def test_cancelling_a_run_stops_its_whole_group(
    inline_worker: ModuleType, api_url: str, tmp_path: Path
) -> None:
    pid_file = tmp_path / "child.pid"
    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN)
    command = f"{sys.executable} {script} {pid_file}"
    async with (
        PrefectClient(api_url) as client,
        _running(inline_worker, api_url, "shells") as worker,
    ):
        await wait_for(lambda: _pool_exists(client, "shells"), what="pool created")
        deployment = await make_deployment(client, "shells", job_variables={"command": command})
        run = await client.create_flow_run_from_deployment(deployment.id)
        await wait_for(lambda: _has_text(pid_file), what="child started")
        leader = int((await client.read_flow_run(run.id)).infrastructure_pid.split(":")[-1])
        child = int(pid_file.read_text())
        assert process_alive(leader) and process_alive(child)
        await client.set_flow_run_state(run.id, State.of(StateType.CANCELLING))
        done = await wait_for_state(client, run.id, FINAL)
        assert not worker.in_flight
    assert done.state is not None and done.state.type is StateType.CANCELLED, done.state
    assert not process_alive(leader) and not process_alive(child)


async def test_kill_infrastructure_stops_a_group_it_did_not_start(
    inline_worker: ModuleType, tmp_path: Path
) -> None:
    pid_file = tmp_path / "child.pid"
    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN)
    process = await trio.lowlevel.open_process(
        [sys.executable, str(script), str(pid_file)],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
    )
    worker = inline_worker.InlineWorker(
        "shells", settings=Settings(api_url="http://127.0.0.1:9/api")
    )
    try:
        await wait_for(lambda: _has_text(pid_file), what="child started")
        child = int(pid_file.read_text())
        identifier = f"{inline_worker.HOSTNAME}:{process.pid}"
        with trio.fail_after(10):
            await worker.kill_infrastructure(identifier, None, 0.5)
        with trio.fail_after(5):
            await process.wait()  # SIGKILLed; reap it
        assert process.returncode == -9
        await wait_for(lambda: _gone(child), what="child killed")
        with pytest.raises(inline_worker.InfrastructureError, match="another host"):
            await worker.kill_infrastructure(f"elsewhere:{process.pid}", None, 0.5)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _pool_exists(client: PrefectClient, name: str) -> bool:
    return any(pool.name == name for pool in await client.read_work_pools())


async def _has_text(path: Path) -> bool:
    return path.exists() and bool(path.read_text())


async def _gone(pid: int) -> bool:
    return not process_alive(pid)


def test_new_pool_template_has_the_inline_variables(inline_worker: ModuleType) -> None:
    template = inline_worker.InlineWorker(
        "p", settings=Settings(api_url="http://127.0.0.1:9/api")
    ).get_default_base_job_template()
    properties = template["variables"]["properties"]
    assert properties["shell"]["default"] == "/bin/sh"
    assert template["job_configuration"]["setup"] == "{{ setup }}"
    config = inline_worker.InlineJobConfiguration(command="python -m x", setup="cd /srv")
    assert config.script(memory_limit_mb=64).splitlines() == [
        "set -e",
        "ulimit -v 65536",
        "cd /srv",
        "exec python -m x",
    ]
