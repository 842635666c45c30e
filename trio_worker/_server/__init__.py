"""The embedded API: a small, durable, SQLite-backed Prefect 3 REST/websocket subset.

It is what trio-worker's tests run against over loopback HTTP and the
zero-setup default for users (``trio-worker server start``). The worker never
imports this package: it reaches the API over HTTP only, so what passes here
passes against Prefect.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

import trio

from trio_worker._core._asgi import serve_asgi
from trio_worker._core._settings import DEFAULT_API_MAX_BODY_BYTES, Settings
from trio_worker._server._app import create_app as create_app
from trio_worker._server._guard import ApiSecurity as ApiSecurity
from trio_worker._server._guard import is_loopback_host as is_loopback_host
from trio_worker._server._liveness import LivenessRules as LivenessRules

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "ApiSecurity",
    "LivenessRules",
    "create_app",
    "is_loopback_host",
    "serve_api",
]

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 4200


async def serve_api(
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    db_path: str | Path,
    security: ApiSecurity | None = None,
    max_body_bytes: int = DEFAULT_API_MAX_BODY_BYTES,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    liveness: LivenessRules | None = None,
) -> None:
    """Serve the embedded API until cancelled or until ``shutdown_trigger`` returns.

    Supports ``nursery.start``: once the socket is listening (and the database
    is open) it reports the API URL, e.g. ``http://127.0.0.1:54321/api``, with
    the real port when ``port`` is 0. ``security`` (credentials, allowed hosts
    and origins) is passed to :func:`create_app`. Request bodies and websocket
    messages over ``max_body_bytes`` are refused (413; websocket close code 1009).

    ``liveness`` holds the thresholds of the rules that end or give back
    runs whose owner died; by default they are read from the environment
    (``TRIO_WORKER_SERVER_*``, see :class:`~trio_worker._core._settings.Settings`).

    Raises:
        OSError: the address cannot be bound (e.g. the port is in use).
        ConfigurationError: a ``TRIO_WORKER_SERVER_*`` variable holds a bad value.
    """
    if liveness is None:
        liveness = LivenessRules.from_settings(Settings.from_env())
    asgi_app = create_app(db_path, security, max_body_bytes=max_body_bytes, liveness=liveness)
    serve = functools.partial(
        serve_asgi,
        asgi_app,
        host=host,
        port=port,
        graceful_timeout_seconds=2.0,
        keep_alive_timeout_seconds=30.0,
        websocket_max_message_bytes=max_body_bytes,
        shutdown_trigger=shutdown_trigger,
    )
    refused: OSError | None = None
    async with trio.open_nursery() as nursery:
        try:
            binds: list[str] = await nursery.start(serve)
        except OSError as exc:
            # Raised outside the nursery, so that it stays a plain OSError
            # (the nursery would wrap it in a group); nothing else runs in it.
            refused = exc
        else:
            task_status.started(f"{binds[0]}/api")
    if refused is not None:
        raise refused
