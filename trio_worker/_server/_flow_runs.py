"""Flow runs: create, read, update, delete, filter, and orchestrated state changes."""

from __future__ import annotations

import random
import sqlite3
from datetime import datetime
from typing import Any, Final

from trio_worker._server._actions import (
    DeploymentFlowRunCreate,
    FlowRunCreate,
    FlowRunUpdate,
    StateCreate,
    value_or,
)
from trio_worker._server._common import (
    APIProblem,
    dumps,
    format_time,
    loads,
    new_id,
    not_found,
    now,
    parse_time,
)
from trio_worker._server._deployments import INTEGRITY_CONFLICT, get_deployment_row, resolve_queue
from trio_worker._server._events import EventBus, flow_run_state_event, store_event
from trio_worker._server._filters import (
    DEPLOYMENT_SPEC,
    FLOW_RUN_SPEC,
    FLOW_SPEC,
    POOL_SPEC,
    QUEUE_SPEC,
    TASK_RUN_SPEC,
    FilterErrors,
    compile_filter,
    invalid,
    page,
)
from trio_worker._server._orchestration import (
    ACTIVE,
    TERMINAL,
    RunFacts,
    build_state,
    decide,
    result_json,
)
from trio_worker._server._records import DEPLOYMENT_SELECT, FLOW_RUN_SELECT, flow_run_json
from trio_worker._server._schema_check import job_variables_problem, validate_parameters
from trio_worker._server._storage import Tx
from trio_worker._server._validation import UNSET

__all__ = [
    "create_deployment_flow_run",
    "create_flow_run",
    "delete_flow_run",
    "filter_flow_runs",
    "read_flow_run",
    "read_flow_run_states",
    "set_flow_run_state",
    "state_columns",
    "update_flow_run",
    "update_flow_run_labels",
    "write_rule_state",
]

_ADJECTIVES: Final = (
    "axiomatic", "brave", "calm", "daring", "eager", "fancy", "gentle", "happy", "icy",
    "jolly", "keen", "lively", "merry", "nimble", "olive", "proud", "quick", "rapid",
    "silent", "tidy", "witty", "zealous",
)  # fmt: skip
_ANIMALS: Final = (
    "wolf", "otter", "heron", "lynx", "panda", "python", "raven", "seal", "tiger", "yak",
    "badger", "crane", "dingo", "eagle", "ferret", "gecko", "hare", "ibis", "koala", "lemur",
)  # fmt: skip
_SORTS: Final = {
    "ID_DESC": "fr.id DESC",
    "START_TIME_ASC": "fr.start_time ASC, fr.id",
    "START_TIME_DESC": "fr.start_time DESC, fr.id DESC",
    "EXPECTED_START_TIME_ASC": "fr.expected_start_time ASC, fr.id",
    "EXPECTED_START_TIME_DESC": "fr.expected_start_time DESC, fr.id DESC",
    "NAME_ASC": "fr.name ASC",
    "NAME_DESC": "fr.name DESC",
    "NEXT_SCHEDULED_START_TIME_ASC": "fr.next_scheduled_start_time ASC, fr.id",
    "END_TIME_DESC": "fr.end_time DESC, fr.id DESC",
}
_LAST_EVENT_KEY: Final = "_last_state_event_id"

DEFAULT_FLOW_RUN_POLICY: Final[dict[str, Any]] = {
    "max_retries": 0,
    "retry_delay_seconds": 0.0,
    "retries": None,
    "retry_delay": None,
    "pause_keys": [],
    "resuming": False,
    "retry_type": None,
}


def random_name() -> str:
    """Return a Prefect-style run name such as ``witty-python``."""
    return f"{random.choice(_ADJECTIVES)}-{random.choice(_ANIMALS)}"


def _run_row(tx: Tx, run_id: str) -> sqlite3.Row:
    row = tx.one(f"{FLOW_RUN_SELECT} WHERE fr.id = ?", (run_id,))
    if row is None:
        raise not_found("Flow run not found")
    return row


def read_flow_run(tx: Tx, run_id: str) -> dict[str, Any]:
    """Return a flow run; 404 ``Flow run not found``."""
    return flow_run_json(_run_row(tx, run_id))


def _insert_run(
    tx: Tx, bus: EventBus, values: dict[str, Any], state: StateCreate | None, default_type: str
) -> tuple[dict[str, Any], bool]:
    key = values["idempotency_key"]
    if key is not None:
        existing = tx.one(
            "SELECT id FROM flow_runs WHERE flow_id = ? AND idempotency_key = ?",
            (values["flow_id"], key),
        )
        if existing is not None:
            return read_flow_run(tx, existing["id"]), False
    at = now()
    run_id = new_id()
    stamp = format_time(at)
    tx.insert("flow_runs", {**values, "id": run_id, "created": stamp, "updated": stamp})
    initial = build_state(
        state.type.value if state else default_type,
        name=value_or(state.name, None) if state else None,
        message=value_or(state.message, None) if state else None,
        data=value_or(state.data, None) if state else None,
        details=value_or(state.state_details, None) if state else None,
        timestamp=at, run_field="flow_run_id", run_id=run_id,
    )  # fmt: skip
    _write_state(tx, bus, _run_row(tx, run_id), None, initial, at)
    return read_flow_run(tx, run_id), True


