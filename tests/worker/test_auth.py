"""A worker against an auth-enabled embedded API hears cancellations over ``/events/out``.

The worker polls for cancellations only every 60 s here (twice a 30 s query
interval), so a run cancelled seconds after it started ends CANCELLED in time
only if the authenticated ``/events/out`` subscription delivered the event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest

from tests.helpers import make_deployment, wait_for, wait_for_state
from tests.worker.conftest import WorkerFactory, fast_settings
from trio_worker._client._client import PrefectClient
from trio_worker._core._models import State, StateType
from trio_worker._core._settings import Settings
from trio_worker.testing import open_embedded_api

SECRET = "worker:0b5e-secret"


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[str]:
    async with open_embedded_api(tmp_path / "secured.db", auth_string=SECRET) as url:
        yield url


async def test_cancellation_arrives_over_the_authenticated_event_stream(
    secured: str, running_worker: WorkerFactory, pool_name: str, state_dir: Path
) -> None:
    settings = attrs.evolve(
        fast_settings(secured, state_dir), api_auth_string=SECRET, query_seconds=30.0
    )
    async with PrefectClient(secured, settings=Settings(api_auth_string=SECRET)) as client:
        deployment = await make_deployment(
            client, pool_name, job_variables={"command": "sleep 300"}
        )
        run = await client.create_flow_run_from_deployment(deployment.id)
        async with running_worker(settings=settings, cancel_grace_seconds=0.5) as worker:

            async def started() -> bool:
                return bool((await client.read_flow_run(run.id)).infrastructure_pid)

            await wait_for(started, what="run started at the first poll")
            await client.set_flow_run_state(run.id, State.of(StateType.CANCELLING))
            done = await wait_for_state(client, run.id, [StateType.CANCELLED], timeout=20)
            assert SECRET not in repr(worker.settings)
    assert done.state is not None and done.state.type is StateType.CANCELLED


def test_credentials_never_reach_a_repr() -> None:
    from trio_worker._process._config import ProcessJobConfiguration
    from trio_worker._server import ApiSecurity

    env = {"PREFECT_API_AUTH_STRING": SECRET, "PREFECT_API_KEY": "key-123", "OTHER": "shown"}
    configuration = ProcessJobConfiguration(command="true", env=env)
    assert SECRET not in repr(configuration) and "key-123" not in repr(configuration)
    assert "shown" in repr(configuration)
    assert configuration.env["PREFECT_API_AUTH_STRING"] == SECRET  # only the repr hides it
    settings = Settings.from_env(
        {"PREFECT_SERVER_API_AUTH_STRING": SECRET, "PREFECT_API_AUTH_STRING": SECRET}
    )
    assert settings.server_api_auth_string == SECRET
    assert SECRET not in repr(settings)
    assert SECRET not in repr(ApiSecurity.from_settings(settings))
