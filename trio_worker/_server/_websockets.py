"""The three websockets: ``/events/in``, ``/events/out`` and the task-run subscription.

All three speak Prefect's handshake (§4.1 of the subset doc): with the
``prefect`` subprotocol the first client frame must be ``{"type": "auth", ...}``
and is answered ``{"type": "auth_success"}``; when the API has an auth string
the token must be that string (raw, not base64, as Prefect's clients send it)
or the socket is closed with 1008 and Prefect's reason. Without a subprotocol
the socket is accepted in legacy mode, no auth frame, only when the API has no
auth string (the guard refuses the upgrade otherwise).

Each handler runs a *reader* task beside its main loop: it is the only place
that receives frames, so a client that goes away is noticed at once, even
while the handler is waiting for an event or a task run, and the handler's
nursery cancels everything it was doing.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Final

import trio
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from trio_worker._server._common import APIProblem, dumps, format_time, now
from trio_worker._server._events import normalize_event, read_events, validate_filter
from trio_worker._server._guard import ApiSecurity
from trio_worker._server._http import ApiState
from trio_worker._server._json_input import decode_json
from trio_worker._server._routes_runs import ingest_events

__all__ = ["websocket_routes"]

BACKFILL_WINDOW: Final = timedelta(minutes=15)
"""How far back ``/events/out`` replays, as Prefect's default maximum backfill."""

BACKFILL_LIMIT: Final = 200
"""At most this many stored events are replayed (the most recent ones)."""


async def _handshake(ws: WebSocket, security: ApiSecurity) -> bool:
    """Accept the socket and complete Prefect's auth exchange; False if the client failed it."""
    if "prefect" in (ws.scope.get("subprotocols") or []):
        await ws.accept(subprotocol="prefect")
        try:
            message = decode_json(await ws.receive_text())
        except (ValueError, KeyError):
            message = None
        if not isinstance(message, dict) or message.get("type") != "auth":
            await ws.close(code=1008, reason="Expected 'auth' message")
            return False
        problem = security.token_problem(message.get("token"))
        if problem is not None:
            await ws.close(code=1008, reason=problem)
            return False
        await ws.send_text(dumps({"type": "auth_success"}))
    elif security.auth_string is not None:  # the guard refuses these; never accept one
        await ws.close(code=1002, reason="'prefect' subprotocol required when auth is configured")
        return False
    else:
        await ws.accept()
    return True


async def _read_frames(
    ws: WebSocket, frames: trio.MemorySendChannel[str], scope: trio.CancelScope
) -> None:
    """Forward every text frame; on disconnect, cancel the handler's work."""
    async with frames:
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                await frames.send(message.get("text") or (message.get("bytes") or b"").decode())
        except (WebSocketDisconnect, RuntimeError):
            pass
    scope.cancel()


