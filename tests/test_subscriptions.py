"""The websocket helper: handshake, refused credentials, reconnect with backoff."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio_websocket

from trio_worker._client._subscriptions import (
    JsonWebSocket,
    open_subscription,
    serve_subscription,
    websocket_token,
    websocket_url,
)
from trio_worker._core._exceptions import UnauthorizedError
from trio_worker._core._settings import Settings

Handler = Callable[[trio_websocket.WebSocketRequest], Awaitable[None]]


async def start_server(nursery: trio.Nursery, handler: Handler) -> str:
    server = await nursery.start(
        functools.partial(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, ssl_context=None)
    )
    return f"http://127.0.0.1:{server.port}/api"


async def prefect_like(request: trio_websocket.WebSocketRequest, *, token: str = "ok") -> None:
    """Accept with subprotocol prefect; 1008 unless the auth frame has ``token``."""
    assert "prefect" in request.proposed_subprotocols
    ws = await request.accept(subprotocol="prefect")
    auth = json.loads(await ws.get_message())
    if auth != {"type": "auth", "token": token}:
        await ws.aclose(code=1008, reason="Invalid token")
        return
    await ws.send_message(json.dumps({"type": "auth_success"}))
    message = json.loads(await ws.get_message())
    await ws.send_message(json.dumps({"echo": message}))
    with trio.move_on_after(5):
        await ws.get_message()


def test_websocket_url_swaps_the_scheme() -> None:
    assert websocket_url("http://h:1/api/", "/events/in") == "ws://h:1/api/events/in"
    assert websocket_url("https://h/api", "x") == "wss://h/api/x"


def test_token_is_the_auth_string_else_the_api_key() -> None:
    assert websocket_token(Settings(api_key="k")) == "k"
    assert websocket_token(Settings(api_key="k", api_auth_string="u:p")) == "u:p"
    assert websocket_token(Settings()) is None


async def test_handshake_then_json_both_ways(nursery: trio.Nursery) -> None:
    url = await start_server(nursery, prefect_like)
    async with open_subscription(url, "task_runs/subscriptions/scheduled", token="ok") as ws:
        await ws.send_json({"type": "subscribe", "keys": ["k"], "client_id": "c"})
        assert await ws.receive_json() == {
            "echo": {"type": "subscribe", "keys": ["k"], "client_id": "c"}
        }


async def test_wrong_token_is_unauthorized_naming_the_settings(nursery: trio.Nursery) -> None:
    url = await start_server(nursery, prefect_like)
    with pytest.raises(UnauthorizedError, match="PREFECT_API_KEY") as info:
        async with open_subscription(url, "events/out", token="wrong"):
            pass
    assert "Invalid token" in str(info.value)
    assert "PREFECT_API_URL" in str(info.value)


async def test_403_at_upgrade_is_unauthorized_and_not_retried(nursery: trio.Nursery) -> None:
    attempts = 0

    async def reject(request: trio_websocket.WebSocketRequest) -> None:
        nonlocal attempts
        attempts += 1
        await request.reject(403)

    url = await start_server(nursery, reject)

    async def never(ws: JsonWebSocket) -> None:
        raise AssertionError("connected")

    with pytest.raises(UnauthorizedError, match="upgrade answered 403"):
        await serve_subscription(url, "events/out", never, token=None)
    assert attempts == 1


async def test_reconnects_after_drops_and_logs_the_outage_once(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_worker.subscriptions")
    connections = 0

    async def flaky(request: trio_websocket.WebSocketRequest) -> None:
        nonlocal connections
        connections += 1
        if connections <= 3:  # three failed attempts in a row: one outage
            await request.reject(502)
            return
        await prefect_like(request)

    url = await start_server(nursery, flaky)
    seen: list[Any] = []
    states: list[bool] = []

    async def handler(ws: JsonWebSocket) -> None:
        await ws.send_json({"type": "filter"})
        seen.append(await ws.receive_json())

    await serve_subscription(
        url,
        "events/out",
        handler,
        token="ok",
        initial_backoff_seconds=0.01,
        on_connected=states.append,
    )
    assert seen == [{"echo": {"type": "filter"}}]
    assert connections == 4
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "reconnecting" in warnings[0].getMessage()
    assert any(r.getMessage().startswith("reconnected") for r in caplog.records)
    assert states == [False, False, False, True]
