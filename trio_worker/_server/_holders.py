"""Who holds a run: the signals that say its owner is alive, as the API records them.

Three signals feed the liveness rules (``_liveness``):

- a worker's heartbeat lists the flow runs it holds (``flow_run_ids``, a field
  of trio-worker's that Prefect's server ignores): the run's ``holder`` and
  ``holder_seen``, with ``holder_since`` kept while the holder stays the same;
- a flow run's engine emits ``prefect.flow-run.heartbeat`` events:
  ``heartbeat_at``, in the API's own clock (a client's clock may be off);
- a task worker's ack starts a task run's lease, and its renewals extend it.

This module only records; it never changes a state, so the request paths that
call it stay cheap (one UPDATE).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Final

from trio_worker._server._common import format_time
from trio_worker._server._filters import invalid
from trio_worker._server._storage import Tx

__all__ = [
    "FLOW_RUN_HEARTBEAT",
    "MAX_HELD_IDS",
    "check_held_ids",
    "lease_task_run",
    "mark_held",
    "read_holders",
    "record_flow_run_heartbeat",
    "renew_leases",
]

FLOW_RUN_HEARTBEAT: Final = "prefect.flow-run.heartbeat"
"""The event an engine emits while its flow run lives (Prefect's name and shape)."""

MAX_HELD_IDS: Final = 10_000
"""Most run ids one heartbeat or lease renewal may name."""

_CHUNK: Final = 500
"""Ids per ``IN (...)`` list (SQLite's limit on variables is far above)."""

_RUN_PREFIX: Final = "prefect.flow-run."


def check_held_ids(ids: Sequence[Any], field: str) -> None:
    """Refuse a list of run ids longer than :data:`MAX_HELD_IDS` (422, naming the field)."""
    if len(ids) > MAX_HELD_IDS:
        raise invalid(
            [
                {
                    "type": "too_long",
                    "loc": ["body", field],
                    "msg": f"List should have at most {MAX_HELD_IDS} items after validation, "
                    f"not {len(ids)}",
                    "input": None,
                }
            ],
            None,
        )


def _chunks(ids: Sequence[str]) -> list[Sequence[str]]:
    return [ids[i : i + _CHUNK] for i in range(0, len(ids), _CHUNK)]


def mark_held(tx: Tx, worker: str, run_ids: Sequence[str], at: datetime) -> None:
    """Record that ``worker`` holds ``run_ids`` now (unknown ids are ignored)."""
    stamp = format_time(at)
    for chunk in _chunks(run_ids):
        marks = ", ".join("?" for _ in chunk)
        tx.execute(
            "UPDATE flow_runs SET "
            "holder_since = CASE WHEN holder IS ? THEN holder_since ELSE ? END, "
            f"holder = ?, holder_seen = ? WHERE id IN ({marks})",
            (worker, stamp, worker, stamp, *chunk),
        )


def record_flow_run_heartbeat(tx: Tx, event: dict[str, Any], at: datetime) -> None:
    """Record a ``prefect.flow-run.heartbeat`` event against the run it names."""
    resource_id = str(event["resource"].get("prefect.resource.id", ""))
    if resource_id.startswith(_RUN_PREFIX):
        tx.execute(
            "UPDATE flow_runs SET heartbeat_at = ? WHERE id = ?",
            (format_time(at), resource_id.removeprefix(_RUN_PREFIX)),
        )


def lease_task_run(tx: Tx, run_id: str, holder: str, at: datetime, seconds: float) -> None:
    """Start the lease of a task run just delivered to (acked by) ``holder``.

    With ``seconds`` 0 (leases off) only the holder is recorded, for ``task-run ls``.
    """
    stamp = format_time(at)
    expires = format_time(at + timedelta(seconds=seconds)) if seconds > 0 else None
    # Only a run still in its worker's hands: a fast run may be final before
    # its ack is recorded (acks are written with the subscriber's next take).
    tx.execute(
        "UPDATE task_runs SET lease_holder = ?, lease_since = ?, lease_expires = ?, "
        "lease_lost_by = NULLIF(lease_lost_by, ?) "
        "WHERE id = ? AND state_type IN ('PENDING', 'RUNNING')",
        (holder, stamp, expires, holder, run_id),
    )


def renew_leases(
    tx: Tx, holder: str, run_ids: Sequence[str], at: datetime, seconds: float
) -> list[str]:
    """Extend ``holder``'s leases on ``run_ids``; return the ids whose lease it lost.

    A lease is lost when it lapsed (the run went back to the queue, or was
    CRASHED) or another task worker holds the run now; the holder must stop
    running it. Ids it never held a lease on (not acked yet, unknown) are
    neither renewed nor lost.
    """
    expires = format_time(at + timedelta(seconds=seconds)) if seconds > 0 else None
    lost: list[str] = []
    for chunk in _chunks(run_ids):
        marks = ", ".join("?" for _ in chunk)
        tx.execute(
            f"UPDATE task_runs SET lease_expires = ? WHERE id IN ({marks}) AND lease_holder = ?",
            (expires, *chunk, holder),
        )
        rows = tx.all(
            f"SELECT id FROM task_runs WHERE id IN ({marks}) AND ("
            "(lease_holder IS NOT NULL AND lease_holder != ?) OR lease_lost_by = ?)",
            (*chunk, holder, holder),
        )
        lost += [row["id"] for row in rows]
    return lost


_HELD_STATES: Final = "('PENDING', 'RUNNING', 'CANCELLING')"


def read_holders(
    tx: Tx, flow_run_ids: Sequence[str], task_run_ids: Sequence[str]
) -> dict[str, dict[str, dict[str, str | None]]]:
    """``POST /liveness/holders``: who holds each of these runs that is not final, since when.

    A flow run's holder is the worker whose heartbeat lists it; a task run's,
    the task worker holding its lease. Runs nobody holds are left out.
    """
    answer: dict[str, dict[str, dict[str, str | None]]] = {"flow_runs": {}, "task_runs": {}}
    queries = (
        ("flow_runs", flow_run_ids, "holder", "holder_since"),
        ("task_runs", task_run_ids, "lease_holder", "lease_since"),
    )
    for table, ids, holder, since in queries:
        for chunk in _chunks(ids):
            marks = ", ".join("?" for _ in chunk)
            rows = tx.all(
                f"SELECT id, {holder} AS held_by, {since} AS held_since FROM {table} "
                f"WHERE id IN ({marks}) AND {holder} IS NOT NULL "
                f"AND state_type IN {_HELD_STATES}",
                chunk,
            )
            for row in rows:
                answer[table][row["id"]] = {
                    "held_by": row["held_by"],
                    "held_since": row["held_since"],
                }
    return answer
