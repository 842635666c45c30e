"""``StartRate``: a token bucket that paces how fast a worker starts runs.

``--limit`` bounds how many runs are in flight; it does not bound how fast they
start. After downtime a backlog of due runs would otherwise be claimed and
started all at once, and a burst of process starts can exhaust a machine's
memory before any of them finishes. The bucket holds up to ``burst`` tokens
and gains ``rate`` tokens per second on trio's clock (so tests drive it with
``MockClock``); each run the worker claims takes one. The worker claims only
runs it has a token for and leaves the rest SCHEDULED, for itself later or for
another worker of the fleet.
"""

from __future__ import annotations

import math

import trio

from trio_worker._core._exceptions import ConfigurationError

__all__ = ["StartRate"]


class StartRate:
    """Allow at most ``burst`` starts at once and ``rate`` starts per second on average.

    Args:
        rate: tokens gained per second; ``None`` means unlimited.
        burst: the most tokens the bucket holds (default: one second's worth,
            at least 1). A full bucket lets ``burst`` runs start together.

    Raises:
        ConfigurationError: ``rate`` is not positive or ``burst`` is below 1.
    """

    def __init__(self, rate: float | None, burst: int | None = None) -> None:
        if rate is not None and not (rate > 0 and math.isfinite(rate)):
            raise ConfigurationError(
                f"max_starts_per_second={rate} must be a positive number (or unset)"
            )
        if burst is not None and burst < 1:
            raise ConfigurationError(f"start_burst={burst} must be at least 1")
        self.rate = rate
        self.burst: float = math.inf if rate is None else float(burst or max(1, math.ceil(rate)))
        self._tokens = self.burst
        self._updated: float | None = None

    @property
    def unlimited(self) -> bool:
        """Whether starts are not paced at all."""
        return self.rate is None

    def _refill(self) -> None:
        if self.rate is None:
            return
        now = trio.current_time()
        if self._updated is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def available(self) -> float:
        """Whole tokens in the bucket now (``inf`` when unlimited)."""
        self._refill()
        return self._tokens if self.rate is None else math.floor(self._tokens)

    def try_take(self) -> bool:
        """Take one token if there is one; never waits."""
        self._refill()
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def give_back(self) -> None:
        """Return a token taken for a run that was not claimed after all."""
        self._refill()
        self._tokens = min(self.burst, self._tokens + 1)

    def seconds_until(self, tokens: float) -> float:
        """Seconds until ``tokens`` whole tokens are in the bucket (capped at ``burst``)."""
        self._refill()
        if self.rate is None:
            return 0.0
        wanted = min(float(tokens), self.burst)
        return max(0.0, (wanted - self._tokens) / self.rate)
