"""A loopback HTTP proxy in front of the API under test that fails on purpose.

It plays a busy or flaky server without changing the server: a ``fault``
function looks at each request and says whether to forward it, refuse it with
503 before forwarding (the server never saw it), or forward it and answer 503
anyway (the server made the change, the client never heard), or hold it
unanswered until the proxy closes (a server that hangs). Websockets are
accepted and closed at once, so workers fall back to polling.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal

import httpx
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

Fault = Literal["refuse", "lose reply", "hold"] | None
#: ``fault(path, number)``: what to do with the ``number``-th request (from 1) to ``path``.
FaultPolicy = Callable[[str, int], Fault]

UNAVAILABLE = b'{"exception_message":"Service Unavailable"}'


class FaultyProxy:
    """An ASGI app forwarding to ``upstream`` except where ``fault`` says otherwise."""

    def __init__(self, upstream: str, http: httpx.AsyncClient, fault: FaultPolicy) -> None:
        self.upstream = upstream.rstrip("/").removesuffix("/api")
        self.http = http
        self.fault = fault
        self.seen = 0
        self.failures: Counter[Fault] = Counter()
        #: Set when the proxy closes: held requests are then answered 503.
        self.released = trio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.accept", "subprotocol": "prefect"})
            await send({"type": "websocket.close", "code": 1011})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.seen += 1
        path = scope["path"]
        fault = self.fault(path, self.seen)
        if fault == "refuse":
            self.failures[fault] += 1
            await _respond(send, 503, UNAVAILABLE)
            return
        if fault == "hold":
            self.failures[fault] += 1
            await self.released.wait()
            await _respond(send, 503, UNAVAILABLE)
            return
        query = scope.get("query_string", b"").decode()
        url = self.upstream + path + (f"?{query}" if query else "")
        # The client's own headers go through (auth, CSRF tokens), bar the hop-by-hop ones.
        headers = {
            key.decode(): value.decode()
            for key, value in scope["headers"]
            if key.lower() not in (b"host", b"content-length", b"connection")
        }
        response = await self.http.request(scope["method"], url, content=body, headers=headers)
        if fault == "lose reply":
            self.failures[fault] += 1
            await _respond(send, 503, UNAVAILABLE)
            return
        await _respond(send, response.status_code, response.content)


async def _respond(send: Any, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


@asynccontextmanager
async def faulty_proxy(api_url: str, fault: FaultPolicy) -> AsyncIterator[tuple[FaultyProxy, str]]:
    """Serve a :class:`FaultyProxy` on a free loopback port; yields it and its API URL."""
    # One client for the proxy's life: a client per request would build an
    # SSL context each time, blocking the loop that also serves the proxy.
    async with httpx.AsyncClient(timeout=30) as http, trio.open_nursery() as nursery:
        proxy = FaultyProxy(api_url, http, fault)
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        shutdown = trio.Event()
        binds = await nursery.start(
            functools.partial(serve, proxy, config, shutdown_trigger=shutdown.wait)  # type: ignore[arg-type]
        )
        try:
            yield proxy, f"{binds[0]}/api"
        finally:
            proxy.released.set()
            shutdown.set()
