"""Fixtures for the interop scenarios: one scenario code, two backends.

The backend is whatever ``api_url`` yields: the embedded API by default, a real
Prefect server under ``nox -s prefect`` (``--api=URL``). Workers run as users
run them, ``python -m trio_worker start`` in a subprocess; pools, pauses and
cancellations go through Prefect's own CLI when the ``prefect`` package is
importable here, else through trio-worker's equivalent commands.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from tests.helpers import clean_env, wait_for
from trio_worker._client._client import PrefectClient

#: Prefect's own CLI and Python API, only where the package is installed (nox -s prefect).
PREFECT_INSTALLED = importlib.util.find_spec("prefect") is not None

# Scenarios that need Prefect's Python API are not collected without it:
# nothing is skipped, the default session simply has no such tests.
collect_ignore = [] if PREFECT_INSTALLED else ["test_prefect_only.py"]

#: Short intervals so each scenario takes seconds (Prefect's defaults are 10 s and 30 s).
WORKER_ENV = {
    "PREFECT_WORKER_QUERY_SECONDS": "0.5",
    "PREFECT_WORKER_HEARTBEAT_SECONDS": "2",
    "PREFECT_WORKER_PREFETCH_SECONDS": "0",
}


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """``"embedded"`` or ``"prefect"``: which API the scenario talks to."""
    return "embedded" if request.config.getoption("--api") == "embedded" else "prefect"


@pytest.fixture
async def client(api_url: str) -> AsyncIterator[PrefectClient]:
    """A client that rides out a busy SQLite server's 503s."""
    async with PrefectClient(api_url, backoff_seconds=0.2) as opened:
        yield opened


@pytest.fixture
def pool_name() -> str:
    """A fresh pool name: the Prefect server is shared by the whole session."""
    return f"interop-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def env(api_url: str, tmp_path: Path) -> dict[str, str]:
    """The environment of every subprocess a scenario starts."""
    home = tmp_path / "prefect-home"
    home.mkdir()
    return {
        **clean_env(),
        **WORKER_ENV,
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


@attrs.frozen
class Done:
    """What one command did."""

    returncode: int
    output: str


Cli = Callable[..., Awaitable[Done]]


@pytest.fixture
def cli(env: dict[str, str], tmp_path: Path) -> Cli:
    """``await cli("work-pool", "create", name, ...)``: Prefect's CLI if installed, else ours.

    Only commands both CLIs spell the same way are used through this.
    """

    async def run(*args: str, check: bool = True) -> Done:
        if PREFECT_INSTALLED:
            command = [shutil.which("prefect") or "prefect", *args]
        else:
            command = [sys.executable, "-m", "trio_worker", *args]
        with trio.fail_after(120):
            done = await trio.run_process(
                command,
                env=env,
                cwd=tmp_path,
                capture_stdout=True,
                stderr=subprocess.STDOUT,
                check=False,
            )
        result = Done(done.returncode, done.stdout.decode(errors="replace"))
        if check:
            assert result.returncode == 0, (command, result.output)
        return result

    return run


@attrs.define
class RunningWorker:
    """A ``trio-worker start`` subprocess."""

    process: trio.Process
    log: Path
    name: str

    def output(self) -> str:
        """Everything the worker printed so far."""
        return self.log.read_text(errors="replace")


WorkerFactory = Callable[..., Any]


def _stop_group(process: trio.Process, sig: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


@pytest.fixture
def start_worker(env: dict[str, str], pool_name: str, tmp_path: Path) -> WorkerFactory:
    """``async with start_worker("--limit", "2") as worker``: ``trio-worker start`` on the pool.

    Entered once the worker has said it started; on exit it gets SIGTERM (drain
    for at most 2 s), then its process group is killed.
    """

    @asynccontextmanager
    async def start(*args: str, pool: str | None = None, name: str | None = None) -> Any:
        name = name or f"tw-{uuid.uuid4().hex[:6]}"
        log = tmp_path / f"worker-{name}.log"
        command = [sys.executable, "-m", "trio_worker", "start", "--pool", pool or pool_name]
        command += ["--name", name, "--drain-timeout", "2", "--cancel-grace-seconds", "2", *args]
        with log.open("wb") as out:
            process = await trio.lowlevel.open_process(
                command, env=env, cwd=tmp_path, stdout=out, stderr=out, start_new_session=True
            )
        worker = RunningWorker(process, log, name)
        try:

            async def started() -> bool:
                assert process.poll() is None, f"worker exited early:\n{worker.output()}"
                return "started!" in worker.output()

            await wait_for(started, timeout=60, what=f"worker {name} to start")
            yield worker
        finally:
            with trio.CancelScope(shield=True):
                _stop_group(process, signal.SIGTERM)
                with trio.move_on_after(10):
                    await process.wait()
                _stop_group(process, signal.SIGKILL)
                await process.wait()

    return start
