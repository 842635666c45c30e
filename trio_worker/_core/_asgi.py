"""``serve_asgi``: the one way an ASGI app is served here (hypercorn on trio).

Three apps are served: the embedded API, the worker's health server and the
task worker's status server. They share this launcher so that they bind,
report their address, log and fail the same way, through hypercorn's public
API only (``hypercorn.trio.serve`` with a ``Config``), which keeps the version
bound in ``pyproject.toml`` honest.

A port that cannot be bound is a plain :class:`OSError` (hypercorn binds
inside its own nurseries, so it arrives grouped; it is taken out of the group
here), which lets each caller turn it into its own message.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

__all__ = ["bind_address", "serve_asgi"]


def bind_address(host: str, port: int) -> str:
    """Return hypercorn's bind string for ``host`` and ``port``: IPv6 hosts in brackets."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


async def serve_asgi(
    app: Any,
    *,
    host: str,
    port: int,
    logger: logging.Logger | None = None,
    graceful_timeout_seconds: float = 1.0,
    keep_alive_timeout_seconds: float | None = None,
    websocket_max_message_bytes: int | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``host:port`` until cancelled (or ``shutdown_trigger`` returns).

    Supports ``nursery.start``: once listening it reports the URLs it listens
    on (``["http://127.0.0.1:54321"]``), with the real port when ``port`` is 0.

    Args:
        app: an ASGI application (starlette's, or a plain ASGI callable).
        host: the interface to bind.
        port: the TCP port; 0 picks a free one.
        logger: where hypercorn's error log (and its "Running on" line) goes;
            ``None`` silences it. There is never an access log.
        graceful_timeout_seconds: how long open requests may finish at shutdown.
        keep_alive_timeout_seconds: idle keep-alive connections are closed after
            this; hypercorn's default when ``None``.
        websocket_max_message_bytes: the largest websocket message accepted;
            hypercorn's default when ``None``. Websocket pings are off either way
            (clients ping; a worker must not time out a quiet subscription).
        shutdown_trigger: returns to start a graceful shutdown.
        task_status: for ``nursery.start``.

    Raises:
        OSError: the address cannot be bound (e.g. the port is in use).
    """
    config = Config()
    config.bind = [bind_address(host, port)]
    config.accesslog = None
    config.errorlog = logger
    config.graceful_timeout = graceful_timeout_seconds
    if keep_alive_timeout_seconds is not None:
        config.keep_alive_timeout = keep_alive_timeout_seconds
    config.websocket_ping_interval = None
    if websocket_max_message_bytes is not None:
        config.websocket_max_message_size = websocket_max_message_bytes
    try:
        await serve(app, config, shutdown_trigger=shutdown_trigger, task_status=task_status)
    except* OSError as group:
        # Only a group of nothing but OSErrors gets here whole (except* splits
        # off anything else, cancellation included, and re-raises it).
        raise next(_leaves(group)) from None
