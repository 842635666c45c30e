"""Authenticated JSON websockets to the API, and a reconnect loop around them.

Prefect's websockets (``/task_runs/subscriptions/scheduled``, ``/events/out``,
``/events/in``) share one handshake: the API URL with ``http`` swapped for
``ws``, subprotocol ``prefect``, a first frame ``{"type": "auth", "token": ...}``
answered by ``{"type": "auth_success"}``. :func:`open_subscription` does exactly
that and nothing protocol-specific, so each caller sends its own ``subscribe``
or ``filter`` frame.

:func:`serve_subscription` keeps one alive: it calls a handler on every fresh
connection and, when the connection drops, reconnects by the one backoff policy, exponential
with jitter (many workers losing one API do not come back in lock-step).
A refused token is not an outage: it raises :class:`UnauthorizedError` at once.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import trio
import trio_websocket

from trio_worker._client._tls import probe_tls
from trio_worker._core._exceptions import UnauthorizedError
from trio_worker._core._retry import Backoff
from trio_worker._core._settings import Settings

__all__ = [
    "JsonWebSocket",
    "SubscriptionClosedError",
    "open_subscription",
    "serve_subscription",
    "websocket_token",
    "websocket_url",
]

logger = logging.getLogger("trio_worker.subscriptions")

SUBPROTOCOL: Final = "prefect"
POLICY_VIOLATION: Final = 1008  # the close code Prefect uses for a refused token
DEFAULT_CONNECT_TIMEOUT_SECONDS: Final = 10.0
DEFAULT_INITIAL_BACKOFF_SECONDS: Final = 0.5
DEFAULT_MAX_BACKOFF_SECONDS: Final = 30.0

#: What a dropped or unreachable API looks like from here; anything else is a bug.
CONNECTION_ERRORS: Final = (
    trio_websocket.HandshakeError,
    trio_websocket.ConnectionClosed,
    trio.BrokenResourceError,
    OSError,
)


class SubscriptionClosedError(ConnectionError):
    """The API closed the websocket, or it could not be opened.

    :func:`serve_subscription` treats it as an outage and reconnects. It is not
    raised for a refused token: that is :class:`UnauthorizedError`.
    """


def websocket_url(api_url: str, path: str) -> str:
    """Turn ``http(s)://host/api`` plus ``path`` into ``ws(s)://host/api/path``."""
    base = api_url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base.removeprefix("https://")
    elif base.startswith("http://"):
        base = "ws://" + base.removeprefix("http://")
    return f"{base}/{path.lstrip('/')}"


def websocket_token(settings: Settings) -> str | None:
    """Return the auth frame's token as Prefect picks it: auth string, else API key."""
    return settings.api_auth_string or settings.api_key


def _unauthorized(url: str, why: str) -> UnauthorizedError:
    return UnauthorizedError(
        f"the API refused the websocket {url}: {why}; "
        "check PREFECT_API_URL and PREFECT_API_KEY (or PREFECT_API_AUTH_STRING)",
        method="GET",
        url=url,
        status_code=403 if "403" in why or "401" in why else None,
    )


class JsonWebSocket:
    """One authenticated websocket that sends and receives JSON objects.

    Obtained from :func:`open_subscription`; valid only inside its ``async with``.
    Every method raises :class:`SubscriptionClosedError` when the connection is
    gone, and :class:`UnauthorizedError` when the server closed it with 1008.
    """

    def __init__(self, connection: trio_websocket.WebSocketConnection, url: str) -> None:
        self._connection = connection
        self.url = url

    def __repr__(self) -> str:
        return f"JsonWebSocket({self.url!r})"

    def _closed(self, exc: trio_websocket.ConnectionClosed) -> Exception:
        reason = exc.reason
        if reason is not None and reason.code == POLICY_VIOLATION:
            return _unauthorized(self.url, f"closed 1008 {reason.reason or ''}".strip())
        return SubscriptionClosedError(f"{self.url} closed: {reason}")

    async def send_json(self, message: Any) -> None:
        """Send one JSON text frame."""
        try:
            await self._connection.send_message(json.dumps(message))
        except trio_websocket.ConnectionClosed as exc:
            raise self._closed(exc) from None

    async def receive_json(self) -> Any:
        """Wait for the next frame and decode it as JSON.

        Raises:
            SubscriptionClosedError: the connection closed, or the frame was not JSON
                (a peer that speaks something else is as good as gone).
        """
        try:
            raw = await self._connection.get_message()
        except trio_websocket.ConnectionClosed as exc:
            raise self._closed(exc) from None
        try:
            return json.loads(raw)
        except ValueError:
            raise SubscriptionClosedError(
                f"{self.url} sent a non-JSON frame: {raw[:200]!r}"
            ) from None

    async def aclose(self) -> None:
        """Close the websocket normally (code 1000)."""
        await self._connection.aclose()


