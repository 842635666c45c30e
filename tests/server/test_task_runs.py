"""Task runs over REST and the ``/task_runs/subscriptions/scheduled`` delivery protocol."""

from __future__ import annotations

import json
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from tests.server.conftest import assert_conforms, captured
from tests.server.test_events import auth, close_of, ws_url
from trio_worker._server._schema import MIGRATIONS, SCHEMA_VERSION
from trio_worker.testing import open_embedded_api

KEY = "add-861ba364"
SUBSCRIPTION = "/task_runs/subscriptions/scheduled"


async def submit(client: httpx.AsyncClient, key: str = KEY) -> dict[str, Any]:
    body = captured("task_run_create.json")
    body["task_key"] = key
    body["dynamic_key"] = f"{key}-{uuid.uuid4().hex}"
    response = await client.post("/task_runs/", json=body)
    assert response.status_code == 201, response.text
    run: dict[str, Any] = response.json()
    return run


async def subscribe(ws: WebSocketConnection, *keys: str) -> None:
    await auth(ws)
    await ws.send_message(
        json.dumps({"type": "subscribe", "keys": list(keys or [KEY]), "client_id": "vm-1"})
    )


async def receive_run(ws: WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(10):
        run: dict[str, Any] = json.loads(await ws.get_message())
    return run


async def test_task_run_rest_create_read_state_delete(client: httpx.AsyncClient) -> None:
    run = await submit(client)
    assert_conforms(run, captured("task_run.json"))
    assert run["state"]["state_details"]["deferred"] is True
    assert (await client.get(f"/task_runs/{run['id']}")).json()["id"] == run["id"]
    running = await client.post(
        f"/task_runs/{run['id']}/set_state", json={"state": {"type": "RUNNING"}}
    )
    assert running.status_code == 201 and running.json()["status"] == "ACCEPT"
    found = await client.post(
        "/task_runs/filter", json={"task_runs": {"state": {"type": {"any_": ["RUNNING"]}}}}
    )
    assert [r["id"] for r in found.json()] == [run["id"]]
    assert (await client.delete(f"/task_runs/{run['id']}")).status_code == 204
    again = await client.delete(f"/task_runs/{run['id']}")
    assert again.status_code == 404 and again.json() == {"detail": "Task not found"}


async def test_each_run_goes_to_one_subscriber_next_only_after_ack(
    api_url: str, client: httpx.AsyncClient
) -> None:
    url = ws_url(api_url, SUBSCRIPTION)
    async with (
        open_websocket_url(url, subprotocols=["prefect"]) as first,
        open_websocket_url(url, subprotocols=["prefect"]) as second,
    ):
        await subscribe(first)
        await subscribe(second)
        runs = [await submit(client) for _ in range(4)]
        got_first = await receive_run(first)
        got_second = await receive_run(second)
        assert got_first["id"] != got_second["id"]
        # nothing more arrives before an ack
        with trio.move_on_after(0.3) as idle:
            await first.get_message()
        assert idle.cancelled_caught
        await first.send_message(json.dumps({"type": "ack"}))
        await second.send_message(json.dumps({"type": "ack"}))
        got_third = await receive_run(first)
        got_fourth = await receive_run(second)
        delivered = [got_first["id"], got_second["id"], got_third["id"], got_fourth["id"]]
        assert sorted(delivered) == sorted(r["id"] for r in runs)
        assert got_first["task_key"] == KEY and got_first["state_type"] == "SCHEDULED"


async def test_run_not_acked_before_disconnect_is_redelivered(
    api_url: str, client: httpx.AsyncClient
) -> None:
    url = ws_url(api_url, SUBSCRIPTION)
    run = await submit(client)
    async with open_websocket_url(url, subprotocols=["prefect"]) as quitter:
        await subscribe(quitter)
        assert (await receive_run(quitter))["id"] == run["id"]
    async with open_websocket_url(url, subprotocols=["prefect"]) as other:
        await subscribe(other)
        assert (await receive_run(other))["id"] == run["id"]
        await other.send_message(json.dumps({"type": "ack"}))
        with trio.move_on_after(0.3) as idle:
            await other.get_message()
        assert idle.cancelled_caught  # acked: not delivered again


async def test_queue_survives_restart(tmp_path: Path) -> None:
    db = tmp_path / "api.db"
    async with open_embedded_api(db) as url, httpx.AsyncClient(base_url=url) as client:
        waiting = await submit(client)
        acked = await submit(client, key="other-1")
        async with open_websocket_url(ws_url(url, SUBSCRIPTION), subprotocols=["prefect"]) as ws:
            await subscribe(ws, "other-1")
            assert (await receive_run(ws))["id"] == acked["id"]
            await ws.send_message(json.dumps({"type": "ack"}))
            await ws.send_message(json.dumps({"type": "quit"}))
    # legacy mode below: no subprotocol, no auth frame
    async with open_embedded_api(db) as url, open_websocket_url(ws_url(url, SUBSCRIPTION)) as ws:
        await ws.send_message(
            json.dumps({"type": "subscribe", "keys": [KEY, "other-1"], "client_id": "c"})
        )
        assert (await receive_run(ws))["id"] == waiting["id"]
        await ws.send_message(json.dumps({"type": "ack"}))
        with trio.move_on_after(0.3) as idle:
            await ws.get_message()
        assert idle.cancelled_caught


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (
            {"type": "subscribe", "client_id": "c"},
            "Protocol violation: expected 'keys' in subscribe message",
        ),
        (
            {"type": "subscribe", "keys": [KEY]},
            "Protocol violation: expected 'client_id' in subscribe message",
        ),
        ({"type": "nope"}, "Protocol violation: expected 'subscribe' message"),
    ],
)
async def test_subscribe_protocol_violations_close_4001(
    api_url: str, message: dict[str, Any], reason: str
) -> None:
    async with open_websocket_url(ws_url(api_url, SUBSCRIPTION), subprotocols=["prefect"]) as ws:
        await auth(ws)
        await ws.send_message(json.dumps(message))
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
    assert close_of(closed.value) == (4001, reason)


