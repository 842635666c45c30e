"""``trio-worker server start`` as a real subprocess: URL line, signals, port in use, SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import trio

from tests.server.conftest import make_deployment, make_run, propose
from trio_worker._cli._server import default_db_path
from trio_worker._core._settings import Settings

START_TIMEOUT_SECONDS = 30.0


@asynccontextmanager
async def server_process(db: Path, port: int = 0) -> AsyncIterator[tuple[trio.Process, str]]:
    """Start the server CLI; yield the process and the API URL from its export line."""
    process = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "trio_worker",
            "server",
            "start",
            "--port",
            str(port),
            "--db",
            str(db),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        buffer = b""
        with trio.fail_after(START_TIMEOUT_SECONDS):
            while b"\n" not in buffer:
                chunk = await process.stdout.receive_some()
                assert chunk, "server exited before printing its URL"
                buffer += chunk
        line = buffer.decode().splitlines()[0]
        assert line.startswith("export PREFECT_API_URL=http://127.0.0.1:"), line
        yield process, line.split("=", 1)[1]
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()


async def test_acknowledged_writes_survive_sigkill_and_restart(tmp_path: Path) -> None:
    db = tmp_path / "api.db"
    async with server_process(db) as (process, url):
        async with httpx.AsyncClient(base_url=url) as client:
            deployment = await make_deployment(client)
            run = await make_run(client, deployment["id"])
            accepted = await propose(client, run["id"], "PENDING")
            assert accepted.json()["status"] == "ACCEPT"
            patched = await client.patch(
                f"/flow_runs/{run['id']}", json={"infrastructure_pid": "99"}
            )
            assert patched.status_code == 204
        process.send_signal(signal.SIGKILL)
        await process.wait()
        assert process.returncode == -signal.SIGKILL
    async with server_process(db) as (_process, url), httpx.AsyncClient(base_url=url) as client:
        after = (await client.get(f"/flow_runs/{run['id']}")).json()
        assert after["state_type"] == "PENDING"
        assert after["infrastructure_pid"] == "99"
        again = await propose(client, run["id"], "PENDING")
        assert again.json()["status"] == "ABORT"  # the lock survived too
        history = await client.get("/flow_run_states/", params={"flow_run_id": run["id"]})
        assert [s["type"] for s in history.json()] == ["SCHEDULED", "PENDING"]


async def test_sigterm_and_sigint_exit_cleanly(tmp_path: Path) -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        async with server_process(tmp_path / "api.db") as (process, url):
            async with httpx.AsyncClient(base_url=url) as client:
                assert (await client.get("/health")).json() is True
            process.send_signal(signum)
            with trio.fail_after(START_TIMEOUT_SECONDS):
                await process.wait()
            assert process.returncode == 0


async def test_port_in_use_is_one_line_error(tmp_path: Path) -> None:
    async with server_process(tmp_path / "a.db") as (_process, url):
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        result = await trio.run_process(
            [sys.executable, "-m", "trio_worker", "server", "start", "--port", str(port),
             "--db", str(tmp_path / "b.db")],
            capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
    assert result.returncode != 0
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "Address already in use" in lines[0], result.stderr


def test_default_db_path_honours_env(tmp_path: Path) -> None:
    settings = Settings.from_env({"TRIO_WORKER_DB": str(tmp_path / "x.db")})
    assert default_db_path(settings) == tmp_path / "x.db"
    assert default_db_path(Settings.from_env({})).name == "api.db"
    assert "trio-worker" in str(default_db_path(Settings.from_env({})))
