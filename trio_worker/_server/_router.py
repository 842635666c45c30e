"""A table-driven HTTP dispatcher in front of Starlette, for the hot paths.

Starlette matches a request against each route's regex in turn and wraps
every call in two middleware layers; with ~60 routes that costs more than the
SQLite work of a typical request. This dispatcher looks routes up by method and
number of path segments and compares segments directly, then calls the same
Starlette-style handlers (``Request`` in, ``Response`` out). Websockets and the
lifespan still go to the Starlette app.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from trio_worker._server._common import APIProblem

__all__ = ["Dispatcher"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Handler = Callable[[Request], Awaitable[Response]]

logger = logging.getLogger("trio_worker.server")


class Dispatcher:
    """Serve ``prefix``-ed HTTP routes directly; hand everything else to ``fallback``."""

    def __init__(self, prefix: str, routes: list[Route], fallback: ASGIApp) -> None:
        self._prefix = prefix
        self._fallback = fallback
        # (method, segment count) -> [(segments, handler)], "{x}" segments capture
        self._table: dict[tuple[str, int], list[tuple[list[str], Handler]]] = {}
        for route in routes:
            segments = route.path.strip("/").split("/")
            if route.path.endswith("/"):
                segments.append("")
            for method in route.methods or ():
                key = (method, len(segments))
                self._table.setdefault(key, []).append((segments, route.endpoint))

    def _match(self, method: str, parts: list[str]) -> tuple[Handler, dict[str, str]] | None:
        for segments, handler in self._table.get((method, len(parts)), ()):
            params: dict[str, str] = {}
            for pattern, part in zip(segments, parts, strict=True):
                if pattern.startswith("{"):
                    params[pattern[1:-1]] = part
                elif pattern != part:
                    break
            else:
                return handler, params
        return None

    def _methods_for(self, parts: list[str]) -> bool:
        return any(
            self._match(method, parts) is not None
            for method in ("GET", "POST", "PATCH", "DELETE", "PUT")
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(self._prefix):
            await self._fallback(scope, receive, send)
            return
        rest = path[len(self._prefix) :]
        parts = rest.strip("/").split("/")
        if rest.endswith("/"):
            parts.append("")  # "/flows/" and "/flows" are different routes, as in Prefect
        method = scope["method"]
        found = self._match(method, parts)
        if found is None:
            response = self._not_matched(scope, method, parts, rest)
            await response(scope, receive, send)
            return
        handler, params = found
        scope["path_params"] = params
        try:
            response = await handler(Request(scope, receive))
        except APIProblem as problem:
            response = JSONResponse(problem.body, status_code=problem.status_code)
        except Exception:
            logger.exception("unhandled error in %s %s", method, path)
            response = JSONResponse({"exception_message": "Internal Server Error"}, 500)
        await response(scope, receive, send)

    def _not_matched(self, scope: Scope, method: str, parts: list[str], rest: str) -> Response:
        if self._match(method, self._toggle_slash(parts)) is not None:
            # Redirect to the other spelling, as FastAPI/Starlette do for a trailing slash.
            other = rest[:-1] if rest.endswith("/") else rest + "/"
            query = scope.get("query_string", b"").decode()
            target = self._prefix + other + (f"?{query}" if query else "")
            return RedirectResponse(target, status_code=307)
        if self._methods_for(parts):
            return JSONResponse({"detail": "Method Not Allowed"}, status_code=405)
        return JSONResponse({"detail": "Not Found"}, status_code=404)

    @staticmethod
    def _toggle_slash(parts: list[str]) -> list[str]:
        return parts[:-1] if parts and parts[-1] == "" else [*parts, ""]
