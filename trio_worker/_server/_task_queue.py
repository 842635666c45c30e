"""Delivery of deferred task runs to ``/task_runs/subscriptions/scheduled`` subscribers.

Prefect keeps this queue in the server's memory, so a restart loses it. Here
the queue *is* the database: every task run in state SCHEDULED with
``state_details.deferred`` and not yet acknowledged (``delivered = 0``) is
waiting. The only in-memory part is the set of runs currently sent to a
subscriber and not yet acknowledged; picking a run adds it there (so no second
subscriber gets it), an ack persists ``delivered = 1``, and anything else
(a ``quit``, a bad reply, a disconnect) removes it from the set, which puts the
run back for the next subscriber. After a restart the set is empty, so runs
that were in flight are delivered again.

Waiting subscribers sleep on an event that every change to a deferred task run
(created, rescheduled, released) sets.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Final

import trio

from trio_worker._server._records import task_run_json
from trio_worker._server._storage import Database, Tx

__all__ = ["TaskQueue"]

CANDIDATES: Final = 20
"""Runs read per look at the queue; those already in flight are skipped."""

IDLE_RECHECK_SECONDS: Final = 5.0
"""A waiting subscriber looks at the database again at least this often."""


class TaskQueue:
    """Hands each waiting deferred task run to exactly one subscriber at a time."""

    def __init__(self) -> None:
        self._in_flight: set[str] = set()
        self._changed = trio.Event()

    def notify(self) -> None:
        """Wake subscribers: a deferred task run may be waiting now."""
        self._changed.set()
        self._changed = trio.Event()

    async def take(self, db: Database, keys: list[str]) -> dict[str, Any]:
        """Wait for a run with one of ``keys`` and reserve it for the caller.

        The caller must end the reservation with :meth:`ack` or :meth:`release`
        (in a ``finally``), or the run stays reserved until the server restarts.
        """
        while True:
            changed = self._changed
            exclude = list(self._in_flight)
            rows = await db.run(partial(_candidates, keys=keys, exclude=exclude))
            # No checkpoint between this check and the add: two subscribers
            # cannot both reserve the same run.
            for run in rows:
                if run["id"] not in self._in_flight:
                    self._in_flight.add(run["id"])
                    return run
            with trio.move_on_after(IDLE_RECHECK_SECONDS):
                await changed.wait()

    async def ack(self, db: Database, run_id: str) -> None:
        """Record durably that the run was delivered, then end its reservation."""
        try:
            await db.run(lambda tx: tx.execute("UPDATE task_runs SET delivered = 1 WHERE id = ?",
                                               (run_id,)))  # fmt: skip
        finally:
            self._in_flight.discard(run_id)

    def release(self, run_id: str) -> None:
        """End a reservation without an ack: the run is offered again."""
        if run_id in self._in_flight:
            self._in_flight.discard(run_id)
            self.notify()


def _candidates(tx: Tx, *, keys: list[str], exclude: list[str]) -> list[dict[str, Any]]:
    key_marks = ", ".join("?" for _ in keys)
    excluded = ""
    if exclude:
        excluded = f"AND id NOT IN ({', '.join('?' for _ in exclude)})"
    rows = tx.all(
        f"SELECT * FROM task_runs WHERE task_key IN ({key_marks}) AND state_type = 'SCHEDULED' "
        f"AND deferred = 1 AND delivered = 0 {excluded} "
        "ORDER BY state_name = 'AwaitingRetry' DESC, next_scheduled_start_time, created LIMIT ?",
        [*keys, *exclude, CANDIDATES],
    )
    return [task_run_json(row) for row in rows]
