"""The liveness rules of the embedded API, with the clock in the test's hands.

Signals (heartbeats, claims, acks) go to a real embedded API over HTTP; the
rules are then applied as of an explicit time by :func:`sweep` on the same
database file (the API's own service is set far off, so only the test's
sweeps act). The service itself is tested under ``MockClock``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from trio_websocket import open_websocket_url

from tests.server.conftest import captured, make_deployment, make_run, propose
from tests.server.test_events import ws_url
from tests.server.test_task_runs import KEY, SUBSCRIPTION, receive_run, submit, subscribe
from trio_worker._server._common import format_time
from trio_worker._server._events import EventBus
from trio_worker._server._liveness import LivenessCounts, LivenessRules, serve_liveness, sweep
from trio_worker._server._storage import Tx, open_database
from trio_worker._server._task_queue import TaskQueue
from trio_worker.testing import open_embedded_api

FAR: LivenessRules = LivenessRules(heartbeat_timeout=3600, pending_timeout=3600, task_lease=3600)
"""The API's own thresholds in these tests: its service never acts within a test."""

RULES = LivenessRules()
"""The defaults the test sweeps apply: 90 s, 90 s, 60 s."""


@pytest.fixture
async def db_path(tmp_path: Path) -> Path:
    return tmp_path / "api.db"


@pytest.fixture
async def client(db_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        open_embedded_api(db_path, liveness=FAR) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as c,
    ):
        yield c


async def sweep_at(db_path: Path, at: datetime, rules: LivenessRules = RULES) -> LivenessCounts:
    """Apply the rules once as of ``at`` on the API's database file."""
    async with open_database(db_path) as db:
        return await db.run(lambda tx: sweep(tx, EventBus(), TaskQueue(), rules, at))


async def state_of(client: httpx.AsyncClient, run_id: str, kind: str = "flow_runs") -> Any:
    response = await client.get(f"/{kind}/{run_id}")
    assert response.status_code == 200, response.text
    return response.json()


async def holder_of(client: httpx.AsyncClient, run_id: str, kind: str = "flow_runs") -> Any:
    """``{"held_by", "held_since"}`` of a run, or None when nobody holds it."""
    body = {"flow_run_ids" if kind == "flow_runs" else "task_run_ids": [run_id]}
    response = await client.post("/liveness/holders", json=body)
    assert response.status_code == 200, response.text
    return response.json()[kind].get(run_id)


async def heartbeat_event(client: httpx.AsyncClient, run_id: str) -> None:
    event = {
        "event": "prefect.flow-run.heartbeat",
        "resource": {"prefect.resource.id": f"prefect.flow-run.{run_id}"},
        "occurred": format_time(datetime.now(UTC)),
        "id": str(uuid.uuid4()),
    }
    assert (await client.post("/events", json=[event])).status_code == 204


async def worker_heartbeat(client: httpx.AsyncClient, name: str, *run_ids: str) -> None:
    body = {"name": name, "heartbeat_interval_seconds": 30, "flow_run_ids": list(run_ids)}
    response = await client.post("/work_pools/pool-a/workers/heartbeat", json=body)
    assert response.status_code == 204, response.text


async def running_run(client: httpx.AsyncClient, **deployment: Any) -> dict[str, Any]:
    """A run claimed (PENDING), given a pid and RUNNING, as a worker and its engine do."""
    dep = await make_deployment(client, **deployment)
    run = await make_run(client, dep["id"])
    assert (await propose(client, run["id"], "PENDING")).json()["status"] == "ACCEPT"
    patch = await client.patch(f"/flow_runs/{run['id']}", json={"infrastructure_pid": "h:1"})
    assert patch.status_code == 204
    assert (await propose(client, run["id"], "RUNNING")).json()["status"] == "ACCEPT"
    return run


