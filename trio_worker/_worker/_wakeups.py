"""Pick-up by event: the poll loop rests while the events stream says when to look.

A worker that polls every query interval costs the server a request per
interval for as long as it lives, with or without work: in a fleet of idle
workers that is most of the server's load. Prefect's server announces every
run that becomes due for a worker: a flow run entering a SCHEDULED-type state
emits ``prefect.flow-run.<state name>`` (Scheduled, AwaitingRetry, Late,
Rescheduled, AwaitingConcurrencySlot) on ``/events/out``, whose subscription
the worker already holds for cancellations (the cancellation watcher hands
such events to a :class:`WakeupTap`). So while that stream is up the poll loop:

- polls at once when a SCHEDULED-type event names a run of its pool (and of
  its queues, when it serves some);
- polls when the earliest run it knows of comes due: events carry no
  scheduled time, so after an event (and after each such timed wake-up) it
  reads the pool's next SCHEDULED run that is not due yet, one request (at
  most one a second; none for ``Late``, a run that is due by definition);
- otherwise polls only every ``FALLBACK_FACTOR`` query intervals (at most
  ``FALLBACK_MAX_SECONDS``: Prefect calls a queue not polled for 60 s not
  ready), which catches anything an event did not say.

While the stream is down the loop polls every interval, as without events;
the stream coming up wakes a poll (what happened while it was down).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, Final

import attrs
import trio

from trio_worker._client._client import PrefectClient
from trio_worker._core._exceptions import APIError
from trio_worker._core._models import now

__all__ = ["SCHEDULED_EVENTS", "WakeupTap", "Wakeups", "read_next_due"]

logger = logging.getLogger("trio_worker.wakeups")

#: The events of a flow run entering a SCHEDULED-type state (event name = state name).
SCHEDULED_EVENTS: Final = tuple(
    f"prefect.flow-run.{name}"
    for name in ("Scheduled", "AwaitingRetry", "Late", "Rescheduled", "AwaitingConcurrencySlot")
)
#: While the stream is up, the poll interval is the query interval times this.
FALLBACK_FACTOR: Final = 10.0
#: ... but never longer than this (Prefect marks a queue unpolled for 60 s not ready).
FALLBACK_MAX_SECONDS: Final = 30.0
#: Event-driven polls come at most this often: a burst of events is one poll.
MIN_WAKE_GAP_SECONDS: Final = 0.2
#: How many SCHEDULED runs the look-ahead read asks for (the due ones come first).
LOOKAHEAD_PAGE: Final = 10
#: Look-ahead reads come at most this often: a burst of events is one read.
LOOKAHEAD_GAP_SECONDS: Final = 1.0
#: A run marked Late is due by definition: it wakes a poll, no look-ahead read.
LATE_EVENT: Final = "prefect.flow-run.Late"


def _in_scope(message: Any, pool: str, queues: Collection[str]) -> bool:
    """Whether an event's run belongs to ``pool`` (and to one of ``queues``, if any)."""
    related = message["event"].get("related", [])
    if not isinstance(related, list):
        return False
    names: dict[str, set[str]] = {}
    for resource in related:
        if isinstance(resource, dict):
            role = str(resource.get("prefect.resource.role", ""))
            names.setdefault(role, set()).add(str(resource.get("prefect.resource.name", "")))
    if pool not in names.get("work-pool", set()):
        return False
    return not queues or bool(names.get("work-queue", set()) & set(queues))


