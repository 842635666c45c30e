"""Refuse request bodies over a size limit before they are read whole (413).

Hypercorn hands an ASGI app the body as it arrives and sets no limit of its
own, so without this a client could make the server hold any amount in
memory. The middleware refuses a declared ``Content-Length`` over the limit at
once, without reading a byte of the body, and counts the bytes of a body
without one (chunked) as the app reads them, cutting it off at the first
chunk past the limit. The 413 is answered in Prefect's error shape; the
connection is then closed by the server, the rest of the body unread.

:class:`ReadWholeBody` makes every other answer leave the connection usable:
hypercorn reuses a keep-alive connection only when the request's body was
received whole by the time the response ends, and otherwise closes it without
saying so in the response. Many answers never read the body (a 404 from the
path alone, a DELETE, a refusal by the guard), and a client writes its headers
and its body separately; when the answer beat the body, the client's next
request went out on a connection the server had just closed ("Server
disconnected without sending a response"). So the rest of the body is read
and discarded before the response starts, and when it is not read (over the
limit) the response says ``Connection: close``.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from starlette.responses import JSONResponse

from trio_worker._server._common import APIProblem
from trio_worker._server._router import ASGIApp, Receive, Scope, Send

__all__ = ["BodyLimit", "BodyTooLarge", "ReadWholeBody"]


class BodyTooLarge(APIProblem):
    """The request body is over the limit: answered 413 wherever it is noticed."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, {"detail": f"Request body too large: the limit is {limit} bytes."})


class BodyLimit:
    """ASGI middleware: HTTP request bodies of at most ``max_bytes`` reach ``app``.

    A body found over the limit while the app reads it raises
    :class:`BodyTooLarge` from ``receive``; it is an
    :class:`~trio_worker._server._common.APIProblem`, so the app's own error
    handling answers it, and the middleware answers it if the app let it through.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"the body limit must be at least 1 byte, not {max_bytes}")
        self._app = app
        self._max = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self._max:
            await self._refuse(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> MutableMapping[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self._max:
                    raise BodyTooLarge(self._max)
            return message

        async def tracked_send(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if received > self._max:
                    # The rest of the body stays unread, so the server closes the
                    # connection: say so, or a client would send its next request on it.
                    headers = [*message.get("headers", ()), (b"connection", b"close")]
                    message = {**message, "headers": headers}
            await send(message)

        try:
            await self._app(scope, limited_receive, tracked_send)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        problem = BodyTooLarge(self._max)
        response = JSONResponse(problem.body, status_code=413, headers={"connection": "close"})
        await response(scope, receive, send)


class ReadWholeBody:
    """ASGI middleware: an HTTP request's body is read to its end before the response starts.

    Outermost, so the guard's refusals are covered too. The rest of a body the
    app left unread is discarded, at most ``max_bytes`` of it: a body declared
    or found larger is left unread and the response says ``Connection: close``
    (the server closes the connection after it). Requests without a body
    (most GETs) pass untouched.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self._app = app
        self._max = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _has_body(scope):
            await self._app(scope, receive, send)
            return
        declared = _content_length(scope)
        received = 0
        ended = False

        async def tracked_receive() -> MutableMapping[str, Any]:
            nonlocal received, ended
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                ended = not message.get("more_body", False)
            else:
                ended = True  # http.disconnect: nothing more will come
            return message

        async def draining_send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                if declared is None or declared <= self._max:
                    while not ended and received <= self._max:
                        await tracked_receive()
                if not ended:
                    message = _closing(message)
            await send(message)

        await self._app(scope, tracked_receive, draining_send)


def _has_body(scope: Scope) -> bool:
    """Whether the request has a body (HTTP/1.1: a non-zero length, or chunked)."""
    for name, value in scope.get("headers", ()):
        name = name.lower()
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


def _closing(message: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """``message`` (a response start) with ``Connection: close`` instead of any other value."""
    headers = [(n, v) for n, v in message.get("headers", ()) if n.lower() != b"connection"]
    return {**message, "headers": [*headers, (b"connection", b"close")]}


def _content_length(scope: Scope) -> int | None:
    """The declared body size; an unreadable one counts as too large (``2**63``)."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() and len(text) < 19 else 2**63
    return None
