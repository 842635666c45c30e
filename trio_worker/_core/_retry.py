"""The one retry/backoff policy: exponential, capped, and always jittered.

Every wait that follows a failure goes through :class:`Backoff`: the API
client's request retries, the websocket reconnects, the periodic loops
(polls, heartbeats) and the calls a run's fate hangs on (:func:`until_answered`).
One policy means one answer to "how long until it tries again", and one place
that guarantees the property that matters for a fleet: two workers that lost
the same API at the same moment do not come back at the same moment. A wait is
its *centre* (``first_seconds`` times ``factor`` to the number of steps, capped
at ``max_seconds``) spread uniformly by ``jitter`` either way. The spread is
applied after the cap, so workers that have all reached the cap stay spread.

Why not stamina (which does support Trio): its deadlines are tenacity's, which
measure ``time.monotonic`` rather than Trio's clock, so a ``MockClock`` cannot
drive them; its switches (testing mode, instrumentation hooks) are process
globals; and it retries one call until it succeeds, whereas half of the shapes
here are loops that run forever and only slow down (a poll, a reconnecting
subscription) or that honour a server's ``Retry-After``. A frozen value and a
few lines of arithmetic fit all of them.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import attrs
import trio

from trio_worker._core._exceptions import ServerUnavailableError

__all__ = ["DEFAULT_JITTER", "Backoff", "jittered", "until_answered"]

logger = logging.getLogger("trio_worker.client")

T = TypeVar("T")

DEFAULT_JITTER: Final = 0.3
"""How far, as a fraction either way, a wait may stray from its centre."""

MAX_STEPS: Final = 64
"""Steps beyond this change nothing (the cap is reached) and would overflow a float."""


def jittered(seconds: float, jitter: float = DEFAULT_JITTER) -> float:
    """Spread ``seconds`` uniformly by up to ``jitter`` (a fraction) either way."""
    spread: float = random.uniform(1 - jitter, 1 + jitter)
    return seconds * spread


@attrs.frozen(kw_only=True)
class Backoff:
    """Exponential backoff with proportional jitter.

    Attributes:
        first_seconds: the centre of the first wait.
        max_seconds: the largest centre; jitter may take a wait ``jitter``
            beyond it, so that waits at the cap stay spread.
        factor: how much the centre grows per step.
        jitter: the fraction by which each wait strays from its centre, either
            way (0 turns the spread off; tests that need exact times do so).
        failures_per_step: how many failures make one step; a poll loop takes a
            few failures at its normal interval before it slows down.
    """

    first_seconds: float
    max_seconds: float
    factor: float = 2.0
    jitter: float = DEFAULT_JITTER
    failures_per_step: int = 1

    def __attrs_post_init__(self) -> None:
        if self.first_seconds < 0 or self.max_seconds < self.first_seconds:
            raise ValueError(f"need 0 <= first_seconds <= max_seconds, not {self!r}")
        if not 0 <= self.jitter < 1 or self.factor < 1 or self.failures_per_step < 1:
            raise ValueError(f"need 0 <= jitter < 1, factor >= 1, failures_per_step >= 1: {self!r}")

    def centre(self, attempt: int) -> float:
        """Return the wait before jitter after ``attempt`` (0-based) failures, capped."""
        steps = min(attempt // self.failures_per_step, MAX_STEPS)
        return min(self.max_seconds, self.first_seconds * self.factor**steps)

    def delay(self, attempt: int, *, at_least: float | None = None) -> float:
        """Return the jittered wait for ``attempt`` (0-based).

        Args:
            attempt: how many waits came before this one since the last success.
            at_least: a wait the other side asked for (``Retry-After``); it
                replaces the centre and is spread upwards only, so no retry
                comes sooner than asked.
        """
        if at_least is not None:
            spread: float = random.uniform(1.0, 1.0 + self.jitter)
            return at_least * spread
        return jittered(self.centre(attempt), self.jitter)


FIRST_PAUSE_SECONDS: Final = 1.0
LONGEST_PAUSE_SECONDS: Final = 30.0
UNTIL_ANSWERED: Final = Backoff(
    first_seconds=FIRST_PAUSE_SECONDS, max_seconds=LONGEST_PAUSE_SECONDS
)
"""The policy of :func:`until_answered`: 1 s doubling to 30 s, jittered, so a fleet
that re-proposes final states after an outage does not do it in lockstep."""


async def until_answered(
    call: Callable[[], Awaitable[T]],
    *,
    what: str,
    patience: float,
    policy: Backoff = UNTIL_ANSWERED,
) -> T:
    """Return ``call()``'s result, calling again while the API is unavailable.

    Only idempotent calls belong here: reads, and state proposals, which carry
    a ``transition_id`` the API recognises when a retry meets a transition it
    already made.

    Args:
        call: an idempotent API call.
        what: names the call in the log, e.g. ``"report COMPLETED for flow run X"``.
        patience: seconds after which the last :class:`ServerUnavailableError`
            is raised instead of waiting again.
        policy: the waits between calls.

    Raises:
        ServerUnavailableError: the API did not answer within ``patience``.
        APIError: any other error the API answered with; it is not retried.
    """
    give_up_at = trio.current_time() + patience
    attempt = 0
    while True:
        try:
            return await call()
        except ServerUnavailableError as exc:
            pause = policy.delay(attempt)
            if trio.current_time() + pause > give_up_at:
                raise
            logger.warning("Could not %s yet (%s); trying again in %.0f s", what, exc, pause)
        await trio.sleep(pause)
        attempt += 1