def create_flow_run(tx: Tx, bus: EventBus, action: FlowRunCreate) -> tuple[dict[str, Any], bool]:
    """``POST /flow_runs/``: a run (PENDING unless a state is given); idempotent by key."""
    flow_id = str(action.flow_id)
    if tx.one("SELECT 1 FROM flows WHERE id = ?", (flow_id,)) is None:
        raise INTEGRITY_CONFLICT
    deployment_id = value_or(action.deployment_id, None)
    queue_id = resolve_queue(
        tx, value_or(action.work_pool_name, None), value_or(action.work_queue_name, None)
    )
    if deployment_id is not None and queue_id is None:
        deployment = tx.one(
            "SELECT work_queue_id FROM deployments WHERE id = ?", (str(deployment_id),)
        )
        queue_id = deployment["work_queue_id"] if deployment else None
    parent = value_or(action.parent_task_run_id, None)
    body = {
        "deployment_version": value_or(action.deployment_version, None),
        "flow_version": value_or(action.flow_version, None),
        "parameters": value_or(action.parameters, {}),
        "context": value_or(action.context, {}),
        "empirical_policy": {**DEFAULT_FLOW_RUN_POLICY, **value_or(action.empirical_policy, {})},
        "tags": value_or(action.tags, []),
        "labels": {"prefect.flow.id": flow_id, **(value_or(action.labels, None) or {})},
        "parent_task_run_id": str(parent) if parent else None,
        "infrastructure_document_id": None,
        "job_variables": value_or(action.job_variables, None) or {},
    }
    values = {
        "name": value_or(action.name, None) or random_name(),
        "flow_id": flow_id,
        "deployment_id": str(deployment_id) if deployment_id else None,
        "work_queue_id": queue_id,
        "idempotency_key": value_or(action.idempotency_key, None),
        "body": dumps(body),
    }
    state = value_or(action.state, None)
    return _insert_run(tx, bus, values, state, "PENDING")


def _check_job_variables(
    tx: Tx, deployment: sqlite3.Row, dep: dict[str, Any], job_variables: Any, doing: str
) -> None:
    """Refuse a run whose job variables, over the deployment's, do not fit its pool's schema.

    A flow run is the last overlay, so required variables must now have values.

    Raises:
        APIProblem: 422 with Prefect's detail naming the variable.
    """
    if deployment["wp_name"] is None:
        return  # no pool, no schema (e.g. a deployment served by flow.serve())
    pool = tx.one(
        "SELECT base_job_template FROM work_pools WHERE name = ?", (deployment["wp_name"],)
    )
    template = loads(pool["base_job_template"]) if pool is not None else {}
    layers = (dep.get("job_variables") or {}, value_or(job_variables, None) or {})
    problem = job_variables_problem(template, *layers, check_required=True)
    if problem is not None:
        raise APIProblem(422, {"detail": f"Error {doing} flow run: {problem}"})


def create_deployment_flow_run(
    tx: Tx, bus: EventBus, deployment_id: str, action: DeploymentFlowRunCreate
) -> tuple[dict[str, Any], bool]:
    """``POST /deployments/{id}/create_flow_run``: a SCHEDULED run with merged parameters."""
    deployment = get_deployment_row(tx, deployment_id)
    dep = loads(deployment["body"])
    parameters = {**dep.get("parameters", {}), **value_or(action.parameters, {})}
    enforce = value_or(action.enforce_parameter_schema, None)
    if enforce is None:
        enforce = dep.get("enforce_parameter_schema", True)
    if enforce and dep.get("parameter_openapi_schema"):
        problem = validate_parameters(parameters, dep["parameter_openapi_schema"])
        if problem is not None:
            raise APIProblem(409, {"detail": f"Error creating flow run: {problem}"})
    _check_job_variables(tx, deployment, dep, action.job_variables, "creating")
    queue_id = deployment["work_queue_id"]
    queue_name = value_or(action.work_queue_name, None)
    if queue_name:
        queue_id = resolve_queue(tx, deployment["wp_name"], queue_name)
    tags = list(dict.fromkeys([*dep.get("tags", []), *value_or(action.tags, [])]))
    labels = {
        **dep.get("labels", {}),
        "prefect.deployment.id": deployment_id,
        **(value_or(action.labels, None) or {}),
    }
    parent = value_or(action.parent_task_run_id, None)
    body = {
        "deployment_version": dep.get("version"),
        "flow_version": None,
        "parameters": parameters,
        "context": value_or(action.context, {}),
        "empirical_policy": {**DEFAULT_FLOW_RUN_POLICY, **value_or(action.empirical_policy, {})},
        "tags": tags,
        "labels": labels,
        "parent_task_run_id": str(parent) if parent else None,
        "infrastructure_document_id": None,
        "job_variables": value_or(action.job_variables, None) or {},
    }
    values = {
        "name": value_or(action.name, None) or random_name(),
        "flow_id": deployment["flow_id"],
        "deployment_id": deployment_id,
        "work_queue_id": queue_id,
        "idempotency_key": value_or(action.idempotency_key, None),
        "body": dumps(body),
    }
    return _insert_run(tx, bus, values, value_or(action.state, None), "SCHEDULED")


