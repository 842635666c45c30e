"""``trio-worker start`` as a user runs it: a subprocess against the embedded API."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import trio

from tests.cli.conftest import RunCli
from tests.helpers import clean_env, make_deployment
from trio_worker._client._client import PrefectClient
from trio_worker._core._models import StateType


async def test_bad_base_job_template_is_one_line(run_cli: RunCli, tmp_path: Path) -> None:
    missing = await run_cli("start", "-p", "p", "--base-job-template", str(tmp_path / "nope.json"))
    missing.assert_usage_error("nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = await run_cli("start", "-p", "p", "--base-job-template", str(bad))
    result.assert_usage_error("not valid JSON")


async def test_bad_name_is_one_line(run_cli: RunCli) -> None:
    result = await run_cli("start", "-p", "p", "--name", "a/b")
    result.assert_usage_error("'a/b'")


async def test_bad_preload_is_one_line(run_cli: RunCli) -> None:
    result = await run_cli("start", "-p", "p", "--preload", "json,not a module")
    result.assert_one_line_error("'not a module', which is not a module name")


async def test_missing_pool_without_a_terminal_is_one_line(run_cli: RunCli) -> None:
    result = await run_cli("start")
    result.assert_usage_error("--pool")


async def test_unknown_type_lists_installed_types(run_cli: RunCli) -> None:
    result = await run_cli("start", "-p", "p", "--type", "nope", "--install-policy", "never")
    line = result.assert_one_line_error("nope")
    assert "process" in line


def _write_plugin(root: Path) -> None:
    """A worker type in an installed-looking package: a dist-info with an entry point."""
    package = root / "echo_worker"
    package.mkdir()
    (package / "__init__.py").write_text(
        textwrap.dedent(
            """
            import trio
            from trio_worker._process._worker import ProcessWorker

            class EchoWorker(ProcessWorker):
                type = "echo"
            """
        )
    )
    dist = root / "echo_worker-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-worker\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[trio_worker.workers]\necho = echo_worker:EchoWorker\n")


async def test_custom_type_from_an_entry_point_runs_a_flow_run(
    api_url: str, tmp_path: Path
) -> None:
    _write_plugin(tmp_path)
    env = {**clean_env(), "PREFECT_API_URL": api_url, "PYTHONPATH": str(tmp_path)}
    env["PREFECT_WORKER_QUERY_SECONDS"] = "0.2"
    async with PrefectClient(api_url) as client:
        await client.create_work_pool("echo-pool", type="echo")
        deployment = await make_deployment(client, "echo-pool", job_variables={"command": "true"})
        run = await client.create_flow_run_from_deployment(deployment.id)
        result = await trio.run_process(
            [
                sys.executable,
                "-m",
                "trio_worker",
                "start",
                "-p",
                "echo-pool",
                "-t",
                "echo",
                "--run-once",
            ],
            env=env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr.decode()
        done = await client.read_flow_run(run.id)
    assert done.state is not None and done.state.type is StateType.COMPLETED
    out = result.stderr.decode()
    assert "started!" in out and "stopped!" in out


async def test_sigterm_stops_the_worker_cleanly(api_url: str) -> None:
    env = {**clean_env(), "PREFECT_API_URL": api_url, "PREFECT_WORKER_QUERY_SECONDS": "0.2"}
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trio_worker", "start", "-p", "sig-pool", "-n", "sig"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    async with PrefectClient(api_url) as client:

        async def online() -> bool:
            try:
                return any(w.name == "sig" for w in await client.read_workers("sig-pool"))
            except Exception:
                return False

        from tests.helpers import wait_for

        await wait_for(online, what="worker heartbeat")
    process.send_signal(signal.SIGTERM)
    with trio.fail_after(20):
        code = await process.wait()
    assert process.stderr is not None
    out = b"".join([chunk async for chunk in process.stderr]).decode()
    assert code == 0
    assert "Worker 'sig' started!" in out and "Worker 'sig' stopped!" in out


async def test_health_port_in_use_is_one_line(api_url: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {
            **clean_env(),
            "PREFECT_API_URL": api_url,
            "PREFECT_WORKER_WEBSERVER_PORT": str(port),
        }
        result = await trio.run_process(
            [sys.executable, "-m", "trio_worker", "start", "-p", "hp", "--with-healthcheck"],
            env=env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode != 0
    assert "Traceback" not in result.stderr.decode()
    assert f"127.0.0.1:{port}" in lines[-1]
    assert "PREFECT_WORKER_WEBSERVER_PORT" in lines[-1]


async def test_without_an_api_url_the_worker_serves_the_embedded_api(tmp_path: Path) -> None:
    env = {
        **clean_env(),
        "TRIO_WORKER_DB": str(tmp_path / "api.db"),
        "TRIO_WORKER_API_PORT": "0",
        "TRIO_WORKER_STATE_DIR": str(tmp_path / "state"),
    }
    result = await trio.run_process(
        [sys.executable, "-m", "trio_worker", "start", "-p", "solo", "--run-once"],
        env=env,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    out = result.stderr.decode()
    assert result.returncode == 0, out
    assert "serving the embedded API at http://127.0.0.1:" in out
    assert "Worker" in out
    assert "stopped!" in out
