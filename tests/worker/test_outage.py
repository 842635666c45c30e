"""An API outage longer than the client's retries loses no run.

The two answers a run's fate hangs on are the PENDING proposal (does this
worker own the run?) and the final state (how did it end?). A proxy refuses
every state proposal for a while, longer than the client's own retries last;
the worker keeps asking, and once the API answers again the run starts once
and ends COMPLETED instead of being left PENDING or RUNNING.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from tests.helpers import make_deployment, python_command, wait_for, wait_for_state
from tests.proxy import Fault, faulty_proxy
from tests.worker.conftest import WorkerFactory, fast_settings
from trio_worker._client._client import PrefectClient
from trio_worker._core._models import StateType

FINAL = (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED)

#: The client tries twice, then gives up: a longer outage is the worker's business.
CLIENT_ATTEMPTS = 2


async def test_state_proposals_outlast_an_outage(
    api_url: str,
    client: PrefectClient,
    running_worker: WorkerFactory,
    pool_name: str,
    state_dir: Path,
    tmp_path: Path,
) -> None:
    outage = True

    def set_state_outage(path: str, number: int) -> Fault:
        return "refuse" if outage and path.endswith("/set_state") else None

    go, marks = tmp_path / "go", tmp_path / "marks"
    marks.mkdir()
    code = (
        "import os, pathlib, sys, time\n"
        "pathlib.Path(sys.argv[2], os.environ['PREFECT__FLOW_RUN_ID']).touch(exist_ok=False)\n"
        "while not os.path.exists(sys.argv[1]): time.sleep(0.05)\n"
    )
    deployment = await make_deployment(
        client, pool_name, job_variables={"command": python_command(code, str(go), str(marks))}
    )
    run = await client.create_flow_run_from_deployment(deployment.id)

    async with faulty_proxy(api_url, set_state_outage) as (proxy, proxy_url):
        settings = attrs.evolve(
            fast_settings(proxy_url, state_dir), max_retries=CLIENT_ATTEMPTS - 1
        )

        async def refused_beyond_the_client(since: int) -> bool:
            return proxy.failures["refuse"] > since + CLIENT_ATTEMPTS

        async with running_worker(settings=settings) as worker:
            # The PENDING proposal meets the outage and outlasts the client's retries.
            await wait_for(lambda: refused_beyond_the_client(0), what="PENDING refused")
            assert not list(marks.iterdir()), "started before PENDING was accepted"
            outage = False

            async def started() -> bool:
                tracked = worker.in_flight.get(run.id)
                return tracked is not None and tracked.infrastructure_pid is not None

            await wait_for(started, what="the run's process to start")
            # Its final report meets the next outage.
            outage = True
            refused = proxy.failures["refuse"]
            go.touch()
            await wait_for(lambda: refused_beyond_the_client(refused), what="COMPLETED refused")
            outage = False
            done = await wait_for_state(client, run.id, FINAL)

    assert done.state is not None
    assert done.state.type is StateType.COMPLETED, done.state
    assert [mark.name for mark in marks.iterdir()] == [str(run.id)]
