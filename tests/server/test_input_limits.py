"""Size limits of the embedded API: request bodies (413 before they are read whole) and websocket messages."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from trio_worker._core._exceptions import ConfigurationError
from trio_worker._core._settings import DEFAULT_API_MAX_BODY_BYTES, Settings
from trio_worker._server import serve_api

LIMIT = 64 * 1024
HUGE = 1024 * LIMIT  # 64 MiB: far more than socket buffers hold between two reads


@pytest.fixture
async def small_api(nursery: trio.Nursery, tmp_path: Path) -> str:
    """An embedded API whose body limit is :data:`LIMIT`."""
    url: str = await nursery.start(
        lambda task_status: serve_api(
            port=0, db_path=tmp_path / "api.db", max_body_bytes=LIMIT, task_status=task_status
        )
    )
    return url


def _padded(size: int) -> bytes:
    """A valid JSON body (an empty log batch) of exactly ``size`` bytes."""
    return b"[" + b" " * (size - 2) + b"]"


async def test_a_body_up_to_the_limit_is_accepted_one_byte_more_is_413(small_api: str) -> None:
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=small_api) as client:
        at_limit = await client.post("/logs/", content=_padded(LIMIT), headers=headers)
        assert at_limit.status_code == 201
        over = await client.post("/logs/", content=_padded(LIMIT + 1), headers=headers)
        assert over.status_code == 413
        assert over.headers["connection"] == "close"
        assert over.json() == {"detail": f"Request body too large: the limit is {LIMIT} bytes."}
        assert (await client.get("/health")).json() is True


async def test_a_declared_oversize_body_is_refused_before_it_is_sent(small_api: str) -> None:
    # The client declares 64 MiB and keeps sending until the answer arrives:
    # the server must answer from the headers alone, not after reading the body.
    address = urlsplit(small_api)
    assert address.hostname is not None and address.port is not None
    stream = await trio.open_tcp_stream(address.hostname, address.port)
    head = (
        "POST /api/logs/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {HUGE}\r\n\r\n"
    )
    sent = 0

    async def send_body() -> None:
        nonlocal sent
        chunk = b" " * 65536
        try:
            while sent < HUGE:
                await stream.send_all(chunk)
                sent += len(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the server closed the connection after answering

    answer = b""
    async with stream, trio.open_nursery() as nursery:
        await stream.send_all(head.encode())
        nursery.start_soon(send_body)
        while b"\r\n\r\n" not in answer:
            data = await stream.receive_some()
            assert data, "the connection closed without an answer"
            answer += data
        nursery.cancel_scope.cancel()
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert sent < HUGE


async def test_a_chunked_body_is_cut_off_at_the_limit(small_api: str) -> None:
    produced = 0

    async def endless_batch() -> AsyncIterator[bytes]:
        # Never closed: should the server read it all, it answers 422, not 413.
        nonlocal produced
        yield b"["
        while produced < HUGE:
            chunk = b'{"name": "n", "level": 20, "message": "m", "timestamp": "2024-01-01"},' * 64
            produced += len(chunk)
            yield chunk

    async with httpx.AsyncClient(base_url=small_api) as client:
        response = await client.post(
            "/logs/", content=endless_batch(), headers={"content-type": "application/json"}
        )
        assert response.status_code == 413
        assert response.headers["connection"] == "close"  # the rest stays unread
        assert produced < HUGE
        stored = await client.post("/logs/filter", json={})
        assert stored.json() == []


async def test_a_websocket_message_over_the_limit_closes_with_1009(small_api: str) -> None:
    ws_url = small_api.replace("http://", "ws://") + "/events/in"
    # Not an event either: read whole, it would be refused with 1007 instead.
    message = json.dumps({"pad": "x" * LIMIT})
    async with open_websocket_url(ws_url) as ws:
        await ws.send_message(message)
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
    assert closed.value.reason.code == 1009
    async with httpx.AsyncClient(base_url=small_api) as client:
        assert (await client.post("/events/filter", json={})).json()["events"] == []


def test_the_limit_is_a_setting_with_a_default_of_ten_mebibytes() -> None:
    assert Settings.from_env({}).api_max_body_bytes == DEFAULT_API_MAX_BODY_BYTES == 10 * 2**20
    env = {"TRIO_WORKER_API_MAX_BODY_BYTES": "2048"}
    assert Settings.from_env(env).api_max_body_bytes == 2048
    for bad in ("0", "-1", "ten"):
        with pytest.raises(ConfigurationError, match="TRIO_WORKER_API_MAX_BODY_BYTES"):
            Settings.from_env({"TRIO_WORKER_API_MAX_BODY_BYTES": bad})
