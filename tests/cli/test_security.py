"""Authentication as users meet it: real CLI processes against an auth-enabled API.

A worker, a task worker or a command with a wrong (or no) auth string stops
with one line naming ``PREFECT_API_AUTH_STRING``; with the right one a flow run
and a task run go end to end, websockets included, and the secret shows up in
no log, no output and no command line. ``server start`` will not listen beyond
loopback without an auth string unless told so out loud.
"""

from __future__ import annotations

import base64
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from tests.cli.conftest import RunCli
from tests.helpers import clean_env, make_deployment, wait_for
from trio_worker._client._client import PrefectClient
from trio_worker._core._models import StateType
from trio_worker._core._settings import Settings
from trio_worker._taskworker._tasks import Task
from trio_worker.testing import open_embedded_api

SECRET = "runner:9f2c-secret"


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[str]:
    async with open_embedded_api(tmp_path / "secured.db", auth_string=SECRET) as url:
        yield url


@pytest.fixture
async def client(secured: str) -> AsyncIterator[PrefectClient]:
    settings = Settings(api_url=secured, api_auth_string=SECRET)
    async with PrefectClient(secured, settings=settings, backoff_seconds=0.05) as opened:
        yield opened


# -- wrong credentials: one line, non-zero ---------------------------------------


@pytest.mark.parametrize("auth", ["runner:wrong", None], ids=["wrong", "missing"])
async def test_worker_and_commands_with_wrong_auth_say_which_setting(
    run_cli: RunCli, secured: str, auth: str | None
) -> None:
    env = {"PREFECT_API_URL": secured, "PREFECT_API_AUTH_STRING": auth}
    worker = await run_cli("start", "-p", "pool", "--run-once", env=env)
    worker.assert_one_line_error("401", "PREFECT_API_AUTH_STRING")
    listing = await run_cli("work-pool", "ls", env=env)
    line = listing.assert_one_line_error("401", "PREFECT_API_AUTH_STRING")
    assert SECRET not in line


async def test_task_worker_with_a_wrong_auth_string_exits_with_one_line(
    secured: str, tmp_path: Path
) -> None:
    (tmp_path / "sometasks.py").write_text("def noop():\n    return None\n")
    env = {**clean_env(), "PREFECT_API_URL": secured, "PREFECT_API_AUTH_STRING": "runner:no"}
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-m", "trio_worker", "task-worker", "serve", "sometasks:noop"],
            env=env,
            cwd=tmp_path,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    stderr = done.stderr.decode()
    assert done.returncode != 0
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, stderr
    assert "PREFECT_API_AUTH_STRING" in errors[0]


# -- the right credentials: end to end -------------------------------------------

FLOW = """
import os
import pathlib

def check_secret():
    secret = os.environ["PREFECT_API_AUTH_STRING"].encode()
    for pid in ("self", str(os.getppid())):
        argv = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
        assert secret not in argv, "the auth string is on a command line"
    print("the engine reached the API with its credentials")
"""


