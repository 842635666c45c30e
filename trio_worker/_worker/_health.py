"""The worker's health server: ``/health`` as Prefect's, plus ``/ready``, ``/status``, ``/metrics``.

It is a starlette app served by hypercorn on trio inside the worker's loops
nursery: same process, same loop, no thread. So a ``/health`` answer is true
of the loop that does the work; a blocked loop cannot answer "OK".
"""

from __future__ import annotations

import logging
from typing import Any

import trio
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from trio_worker._core._asgi import serve_asgi
from trio_worker._core._exceptions import ConfigurationError
from trio_worker._core._settings import Settings
from trio_worker._worker._status import HealthSource

__all__ = ["create_health_app", "serve_health"]

logger = logging.getLogger("trio_worker.health")


def create_health_app(source: HealthSource) -> Starlette:
    """Build the ASGI app that reports on a worker through ``source``."""

    async def health(request: Request) -> JSONResponse:
        if source.polling():
            return JSONResponse({"message": "OK"})
        logger.error("Health check failed: the worker has not polled recently")
        return JSONResponse({"message": "Worker may be unresponsive at this time"}, 503)

    async def ready(request: Request) -> JSONResponse:
        # Ready = able to take runs: the pool is known and the API answers.
        reason = source.not_ready()
        if reason is not None:
            return JSONResponse({"message": reason}, 503)
        return JSONResponse({"message": "OK"})

    async def status(request: Request) -> JSONResponse:
        return JSONResponse(source.status())

    async def metrics(request: Request) -> Response:
        return Response(source.metrics(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/ready", ready),
            Route("/status", status),
            Route("/metrics", metrics),
        ]
    )


async def serve_health(
    source: HealthSource,
    settings: Settings,
    *,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the health app on the worker's webserver host and port until cancelled.

    Raises:
        ConfigurationError: the port is in use or cannot be bound.
    """
    host, port = settings.webserver_host, settings.webserver_port
    try:
        await serve_asgi(
            create_health_app(source), host=host, port=port, logger=logger, task_status=task_status
        )
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigurationError(
            f"cannot serve health checks on {host}:{port}: {reason}; "
            "set PREFECT_WORKER_WEBSERVER_PORT to a free port"
        ) from None
