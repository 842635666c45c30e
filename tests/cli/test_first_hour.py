"""What a newcomer meets in their first hour (issue 18): one test or more per point.

Every command runs as a user runs it, a ``python -m trio_worker`` subprocess
against a real embedded API; each test names the point of the issue it covers.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

from tests.cli.conftest import CliResult, RunCli
from tests.helpers import clean_env

# -- point 1: `start` without PREFECT_API_URL says which API and database ------------------


def _embedded_env(tmp_path: Path) -> dict[str, str]:
    return {
        **clean_env(),
        "TRIO_WORKER_DB": str(tmp_path / "api.db"),
        "TRIO_WORKER_API_PORT": "0",
        "TRIO_WORKER_STATE_DIR": str(tmp_path / "state"),
    }


async def _run(*args: str, env: dict[str, str], cwd: Path | None = None) -> CliResult:
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-m", "trio_worker", *args],
            env=env,
            cwd=cwd,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return CliResult(done.returncode, done.stdout.decode(), done.stderr.decode())


async def test_point1_start_without_api_url_names_the_api_and_database_first(
    tmp_path: Path,
) -> None:
    result = await _run("start", "-p", "solo", "--run-once", env=_embedded_env(tmp_path))
    assert result.returncode == 0, result
    first = result.stdout.splitlines()[0]
    assert first.startswith("PREFECT_API_URL is not set; serving the embedded API at http://")
    assert f"(database {tmp_path / 'api.db'})" in first
    assert "set PREFECT_API_URL to use another API" in first


async def test_point1_start_help_says_what_happens_without_an_api_url() -> None:
    result = await _run("start", "--help", env=clean_env())
    text = " ".join(result.stdout.split())
    assert "Without PREFECT_API_URL" in text and "TRIO_WORKER_DB" in text


async def test_point1_a_second_api_on_the_same_database_is_refused(tmp_path: Path) -> None:
    env = _embedded_env(tmp_path)
    db = str(tmp_path / "api.db")
    server = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trio_worker", "server", "start", "--port", "0", "--db", db],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert server.stdout is not None
        seen = b""
        with trio.fail_after(30):
            while b"\n" not in seen:
                seen += await server.stdout.receive_some(4096)
        url = seen.decode().splitlines()[0].removeprefix("export PREFECT_API_URL=")
        worker = await _run("start", "-p", "solo", "--run-once", env=env)
        worker.assert_one_line_error(f"database {db} is already served by the API at {url}")
        assert f"export PREFECT_API_URL={url}" in worker.stderr
        second = await _run("server", "start", "--port", "0", "--db", db, env=env)
        second.assert_one_line_error("already served by the API at")
    finally:
        server.send_signal(signal.SIGINT)
        with trio.fail_after(30):
            assert await server.wait() == 0


# -- point 10: "did you mean" for commands, and Prefect's habits ----------------------------


async def test_point10_a_top_level_typo_gets_a_suggestion() -> None:
    result = await _run("strat", env=clean_env())
    result.assert_usage_error("No such command 'strat'. Did you mean 'start'?")
    nested = await _run("deployment", "crate", env=clean_env())
    nested.assert_usage_error("Did you mean 'create'?")


async def test_point10_prefect_worker_start_points_at_start() -> None:
    result = await _run("worker", "start", "--pool", "p", env=clean_env())
    result.assert_usage_error("trio-worker start --pool NAME")


# -- point 12: one exit-status convention -------------------------------------------------


async def test_point12_usage_errors_exit_2_failures_exit_1(run_cli: RunCli) -> None:
    (await run_cli("start", "--pol", "x")).assert_usage_error("Did you mean '--pool'?")
    (await run_cli("deployment", "run")).assert_usage_error("Missing argument")
    (await run_cli("deployment", "run", "d", "--param", "x")).assert_usage_error("KEY=VALUE")
    (await run_cli("deployment", "inspect", "nope")).assert_one_line_error("not found")


async def test_point12_an_api_url_without_its_path_names_the_fix(run_cli: RunCli) -> None:
    result = await run_cli("work-pool", "ls", env={"PREFECT_API_URL": "http://127.0.0.1:4200"})
    result.assert_one_line_error("has no path; the API is under /api: http://127.0.0.1:4200/api")


async def test_point12_ctrl_c_is_one_line_and_status_130() -> None:
    # A command blocked on an API that never answers (a socket that accepts
    # and stays silent) is interrupted the way a person does it.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        env: dict[str, Any] = {**clean_env(), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "trio_worker", "work-pool", "ls"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        with trio.fail_after(30):
            # Wait until the command is connected (it then waits for an answer).
            connection, _ = await trio.to_thread.run_sync(silent.accept)
            process.send_signal(signal.SIGINT)
            code = await process.wait()
            connection.close()
        assert process.stderr is not None
        err = (await process.stderr.receive_some(65536)).decode()
    assert code == 130
    assert err.strip().splitlines() == ["Interrupted."]