def later(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


async def test_running_run_without_heartbeats_is_crashed_and_frees_its_slot(
    client: httpx.AsyncClient, db_path: Path
) -> None:
    run = await running_run(client, concurrency_limit=1)
    await heartbeat_event(client, run["id"])
    await worker_heartbeat(client, "w-1", run["id"])
    waiting = await make_run(client, run["deployment_id"])
    parked = await propose(client, waiting["id"], "PENDING")
    assert parked.json()["status"] == "REJECT"  # the slot is held by the first run

    assert (await sweep_at(db_path, later(60))).total() == 0  # two missed heartbeats: alive
    assert (await state_of(client, run["id"]))["state_type"] == "RUNNING"
    counts = await sweep_at(db_path, later(91))
    assert counts.flow_runs_crashed == 1
    crashed = await state_of(client, run["id"])
    assert crashed["state_type"] == "CRASHED"
    message = crashed["state"]["message"]
    assert "prefect.flow-run.heartbeat" in message and "'w-1'" in message
    assert await holder_of(client, run["id"]) is None
    assert (await propose(client, waiting["id"], "PENDING")).json()["status"] == "ACCEPT"


async def test_worker_listing_a_run_keeps_it_alive(
    client: httpx.AsyncClient, db_path: Path
) -> None:
    run = await running_run(client)
    await worker_heartbeat(client, "w-1", run["id"])
    held = await holder_of(client, run["id"])
    assert held["held_by"] == "w-1" and held["held_since"] is not None
    assert (await sweep_at(db_path, later(70))).total() == 0
    await worker_heartbeat(client, "w-1", run["id"])  # a later heartbeat, still listing it
    assert (await holder_of(client, run["id"]))["held_since"] == held["held_since"]
    assert (await sweep_at(db_path, later(70))).total() == 0
    assert (await state_of(client, run["id"]))["state_type"] == "RUNNING"


async def test_engine_heartbeats_alone_keep_a_run_alive(
    client: httpx.AsyncClient, db_path: Path
) -> None:
    run = await running_run(client)
    await heartbeat_event(client, run["id"])
    assert (await sweep_at(db_path, later(70))).total() == 0
    assert (await sweep_at(db_path, later(100))).flow_runs_crashed == 1


async def test_a_run_nobody_watches_is_left_alone(client: httpx.AsyncClient, db_path: Path) -> None:
    # RUNNING without a pid or any heartbeat: e.g. a flow called directly, not by a worker.
    dep = await make_deployment(client)
    run = await make_run(client, dep["id"])
    await propose(client, run["id"], "RUNNING")
    assert (await sweep_at(db_path, later(3600))).total() == 0


async def test_cancelling_run_whose_owner_died_becomes_cancelled(
    client: httpx.AsyncClient, db_path: Path
) -> None:
    run = await running_run(client)
    await propose(client, run["id"], "CANCELLING")
    assert (await sweep_at(db_path, later(100))).flow_runs_cancelled == 1
    assert (await state_of(client, run["id"]))["state_type"] == "CANCELLED"


async def test_stale_claim_released_once_then_crashed(
    client: httpx.AsyncClient, db_path: Path
) -> None:
    dep = await make_deployment(client, concurrency_limit=1)
    run = await make_run(client, dep["id"])
    await propose(client, run["id"], "PENDING")
    await worker_heartbeat(client, "w-dead", run["id"])
    assert (await sweep_at(db_path, later(60))).total() == 0
    counts = await sweep_at(db_path, later(91))
    assert counts.claims_released == 1
    released = await state_of(client, run["id"])
    assert released["state_type"] == "SCHEDULED"
    assert await holder_of(client, run["id"]) is None
    assert "'w-dead'" in released["state"]["message"]
    offered = await client.post("/work_pools/pool-a/get_scheduled_flow_runs", json={})
    assert run["id"] in [r["flow_run"]["id"] for r in offered.json()]

    await propose(client, run["id"], "PENDING")  # claimed again, and again never started
    counts = await sweep_at(db_path, later(200))
    assert (counts.claims_released, counts.claims_crashed) == (0, 1)
    crashed = await state_of(client, run["id"])
    assert crashed["state_type"] == "CRASHED"
    assert "not released twice" in crashed["state"]["message"]


async def test_claim_a_live_worker_lists_or_that_started_is_not_released(
    client: httpx.AsyncClient, db_path: Path
) -> None:
    dep = await make_deployment(client)
    listed = await make_run(client, dep["id"])
    command = await make_run(client, dep["id"])
    for run in (listed, command):
        await propose(client, run["id"], "PENDING")
    # A plain command run stays PENDING while its process lives: it has a pid.
    await client.patch(f"/flow_runs/{command['id']}", json={"infrastructure_pid": "h:2"})
    await worker_heartbeat(client, "w-live", listed["id"], command["id"])
    # The worker lives on: its heartbeat 100 s later lists both runs again.
    seen = format_time(later(100))
    async with open_database(db_path) as db:
        await db.run(lambda tx: tx.execute("UPDATE flow_runs SET holder_seen = ?", (seen,)))
    assert (await sweep_at(db_path, later(120), LivenessRules(heartbeat_timeout=3600))).total() == 0
    assert (await state_of(client, listed["id"]))["state_type"] == "PENDING"
    # The started one is under the heartbeat rule instead: CRASHED, never released.
    counts = await sweep_at(db_path, later(4000), LivenessRules(pending_timeout=7200))
    assert (counts.flow_runs_crashed, counts.claims_released) == (1, 0)
    assert (await state_of(client, command["id"]))["state_type"] == "CRASHED"


async def test_heartbeat_refuses_bad_run_ids(client: httpx.AsyncClient) -> None:
    await make_deployment(client)
    body = {"name": "w", "flow_run_ids": ["not-a-uuid"]}
    response = await client.post("/work_pools/pool-a/workers/heartbeat", json=body)
    assert response.status_code == 422
    assert response.json()["exception_detail"][0]["loc"][:2] == ["body", "flow_run_ids"]
    too_many = {"name": "w", "flow_run_ids": [str(uuid.uuid4()) for _ in range(10_001)]}
    response = await client.post("/work_pools/pool-a/workers/heartbeat", json=too_many)
    assert response.status_code == 422


# -- task-run leases ---------------------------------------------------------------------


async def _deliver_and_ack(client: httpx.AsyncClient, run: dict[str, Any]) -> None:
    """Take ``run`` as task worker 'vm-1': PENDING, ack, RUNNING; then vanish."""
    url = ws_url(str(client.base_url).rstrip("/"), SUBSCRIPTION)
    async with open_websocket_url(url, subprotocols=["prefect"]) as ws:
        await subscribe(ws)
        got = await receive_run(ws)
        assert got["id"] == run["id"]
        await client.post(
            f"/task_runs/{run['id']}/set_state",
            json={"state": {"type": "PENDING", "state_details": {"deferred": True}}},
        )
        await ws.send_message(json.dumps({"type": "ack"}))
        await client.post(f"/task_runs/{run['id']}/set_state", json={"state": {"type": "RUNNING"}})
    # The ack is recorded when the server is done with the connection.
    with trio.fail_after(10):
        while await holder_of(client, run["id"], "task_runs") is None:
            await trio.sleep(0.01)


async def test_lapsed_lease_crashes_a_task_without_retries(
    client: httpx.AsyncClient, db_path: Path
) -> None:
    run = await submit(client)
    await _deliver_and_ack(client, run)
    held = await holder_of(client, run["id"], "task_runs")
    assert held["held_by"] == "vm-1"
    renewed = await client.post(
        "/task_runs/renew_leases", json={"client_id": "vm-1", "task_run_ids": [run["id"]]}
    )
    assert renewed.json() == {"lease_seconds": FAR.lease_seconds, "lost": []}
    counts = await sweep_at(db_path, later(2 * 3600))
    assert counts.task_runs_crashed == 1
    crashed = await state_of(client, run["id"], "task_runs")
    assert crashed["state_type"] == "CRASHED"
    assert "task worker 'vm-1' stopped renewing its lease" in crashed["state"]["message"]
    lost = await client.post(
        "/task_runs/renew_leases", json={"client_id": "vm-1", "task_run_ids": [run["id"]]}
    )
    assert lost.json()["lost"] == [run["id"]]


async def test_lapsed_lease_redelivers_a_task_with_retries(
    client: httpx.AsyncClient, db_path: Path
) -> None:
    # A task with one retry (Prefect's empirical_policy.retries).
    body = captured("task_run_create.json")
    body["dynamic_key"] = f"retry-{uuid.uuid4().hex}"
    body["task_key"] = KEY
    body["empirical_policy"] = {"retries": 1, "max_retries": 1}
    run = (await client.post("/task_runs/", json=body)).json()
    await _deliver_and_ack(client, run)
    assert (await sweep_at(db_path, later(2 * 3600))).task_runs_redelivered == 1
    again = await state_of(client, run["id"], "task_runs")
    assert (again["state_type"], again["state_name"]) == ("SCHEDULED", "AwaitingRetry")
    assert again["state"]["state_details"]["deferred"] is True
    # Delivered to the next subscriber; its lease lapsing again uses up the retry.
    await _deliver_and_ack(client, run)
    # A late report of the first holder (run count 1) does not overwrite the second run
    # (PENDING here: the test's sweep, hours ahead, scheduled the redelivery in the future).
    late = {
        "event": "prefect.task-run.Completed", "id": str(uuid.uuid4()),
        "occurred": format_time(datetime.now(UTC)),
        "resource": {"prefect.resource.id": f"prefect.task-run.{run['id']}",
                     "prefect.run-count": "1", "prefect.orchestration": "client"},
        "payload": {"validated_state": {"type": "COMPLETED", "name": "Completed"}},
    }  # fmt: skip
    assert (await client.post("/events", json=[late])).status_code == 204
    assert (await state_of(client, run["id"], "task_runs"))["state_type"] == "PENDING"
    assert (await sweep_at(db_path, later(3 * 3600))).task_runs_crashed == 1


async def test_metrics_count_what_the_rules_did(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert 'trio_worker_server_liveness_runs_total{action="flow_runs_crashed"} 0' in response.text


async def test_holders_validates_its_body(client: httpx.AsyncClient) -> None:
    response = await client.post("/liveness/holders", json={"flow_run_ids": [1]})
    assert response.status_code == 422
    assert (await client.post("/liveness/holders", json={})).json() == {
        "flow_runs": {},
        "task_runs": {},
    }


async def test_renewal_validates_its_body(client: httpx.AsyncClient) -> None:
    response = await client.post("/task_runs/renew_leases", json={"client_id": "x"})
    assert response.status_code == 422
    response = await client.post(
        "/task_runs/renew_leases", json={"client_id": "x", "task_run_ids": ["nope"]}
    )
    assert response.status_code == 422


# -- the service, under a mock clock -----------------------------------------------------


def _insert_running_run(tx: Tx, run_id: str, at: datetime) -> None:
    stamp = format_time(at)
    state = {
        "id": str(uuid.uuid4()), "type": "RUNNING", "name": "Running", "timestamp": stamp,
        "message": None, "data": None, "state_details": {"flow_run_id": run_id},
    }  # fmt: skip
    tx.insert("flows", {"id": "f", "created": stamp, "updated": stamp, "name": "f",
                        "tags": "[]", "labels": "{}"})  # fmt: skip
    tx.insert("flow_runs", {
        "id": run_id, "created": stamp, "updated": stamp, "name": "r", "flow_id": "f",
        "state_id": state["id"], "state_type": "RUNNING", "state_name": "Running",
        "state": json.dumps(state), "infrastructure_pid": "h:1", "heartbeat_at": stamp,
        "body": json.dumps({"tags": []}),
    })  # fmt: skip


async def test_service_crashes_a_dead_run_within_the_timeout(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)

    def clock() -> datetime:
        return base + timedelta(seconds=trio.current_time())

    run_id = str(uuid.uuid4())
    counts = LivenessCounts()
    async with open_database(tmp_path / "api.db") as db:
        at = clock()
        await db.run(lambda tx: _insert_running_run(tx, run_id, at))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: serve_liveness(db, EventBus(), TaskQueue(), RULES, counts, clock=clock)
            )
            while (
                await db.run(
                    lambda tx: tx.scalar("SELECT state_type FROM flow_runs WHERE id = ?", (run_id,))
                )
                == "RUNNING"
            ):
                await trio.sleep(1)
            nursery.cancel_scope.cancel()
        state = json.loads(
            await db.run(
                lambda tx: tx.scalar("SELECT state FROM flow_runs WHERE id = ?", (run_id,))
            )
        )
    assert counts.flow_runs_crashed == 1 and state["type"] == "CRASHED"
    # Final within the timeout of the last heartbeat (at ``at``), and not before it was due.
    crashed_after = (datetime.fromisoformat(state["timestamp"]) - at).total_seconds()
    assert RULES.heartbeat_timeout * 5 / 6 < crashed_after <= RULES.heartbeat_timeout