class Wakeups:
    """What the poll loop waits on between polls; fed by the events stream.

    One per worker, owned by its loops. The stream side (a :class:`WakeupTap`)
    calls :meth:`stream_up`, :meth:`stream_down` and :meth:`on_event`; the
    poller calls :meth:`pause_seconds` for how long it may rest and
    :meth:`wait` to rest; :meth:`serve` runs the look-ahead reads.
    """

    def __init__(
        self,
        *,
        fallback_factor: float = FALLBACK_FACTOR,
        fallback_max_seconds: float = FALLBACK_MAX_SECONDS,
    ) -> None:
        self.fallback_factor = fallback_factor
        self.fallback_max_seconds = fallback_max_seconds
        #: The stream is connected and its filter sent.
        self.live = False
        #: When (Trio clock) the earliest known not-yet-due run comes due.
        self.due_at: float | None = None
        self._wake = trio.Event()
        self._refresh = trio.Event()
        self._last_wake = -math.inf
        self._scope: trio.CancelScope | None = None

    # -- the stream's side -------------------------------------------------------------

    def stream_up(self) -> None:
        """The stream is live: rest from now on, after a poll for what it missed."""
        self.live = True
        self._wake.set()
        self._refresh.set()

    def stream_down(self) -> None:
        """The stream dropped: back to polling every interval, starting now."""
        self.live = False
        self._wake.set()

    def on_event(self, message: Any, pool: str, queues: Collection[str] = ()) -> bool:
        """Handle one ``/events/out`` message; True when it was a SCHEDULED-type event.

        One of this pool's runs became due (or will): poll now and learn when
        the next one is due. Events of other pools are consumed and ignored.
        """
        if not isinstance(message, dict) or message.get("type") != "event":
            return False
        event = message.get("event")
        if not isinstance(event, dict):  # a message of another shape: not ours to judge
            return False
        name = event.get("event")
        if name not in SCHEDULED_EVENTS:
            return False
        if _in_scope(message, pool, queues):
            self._wake.set()
            if name != LATE_EVENT:
                self._refresh.set()
        return True

    # -- the poll loop's side ------------------------------------------------------------

    def pause_seconds(self, seconds: float) -> float:
        """How long the loop may rest after a poll, given its (jittered) query interval."""
        if not self.live:
            return seconds
        return min(seconds * self.fallback_factor, self.fallback_max_seconds)

    async def wait(self) -> None:
        """Rest until an event wakes the loop or the earliest known run comes due.

        The caller bounds it (``pause_seconds``). A wake-up that arrived while
        the loop was polling is not lost: it ends the next wait at once.
        """
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                scope.deadline = self._due_deadline()
                await self._wake.wait()
                # A burst of events is one poll.
                await trio.sleep_until(self._last_wake + MIN_WAKE_GAP_SECONDS)
        finally:
            self._scope = None
        self._wake = trio.Event()
        self._last_wake = trio.current_time()
        if scope.cancelled_caught:
            # The known run came due: after this poll, learn the next one.
            self.due_at = None
            self._refresh.set()

    def _due_deadline(self) -> float:
        return math.inf if self.due_at is None else self.due_at

    def note_due(self, due: dt.datetime | None) -> None:
        """Remember when the earliest not-yet-due run comes due (None: none is known)."""
        if due is None:
            self.due_at = None
        else:
            delay = max(0.0, (due - now()).total_seconds())
            self.due_at = trio.current_time() + delay
        if self._scope is not None:
            self._scope.deadline = self._due_deadline()

    async def serve(self, read_next_due: Callable[[], Awaitable[dt.datetime | None]]) -> None:
        """Run the look-ahead reads asked for by events and timed wake-ups, forever."""
        while True:
            await self._refresh.wait()
            self._refresh = trio.Event()
            if not self.live:
                continue
            try:
                due = await read_next_due()
            except APIError as exc:
                # The fallback poll still comes; the next event asks again.
                logger.debug("Could not read the next scheduled run: %s", exc)
            else:
                self.note_due(due)
            await trio.sleep(LOOKAHEAD_GAP_SECONDS)


@attrs.frozen
class WakeupTap:
    """The events stream's side of :class:`Wakeups`, for one pool and its queues.

    What the cancellation watcher is handed (its ``EventTap``): it knows the
    event names to ask for and which runs are this worker's, and nothing of
    the poll loop.
    """

    wakeups: Wakeups
    pool: str
    queues: tuple[str, ...] = ()
    event_names: tuple[str, ...] = SCHEDULED_EVENTS

    def stream_up(self) -> None:
        """The stream is live: rest from now on, after a poll for what it missed."""
        self.wakeups.stream_up()

    def stream_down(self) -> None:
        """The stream dropped: poll every interval again."""
        self.wakeups.stream_down()

    def on_event(self, message: Any) -> bool:
        """Hand one message to :meth:`Wakeups.on_event` with this pool's scope."""
        return self.wakeups.on_event(message, self.pool, self.queues)


async def read_next_due(
    client: PrefectClient,
    *,
    work_pool_name: str,
    work_queues: Sequence[str],
    prefetch_seconds: float,
) -> dt.datetime | None:
    """When the pool's earliest SCHEDULED run that is not due yet comes due (None: none).

    Due means within the worker's prefetch window, as the poll counts it.
    """
    scope: dict[str, Any] = {"work_pools": {"name": {"any_": [work_pool_name]}}}
    if work_queues:
        scope["work_pool_queues"] = {"name": {"any_": list(work_queues)}}
    runs = await client.read_flow_runs(
        flow_runs={"state": {"type": {"any_": ["SCHEDULED"]}}},
        sort="NEXT_SCHEDULED_START_TIME_ASC",
        limit=LOOKAHEAD_PAGE,
        **scope,
    )
    prefetch = dt.timedelta(seconds=int(prefetch_seconds))
    horizon = now() + prefetch
    for run in runs:
        due = run.next_scheduled_start_time
        if due is not None and due > horizon:
            return due - prefetch
    return None