def update_flow_run(tx: Tx, run_id: str, action: FlowRunUpdate) -> None:
    """``PATCH /flow_runs/{id}``: only the sent fields change; job variables must fit the pool."""
    row = _run_row(tx, run_id)
    body = loads(row["body"])
    if action.job_variables is not UNSET and action.job_variables is not None:
        deployment = tx.one(f"{DEPLOYMENT_SELECT} WHERE d.id = ?", (row["deployment_id"],))
        if deployment is not None:
            dep = loads(deployment["body"])
            _check_job_variables(tx, deployment, dep, action.job_variables, "updating")
    values: dict[str, Any] = {}
    if action.name is not UNSET and action.name is not None:
        values["name"] = action.name
    if action.infrastructure_pid is not UNSET:
        values["infrastructure_pid"] = action.infrastructure_pid
    for field in ("flow_version", "parameters", "empirical_policy", "tags", "job_variables"):
        value = getattr(action, field)
        if value is not UNSET:
            body[field] = value
    values["body"] = dumps(body)
    values["updated"] = format_time(now())
    tx.update("flow_runs", run_id, values)


def update_flow_run_labels(tx: Tx, run_id: str, labels: dict[str, Any]) -> None:
    """``PATCH /flow_runs/{id}/labels``: merge labels into the run's."""
    row = _run_row(tx, run_id)
    body = loads(row["body"])
    body["labels"] = {**body.get("labels", {}), **labels}
    tx.update("flow_runs", run_id, {"body": dumps(body), "updated": format_time(now())})


def delete_flow_run(tx: Tx, run_id: str) -> None:
    """Delete a run with its state history."""
    if not tx.execute("DELETE FROM flow_runs WHERE id = ?", (run_id,)):
        raise not_found("Flow run not found")
    tx.execute("DELETE FROM flow_run_states WHERE flow_run_id = ?", (run_id,))


def filter_flow_runs(tx: Tx, body: dict[str, Any]) -> list[dict[str, Any]]:
    """``POST /flow_runs/filter`` with Prefect's nested filter objects."""
    errors = FilterErrors()
    sections = [
        compile_filter(body.get("flow_runs"), FLOW_RUN_SPEC, ["body", "flow_runs"], errors),
        compile_filter(body.get("work_pools"), POOL_SPEC, ["body", "work_pools"], errors),
        compile_filter(
            body.get("work_pool_queues"), QUEUE_SPEC, ["body", "work_pool_queues"], errors
        ),
    ]
    subqueries = [
        ("flows", FLOW_SPEC, "fr.flow_id IN (SELECT f.id FROM flows f WHERE {})"),
        ("deployments", DEPLOYMENT_SPEC,
         "fr.deployment_id IN (SELECT d.id FROM deployments d LEFT JOIN work_queues wq "
         "ON wq.id = d.work_queue_id WHERE {})"),
        ("task_runs", TASK_RUN_SPEC,
         "EXISTS (SELECT 1 FROM task_runs tr WHERE tr.flow_run_id = fr.id AND {})"),
    ]  # fmt: skip
    for key, spec, template in subqueries:
        if body.get(key):
            where, params = compile_filter(body[key], spec, ["body", key], errors)
            sections.append((template.format(where), params))
    limit, offset = page(body, errors)
    sort = body.get("sort") or "ID_DESC"
    if not isinstance(sort, str) or sort not in _SORTS:
        expected = ", ".join(f"'{s}'" for s in _SORTS)
        errors.add(["body", "sort"], "enum", f"Input should be {expected}", sort)
    if errors:
        raise invalid(errors, body)
    where = " AND ".join(f"({s[0]})" for s in sections)
    params = [v for s in sections for v in s[1]]
    rows = tx.all(
        f"{FLOW_RUN_SELECT} WHERE {where} ORDER BY {_SORTS[sort]} LIMIT ? OFFSET ?",
        [*params, limit, offset],
    )
    current = now()
    return [flow_run_json(row, current) for row in rows]


def read_flow_run_states(tx: Tx, run_id: str) -> list[dict[str, Any]]:
    """``GET /flow_run_states/?flow_run_id=…``: the run's states, oldest first."""
    rows = tx.all(
        "SELECT body FROM flow_run_states WHERE flow_run_id = ? ORDER BY timestamp, rowid",
        (run_id,),
    )
    return [loads(row["body"]) for row in rows]


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


def _write_state(
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
    _write_state(tx, bus, row, current, state, at)


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
    _write_state(tx, bus, row, current, decision.new_state, at)
    return result_json(decision, decision.new_state), 201
