"""``service_loop``: the one helper every periodic worker loop runs under.

A loop calls its workload, sleeps a jittered interval, and repeats. Transient
API failures (``ServerUnavailableError``, and other API errors a later call may
not hit) are logged and make the loop back off by the one policy
(:class:`~trio_worker._core._retry.Backoff`): after three failures in a row
the interval doubles, up to ``max_backoff_doublings`` times, and a success
resets it; every wait is jittered, so workers don't poll in lockstep. Unlike
Prefect's ``critical_service_loop`` it never gives up on a transient error: a
worker outliving an API outage is the point. Errors that no retry can fix
(``UnauthorizedError``, ``ConfigurationError``) propagate and stop the worker
with their message.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final

import trio

from trio_worker._core._exceptions import APIError, ConfigurationError, UnauthorizedError
from trio_worker._core._retry import DEFAULT_JITTER, Backoff, jittered

__all__ = ["DEFAULT_JITTER", "jittered", "service_loop"]

logger = logging.getLogger("trio_worker.services")

FAILURES_BEFORE_BACKOFF: Final = 3
DEFAULT_MAX_BACKOFF_DOUBLINGS: Final = 4


async def service_loop(
    workload: Callable[[], Awaitable[object]],
    *,
    interval: float,
    name: str,
    jitter: float = DEFAULT_JITTER,
    max_backoff_doublings: int = DEFAULT_MAX_BACKOFF_DOUBLINGS,
    on_error: Callable[[BaseException], object] | None = None,
    pause: Callable[[float], Awaitable[object]] = trio.sleep,
    first_pause: bool = False,
) -> None:
    """Run ``workload`` every ``interval`` seconds until cancelled.

    Args:
        workload: the async callable to run each round.
        interval: seconds between rounds before jitter and backoff.
        name: what the loop does, for log lines ("poll", "heartbeat").
        jitter: fraction by which each sleep may vary.
        max_backoff_doublings: how many times repeated failures may double the interval.
        on_error: called with each transient error (e.g. to count it in metrics).
        pause: waits between rounds, given the jittered interval; it may return
            sooner (the poll loop does when freed slots meet a backlog).
        first_pause: pause before the first round too (the caller has just done one).

    Raises:
        UnauthorizedError: the API refused the credentials.
        ConfigurationError: the workload found a problem only a person can fix.
    """
    backoff = Backoff(
        first_seconds=interval,
        max_seconds=interval * 2**max_backoff_doublings,
        jitter=jitter,
        failures_per_step=FAILURES_BEFORE_BACKOFF,
    )
    consecutive_failures = 0
    if first_pause:
        await pause(jittered(interval, jitter))
    while True:
        try:
            await workload()
        except (UnauthorizedError, ConfigurationError):
            raise
        except APIError as exc:
            if on_error is not None:
                on_error(exc)
            consecutive_failures += 1
            if consecutive_failures == 1:
                logger.warning("%s failed, will retry: %s", name, exc)
            if consecutive_failures % FAILURES_BEFORE_BACKOFF == 0:
                logger.warning(
                    "%s failed %d times in a row; next try in about %.0f s",
                    name,
                    consecutive_failures,
                    backoff.centre(consecutive_failures),
                )
        else:
            if consecutive_failures:
                logger.info("%s recovered after %d failures", name, consecutive_failures)
            consecutive_failures = 0
        await pause(backoff.delay(consecutive_failures))
