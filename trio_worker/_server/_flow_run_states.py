"""Orchestrated state changes of flow runs: the rules decide, this module writes.

A proposed state goes through :func:`._orchestration.decide` (the rules, with
the facts read here: the current state, the infrastructure pid, whether the
deployment's concurrency slots are full); an accepted one is written with its
columns, its event (chained to the run's last one) and its history row. The
liveness sweeps write their states through :func:`write_rule_state`.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any, Final

from trio_worker._server._actions import (
    StateCreate,
    value_or,
)
from trio_worker._server._common import (
    APIProblem,
    dumps,
    format_time,
    loads,
    new_id,
    now,
    parse_time,
)
from trio_worker._server._events import EventBus, flow_run_state_event, store_event
from trio_worker._server._orchestration import (
    ACTIVE,
    TERMINAL,
    RunFacts,
    build_state,
    decide,
    result_json,
)
from trio_worker._server._records import FLOW_RUN_SELECT
from trio_worker._server._storage import Tx

__all__ = ["set_flow_run_state", "state_columns", "write_rule_state", "write_state"]

_LAST_EVENT_KEY: Final = "_last_state_event_id"


def state_columns(row: sqlite3.Row, state: dict[str, Any], at: datetime) -> dict[str, Any]:
    """Compute the run columns a new state changes (shared by flow and task runs).

    ``start_time`` is set when the run first becomes RUNNING, ``run_count``
    grows on each RUNNING, leaving RUNNING adds to ``total_run_time``, and a
    terminal state sets ``end_time``.
    """
    stamp = format_time(at)
    kind = state["type"]
    values: dict[str, Any] = {
        "state_id": state["id"],
        "state_type": kind,
        "state_name": state["name"],
        "state": dumps(state),
        "updated": stamp,
    }
    scheduled = state["state_details"].get("scheduled_time")
    values["next_scheduled_start_time"] = scheduled if kind == "SCHEDULED" else None
    if kind == "SCHEDULED" and row["expected_start_time"] is None:
        values["expected_start_time"] = scheduled
    if row["expected_start_time"] is None and kind != "SCHEDULED":
        values["expected_start_time"] = stamp
    if kind == "RUNNING":
        values["run_count"] = row["run_count"] + 1
        if row["start_time"] is None:
            values["start_time"] = stamp
    if row["state_type"] == "RUNNING" and row["state"]:
        since = loads(row["state"])["timestamp"]
        if since:
            elapsed = (at - parse_time(since)).total_seconds()
            values["total_run_time"] = float(row["total_run_time"]) + max(0.0, elapsed)
    if kind in TERMINAL:
        values["end_time"] = stamp
    elif row["state_type"] in TERMINAL and kind in ("PENDING", "SCHEDULED"):
        values["end_time"] = None
        values["run_count"] = 0
    return values


def _related(tx: Tx, row: sqlite3.Row) -> list[dict[str, str]]:
    related: list[dict[str, str]] = []
    # One round trip for the three names the event carries.
    names = tx.one(
        "SELECT (SELECT name FROM flows WHERE id = ?) AS flow, "
        "(SELECT name FROM deployments WHERE id = ?) AS deployment, "
        "(SELECT type FROM work_pools WHERE id = ?) AS pool_type",
        (row["flow_id"], row["deployment_id"], row["wp_id"]),
    )
    assert names is not None
    if names["flow"] is not None:
        related.append(
            {
                "prefect.resource.id": f"prefect.flow.{row['flow_id']}",
                "prefect.resource.role": "flow",
                "prefect.resource.name": names["flow"],
            }
        )
    if row["deployment_id"] and names["deployment"] is not None:
        related.append(
            {
                "prefect.resource.id": f"prefect.deployment.{row['deployment_id']}",
                "prefect.resource.role": "deployment",
                "prefect.resource.name": names["deployment"],
            }
        )
    if row["work_queue_id"] and row["wq_name"]:
        related.append(
            {
                "prefect.resource.id": f"prefect.work-queue.{row['work_queue_id']}",
                "prefect.resource.role": "work-queue",
                "prefect.resource.name": row["wq_name"],
            }
        )
    if row["wp_id"]:
        pool_type = names["pool_type"]
        related.append(
            {
                "prefect.resource.id": f"prefect.work-pool.{row['wp_id']}",
                "prefect.resource.role": "work-pool",
                "prefect.resource.name": row["wp_name"],
                "prefect.work-pool.type": pool_type or "",
            }
        )
    for tag in loads(row["body"]).get("tags", []):
        related.append(
            {"prefect.resource.id": f"prefect.tag.{tag}", "prefect.resource.role": "tag"}
        )
    return related  # fmt: skip


def write_state(
    tx: Tx,
    bus: EventBus,
    row: sqlite3.Row,
    initial: dict[str, Any] | None,
    state: dict[str, Any],
    at: datetime,
) -> None:
    run_id = row["id"]
    values = state_columns(row, state, at)
    if state["type"] == "SCHEDULED":  # back in the queue: nobody holds it any more
        values.update(holder=None, holder_since=None, holder_seen=None, heartbeat_at=None)
    body = loads(row["body"])
    # The previous state event, for the next one's ``follows`` (kept out of responses).
    follows = body.get(_LAST_EVENT_KEY)
    event_id = new_id()
    body[_LAST_EVENT_KEY] = event_id
    values["body"] = dumps(body)
    tx.update("flow_runs", run_id, values)
    tx.execute(
        "INSERT INTO flow_run_states (id, flow_run_id, timestamp, body) VALUES (?, ?, ?, ?)",
        (state["id"], run_id, state["timestamp"], dumps(state)),
    )
    run = {
        "id": run_id,
        "name": row["name"],
        "run_count": values.get("run_count", row["run_count"]),
    }
    event = flow_run_state_event(
        run, initial=initial, validated=state, related=_related(tx, row), at=at
    )
    event.update(id=event_id, follows=follows)
    store_event(tx, bus, event)


def write_rule_state(tx: Tx, bus: EventBus, row: sqlite3.Row, state: dict[str, Any]) -> None:
    """Write a state the API's own rules chose (``_liveness``), with its event.

    ``row`` comes from :data:`FLOW_RUN_SELECT`; no proposal is orchestrated:
    the caller decided, inside the same transaction.
    """
    current = loads(row["state"]) if row["state"] else None
    at = parse_time(state["timestamp"])
    write_state(tx, bus, row, current, state, at)


def _slots_full(tx: Tx, row: sqlite3.Row) -> bool:
    if not row["deployment_id"]:
        return False
    limit = tx.scalar(
        "SELECT concurrency_limit FROM deployments WHERE id = ?", (row["deployment_id"],)
    )
    if limit is None:
        return False
    marks = ", ".join("?" for _ in ACTIVE)
    active = tx.scalar(
        "SELECT COUNT(*) FROM flow_runs WHERE deployment_id = ? AND id != ? "
        f"AND state_type IN ({marks})",
        (row["deployment_id"], row["id"], *ACTIVE),
    )
    return int(active) >= int(limit)


def set_flow_run_state(
    tx: Tx, bus: EventBus, run_id: str, proposal: StateCreate, *, force: bool
) -> tuple[dict[str, Any], int]:
    """Orchestrate a proposed state; return the ``OrchestrationResult`` and HTTP status.

    The status is 201 when a state row was written (ACCEPT, or REJECT with a
    substitute state), 200 otherwise.

    Raises:
        APIProblem: 404 ``Flow run with id … not found``.
    """
    row = tx.one(f"{FLOW_RUN_SELECT} WHERE fr.id = ?", (run_id,))
    if row is None:
        raise APIProblem(404, {"exception_message": f"Flow run with id {run_id} not found"})
    at = now()
    current = loads(row["state"]) if row["state"] else None
    proposed = build_state(
        proposal.type.value,
        name=value_or(proposal.name, None), message=value_or(proposal.message, None),
        data=value_or(proposal.data, None), details=value_or(proposal.state_details, None),
        timestamp=at, run_field="flow_run_id", run_id=run_id,
    )  # fmt: skip
    facts = RunFacts(
        state=current,
        infrastructure_pid=row["infrastructure_pid"],
        deployment_slots_full=proposal.type.value == "PENDING" and _slots_full(tx, row),
    )
    decision = decide(facts, proposed, force=force, at=at)
    if decision.new_state is None:
        return result_json(decision, current), 200
    write_state(tx, bus, row, current, decision.new_state, at)
    return result_json(decision, decision.new_state), 201