@asynccontextmanager
async def open_subscription(
    api_url: str,
    path: str,
    *,
    token: str | None,
    ssl_context: ssl.SSLContext | None = None,
    connect_timeout_seconds: float = DEFAULT_CONNECT_TIMEOUT_SECONDS,
) -> AsyncIterator[JsonWebSocket]:
    """Open ``path`` under ``api_url`` as a websocket and authenticate.

    Args:
        api_url: the API base URL (``http://127.0.0.1:4200/api``).
        path: the websocket's path under it, e.g. ``task_runs/subscriptions/scheduled``.
        token: the auth frame's token (:func:`websocket_token`); ``None`` on an open server.
        ssl_context: for ``wss://``: the API client's context
            (:attr:`PrefectClient.ssl_context`), so the websocket trusts
            exactly what REST trusts. None uses the system defaults.
        connect_timeout_seconds: bound on the upgrade plus the auth round trip.

    Yields:
        The authenticated socket; the caller sends its own subscribe frame.

    Raises:
        UnauthorizedError: the upgrade was refused with 401/403, or the server
            closed with 1008 (bad or missing token).
        SubscriptionClosedError: the API is unreachable or hung up.
    """
    url = websocket_url(api_url, path)
    try:
        async with trio_websocket.open_websocket_url(
            url,
            ssl_context,
            subprotocols=[SUBPROTOCOL],
            connect_timeout=connect_timeout_seconds,
            disconnect_timeout=connect_timeout_seconds,
        ) as connection:
            socket = JsonWebSocket(connection, url)
            with trio.fail_after(connect_timeout_seconds):
                await socket.send_json({"type": "auth", "token": token})
                reply = await socket.receive_json()
            if not isinstance(reply, dict) or reply.get("type") != "auth_success":
                raise _unauthorized(url, f"expected auth_success, got {reply!r}")
            yield socket
    except trio_websocket.ConnectionRejected as exc:
        if exc.status_code in (401, 403):
            raise _unauthorized(url, f"upgrade answered {exc.status_code}") from None
        raise SubscriptionClosedError(f"{url}: upgrade answered {exc.status_code}") from None
    except trio.TooSlowError:
        raise SubscriptionClosedError(f"{url}: no auth_success within the timeout") from None
    except trio_websocket.HandshakeError as exc:
        # A refused certificate surfaces as a handshake timeout: ask TLS why.
        tls_failure = None
        if ssl_context is not None and url.startswith("wss://"):
            tls_failure = await probe_tls(url, ssl_context, timeout_seconds=connect_timeout_seconds)
        why = tls_failure or f"{type(exc).__name__}: {exc}"
        raise SubscriptionClosedError(f"{url}: {why}") from exc
    except CONNECTION_ERRORS as exc:
        raise SubscriptionClosedError(f"{url}: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    """Name what went wrong; trio-websocket's HandshakeError has no text, its cause does."""
    text = str(exc)
    cause = exc.__cause__ or exc.__context__
    if not text and cause is not None:
        return f"{type(exc).__name__}: {_reason(cause)}"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def serve_subscription(
    api_url: str,
    path: str,
    handler: Callable[[JsonWebSocket], Awaitable[None]],
    *,
    token: str | None,
    ssl_context: ssl.SSLContext | None = None,
    initial_backoff_seconds: float = DEFAULT_INITIAL_BACKOFF_SECONDS,
    max_backoff_seconds: float = DEFAULT_MAX_BACKOFF_SECONDS,
    on_connected: Callable[[bool], None] | None = None,
    log_outages: bool = True,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep a subscription alive, calling ``handler`` on every new connection.

    ``handler`` runs once per connection, so it is where a caller (re)sends its
    subscribe frame; it ends normally to finish, or lets
    :class:`SubscriptionClosedError` escape to trigger a reconnect. An outage is
    logged once (a warning when it starts, an info line when it ends), not once
    per attempt. Supports ``nursery.start``: started once the first connection
    is authenticated.

    Args:
        api_url: the API base URL.
        path: the websocket path under it.
        handler: called with each authenticated socket.
        token: the auth token (:func:`websocket_token`).
        ssl_context: for ``wss://``: the API client's context.
        initial_backoff_seconds: first wait after a failure; doubles up to ``max_backoff_seconds``.
        max_backoff_seconds: the longest wait between attempts.
        on_connected: told True when a connection is authenticated, False when it drops.
        log_outages: False logs outages at debug level only (for the extra
            connections of a caller that already reports on its first one).
        task_status: for ``nursery.start``.

    Raises:
        UnauthorizedError: the API refused the token; retrying would not help.
    """
    backoff = Backoff(
        first_seconds=initial_backoff_seconds,
        max_seconds=max(initial_backoff_seconds, max_backoff_seconds),
    )
    attempt = 0
    outage_started: float | None = None
    started = False
    while True:
        try:
            async with open_subscription(
                api_url, path, token=token, ssl_context=ssl_context
            ) as socket:
                attempt = 0
                if outage_started is not None and log_outages:
                    logger.info(
                        "reconnected to %s after %.1f s",
                        socket.url,
                        trio.current_time() - outage_started,
                    )
                    outage_started = None
                if on_connected is not None:
                    on_connected(True)
                if not started:
                    started = True
                    task_status.started()
                await handler(socket)
                return
        except SubscriptionClosedError as exc:
            if on_connected is not None:
                on_connected(False)
            if outage_started is None:
                outage_started = trio.current_time()
                level = logging.WARNING if log_outages else logging.DEBUG
                logger.log(level, "lost %s (%s); reconnecting with backoff", path, exc)
            else:
                logger.debug("still cannot reach %s: %s", path, exc)
        await trio.sleep(backoff.delay(attempt))
        attempt += 1
