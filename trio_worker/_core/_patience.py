"""Calls the worker cannot do without, kept going through an API outage.

The client already retries each request a few times (about half a minute in
all). That is right for a poll, which the next poll replaces, but not for the
answers a run's fate hangs on: the PENDING proposal that says whether this
worker owns a run, and the final state that says how it ended. Giving up on
those leaves a run PENDING or RUNNING with nobody behind it (anchors.md row
20). :func:`until_answered` repeats such a call, with backoff, for as long as
its caller's patience (and any enclosing deadline) allows.

Only idempotent calls belong here: reads, and state proposals, which carry a
``transition_id`` the API recognises when a retry meets a transition it
already made.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import trio

from trio_worker._core._exceptions import ServerUnavailableError

__all__ = ["until_answered"]

logger = logging.getLogger("trio_worker.client")

T = TypeVar("T")

FIRST_PAUSE_SECONDS: Final = 1.0
LONGEST_PAUSE_SECONDS: Final = 30.0


async def until_answered(call: Callable[[], Awaitable[T]], *, what: str, patience: float) -> T:
    """Return ``call()``'s result, calling again while the API is unavailable.

    Args:
        call: an idempotent API call.
        what: names the call in the log, e.g. ``"report COMPLETED for flow run X"``.
        patience: seconds after which the last :class:`ServerUnavailableError`
            is raised instead of waiting again.

    Raises:
        ServerUnavailableError: the API did not answer within ``patience``.
        APIError: any other error the API answered with; it is not retried.
    """
    give_up_at = trio.current_time() + patience
    pause = FIRST_PAUSE_SECONDS
    while True:
        try:
            return await call()
        except ServerUnavailableError as exc:
            if trio.current_time() + pause > give_up_at:
                raise
            logger.warning("Could not %s yet (%s); trying again in %.0f s", what, exc, pause)
        await trio.sleep(pause)
        pause = min(pause * 2, LONGEST_PAUSE_SECONDS)
