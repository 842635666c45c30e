"""Flow runs: read, update, delete and filter.

Creating a run is :mod:`._flow_run_create`'s, its orchestrated state changes
:mod:`._flow_run_states`'s; this module is the plain row access both use.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Final

from trio_worker._server._actions import (
    FlowRunUpdate,
    value_or,
)
from trio_worker._server._common import (
    APIProblem,
    dumps,
    format_time,
    loads,
    not_found,
    now,
)
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
from trio_worker._server._records import DEPLOYMENT_SELECT, FLOW_RUN_SELECT, flow_run_json
from trio_worker._server._schema_check import job_variables_problem
from trio_worker._server._storage import Tx
from trio_worker._server._validation import UNSET

__all__ = [
    "check_job_variables",
    "delete_flow_run",
    "filter_flow_runs",
    "read_flow_run",
    "read_flow_run_states",
    "run_row",
    "update_flow_run",
    "update_flow_run_labels",
]

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


def run_row(tx: Tx, run_id: str) -> sqlite3.Row:
    row = tx.one(f"{FLOW_RUN_SELECT} WHERE fr.id = ?", (run_id,))
    if row is None:
        raise not_found("Flow run not found")
    return row


def read_flow_run(tx: Tx, run_id: str) -> dict[str, Any]:
    """Return a flow run; 404 ``Flow run not found``."""
    return flow_run_json(run_row(tx, run_id))


def check_job_variables(
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


def update_flow_run(tx: Tx, run_id: str, action: FlowRunUpdate) -> None:
    """``PATCH /flow_runs/{id}``: only the sent fields change; job variables must fit the pool."""
    row = run_row(tx, run_id)
    body = loads(row["body"])
    if action.job_variables is not UNSET and action.job_variables is not None:
        deployment = tx.one(f"{DEPLOYMENT_SELECT} WHERE d.id = ?", (row["deployment_id"],))
        if deployment is not None:
            dep = loads(deployment["body"])
            check_job_variables(tx, deployment, dep, action.job_variables, "updating")
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
    row = run_row(tx, run_id)
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
