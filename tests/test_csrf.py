"""CSRF tokens: the client gets one when a server refuses a change without it.

The app below enforces what Prefect's CSRF middleware enforces (same 403
details, same headers, tokens from ``/csrf-token?client=``), served by
hypercorn on a loopback port: every request crosses a real socket.
"""

from __future__ import annotations

import secrets
import uuid
from collections import Counter

import attrs
import pytest
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.test_client import serve_app, work_pool_json
from trio_worker import PrefectClient, Settings, UnauthorizedError


@attrs.define
class CsrfServer:
    """Tokens issued per client id, and what was asked of the server."""

    protected: bool = True
    gives_tokens: bool = True
    tokens: dict[str, str] = attrs.Factory(dict)
    hits: Counter[str] = attrs.Factory(Counter)

    def app(self) -> Starlette:
        async def issue(request: Request) -> Response:
            self.hits["token"] += 1
            if not self.gives_tokens:  # a server older than CSRF tokens
                return JSONResponse({"detail": "Not Found"}, status_code=404)
            if not self.protected:
                return JSONResponse({"detail": "CSRF protection is disabled."}, status_code=422)
            client = request.query_params["client"]
            self.tokens[client] = secrets.token_hex(8)
            expiration = "2099-01-01T00:00:00Z"
            return JSONResponse(
                {"token": self.tokens[client], "client": client, "expiration": expiration}
            )

        async def create_pool(request: Request) -> Response:
            self.hits["create"] += 1
            refusal = self._refusal(request)
            if refusal is not None:
                return JSONResponse({"detail": refusal}, status_code=403)
            body = await request.json()
            return JSONResponse(work_pool_json(body["name"]), status_code=201)

        async def read_pool(request: Request) -> Response:
            self.hits["read"] += 1
            return JSONResponse(work_pool_json(request.path_params["name"]))

        return Starlette(
            routes=[
                Route("/api/csrf-token", issue, methods=["GET"]),
                Route("/api/work_pools/", create_pool, methods=["POST"]),
                Route("/api/work_pools/{name}", read_pool, methods=["GET"]),
            ]
        )

    def _refusal(self, request: Request) -> str | None:
        if not self.protected:
            return None
        token = request.headers.get("Prefect-Csrf-Token")
        client = request.headers.get("Prefect-Csrf-Client")
        if token is None:
            return "Missing CSRF token."
        if client is None:
            return "Missing client identifier."
        if self.tokens.get(client) != token:
            return "Invalid CSRF token or client identifier."
        return None


async def served(nursery: trio.Nursery, server: CsrfServer) -> str:
    url: str = await nursery.start(serve_app, server.app())
    return url


async def create(client: PrefectClient) -> str:
    return (await client.create_work_pool(f"p-{uuid.uuid4().hex[:6]}", type="process")).name


async def test_a_refused_change_gets_a_token_and_goes_through(nursery: trio.Nursery) -> None:
    server = CsrfServer()
    async with PrefectClient(await served(nursery, server), settings=Settings()) as client:
        await client.read_work_pool("reads-need-no-token")
        assert server.hits["token"] == 0
        await create(client)
        assert server.hits == Counter({"read": 1, "create": 2, "token": 1})
        await create(client)  # the token is kept
        assert server.hits["token"] == 1 and server.hits["create"] == 3
        server.tokens.clear()  # it expired
        await create(client)
        assert server.hits["token"] == 2 and server.hits["create"] == 5


async def test_concurrent_refusals_share_one_new_token(nursery: trio.Nursery) -> None:
    server = CsrfServer()
    async with PrefectClient(await served(nursery, server), settings=Settings()) as client:
        names: list[str] = []

        async def one() -> None:
            names.append(await create(client))

        async with trio.open_nursery() as many:
            for _ in range(10):
                many.start_soon(one)
    assert len(names) == 10
    assert server.hits["token"] == 1


async def test_an_unprotected_server_never_sees_a_token_request(nursery: trio.Nursery) -> None:
    server = CsrfServer(protected=False)
    async with PrefectClient(await served(nursery, server), settings=Settings()) as client:
        await create(client)
    assert server.hits == Counter({"create": 1})


async def test_a_server_that_gives_no_token_leaves_the_403(nursery: trio.Nursery) -> None:
    server = CsrfServer(gives_tokens=False)
    async with PrefectClient(await served(nursery, server), settings=Settings()) as client:
        with pytest.raises(UnauthorizedError, match="Missing CSRF token"):
            await create(client)
    assert server.hits == Counter({"create": 1, "token": 1})
