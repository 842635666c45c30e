"""Liveness signals against both APIs: heartbeats accepted, leases harmless, the automation.

Against a Prefect server (``nox -s prefect``): the engine's heartbeat events and
the worker's heartbeat listing its runs are accepted, the lease renewal is
detected as absent and skipped, and ``trio-worker automation zombie --create``
installs Prefect's documented automation once, which then crashes a run whose
heartbeats stop. Against the embedded API the same calls are accepted and the
command says no automation is needed.
"""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
import trio

from tests.helpers import make_deployment, wait_for, wait_for_state
from trio_worker._client._client import PrefectClient
from trio_worker._client._zombie_automation import AUTOMATION_NAME, install_zombie_automation
from trio_worker._core._models import Event, State, StateType
from trio_worker._engine._heartbeats import heartbeat_event

pytestmark = pytest.mark.prefect


async def _trio_worker(env: dict[str, str], *args: str) -> str:
    with trio.fail_after(120):
        done = await trio.run_process(
            [sys.executable, "-m", "trio_worker", *args],
            env=env,
            capture_stdout=True,
            stderr=subprocess.STDOUT,
            check=False,
        )
    output = done.stdout.decode(errors="replace")
    assert done.returncode == 0, output
    return output


async def _heartbeats(client: PrefectClient, run_id: uuid.UUID) -> list[Event]:
    return await client.read_events(
        {
            "event": {"name": ["prefect.flow-run.heartbeat"]},
            "resource": {"id": [f"prefect.flow-run.{run_id}"]},
        }
    )


async def test_heartbeats_are_accepted_and_leases_are_harmless(
    client: PrefectClient, pool_name: str, backend: str
) -> None:
    deployment = await make_deployment(client, pool_name)
    run = await client.create_flow_run_from_deployment(deployment.id)
    await client.set_flow_run_state(run.id, State.of(StateType.RUNNING))
    await client.emit_events([heartbeat_event(await client.read_flow_run(run.id), "flow")])
    stored = await wait_for(lambda: _heartbeats(client, run.id), what="the heartbeat stored")
    assert stored[0].resource["prefect.resource.id"] == f"prefect.flow-run.{run.id}"
    roles = {r["prefect.resource.role"] for r in stored[0].related}
    assert {"flow", "deployment"} <= roles
    # The worker's heartbeat names the runs it holds; Prefect ignores the field.
    await client.send_worker_heartbeat(
        pool_name, "holder", heartbeat_interval_seconds=30, flow_run_ids=[run.id]
    )
    assert "holder" in [w.name for w in await client.read_workers(pool_name)]
    renewal = await client.renew_task_run_leases("interop", [uuid.uuid4()])
    if backend == "prefect":
        assert renewal is None  # no leases there: the task worker stops asking
    else:
        assert renewal is not None and renewal[1] == []


async def test_zombie_automation_is_installed_once_with_the_documented_shape(
    client: PrefectClient, env: dict[str, str], backend: str
) -> None:
    if backend == "embedded":
        output = await _trio_worker(env, "automation", "zombie", "--create")
        assert "no automations" in output and "nothing to install" in output
        return
    name = f"{AUTOMATION_NAME} {uuid.uuid4().hex[:6]}"
    first = await _trio_worker(env, "automation", "zombie", "--create", "--name", name)
    second = await _trio_worker(env, "automation", "zombie", "--create", "--name", name)
    status = await _trio_worker(env, "automation", "zombie", "--name", name)
    assert "Created automation" in first, first
    assert "already installed" in second and "already installed" in status, second
    found = await client.request(
        "POST", "automations/filter", json_body={"automations": {"name": {"any_": [name]}}}
    )
    try:
        assert len(found) == 1
        trigger = found[0]["trigger"]
        assert trigger["posture"] == "Proactive"
        assert trigger["after"] == ["prefect.flow-run.heartbeat"]
        assert trigger["expect"] == ["prefect.flow-run.*"]
        assert trigger["match"] == {"prefect.resource.id": ["prefect.flow-run.*"]}
        assert trigger["for_each"] == ["prefect.resource.id"]
        assert trigger["threshold"] == 1 and float(trigger["within"]) == 90.0
        (action,) = found[0]["actions"]
        assert action["type"] == "change-flow-run-state" and action["state"] == "CRASHED"
    finally:
        for automation in found:
            await client.request("DELETE", f"automations/{automation['id']}")


async def test_zombie_automation_crashes_a_run_whose_heartbeats_stop(
    client: PrefectClient, pool_name: str, backend: str
) -> None:
    name = f"{AUTOMATION_NAME} {uuid.uuid4().hex[:6]}"
    # Prefect's shortest window; its proactive triggers are evaluated every few seconds.
    outcome = await install_zombie_automation(client, 10, name=name)
    if backend == "embedded":
        # No automations there (its own rule does this: tests/test_liveness_e2e.py).
        assert not outcome.supported and not outcome.created
        return
    assert outcome.created and outcome.automation is not None
    try:
        deployment = await make_deployment(client, pool_name)
        run = await client.create_flow_run_from_deployment(deployment.id)
        await client.set_flow_run_state(run.id, State.of(StateType.RUNNING))
        await client.emit_events([heartbeat_event(await client.read_flow_run(run.id), "flow")])
        # ... and nothing more: the process "died". Prefect crashes it 10-20 s later.
        done = await wait_for_state(client, run.id, (StateType.CRASHED,), timeout=90)
        assert done.state is not None
        assert "missing heartbeats" in (done.state.message or "")
    finally:
        await client.request("DELETE", f"automations/{outcome.automation['id']}")
