"""Cancellation is heard from the API's event stream, not only by polling.

The worker here polls for cancellations only every 60 s (twice a 30 s query
interval), so a run cancelled seconds after it started ends CANCELLED in time
only if the ``/events/out`` subscription delivered ``prefect.flow-run.Cancelling``.
This caught a filter without ``until``, which Prefect reads as "until now".
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import clean_env, make_deployment, wait_for, wait_for_state
from tests.interop.conftest import WORKER_ENV, WorkerFactory
from trio_worker._client._client import PrefectClient
from trio_worker._core._models import State, StateType

pytestmark = pytest.mark.prefect


@pytest.fixture
def env(api_url: str, tmp_path: Path) -> dict[str, str]:
    """Workers that poll rarely: only the event stream can be quick."""
    home = tmp_path / "prefect-home"
    home.mkdir(exist_ok=True)
    return {
        **clean_env(),
        **WORKER_ENV,
        "PREFECT_WORKER_QUERY_SECONDS": "30",
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(home),
        "TRIO_WORKER_STATE_DIR": str(tmp_path / "state"),
    }


async def test_cancellation_arrives_through_the_event_stream(
    client: PrefectClient, start_worker: WorkerFactory, pool_name: str
) -> None:
    deployment = await make_deployment(
        client, pool_name, name=pool_name, job_variables={"command": "sleep 300"}
    )
    run = await client.create_flow_run_from_deployment(deployment.id)
    async with start_worker():

        async def started() -> bool:
            return bool((await client.read_flow_run(run.id)).infrastructure_pid)

        await wait_for(started, timeout=60, what="run started at the first poll")
        await client.set_flow_run_state(run.id, State.of(StateType.CANCELLING))
        # Well under the 60 s polling fallback.
        done = await wait_for_state(client, run.id, [StateType.CANCELLED], timeout=20)
    assert done.state is not None
    assert done.state.type is StateType.CANCELLED
