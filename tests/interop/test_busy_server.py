"""A busy API that answers 503 and loses replies: every run still starts exactly once.

A real Prefect server on SQLite answers 503 under load, sometimes after it has
committed the request (anchors.md row 20). A proxy in front of the API under
test (embedded, or Prefect under ``nox -s prefect``) plays that server: it
refuses some requests with 503 before forwarding them, and for some state
proposals forwards them and then answers 503 anyway, so the worker's retry
meets a transition the API already made. Websockets are accepted and closed at
once, so the workers fall back to polling.
"""

from __future__ import annotations

import functools
import textwrap
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from tests.helpers import clean_env, make_deployment, python_command, wait_for_state
from tests.interop.conftest import WORKER_ENV, WorkerFactory
from trio_worker._client import PrefectClient
from trio_worker._models import StateType

pytestmark = pytest.mark.prefect

FINAL = (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED)


class FlakyProxy:
    """An ASGI app forwarding to ``upstream``, with a busy server's failures."""

    def __init__(self, upstream: str, http: httpx.AsyncClient) -> None:
        self.upstream = upstream.rstrip("/").removesuffix("/api")
        self.http = http
        self.seen = 0
        self.failures: Counter[str] = Counter()

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
        if self.seen % 4 == 1:
            self.failures["refused"] += 1
            await _respond(send, 503, b'{"exception_message":"Service Unavailable"}')
            return
        query = scope.get("query_string", b"").decode()
        url = self.upstream + path + (f"?{query}" if query else "")
        headers = {"content-type": "application/json"} if body else {}
        response = await self.http.request(scope["method"], url, content=body, headers=headers)
        if path.endswith("/set_state") and self.seen % 4 == 3:
            self.failures["reply lost"] += 1
            await _respond(send, 503, b'{"exception_message":"Service Unavailable"}')
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


@pytest.fixture
async def flaky(api_url: str, nursery: trio.Nursery) -> AsyncIterator[tuple[FlakyProxy, str]]:
    # One client for the proxy's life: a client per request would build an
    # SSL context each time, blocking the test's loop that also serves the proxy.
    async with httpx.AsyncClient(timeout=30) as http:
        proxy = FlakyProxy(api_url, http)
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        shutdown = trio.Event()
        binds = await nursery.start(
            functools.partial(serve, proxy, config, shutdown_trigger=shutdown.wait)  # type: ignore[arg-type]
        )
        yield proxy, f"{binds[0]}/api"
        shutdown.set()


@pytest.fixture
def env(flaky: tuple[FlakyProxy, str], tmp_path: Path) -> dict[str, str]:
    """The workers' environment: they talk to the API through the flaky proxy."""
    home = tmp_path / "prefect-home"
    home.mkdir(exist_ok=True)
    return {
        **clean_env(),
        **WORKER_ENV,
        "PREFECT_API_URL": flaky[1],
        "PREFECT_HOME": str(home),
        "TRIO_WORKER_STATE_DIR": str(tmp_path / "state"),
    }


async def test_busy_server_every_run_starts_exactly_once(
    client: PrefectClient,
    start_worker: WorkerFactory,
    flaky: tuple[FlakyProxy, str],
    pool_name: str,
    tmp_path: Path,
) -> None:
    code = textwrap.dedent(
        """
        import os, sys, pathlib
        mark = pathlib.Path(sys.argv[1], os.environ["PREFECT__FLOW_RUN_ID"])
        with mark.open("a") as f: f.write("x")
        """
    )
    marks = tmp_path / "marks"
    marks.mkdir()
    deployment = await make_deployment(
        client,
        pool_name,
        name=pool_name,
        job_variables={"command": python_command(code, str(marks))},
    )
    runs = [await client.create_flow_run_from_deployment(deployment.id) for _ in range(8)]
    async with start_worker("--limit", "3"), start_worker("--limit", "3"):
        for run in runs:
            done = await wait_for_state(client, run.id, FINAL, timeout=120)
            assert done.state is not None
            assert done.state.type is StateType.COMPLETED, done.state
    proxy = flaky[0]
    assert proxy.failures["refused"] > 0
    assert proxy.failures["reply lost"] > 0
    for run in runs:
        assert (marks / str(run.id)).read_text() == "x"
