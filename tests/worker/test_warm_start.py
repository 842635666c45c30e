"""Warm start: engine runs forked from the zygote, isolated from each other, never stuck on it."""

from __future__ import annotations

import json
import logging
import os
import signal
import textwrap
from pathlib import Path

import attrs
import pytest

from tests.helpers import make_deployment, process_alive, wait_for, wait_for_state
from tests.worker.conftest import WorkerFactory, fast_settings
from trio_worker._client._client import PrefectClient
from trio_worker._core._models import State, StateType
from trio_worker._process._worker import ProcessWorker

FINAL = (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED)

PROBE_MODULE = """
import os
LOADED_IN = os.getpid()
COUNTER = 0
"""

FLOWS = """
import json, os, sys, time
import warm_probe

def visit(out):
    seen = {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "pgid": os.getpgid(0),
        "sid": os.getsid(0),
        "probe_loaded_in": warm_probe.LOADED_IN,
        "leak_env": os.environ.get("WARM_LEAK"),
        "leak_path": "leak-dir" in sys.path,
        "counter": warm_probe.COUNTER,
        "cwd": os.getcwd(),
        "run_env": os.environ.get("RUN_ONLY"),
    }
    with open(out, "a") as f:
        f.write(json.dumps(seen) + "\\n")
    # Everything a run could leave behind for the next one.
    os.environ["WARM_LEAK"] = "1"
    sys.path.append("leak-dir")
    warm_probe.COUNTER += 1
    os.chdir("/")

def wait_for_release(out, release):
    with open(out, "w") as f:
        f.write(str(os.getpid()))
    while not os.path.exists(release):
        time.sleep(0.05)

def sleep_forever(out):
    with open(out, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(300)
"""


#: A preloaded module that leaks in the zygote: 20 MB more resident memory per fork
#: (``os.fork`` raises an audit event in the forking process, before it forks).
LEAKY_MODULE = """
import sys
HOARD = []

def _hook(event, args):
    if event == "os.fork":
        HOARD.append(b"x" * (20 * 1024 * 1024))

sys.addaudithook(_hook)
"""


