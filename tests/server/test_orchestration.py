"""The state rules of §3.8, through real HTTP: who may move a run where, and what they get back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import trio

from tests.server.conftest import make_deployment, make_run, propose


async def _run(client: httpx.AsyncClient, **extra: Any) -> dict[str, Any]:
    deployment = await make_deployment(client, **extra)
    return await make_run(client, deployment["id"])


async def test_two_concurrent_pending_proposals_exactly_one_accepted(
    client: httpx.AsyncClient,
) -> None:
    runs = [await _run(client) for _ in range(5)]
    for run in runs:
        results: list[httpx.Response] = []

        async def claim(run_id: str, results: list[httpx.Response]) -> None:
            results.append(await propose(client, run_id, "PENDING"))

        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(claim, run["id"], results)
        statuses = sorted(r.json()["status"] for r in results)
        assert statuses == ["ABORT", "ACCEPT"]
        codes = sorted(r.status_code for r in results)
        assert codes == [200, 201]
        aborted = next(r.json() for r in results if r.json()["status"] == "ABORT")
        assert aborted["details"] == {
            "type": "abort_details",
            "reason": "This run is in a PENDING state and cannot transition to a PENDING state.",
        }
        history = await client.get("/flow_run_states/", params={"flow_run_id": run["id"]})
        assert [s["type"] for s in history.json()] == ["SCHEDULED", "PENDING"]


async def test_happy_path_sets_times_and_run_count(client: httpx.AsyncClient) -> None:
    run = await _run(client)
    assert (await propose(client, run["id"], "PENDING")).json()["status"] == "ACCEPT"
    submitting = await propose(client, run["id"], "PENDING", name="Submitting")
    assert submitting.status_code == 201 and submitting.json()["status"] == "ACCEPT"
    running = await propose(client, run["id"], "RUNNING")
    assert running.status_code == 201
    mid = (await client.get(f"/flow_runs/{run['id']}")).json()
    assert mid["start_time"] is not None and mid["run_count"] == 1 and mid["end_time"] is None
    done = await propose(client, run["id"], "COMPLETED")
    assert done.status_code == 201 and done.json()["status"] == "ACCEPT"
    final = (await client.get(f"/flow_runs/{run['id']}")).json()
    assert final["state_type"] == "COMPLETED" and final["end_time"] is not None
    assert final["start_time"] == mid["start_time"]


async def test_pending_lock_from_running_and_cancelled(client: httpx.AsyncClient) -> None:
    run = await _run(client)
    await propose(client, run["id"], "PENDING")
    await propose(client, run["id"], "RUNNING")
    aborted = await propose(client, run["id"], "PENDING")
    assert aborted.status_code == 200
    assert aborted.json()["details"]["reason"] == (
        "This run is in a RUNNING state and cannot transition to a PENDING state."
    )
    assert aborted.json()["state"]["type"] == "RUNNING"
    await propose(client, run["id"], "CANCELLED", force=True)
    again = await propose(client, run["id"], "PENDING")
    assert again.json()["status"] == "ABORT"


async def test_cancelling_only_goes_to_cancelled(client: httpx.AsyncClient) -> None:
    run = await _run(client)
    await propose(client, run["id"], "PENDING")
    await client.patch(f"/flow_runs/{run['id']}", json={"infrastructure_pid": "4242"})
    cancelling = await propose(client, run["id"], "CANCELLING", message="user asked")
    assert cancelling.json()["status"] == "ACCEPT"
    for state_type in ("PENDING", "COMPLETED", "CRASHED"):
        rejected = await propose(client, run["id"], state_type)
        assert rejected.status_code == 200
        assert rejected.json()["status"] == "REJECT"
        assert rejected.json()["details"]["reason"] == (
            "Cannot transition flows that are cancelling to a state other than Cancelled."
        )
        assert rejected.json()["state"]["type"] == "CANCELLING"
    cancelled = await propose(client, run["id"], "CANCELLED")
    assert cancelled.json()["status"] == "ACCEPT"


async def test_scheduled_without_pid_cancelling_becomes_cancelled(
    client: httpx.AsyncClient,
) -> None:
    run = await _run(client)
    response = await propose(client, run["id"], "CANCELLING")
    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "REJECT"
    assert body["details"]["reason"] == "Scheduled flow run has no infrastructure to terminate."
    assert body["state"]["type"] == "CANCELLED"
    assert (await client.get(f"/flow_runs/{run['id']}")).json()["state_type"] == "CANCELLED"


async def test_terminal_states_not_overwritten_unless_forced(client: httpx.AsyncClient) -> None:
    run = await _run(client)
    for state_type in ("PENDING", "RUNNING", "CRASHED"):
        await propose(client, run["id"], state_type)
    for state_type in ("CRASHED", "CANCELLING", "PAUSED", "COMPLETED", "RUNNING"):
        aborted = await propose(client, run["id"], state_type)
        assert aborted.json()["status"] == "ABORT", state_type
        assert aborted.json()["details"]["reason"] == "Run is already in terminal state CRASHED."
    forced = await propose(client, run["id"], "CANCELLED", force=True)
    assert forced.status_code == 201 and forced.json()["status"] == "ACCEPT"
    # a crashed/failed run may be re-run: PENDING is accepted (Prefect's behaviour)
    rerun = await _run(client)
    for state_type in ("PENDING", "RUNNING", "FAILED", "PENDING"):
        result = await propose(client, rerun["id"], state_type)
        assert result.json()["status"] == "ACCEPT", state_type


async def test_completed_with_persisted_result_rejects_rerun(client: httpx.AsyncClient) -> None:
    run = await _run(client)
    for state_type in ("PENDING", "RUNNING"):
        await propose(client, run["id"], state_type)
    await propose(client, run["id"], "COMPLETED", data={"storage_key": "/x", "type": "pickle"})
    rejected = await propose(client, run["id"], "PENDING")
    assert rejected.json()["status"] == "REJECT"
    assert rejected.json()["details"]["reason"] == "Run is already COMPLETED."


async def test_transition_id_makes_retries_idempotent(client: httpx.AsyncClient) -> None:
    run = await _run(client)
    details = {"transition_id": "a95b7997-0000-4000-8000-000000000001"}
    first = await propose(client, run["id"], "PENDING", state_details=details)
    retry = await propose(client, run["id"], "PENDING", state_details=details)
    assert first.json()["status"] == "ACCEPT"
    assert retry.status_code == 200 and retry.json()["status"] == "REJECT"
    assert retry.json()["details"]["reason"] == "This run has already made this state transition."
    assert retry.json()["state"]["id"] == first.json()["state"]["id"]


async def test_running_before_scheduled_time_waits(client: httpx.AsyncClient) -> None:
    deployment = await make_deployment(client)
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    run = await make_run(
        client,
        deployment["id"],
        state={"type": "SCHEDULED", "state_details": {"scheduled_time": later}},
    )
    await propose(client, run["id"], "PENDING")
    wait = await propose(client, run["id"], "RUNNING")
    assert wait.status_code == 200 and wait.json()["status"] == "WAIT"
    assert 3500 <= wait.json()["details"]["delay_seconds"] <= 3600
    assert wait.json()["details"]["reason"] == "Scheduled time is in the future"


async def test_unknown_run_is_404_in_orchestration_shape(client: httpx.AsyncClient) -> None:
    run_id = "00000000-0000-4000-8000-000000000000"
    response = await propose(client, run_id, "PENDING")
    assert response.status_code == 404
    assert response.json() == {"exception_message": f"Flow run with id {run_id} not found"}


async def test_deployment_concurrency_limit_parks_extra_runs(client: httpx.AsyncClient) -> None:
    deployment = await make_deployment(client, concurrency_limit=1)
    first = await make_run(client, deployment["id"])
    second = await make_run(client, deployment["id"])
    assert (await propose(client, first["id"], "PENDING")).json()["status"] == "ACCEPT"
    parked = await propose(client, second["id"], "PENDING")
    assert parked.status_code == 201
    assert parked.json()["status"] == "REJECT"
    state = parked.json()["state"]
    assert (state["type"], state["name"]) == ("SCHEDULED", "AwaitingConcurrencySlot")
    assert state["state_details"]["scheduled_time"] > state["timestamp"]
    await propose(client, first["id"], "RUNNING")
    await propose(client, first["id"], "COMPLETED")  # frees the slot
    retried = await propose(client, second["id"], "PENDING")
    assert retried.json()["status"] == "ACCEPT"


async def test_pool_and_queue_limits_and_pauses_cap_offers(client: httpx.AsyncClient) -> None:
    deployment = await make_deployment(client)
    runs = [await make_run(client, deployment["id"]) for _ in range(3)]
    poll = "/work_pools/pool-a/get_scheduled_flow_runs"
    assert len((await client.post(poll, json={})).json()) == 3
    await client.patch("/work_pools/pool-a", json={"concurrency_limit": 2})
    await propose(client, runs[0]["id"], "PENDING")
    assert len((await client.post(poll, json={})).json()) == 1
    await client.patch("/work_pools/pool-a", json={"concurrency_limit": None})
    await client.patch("/work_pools/pool-a/queues/default", json={"concurrency_limit": 1})
    assert (await client.post(poll, json={})).json() == []
    await client.patch("/work_pools/pool-a/queues/default", json={"concurrency_limit": None})
    await client.patch("/work_pools/pool-a/queues/default", json={"is_paused": True})
    assert (await client.post(poll, json={})).json() == []
    await client.patch("/work_pools/pool-a/queues/default", json={"is_paused": False})
    await client.patch("/work_pools/pool-a", json={"is_paused": True})
    assert (await client.post(poll, json={})).json() == []


async def test_queue_priority_orders_offers(client: httpx.AsyncClient) -> None:
    deployment = await make_deployment(client)
    await client.post("/work_pools/pool-a/queues", json={"name": "urgent", "priority": 1})
    await client.patch("/work_pools/pool-a/queues/default", json={"priority": 2})
    normal = await make_run(client, deployment["id"])
    urgent = await make_run(client, deployment["id"], work_queue_name="urgent")
    offers = (await client.post("/work_pools/pool-a/get_scheduled_flow_runs", json={})).json()
    assert [o["flow_run"]["id"] for o in offers] == [urgent["id"], normal["id"]]
    only = await client.post(
        "/work_pools/pool-a/get_scheduled_flow_runs", json={"work_queue_names": ["default"]}
    )
    assert [o["flow_run"]["id"] for o in only.json()] == [normal["id"]]