def websocket_routes(api: ApiState) -> list[WebSocketRoute]:
    """Build the websocket routes; handlers close over ``api``."""

    async def events_in(ws: WebSocket) -> None:
        if not await _handshake(ws, api.security):
            return
        try:
            while True:
                text = await ws.receive_text()
                try:
                    event = normalize_event(decode_json(text))
                except (ValueError, APIProblem):
                    await ws.close(code=1007, reason="Invalid event")
                    return
                await ingest_events(api, [event])
        except WebSocketDisconnect:
            return

    async def events_out(ws: WebSocket) -> None:
        if not await _handshake(ws, api.security):
            return
        try:
            message = decode_json(await ws.receive_text())
        except WebSocketDisconnect:
            return
        except ValueError:
            message = None
        if not isinstance(message, dict) or message.get("type") != "filter":
            await ws.close(code=1002, reason="Expected 'filter' message")
            return
        try:
            event_filter = validate_filter(message.get("filter"))
        except ValueError as exc:
            await ws.close(code=1002, reason=f"Invalid filter: {exc}")
            return
        with api.bus.subscribe(event_filter) as subscription:
            seen: set[str] = set()
            async with trio.open_nursery() as nursery:
                frames, incoming = trio.open_memory_channel[str](16)
                nursery.start_soon(_read_frames, ws, frames, nursery.cancel_scope)
                if message.get("backfill", True):
                    for event in await _backfill(api, event_filter):
                        seen.add(event["id"])
                        await ws.send_text(dumps({"type": "event", "event": event}))
                async for event in subscription.receive:
                    if event["id"] in seen:
                        continue
                    await ws.send_text(dumps({"type": "event", "event": event}))
                incoming.close()
                if subscription.overflowed:
                    await ws.close(code=1013, reason="Subscriber too slow; reconnect")
                nursery.cancel_scope.cancel()

    async def task_subscription(ws: WebSocket) -> None:
        if not await _handshake(ws, api.security):
            return
        try:
            message = decode_json(await ws.receive_text())
        except WebSocketDisconnect:
            return
        except ValueError:
            message = None
        problem = _subscribe_problem(message)
        if problem is not None:
            await ws.close(code=4001, reason=problem)
            return
        keys = [str(k) for k in message["keys"]]
        async with trio.open_nursery() as nursery:
            frames, incoming = trio.open_memory_channel[str](16)
            nursery.start_soon(_read_frames, ws, frames, nursery.cancel_scope)
            if await _deliver(api, ws, keys, incoming, str(message["client_id"])[:200]):
                await ws.close()
            nursery.cancel_scope.cancel()

    return [
        WebSocketRoute("/events/in", events_in),
        WebSocketRoute("/events/out", events_out),
        WebSocketRoute("/task_runs/subscriptions/scheduled", task_subscription),
    ]


def _subscribe_problem(message: Any) -> str | None:
    if not isinstance(message, dict) or message.get("type") != "subscribe":
        return "Protocol violation: expected 'subscribe' message"
    if not message.get("keys") or not isinstance(message["keys"], list):
        return "Protocol violation: expected 'keys' in subscribe message"
    if not message.get("client_id"):
        return "Protocol violation: expected 'client_id' in subscribe message"
    return None


async def _backfill(api: ApiState, event_filter: dict[str, Any]) -> list[dict[str, Any]]:
    earliest = format_time(now() - BACKFILL_WINDOW)
    occurred = dict(event_filter.get("occurred") or {})
    if not occurred.get("since") or str(occurred["since"]) < str(earliest):
        occurred["since"] = earliest
    bounded = {**event_filter, "occurred": occurred, "order": "DESC"}
    events, _total = await api.run(read_events, bounded, BACKFILL_LIMIT)
    return list(reversed(events))


async def _deliver(
    api: ApiState,
    ws: WebSocket,
    keys: list[str],
    replies: trio.MemoryReceiveChannel[str],
    client_id: str,
) -> bool:
    """Send runs one at a time, each only after the previous one was acknowledged.

    Returns True when the client asked to quit. A run sent but not acknowledged
    (quit, a wrong reply, a disconnect, a cancellation) is released back to
    the queue, so another subscriber gets it. An acknowledged run is leased to
    ``client_id`` (see ``_liveness``).
    """
    db = api.db
    if db is None:
        return False
    acked: str | None = None  # delivered; recorded by the next take
    try:
        while True:
            previous, acked = acked, None
            run = await api.tasks.take(db, keys, acked=previous, holder=client_id)
            acknowledged = False
            try:
                await ws.send_text(dumps(run))
                try:
                    reply = decode_json(await replies.receive())
                except (ValueError, trio.EndOfChannel):
                    return False
                kind = reply.get("type") if isinstance(reply, dict) else None
                if kind == "quit":
                    return True
                if kind != "ack":
                    return False
                acknowledged = True
                acked = run["id"]
            finally:
                if not acknowledged:
                    api.tasks.release(run["id"])
    finally:
        if acked is not None:
            with trio.CancelScope(shield=True):
                await api.tasks.ack(db, acked, client_id)
