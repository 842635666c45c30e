"""The ASGI application of the embedded API: routes under ``/api``, errors in Prefect's shapes."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path

import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from trio_worker._core._settings import DEFAULT_API_MAX_BODY_BYTES
from trio_worker._server._body_limit import BodyLimit, ReadWholeBody
from trio_worker._server._common import APIProblem, now
from trio_worker._server._guard import ApiSecurity, Guard
from trio_worker._server._http import ApiState
from trio_worker._server._liveness import LivenessRules, serve_liveness
from trio_worker._server._router import Dispatcher
from trio_worker._server._routes_core import core_routes
from trio_worker._server._routes_runs import run_routes
from trio_worker._server._storage import open_database
from trio_worker._server._websockets import websocket_routes

__all__ = ["api_routes", "create_app"]

logger = logging.getLogger("trio_worker.server")


async def _problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIProblem)
    return JSONResponse(exc.body, status_code=exc.status_code)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"exception_message": "Internal Server Error"}, status_code=500)


def api_routes(api: ApiState) -> list[Route]:
    """Every HTTP route of the API (paths relative to ``/api``), handlers bound to ``api``.

    The one list the app serves; tests enumerate it to reach every route.
    """
    return [*core_routes(api), *run_routes(api)]


def create_app(
    db_path: str | Path,
    security: ApiSecurity | None = None,
    *,
    max_body_bytes: int = DEFAULT_API_MAX_BODY_BYTES,
    liveness: LivenessRules | None = None,
    clock: Callable[[], datetime] = now,
) -> ReadWholeBody:
    """Build the embedded API as an ASGI app storing its data in the SQLite file ``db_path``.

    ``security`` says what every request must show (credentials, a host and an
    origin of this API); the default asks for no credentials but still refuses
    browser-borne requests (see ``_guard.py``).

    The database is opened (created and migrated as needed) by the app's
    lifespan, so any ASGI server that runs lifespans can serve it; use
    :func:`~trio_worker._server.serve_api` to serve it on trio with hypercorn.
    The lifespan also owns the server's services: the liveness sweep
    (``_liveness``, thresholds ``liveness``, default :class:`LivenessRules`),
    which compares signals with ``clock()``. Request bodies over
    ``max_body_bytes`` are refused with 413.
    """
    security = security if security is not None else ApiSecurity()
    api = ApiState(security, liveness)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_database(db_path) as db:
            api.db = db
            try:
                async with trio.open_nursery() as services:
                    services.start_soon(
                        functools.partial(
                            serve_liveness,
                            db,
                            api.bus,
                            api.tasks,
                            api.liveness,
                            api.liveness_counts,
                            clock=clock,
                        )
                    )
                    yield
                    services.cancel_scope.cancel()
            finally:
                api.db = None

    http_routes = api_routes(api)
    fallback = Starlette(
        routes=[Mount("/api", routes=[*http_routes, *websocket_routes(api)])],
        exception_handlers={
            APIProblem: _problem,
            HTTPException: _http_error,
            Exception: _server_error,
        },
        lifespan=lifespan,
    )
    api_app = BodyLimit(Dispatcher("/api", http_routes, fallback), max_body_bytes)
    return ReadWholeBody(Guard(api_app, security), max_body_bytes)
