"""Events: ``/events/in`` (both handshakes), ``POST /events``, filters, ``/events/out`` backfill + live."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from tests.server.conftest import assert_conforms, captured, make_deployment, make_run, propose


def ws_url(api_url: str, path: str) -> str:
    return api_url.replace("http://", "ws://") + path


def worker_event(name: str = "prefect.worker.started") -> dict[str, Any]:
    event: dict[str, Any] = captured("worker_started_event.json")
    event["id"] = str(uuid.uuid4())
    event["event"] = name
    event["occurred"] = datetime.now(UTC).isoformat()
    return event


def close_of(exc: ConnectionClosed) -> tuple[int, str | None]:
    """The close code and reason the server sent."""
    assert exc.reason is not None
    return exc.reason.code, exc.reason.reason


async def auth(ws: WebSocketConnection) -> None:
    await ws.send_message(json.dumps({"type": "auth", "token": None}))
    assert json.loads(await ws.get_message()) == {"type": "auth_success"}


async def wait_for_events(client: httpx.AsyncClient, name: str, count: int) -> list[Any]:
    """Poll the filter endpoint until ``count`` events named ``name`` are stored."""
    with trio.fail_after(10):
        while True:
            body = {"filter": {"event": {"name": [name]}}, "limit": 50}
            found = (await client.post("/events/filter", json=body)).json()
            if found["total"] >= count:
                return list(found["events"])
            await trio.sleep(0.02)


async def test_events_in_with_prefect_subprotocol_and_auth(
    api_url: str, client: httpx.AsyncClient
) -> None:
    async with open_websocket_url(ws_url(api_url, "/events/in"), subprotocols=["prefect"]) as ws:
        assert ws.subprotocol == "prefect"
        await auth(ws)
        event = worker_event()
        await ws.send_message(json.dumps(event))
        [stored] = await wait_for_events(client, "prefect.worker.started", 1)
    assert stored["id"] == event["id"] and stored["received"].endswith("Z")
    assert stored["resource"] == event["resource"]


async def test_events_in_legacy_mode_without_subprotocol(
    api_url: str, client: httpx.AsyncClient
) -> None:
    async with open_websocket_url(ws_url(api_url, "/events/in")) as ws:
        event = worker_event("acme.legacy")
        await ws.send_message(json.dumps(event))
        await ws.send_message(json.dumps(event))  # re-sent after a reconnect: stored once
        await wait_for_events(client, "acme.legacy", 1)
    found = (
        await client.post("/events/filter", json={"filter": {"event": {"prefix": ["acme."]}}})
    ).json()
    assert found["total"] == 1 and found["next_page"] is None


async def test_first_frame_must_be_auth(api_url: str) -> None:
    async with open_websocket_url(ws_url(api_url, "/events/out"), subprotocols=["prefect"]) as ws:
        await ws.send_message(json.dumps({"type": "filter"}))
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
    assert close_of(closed.value) == (1008, "Expected 'auth' message")


async def test_post_events_and_filter(client: httpx.AsyncClient) -> None:
    events = [worker_event("acme.one"), worker_event("acme.two")]
    response = await client.post("/events", json=events)
    assert response.status_code == 204
    body = {"filter": {"event": {"prefix": ["acme."]}, "occurred": {
        "since": (datetime.now(UTC) - timedelta(minutes=1)).isoformat()}}, "limit": 5}  # fmt: skip
    found = (await client.post("/events/filter", json=body)).json()
    assert found["total"] == 2 and {e["event"] for e in found["events"]} == {"acme.one", "acme.two"}
    bad = await client.post("/events", json=[{"event": "x"}])
    assert bad.status_code == 422


async def test_events_out_backfills_then_streams_state_changes(
    api_url: str, client: httpx.AsyncClient
) -> None:
    deployment = await make_deployment(client, tags=["t1"])
    early = await make_run(client, deployment["id"])
    late = await make_run(client, deployment["id"])
    for run in (early, late):
        await propose(client, run["id"], "PENDING")
        await client.patch(f"/flow_runs/{run['id']}", json={"infrastructure_pid": "7"})
    await propose(client, early["id"], "CANCELLING", message="user asked")
    now = datetime.now(UTC)
    frame = captured("events_out_filter.json")
    frame["filter"]["occurred"] = {
        "since": (now - timedelta(minutes=1)).isoformat(),
        "until": (now + timedelta(days=365)).isoformat(),
    }
    async with open_websocket_url(ws_url(api_url, "/events/out"), subprotocols=["prefect"]) as ws:
        await auth(ws)
        await ws.send_message(json.dumps(frame))
        backfilled = json.loads(await ws.get_message())
        assert (
            backfilled["event"]["resource"]["prefect.resource.id"]
            == f"prefect.flow-run.{early['id']}"
        )
        await propose(client, late["id"], "RUNNING")  # not a Cancelling event: filtered out
        await propose(client, late["id"], "CANCELLING", message="user asked")
        with trio.fail_after(10):
            live = json.loads(await ws.get_message())
    assert_conforms(live, captured("cancelling_event.json"))
    event = live["event"]
    assert event["resource"]["prefect.resource.id"] == f"prefect.flow-run.{late['id']}"
    assert event["resource"]["prefect.state-type"] == "CANCELLING"
    assert event["resource"]["prefect.state-message"] == "user asked"
    roles = {r["prefect.resource.role"] for r in event["related"]}
    assert roles == {"flow", "deployment", "work-queue", "work-pool", "tag"}
    assert event["payload"]["intended"] == {"from": "RUNNING", "to": "CANCELLING"}


async def test_events_out_pool_filter_and_legacy_mode(
    api_url: str, client: httpx.AsyncClient
) -> None:
    deployment = await make_deployment(client)
    pool = (await client.get("/work_pools/pool-a")).json()
    run = await make_run(client, deployment["id"])
    frame = {"type": "filter", "backfill": False, "filter": {
        "event": {"prefix": ["prefect.flow-run."]},
        "any_resource": {"id": [f"prefect.work-pool.{pool['id']}"], "id_prefix": None, "labels": None},
    }}  # fmt: skip
    async with open_websocket_url(ws_url(api_url, "/events/out")) as ws:
        await ws.send_message(json.dumps(frame))
        await propose(client, run["id"], "PENDING")
        with trio.fail_after(10):
            message = json.loads(await ws.get_message())
    assert message["type"] == "event"
    assert message["event"]["event"] == "prefect.flow-run.Pending"


async def test_events_out_requires_filter_frame(api_url: str) -> None:
    async with open_websocket_url(ws_url(api_url, "/events/out"), subprotocols=["prefect"]) as ws:
        await auth(ws)
        await ws.send_message(json.dumps({"type": "hello"}))
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
    assert close_of(closed.value) == (
        1002,
        "Expected 'filter' message",
    )
