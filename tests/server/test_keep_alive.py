"""Keep-alive connections of the embedded API survive answers given without reading the body.

A client writes a request's headers and its body separately, and many answers
need only the headers (a 404 from the path, a DELETE, a refusal by the guard).
Hypercorn closes a connection whose request body was not received whole by the
time the response ends, without saying so in the response; the client then
sends its next request on a closed connection and gets no answer. These tests
hold the body back until the server has done all it can with the headers, as a
loaded machine does by chance, then reuse the connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import trio
import trio.testing

from trio_worker._server import serve_api

LIMIT = 64 * 1024


@pytest.fixture
async def small_api(nursery: trio.Nursery, tmp_path: Path) -> str:
    """An embedded API whose body limit is :data:`LIMIT`."""
    url: str = await nursery.start(
        lambda task_status: serve_api(
            port=0, db_path=tmp_path / "api.db", max_body_bytes=LIMIT, task_status=task_status
        )
    )
    return url


async def _open(url: str) -> trio.SocketStream:
    address = urlsplit(url)
    assert address.hostname is not None and address.port is not None
    return await trio.open_tcp_stream(address.hostname, address.port)


async def _read_response(stream: trio.SocketStream, buffer: bytearray) -> tuple[bytes, bytes]:
    """Read one response with a ``Content-Length`` off ``stream``: its head and its body."""
    while b"\r\n\r\n" not in buffer:
        data = await stream.receive_some()
        assert data, f"the server closed the connection without an answer; got {bytes(buffer)!r}"
        buffer += data
    head, _, _ = bytes(buffer).partition(b"\r\n\r\n")
    del buffer[: len(head) + 4]
    lines = head.decode("latin-1").lower().split("\r\n")
    length = next(int(line.split(":", 1)[1]) for line in lines if line.startswith("content-length"))
    while len(buffer) < length:
        data = await stream.receive_some()
        assert data, "the server closed the connection in the middle of a response"
        buffer += data
    body = bytes(buffer[:length])
    del buffer[:length]
    return head, body


@pytest.mark.parametrize(
    ("method", "path", "content_type", "status"),
    [
        # The failure the fuzz test met: a DELETE answered from the path alone.
        ("DELETE", "/api/variables/not-a-uuid", "application/json", b"404"),
        ("GET", "/api/flows/not-a-uuid", "application/json", b"404"),
        ("POST", "/api/no/such/route", "application/json", b"404"),
        ("POST", "/api/flows/", "text/plain", b"415"),  # the guard refuses it from the headers
    ],
)
async def test_an_answer_that_needs_no_body_leaves_the_connection_usable(
    small_api: str, method: str, path: str, content_type: str, status: bytes
) -> None:
    body = b'{"message": [false]}'
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    buffer = bytearray()
    async with await _open(small_api) as stream:
        await stream.send_all(head.encode())
        # The server has done all it can with the headers; the body comes late.
        await trio.testing.wait_all_tasks_blocked()
        await stream.send_all(body)
        first, _ = await _read_response(stream, buffer)
        assert first.startswith(b"HTTP/1.1 " + status), first
        assert b"connection: close" not in first.lower(), first
        await stream.send_all(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        second, answer = await _read_response(stream, buffer)
        assert second.startswith(b"HTTP/1.1 200"), second
        assert answer == b"true"


async def test_a_body_too_large_to_read_and_discard_closes_the_connection_and_says_so(
    small_api: str,
) -> None:
    produced = 0

    async def endless() -> AsyncIterator[bytes]:
        # Chunked, so nothing refuses it from the headers; never ends.
        nonlocal produced
        while True:
            produced += 4096
            yield b" " * 4096

    async with httpx.AsyncClient(base_url=small_api) as client:
        response = await client.request(
            "DELETE", "/variables/not-a-uuid", content=endless(),
            headers={"content-type": "application/json"},
        )  # fmt: skip
        assert response.status_code == 404
        assert response.headers["connection"] == "close"
        assert produced < 64 * LIMIT
        assert (await client.get("/health")).json() is True
