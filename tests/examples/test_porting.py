"""examples/porting: the port of a Prefect custom worker runs a flow run to the end.

Driven as a Prefect user drives theirs: ``start(run_once=True)`` without
``async with``, a pool created by the worker (its variables schema derived
from the configuration class), a deployment setting the worker's own job
variable, and the run's logs read back from the API.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

import pytest
import trio

from tests.helpers import make_deployment, python_command, wait_for_state
from trio_worker import PrefectClient, Settings
from trio_worker.models import StateType

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "porting"
FINAL = (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED)


@pytest.fixture
def nice_worker(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(EXAMPLE))
    return importlib.import_module("nice_worker")


async def test_the_ported_worker_runs_a_flow_run_at_its_niceness(
    nice_worker: ModuleType, api_url: str, tmp_path: Path
) -> None:
    settings = Settings(api_url=api_url, query_seconds=0.2, prefetch_seconds=0)
    out = tmp_path / "niceness.txt"
    write_niceness = python_command(
        "import os, sys; open(sys.argv[1], 'w').write(str(os.nice(0)))", str(out)
    )
    async with PrefectClient(api_url) as client:
        # The worker creates its pool with the schema derived from its configuration.
        worker = nice_worker.NiceWorker("nice-pool", settings=settings, work_queues=None)
        with trio.fail_after(30):
            await worker.start(run_once=True, printer=lambda _: None)
        pool = await client.read_work_pool("nice-pool")
        assert pool.base_job_template["variables"]["properties"]["niceness"]["default"] == 10

        deployment = await make_deployment(
            client, "nice-pool", job_variables={"niceness": 3, "command": write_niceness}
        )
        flow_run = await client.create_flow_run_from_deployment(deployment.id)
        worker = nice_worker.NiceWorker("nice-pool", settings=settings)
        with trio.fail_after(30):
            await worker.start(run_once=True, printer=lambda _: None)
        done = await wait_for_state(client, flow_run.id, FINAL)
        logs = [log.message for log in await client.read_logs(flow_run.id)]
    assert done.state is not None and done.state.type is StateType.COMPLETED, done.state
    assert int(out.read_text()) == min(os.nice(0) + 3, 19)
    assert worker.started_runs == 1
    assert any(message.endswith("at niceness +3") for message in logs), logs
