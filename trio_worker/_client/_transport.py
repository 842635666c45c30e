"""Retries for API requests, as an httpx transport.

The retry policy lives at httpx's seam (``AsyncBaseTransport``) so every
request the client makes gets it, and the client's methods stay plain. What is
retried follows Prefect's client: transport errors (timeouts, dropped
connections), 408, 429 and 5xx; never any other 4xx, which would fail the same
way again. Waits follow the one backoff policy (:class:`~trio_worker._core._retry.Backoff`,
exponential with jitter) and honour ``Retry-After``.
A failure to *connect* is retried only once a request has succeeded, so a
wrong ``PREFECT_API_URL`` fails fast at start-up instead of after a minute.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import time
from typing import Final

import httpx
import trio

from trio_worker._client._tls import describe_tls_failure
from trio_worker._core._retry import Backoff

__all__ = ["RETRY_STATUS_CODES", "RetryTransport"]

logger = logging.getLogger("trio_worker.client")

RETRY_STATUS_CODES: Final = frozenset({408, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_SECONDS: Final = 60.0
MAX_BACKOFF_SECONDS: Final = 30.0


def _retry_after_seconds(response: httpx.Response) -> float | None:
    """Read ``Retry-After`` as seconds (it may be a number or an HTTP date).

    A value that is neither gives None: the usual backoff applies.
    """
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:  # "-0000": UTC, per RFC 5322
        parsed = parsed.replace(tzinfo=dt.UTC)
    return max(0.0, parsed.timestamp() - time.time())


class RetryTransport(httpx.AsyncBaseTransport):
    """Wrap a transport and retry what may succeed on a second try.

    Args:
        wrapped: the transport that really sends requests.
        max_retries: retries after the first attempt (so ``max_retries + 1`` tries).
        backoff_seconds: the first wait; each retry doubles it, up to 30 s.
    """

    def __init__(
        self,
        wrapped: httpx.AsyncBaseTransport,
        *,
        max_retries: int = 5,
        backoff_seconds: float = 1.0,
    ) -> None:
        self._wrapped = wrapped
        self._max_retries = max_retries
        self._backoff = Backoff(
            first_seconds=backoff_seconds, max_seconds=max(backoff_seconds, MAX_BACKOFF_SECONDS)
        )
        self._connected_once = False

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        retry_after = _retry_after_seconds(response) if response is not None else None
        if retry_after is not None:
            # Wait at least what the server asked (spread upwards only).
            return self._backoff.delay(attempt, at_least=min(retry_after, MAX_RETRY_AFTER_SECONDS))
        return self._backoff.delay(attempt)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request``, retrying transient failures with backoff."""
        attempt = 0
        while True:
            try:
                response = await self._wrapped.handle_async_request(request)
                # Read the body here, inside the retry loop: a connection that
                # drops mid-body is as transient as one that drops before the
                # status line. (The client never streams responses.)
                await response.aread()
            except httpx.TransportError as exc:
                retryable = self._connected_once or not isinstance(exc, httpx.ConnectError)
                if not retryable or attempt >= self._max_retries:
                    raise
                delay = self._delay(attempt, None)
                logger.info(
                    "%s %s failed (%s); retry %d of %d in %.1f s",
                    request.method,
                    request.url.copy_with(query=None),
                    describe_tls_failure(exc) or type(exc).__name__,
                    attempt + 1,
                    self._max_retries,
                    delay,
                )
            else:
                self._connected_once = True
                if response.status_code not in RETRY_STATUS_CODES or attempt >= self._max_retries:
                    return response
                delay = self._delay(attempt, response)
                await response.aclose()
                logger.info(
                    "%s %s answered %d; retry %d of %d in %.1f s",
                    request.method,
                    request.url.copy_with(query=None),
                    response.status_code,
                    attempt + 1,
                    self._max_retries,
                    delay,
                )
            attempt += 1
            await trio.sleep(delay)

    async def aclose(self) -> None:
        """Close the wrapped transport."""
        await self._wrapped.aclose()