async def test_a_worker_with_the_auth_string_runs_a_flow_run_end_to_end(
    secured: str, client: PrefectClient, tmp_path: Path
) -> None:
    (tmp_path / "flows.py").write_text(textwrap.dedent(FLOW))
    deployment = await make_deployment(
        client,
        "secure-pool",
        entrypoint="flows.py:check_secret",
        path=str(tmp_path),
        job_variables={"working_dir": str(tmp_path)},
    )
    run = await client.create_flow_run_from_deployment(deployment.id)
    env = {
        **clean_env(),
        "PREFECT_API_URL": secured,
        "PREFECT_API_AUTH_STRING": SECRET,
        "PREFECT_WORKER_PREFETCH_SECONDS": "0",
        "TRIO_WORKER_STATE_DIR": str(tmp_path / "state"),
    }
    with trio.fail_after(90):
        done = await trio.run_process(
            [sys.executable, "-m", "trio_worker", "start", "-p", "secure-pool", "--run-once"],
            env=env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    output = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, output
    finished = await client.read_flow_run(run.id)
    assert finished.state is not None
    assert finished.state.type is StateType.COMPLETED, finished.state
    logs = await client.read_logs(run.id)
    assert any("reached the API with its credentials" in log.message for log in logs), logs
    # The secret is nowhere a person or another user of the API could read it.
    stored = await client.request("GET", f"flow_runs/{run.id}")
    assert SECRET not in str(stored)
    assert all(SECRET not in log.message for log in logs)
    assert SECRET not in output
    encoded = base64.b64encode(SECRET.encode()).decode()
    assert encoded not in output
    # The worker's events went over the /events/in websocket, authenticated.
    events = await client.request(
        "POST", "events/filter", json_body={"filter": {"event": {"prefix": ["prefect.worker."]}}}
    )
    names = {event["event"] for event in events["events"]}
    assert "prefect.worker.submitted-flow-run" in names, names


HOLD = """
from trio_worker._taskworker import _tasks

@_tasks.task(key="sec-double")
def double(n: int) -> int:
    return 2 * n
"""


async def _double(n: int) -> int:
    raise AssertionError("submit-only twin of the subprocess task")


double = Task(_double, key="sec-double")


async def test_a_task_worker_with_the_auth_string_serves_task_runs(
    secured: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sectasks.py").write_text(HOLD)
    store = str(tmp_path / "store")
    env = {
        **clean_env(),
        "PREFECT_API_URL": secured,
        "PREFECT_API_AUTH_STRING": SECRET,
        "TRIO_WORKER_TASK_STORAGE": store,
        "PYTHONUNBUFFERED": "1",
    }
    # The submitting side reads the same settings from its environment.
    for key in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "TRIO_WORKER_TASK_STORAGE"):
        monkeypatch.setenv(key, env[key])
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trio_worker", "task-worker", "serve", "sectasks:double"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    output = b""
    try:
        handle = await double.delay_async(21)
        assert await handle.result_async(30) == 42
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.stderr is not None
        with trio.fail_after(30):
            while chunk := await process.stderr.receive_some():
                output += chunk
            await process.wait()
    assert b"subscribed to sec-double" in output, output
    assert SECRET.encode() not in output


# -- server start ------------------------------------------------------------------


async def test_server_start_refuses_a_public_host_without_auth(
    run_cli: RunCli, tmp_path: Path
) -> None:
    for host in ("0.0.0.0", "::", "192.0.2.10"):
        result = await run_cli(
            "server", "start", "--host", host, "--port", "0", "--db", str(tmp_path / "x.db"),
            env={"PREFECT_SERVER_API_AUTH_STRING": None},
        )  # fmt: skip
        result.assert_one_line_error(host, "PREFECT_SERVER_API_AUTH_STRING", "--insecure-no-auth")
    assert not (tmp_path / "x.db").exists()


async def _serve_until_listening(env: dict[str, str], *args: str) -> tuple[trio.Process, str]:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trio_worker", "server", "start", "--port", "0", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    text = ""
    with trio.fail_after(30):
        while "\n" not in text:
            chunk = await process.stdout.receive_some()
            assert chunk, "the server exited before printing its URL"
            text += chunk.decode()
    url = text.split("=", 1)[1].strip()
    return process, url.replace("//0.0.0.0:", "//127.0.0.1:")


async def _stop(process: trio.Process) -> str:
    process.send_signal(signal.SIGINT)
    assert process.stderr is not None
    errors = b""
    with trio.fail_after(30):
        while chunk := await process.stderr.receive_some():
            errors += chunk
        await process.wait()
    return errors.decode()


async def test_server_start_on_a_public_host_requires_the_auth_string(tmp_path: Path) -> None:
    env = {**clean_env(), "PREFECT_SERVER_API_AUTH_STRING": SECRET}
    db = str(tmp_path / "public.db")
    process, url = await _serve_until_listening(env, "--host", "0.0.0.0", "--db", db)
    try:
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{url}/version")).status_code == 401
            assert (await http.get(f"{url}/health")).status_code == 200
            settings = Settings(api_url=url, api_auth_string=SECRET)
            async with PrefectClient(url, settings=settings) as client:
                await client.create_work_pool("public", type="process")
    finally:
        errors = await _stop(process)
    assert "PREFECT_API_AUTH_STRING" in errors
    assert SECRET not in errors


async def test_insecure_no_auth_serves_a_public_host_with_a_warning(tmp_path: Path) -> None:
    db = str(tmp_path / "open.db")
    process, url = await _serve_until_listening(
        clean_env(), "--host", "0.0.0.0", "--db", db, "--insecure-no-auth"
    )
    try:
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{url}/version")).status_code == 200
    finally:
        errors = await _stop(process)
    assert "WARNING" in errors and "no authentication" in errors, errors


async def test_a_worker_serving_its_own_api_uses_the_server_auth_string(
    tmp_path: Path,
) -> None:
    # `trio-worker start` without PREFECT_API_URL serves the API itself; with
    # PREFECT_SERVER_API_AUTH_STRING that API asks for it, and the worker sends it.
    port_holder = trio.socket.socket()
    await port_holder.bind(("127.0.0.1", 0))
    port = port_holder.getsockname()[1]
    port_holder.close()
    env = {
        **clean_env(),
        "PREFECT_SERVER_API_AUTH_STRING": SECRET,
        "TRIO_WORKER_API_PORT": str(port),
        "TRIO_WORKER_DB": str(tmp_path / "own.db"),
        "TRIO_WORKER_STATE_DIR": str(tmp_path / "state"),
        "PREFECT_WORKER_QUERY_SECONDS": "0.2",
    }
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trio_worker", "start", "-p", "own", "-n", "own-worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        settings = Settings(api_url=url, api_auth_string=SECRET)

        async def heartbeat() -> bool:
            try:
                async with PrefectClient(url, settings=settings) as client:
                    return any(w.name == "own-worker" for w in await client.read_workers("own"))
            except Exception:
                return False

        await wait_for(heartbeat, what="the worker's heartbeat on its own API")
        async with httpx.AsyncClient() as http:
            assert (await http.post(f"{url}/work_pools/filter", json={})).status_code == 401
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            await process.wait()
