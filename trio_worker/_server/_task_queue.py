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

import sqlite3
from functools import partial
from typing import Any, Final

import trio

from trio_worker._server._common import now
from trio_worker._server._holders import lease_task_run
from trio_worker._server._records import task_run_json
from trio_worker._server._storage import Database, Tx

__all__ = ["TaskQueue"]

IDLE_RECHECK_SECONDS: Final = 5.0
"""A waiting subscriber looks at the database again at least this often."""

WAITING: Final = "state_type = 'SCHEDULED' AND deferred = 1 AND delivered = 0"
"""The condition of the partial indexes that hold the waiting runs (schema ``_V2``)."""


class TaskQueue:
    """Hands each waiting deferred task run to exactly one subscriber at a time."""

    def __init__(self, *, lease_seconds: float = 0.0) -> None:
        self._in_flight: set[str] = set()
        self._changed = trio.Event()
        #: How long an ack leases a run to its subscriber (0: leases off; ``_liveness``).
        self.lease_seconds = lease_seconds

    def notify(self) -> None:
        """Wake subscribers: a deferred task run may be waiting now."""
        self._changed.set()
        self._changed = trio.Event()

    async def take(
        self, db: Database, keys: list[str], *, acked: str | None = None, holder: str = ""
    ) -> dict[str, Any]:
        """Wait for a run with one of ``keys`` and reserve it for the caller.

        ``acked`` is the run the caller delivered last: its ack is recorded in
        the same transaction that looks for the next run, so a subscriber's
        hand-off costs one trip to the database, not two. The ack leases the
        run to ``holder`` (the subscriber's ``client_id``).

        The caller must end the reservation with :meth:`ack`, a later ``take``
        (``acked=``) or :meth:`release` (in a ``finally``), or the run stays
        reserved until the server restarts.
        """
        try:
            while True:
                changed = self._changed
                look = partial(
                    _waiting,
                    keys=keys,
                    count=len(self._in_flight) + 1,
                    acked=acked,
                    holder=holder,
                    lease_seconds=self.lease_seconds,
                )
                rows = await db.run(look)
                if acked is not None:
                    self._in_flight.discard(acked)
                    acked = None
                # No checkpoint between this check and the add: two subscribers
                # cannot both reserve the same run.
                for row in rows:
                    if row["id"] not in self._in_flight:
                        self._in_flight.add(row["id"])
                        return task_run_json(row)
                with trio.move_on_after(IDLE_RECHECK_SECONDS):
                    await changed.wait()
        finally:
            if acked is not None:  # the database call itself failed
                self._in_flight.discard(acked)

    async def ack(self, db: Database, run_id: str, holder: str = "") -> None:
        """Record durably that the run was delivered (leased to ``holder``), end its reservation."""
        try:
            await db.run(
                partial(_record_ack, run_id=run_id, holder=holder, seconds=self.lease_seconds)
            )
        finally:
            self._in_flight.discard(run_id)

    def release(self, run_id: str) -> None:
        """End a reservation without an ack: the run is offered again."""
        if run_id in self._in_flight:
            self._in_flight.discard(run_id)
            self.notify()


def _record_ack(tx: Tx, *, run_id: str, holder: str, seconds: float) -> None:
    tx.execute("UPDATE task_runs SET delivered = 1 WHERE id = ?", (run_id,))
    if holder:
        lease_task_run(tx, run_id, holder, now(), seconds)


def _waiting(
    tx: Tx,
    *,
    keys: list[str],
    count: int,
    acked: str | None,
    holder: str = "",
    lease_seconds: float = 0.0,
) -> list[sqlite3.Row]:
    """Waiting runs in delivery order, enough that one is not in flight (``acked`` recorded first).

    Runs waiting to be retried go first, then the rest by scheduled time, as
    Prefect serves its retry queue before its scheduled queue. Each key's first
    ``count`` runs are read in order from a partial index; the few rows are
    merged here.
    """
    if acked is not None:
        _record_ack(tx, run_id=acked, holder=holder, seconds=lease_seconds)
    order = "ORDER BY next_scheduled_start_time, created LIMIT ?"
    found: dict[str, sqlite3.Row] = {}
    for extra in ("AND state_name = 'AwaitingRetry'", ""):
        group: list[sqlite3.Row] = []
        for key in keys:
            group += tx.all(
                f"SELECT * FROM task_runs WHERE task_key = ? AND {WAITING} {extra} {order}",
                (key, count),
            )
        group.sort(key=lambda row: (row["next_scheduled_start_time"] or "", row["created"]))
        for row in group:
            found.setdefault(row["id"], row)
    return list(found.values())
