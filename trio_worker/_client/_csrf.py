"""CSRF tokens for a Prefect server that asks for them, as an httpx transport.

A Prefect server started with ``PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED``
refuses every POST, PUT, PATCH and DELETE (403) that lacks a
``Prefect-Csrf-Token`` issued to the ``Prefect-Csrf-Client`` id sent with it.
Prefect's client asks for a token before its first change request; we ask
only when a server refuses one for want of a token (first request, or the
token expired), then send the request again. A server without the protection
(trio-worker's own included) never sees the extra request.
"""

from __future__ import annotations

import json
import uuid
from typing import Final

import httpx
import trio

__all__ = ["CsrfTransport"]

CHANGES: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})

#: The details Prefect's CSRF middleware answers 403 with.
REFUSALS: Final = frozenset(
    {
        "Missing CSRF token.",
        "Missing client identifier.",
        "Invalid CSRF token or client identifier.",
    }
)

#: Headers the token request carries over from the refused request.
_CARRIED: Final = ("authorization", "user-agent", "x-prefect-api-version")


def _refused_for_csrf(response: httpx.Response) -> bool:
    try:
        detail = json.loads(response.content).get("detail")
    except (ValueError, AttributeError):
        return False
    return detail in REFUSALS


class CsrfTransport(httpx.AsyncBaseTransport):
    """Wrap a transport; fetch and send a CSRF token when the server demands one.

    Args:
        wrapped: the transport that sends requests (with its retries).
        api_url: the API's base URL; the token comes from ``{api_url}/csrf-token``.
    """

    def __init__(self, wrapped: httpx.AsyncBaseTransport, api_url: str) -> None:
        self._wrapped = wrapped
        self._token_url = f"{api_url.rstrip('/')}/csrf-token"
        self.client_id = str(uuid.uuid4())
        self.token: str | None = None
        self._renewing = trio.Lock()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request``; once more with a fresh token if it was refused for want of one."""
        if request.method not in CHANGES:
            return await self._wrapped.handle_async_request(request)
        sent_with = self._sign(request)
        response = await self._wrapped.handle_async_request(request)
        if response.status_code != 403:
            return response
        await response.aread()
        if not _refused_for_csrf(response):
            return response
        if not await self._renew(sent_with, request):
            return response  # the server gives no token: let the 403 speak
        await response.aclose()
        self._sign(request)
        return await self._wrapped.handle_async_request(request)

    def _sign(self, request: httpx.Request) -> str | None:
        if self.token is not None:
            request.headers["Prefect-Csrf-Token"] = self.token
            request.headers["Prefect-Csrf-Client"] = self.client_id
        return self.token

    async def _renew(self, refused: str | None, request: httpx.Request) -> bool:
        """Get a token unless a concurrent request already replaced ``refused``."""
        async with self._renewing:
            if self.token != refused:
                return True
            headers = {k: v for k, v in request.headers.items() if k.lower() in _CARRIED}
            ask = httpx.Request(
                "GET", self._token_url, params={"client": self.client_id}, headers=headers
            )
            answer = await self._wrapped.handle_async_request(ask)
            try:
                await answer.aread()
                if answer.status_code != 200:
                    return False
                token = json.loads(answer.content).get("token")
            except (ValueError, AttributeError):
                return False
            finally:
                await answer.aclose()
            if not isinstance(token, str):
                return False
            self.token = token
            return True

    async def aclose(self) -> None:
        """Close the wrapped transport."""
        await self._wrapped.aclose()