@pytest.fixture
def flows_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory with the flows and a module the zygote preloads (on its PYTHONPATH)."""
    (tmp_path / "warm_probe.py").write_text(PROBE_MODULE)
    (tmp_path / "zygote_killer.py").write_text("import os\nos._exit(3)\n")
    (tmp_path / "leaky.py").write_text(LEAKY_MODULE)
    (tmp_path / "flows.py").write_text(textwrap.dedent(FLOWS))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    return tmp_path


def warm_settings(api_url: str, state_dir: Path, **changes: object) -> object:
    return attrs.evolve(fast_settings(api_url, state_dir), warm_start=True, **changes)


async def _run_visit(
    client: PrefectClient,
    pool_name: str,
    flows_dir: Path,
    name: str,
    env: dict[str, str],
    **job_variables: object,
) -> dict[str, object]:
    out = flows_dir / f"{name}.jsonl"
    deployment = await make_deployment(
        client,
        pool_name,
        name=name,
        entrypoint="flows.py:visit",
        path=str(flows_dir),
        parameters={"out": str(out)},
        job_variables={"working_dir": str(flows_dir), "env": env, **job_variables},
    )
    run = await client.create_flow_run_from_deployment(deployment.id)
    done = await wait_for_state(client, run.id, FINAL)
    assert done.state is not None and done.state.type is StateType.COMPLETED, done.state
    seen: dict[str, object] = json.loads(out.read_text().splitlines()[-1])
    return seen


async def test_each_run_forks_from_a_pristine_zygote(
    client: PrefectClient,
    running_worker: WorkerFactory,
    pool_name: str,
    flows_dir: Path,
    api_url: str,
    state_dir: Path,
) -> None:
    settings = warm_settings(api_url, state_dir, preload=("warm_probe",))
    async with running_worker(settings=settings) as worker:
        assert isinstance(worker, ProcessWorker) and worker.warm_starter is not None
        first = await _run_visit(client, pool_name, flows_dir, "first", {"RUN_ONLY": "a"})
        second = await _run_visit(client, pool_name, flows_dir, "second", {})
        zygote = worker.warm_starter.zygote_pid
    for seen in (first, second):
        # Forked by the zygote, which had imported the preloaded module.
        assert seen["ppid"] == zygote
        assert seen["probe_loaded_in"] == zygote
        # Its own session and process group, as a cold start.
        assert seen["pgid"] == seen["pid"] == seen["sid"]
        assert seen["cwd"] == str(flows_dir)
    assert first["run_env"] == "a"
    # The worker reaped its zygote on the way out.
    assert zygote is not None and not process_alive(zygote)
    # The first run's mutations died with it.
    assert second == {
        **second,
        "leak_env": None,
        "leak_path": False,
        "counter": 0,
        "cwd": str(flows_dir),
        "run_env": None,
    }


async def test_a_deployment_can_opt_out_through_its_env(
    client: PrefectClient,
    running_worker: WorkerFactory,
    pool_name: str,
    flows_dir: Path,
    api_url: str,
    state_dir: Path,
) -> None:
    async with running_worker(settings=warm_settings(api_url, state_dir)) as worker:
        seen = await _run_visit(
            client, pool_name, flows_dir, "cold", {"TRIO_WORKER_WARM_START": "false"}
        )
        assert worker.warm_starter is not None
    assert seen["ppid"] == os.getpid()
    assert seen["probe_loaded_in"] == seen["pid"]


async def test_a_dead_zygote_is_replaced(
    client: PrefectClient,
    running_worker: WorkerFactory,
    pool_name: str,
    flows_dir: Path,
    api_url: str,
    state_dir: Path,
) -> None:
    async with running_worker(settings=warm_settings(api_url, state_dir)) as worker:
        starter = worker.warm_starter
        assert starter is not None
        starter.prestart()
        first = await wait_for(_zygote(worker), what="zygote ready")
        os.kill(first, signal.SIGKILL)

        async def replaced() -> int | None:
            pid = starter.zygote_pid
            return pid if pid not in (None, first) else None

        second = await wait_for(replaced, what="a new zygote")
        seen = await _run_visit(client, pool_name, flows_dir, "after", {})
    assert seen["ppid"] == second
    assert not process_alive(first)


async def test_a_preloaded_module_edited_on_disk_restarts_the_zygote(
    client: PrefectClient,
    running_worker: WorkerFactory,
    pool_name: str,
    flows_dir: Path,
    api_url: str,
    state_dir: Path,
) -> None:
    # A deploy changes a module the zygote preloaded: the next run must see the
    # new code, as a cold start would, not the zygote's copy.
    settings = warm_settings(api_url, state_dir, preload=("warm_probe",))
    async with running_worker(settings=settings):
        before = await _run_visit(client, pool_name, flows_dir, "before", {})
        (flows_dir / "warm_probe.py").write_text(PROBE_MODULE + "COUNTER = 41\n")
        after = await _run_visit(client, pool_name, flows_dir, "after", {})
    assert before["counter"] == 0
    assert after["counter"] == 41
    # Forked by a fresh zygote that preloaded the new code (not imported by the run).
    assert after["ppid"] != before["ppid"]
    assert after["probe_loaded_in"] == after["ppid"] != os.getpid()
    assert not process_alive(int(str(before["ppid"])))


async def test_a_changed_preload_list_restarts_the_zygote(
    client: PrefectClient,
    running_worker: WorkerFactory,
    pool_name: str,
    flows_dir: Path,
    api_url: str,
    state_dir: Path,
) -> None:
    async with running_worker(settings=warm_settings(api_url, state_dir)) as worker:
        assert worker.warm_starter is not None
        before = await _run_visit(client, pool_name, flows_dir, "before", {})
        worker.warm_starter.preload = ("warm_probe",)
        after = await _run_visit(client, pool_name, flows_dir, "after", {})
    # Imported by the run itself, then by the new zygote started with the new list.
    assert before["probe_loaded_in"] == before["pid"]
    assert after["probe_loaded_in"] == after["ppid"] != before["ppid"]


async def test_a_run_with_a_memory_ceiling_starts_cold(
    client: PrefectClient,
    running_worker: WorkerFactory,
    pool_name: str,
    flows_dir: Path,
    api_url: str,
    state_dir: Path,
) -> None:
    # RLIMIT_AS counts the address space a fork inherits: the same limit would
    # be tighter warm than cold, so a limited run gets a fresh interpreter.
    async with running_worker(settings=warm_settings(api_url, state_dir)):
        warm = await _run_visit(client, pool_name, flows_dir, "warm", {})
        capped = await _run_visit(client, pool_name, flows_dir, "capped", {}, memory_limit_mb=4096)
    assert warm["ppid"] != os.getpid()  # forked by the zygote
    assert capped["ppid"] == os.getpid()  # started by the worker itself


async def test_a_warm_run_outlives_its_zygote(
    client: PrefectClient,
    running_worker: WorkerFactory,
    pool_name: str,
    flows_dir: Path,
    api_url: str,
    state_dir: Path,
) -> None:
    # The zygote dies (OOM killer, a stray kill) while a run it forked runs:
    # the run goes on to its end, as a cold start's would.
    out, release = flows_dir / "outlives.pid", flows_dir / "release"
    async with running_worker(settings=warm_settings(api_url, state_dir)) as worker:
        deployment = await make_deployment(
            client,
            pool_name,
            entrypoint="flows.py:wait_for_release",
            path=str(flows_dir),
            parameters={"out": str(out), "release": str(release)},
            job_variables={"working_dir": str(flows_dir)},
        )
        run = await client.create_flow_run_from_deployment(deployment.id)

        async def started() -> bool:
            return out.exists() and bool(out.read_text())

        await wait_for(started, what="the run's code started")
        pid = int(out.read_text())
        zygote = worker.warm_starter.zygote_pid if worker.warm_starter else None
        assert zygote is not None and _parent(pid) == zygote
        os.kill(zygote, signal.SIGKILL)

        async def orphaned() -> bool:
            return _parent(pid) != zygote

        await wait_for(orphaned, what="the run re-parented")
        assert process_alive(pid)
        release.touch()
        done = await wait_for_state(client, run.id, FINAL)

        async def let_go() -> bool:
            return not worker.in_flight

        await wait_for(let_go, what="the worker done with the run")
    assert done.state is not None and done.state.type is StateType.COMPLETED, done.state


async def test_the_zygote_is_replaced_after_max_forks(
    client: PrefectClient,
    running_worker: WorkerFactory,
    pool_name: str,
    flows_dir: Path,
    api_url: str,
    state_dir: Path,
) -> None:
    settings = warm_settings(api_url, state_dir, warm_start_max_forks=1)
    async with running_worker(settings=settings):
        first = await _run_visit(client, pool_name, flows_dir, "one", {})
        second = await _run_visit(client, pool_name, flows_dir, "two", {})
    assert first["ppid"] != os.getpid() and second["ppid"] != os.getpid()
    assert first["ppid"] != second["ppid"]
    assert not process_alive(int(str(first["ppid"])))


@pytest.mark.parametrize(("max_growth_mb", "replaced"), [(10.0, True), (100.0, False)])
async def test_the_zygote_is_replaced_after_its_memory_grows_past_the_setting(
    client: PrefectClient,
    running_worker: WorkerFactory,
    pool_name: str,
    flows_dir: Path,
    api_url: str,
    state_dir: Path,
    max_growth_mb: float,
    replaced: bool,
) -> None:
    settings = warm_settings(
        api_url, state_dir, preload=("leaky",), warm_start_max_growth_mb=max_growth_mb
    )
    async with running_worker(settings=settings):
        first = await _run_visit(client, pool_name, flows_dir, "one", {})
        second = await _run_visit(client, pool_name, flows_dir, "two", {})
    assert os.getpid() not in (first["ppid"], second["ppid"])
    assert (first["ppid"] != second["ppid"]) is replaced


async def test_runs_start_cold_when_no_zygote_can_be_had(
    client: PrefectClient,
    running_worker: WorkerFactory,
    pool_name: str,
    flows_dir: Path,
    api_url: str,
    state_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trio_worker.process")
    settings = warm_settings(api_url, state_dir, preload=("zygote_killer",))
    async with running_worker(settings=settings):
        seen = await _run_visit(client, pool_name, flows_dir, "fallback", {})
    assert seen["ppid"] == os.getpid()
    assert "failed to start 3 times" in caplog.text
    assert "starts cold: no warm-start zygote is available" in caplog.text


async def test_cancelling_a_warm_run_kills_it_and_ends_cancelled(
    client: PrefectClient,
    running_worker: WorkerFactory,
    pool_name: str,
    flows_dir: Path,
    api_url: str,
    state_dir: Path,
) -> None:
    out = flows_dir / "sleeper.pid"
    settings = warm_settings(api_url, state_dir)
    async with running_worker(settings=settings, cancel_grace_seconds=0.5) as worker:
        deployment = await make_deployment(
            client,
            pool_name,
            entrypoint="flows.py:sleep_forever",
            path=str(flows_dir),
            parameters={"out": str(out)},
            job_variables={"working_dir": str(flows_dir)},
        )
        run = await client.create_flow_run_from_deployment(deployment.id)

        async def started() -> bool:
            return out.exists() and bool(out.read_text())

        await wait_for(started, what="the run's code started")
        pid = int(out.read_text())
        assert worker.warm_starter is not None
        assert _parent(pid) == worker.warm_starter.zygote_pid
        await client.set_flow_run_state(run.id, State.of(StateType.CANCELLING))
        done = await wait_for_state(client, run.id, FINAL)
        assert not worker.in_flight
    assert done.state is not None and done.state.type is StateType.CANCELLED
    assert not process_alive(pid)


def _zygote(worker: ProcessWorker):  # type: ignore[no-untyped-def]
    async def check() -> int | None:
        assert worker.warm_starter is not None
        return worker.warm_starter.zygote_pid

    return check


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])