def client_event(run_id: str, state_type: str, name: str, occurred: datetime) -> dict[str, Any]:
    return {
        "occurred": occurred.isoformat(), "event": f"prefect.task-run.{name}",
        "resource": {"prefect.resource.id": f"prefect.task-run.{run_id}",
                     "prefect.orchestration": "client"},
        "related": [], "id": str(uuid.uuid4()), "follows": None,
        "payload": {"validated_state": {"type": state_type, "name": name,
                                        "message": None, "state_details": {}}},
    }  # fmt: skip


async def test_client_events_update_task_run_state(client: httpx.AsyncClient) -> None:
    run = await submit(client)
    at = datetime.now(UTC)
    completed = client_event(run["id"], "COMPLETED", "Completed", at + timedelta(seconds=2))
    assert (await client.post("/events", json=[completed])).status_code == 204
    assert (await client.get(f"/task_runs/{run['id']}")).json()["state_type"] == "COMPLETED"
    # An older event arriving late does not move the run back (as Prefect's recorder).
    late = client_event(run["id"], "RUNNING", "Running", at + timedelta(seconds=1))
    assert (await client.post("/events", json=[late])).status_code == 204
    assert (await client.get(f"/task_runs/{run['id']}")).json()["state_type"] == "COMPLETED"


async def submit_at(client: httpx.AsyncClient, key: str, scheduled: str) -> str:
    body = captured("task_run_create.json")
    body["task_key"] = key
    body["dynamic_key"] = f"{key}-{uuid.uuid4().hex}"
    body["state"]["state_details"]["scheduled_time"] = scheduled
    response = await client.post("/task_runs/", json=body)
    assert response.status_code == 201, response.text
    run_id: str = response.json()["id"]
    return run_id


async def test_delivery_order_retries_first_then_by_scheduled_time_across_keys(
    api_url: str, client: httpx.AsyncClient
) -> None:
    key_a, key_b = f"a-{uuid.uuid4().hex[:6]}", f"b-{uuid.uuid4().hex[:6]}"
    late = await submit_at(client, key_a, "2026-01-01T00:00:03.000000Z")
    early = await submit_at(client, key_b, "2026-01-01T00:00:01.000000Z")
    middle = await submit_at(client, key_a, "2026-01-01T00:00:02.000000Z")
    retry = await submit_at(client, key_b, "2026-01-01T00:00:09.000000Z")
    again = {"type": "SCHEDULED", "name": "AwaitingRetry", "state_details": {"deferred": True}}
    moved = await client.post(f"/task_runs/{retry}/set_state", json={"state": again, "force": True})
    assert moved.status_code == 201, moved.text
    delivered = []
    async with open_websocket_url(ws_url(api_url, SUBSCRIPTION), subprotocols=["prefect"]) as ws:
        await subscribe(ws, key_a, key_b)
        for _ in range(4):
            delivered.append((await receive_run(ws))["id"])
            await ws.send_message(json.dumps({"type": "ack"}))
    assert delivered == [retry, early, middle, late]


async def test_a_version_1_database_is_migrated_and_serves_the_queue(tmp_path: Path) -> None:
    db = tmp_path / "v1.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(MIGRATIONS[0])
        conn.execute("PRAGMA user_version = 1")
    async with open_embedded_api(db) as url, httpx.AsyncClient(base_url=url) as client:
        run = await submit(client)
        async with open_websocket_url(ws_url(url, SUBSCRIPTION), subprotocols=["prefect"]) as ws:
            await subscribe(ws)
            assert (await receive_run(ws))["id"] == run["id"]
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert "ix_task_runs_waiting" in indexes and "ix_task_runs_queue" not in indexes
