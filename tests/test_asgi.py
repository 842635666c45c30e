"""The one ASGI launcher: it serves, reports where, and fails plainly on a taken port."""

from __future__ import annotations

import functools
import socket
from typing import Any

import httpx
import pytest
import trio

from trio_worker._core._asgi import bind_address, serve_asgi


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


async def test_serves_on_a_free_port_and_reports_its_url(nursery: trio.Nursery) -> None:
    urls: list[str] = await nursery.start(
        functools.partial(serve_asgi, hello, host="127.0.0.1", port=0)
    )
    (url,) = urls
    assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
    assert response.text == "hello"
    nursery.cancel_scope.cancel()


async def test_a_port_in_use_is_a_plain_oserror() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # Awaited directly: it raises before it would serve.
        with trio.fail_after(10), pytest.raises(OSError, match="in use") as info:
            await serve_asgi(hello, host="127.0.0.1", port=port)
    assert not isinstance(info.value, BaseExceptionGroup)


def test_ipv6_hosts_are_bracketed() -> None:
    assert bind_address("::1", 80) == "[::1]:80"
    assert bind_address("[::1]", 80) == "[::1]:80"
    assert bind_address("127.0.0.1", 0) == "127.0.0.1:0"
