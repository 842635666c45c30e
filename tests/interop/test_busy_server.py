"""A busy API that answers 503 and loses replies: every run still starts exactly once.

A real Prefect server on SQLite answers 503 under load, sometimes after it has
committed the request (anchors.md row 20). A proxy in front of the API under
test (embedded, or Prefect under ``nox -s prefect``) plays that server: it
refuses some requests with 503 before forwarding them, and for some state
proposals forwards them and then answers 503 anyway, so the worker's retry
meets a transition the API already made. Websockets are accepted and closed at
once, so the workers fall back to polling.
"""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers import clean_env, make_deployment, python_command, wait_for_state
from tests.interop.conftest import WORKER_ENV, WorkerFactory
from tests.proxy import Fault, FaultyProxy, faulty_proxy
from trio_worker._client._client import PrefectClient
from trio_worker._core._models import StateType

pytestmark = pytest.mark.prefect

FINAL = (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED)


def busy_server(path: str, number: int) -> Fault:
    """Refuse one request in four; lose the reply of one state proposal in four."""
    if number % 4 == 1:
        return "refuse"
    if path.endswith("/set_state") and number % 4 == 3:
        return "lose reply"
    return None


@pytest.fixture
async def flaky(api_url: str) -> AsyncIterator[tuple[FaultyProxy, str]]:
    async with faulty_proxy(api_url, busy_server) as served:
        yield served


@pytest.fixture
def env(flaky: tuple[FaultyProxy, str], tmp_path: Path) -> dict[str, str]:
    """The workers' environment: they talk to the API through the flaky proxy."""
    home = tmp_path / "prefect-home"
    home.mkdir(exist_ok=True)
    return {
        **clean_env(),
        **WORKER_ENV,
        "PREFECT_API_URL": flaky[1],
        "PREFECT_HOME": str(home),
        "TRIO_WORKER_STATE_DIR": str(tmp_path / "state"),
    }


async def test_busy_server_every_run_starts_exactly_once(
    client: PrefectClient,
    start_worker: WorkerFactory,
    flaky: tuple[FaultyProxy, str],
    pool_name: str,
    tmp_path: Path,
) -> None:
    code = textwrap.dedent(
        """
        import os, sys, pathlib
        mark = pathlib.Path(sys.argv[1], os.environ["PREFECT__FLOW_RUN_ID"])
        with mark.open("a") as f: f.write("x")
        """
    )
    marks = tmp_path / "marks"
    marks.mkdir()
    deployment = await make_deployment(
        client,
        pool_name,
        name=pool_name,
        job_variables={"command": python_command(code, str(marks))},
    )
    runs = [await client.create_flow_run_from_deployment(deployment.id) for _ in range(8)]
    async with start_worker("--limit", "3") as first, start_worker("--limit", "3") as second:
        for run in runs:
            try:
                done = await wait_for_state(client, run.id, FINAL, timeout=120)
            except AssertionError:
                history = await client.read_flow_run_states(run.id)
                states = "\n".join(f"  {s.timestamp} {s.type.value} {s.message}" for s in history)
                logs = "\n".join(f"--- {w.name}\n{w.output()}" for w in (first, second))
                raise AssertionError(f"run {run.id} states:\n{states}\n{logs}") from None
            assert done.state is not None
            assert done.state.type is StateType.COMPLETED, done.state
    proxy = flaky[0]
    assert proxy.failures["refuse"] > 0
    assert proxy.failures["lose reply"] > 0
    for run in runs:
        assert (marks / str(run.id)).read_text() == "x"
