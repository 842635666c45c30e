"""Routes for flow runs, state history, task runs, logs, variables and events over HTTP."""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import trio_worker._server._flow_run_create as _flow_run_create
import trio_worker._server._flow_run_states as _flow_run_states
import trio_worker._server._flow_runs as _flow_runs
import trio_worker._server._logs as _logs
import trio_worker._server._task_runs as _task_runs
from trio_worker._server._actions import (
    FlowRunCreate,
    FlowRunUpdate,
    HoldersQuery,
    LeaseRenewal,
    LogCreate,
    SetStateBody,
    TaskRunCreate,
    VariableCreate,
    VariableUpdate,
    value_or,
)
from trio_worker._server._common import DEFAULT_LIMIT, APIProblem, now
from trio_worker._server._events import normalize_event, read_events, store_event, validate_filter
from trio_worker._server._filters import invalid
from trio_worker._server._holders import (
    FLOW_RUN_HEARTBEAT,
    check_held_ids,
    read_holders,
    record_flow_run_heartbeat,
    renew_leases,
)
from trio_worker._server._http import ApiState, empty, json_body, ok, parse, path_id, read_body
from trio_worker._server._storage import Tx
from trio_worker._server._validation import RequestValidationError, structure

__all__ = ["ingest_events", "run_routes"]


async def ingest_events(api: ApiState, events: list[dict[str, Any]]) -> None:
    """Store normalised events in one transaction (publishing them after commit).

    Client-orchestrated task-run events also update the task run they describe.
    """

    def store(tx: Tx) -> None:
        for event in events:
            store_event(tx, api.bus, event)
            if event["event"].startswith("prefect.task-run."):
                _task_runs.apply_client_state(tx, api.tasks, event)
            elif event["event"] == FLOW_RUN_HEARTBEAT:
                record_flow_run_heartbeat(tx, event, now())

    await api.run(store)


def _type_error(kind: str, msg: str, value: Any) -> dict[str, Any]:
    return {"type": kind, "loc": ["body"], "msg": msg, "input": value}


def _labels(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid([_type_error("dict_type", "Input should be a valid dictionary", body)], body)
    errors = [
        {"type": "value_error", "loc": ["body", key], "input": value,
         "msg": "Input should be a valid string, integer, number or boolean"}
        for key, value in body.items()
        if not isinstance(value, str | int | float | bool)
    ]  # fmt: skip
    if errors:
        raise invalid(errors, body)
    return body


def run_routes(api: ApiState) -> list[Route]:
    """Build the routes; handlers close over ``api``."""

    async def create_flow_run(request: Request) -> Response:
        action = parse(FlowRunCreate, await read_body(request))
        run, created = await api.run(_flow_run_create.create_flow_run, api.bus, action)
        return ok(run, 201 if created else 200)

    async def read_flow_run(request: Request) -> Response:
        return ok(await api.run(_flow_runs.read_flow_run, path_id(request)))

    async def update_flow_run(request: Request) -> Response:
        run_id = path_id(request)
        action = parse(FlowRunUpdate, await read_body(request))
        await api.run(_flow_runs.update_flow_run, run_id, action)
        return empty()

    async def update_labels(request: Request) -> Response:
        run_id = path_id(request)
        labels = _labels(await read_body(request))
        await api.run(_flow_runs.update_flow_run_labels, run_id, labels)
        return empty()

    async def delete_flow_run(request: Request) -> Response:
        await api.run(_flow_runs.delete_flow_run, path_id(request))
        return empty()

    async def filter_flow_runs(request: Request) -> Response:
        return ok(await api.run(_flow_runs.filter_flow_runs, await json_body(request)))

    async def set_flow_run_state(request: Request) -> Response:
        run_id = path_id(request)
        action = parse(SetStateBody, await read_body(request))
        force = bool(value_or(action.force, False))
        result, status = await api.run(
            _flow_run_states.set_flow_run_state, api.bus, run_id, action.state, force=force
        )
        return ok(result, status)

    async def flow_run_states(request: Request) -> Response:
        raw = request.query_params.get("flow_run_id")
        try:
            run_id = str(uuid.UUID(raw or ""))
        except ValueError:
            detail = [{"type": "missing" if raw is None else "uuid_parsing",
                       "loc": ["query", "flow_run_id"],
                       "msg": "Field required" if raw is None else "Input should be a valid UUID",
                       "input": raw}]  # fmt: skip
            raise invalid(detail, None) from None
        return ok(await api.run(_flow_runs.read_flow_run_states, run_id))

    async def create_task_run(request: Request) -> Response:
        action = parse(TaskRunCreate, await read_body(request))
        run, created = await api.run(_task_runs.create_task_run, api.tasks, action)
        return ok(run, 201 if created else 200)

    async def read_task_run(request: Request) -> Response:
        return ok(await api.run(_task_runs.read_task_run, path_id(request)))

    async def delete_task_run(request: Request) -> Response:
        await api.run(_task_runs.delete_task_run, path_id(request))
        return empty()

    async def set_task_run_state(request: Request) -> Response:
        run_id = path_id(request)
        action = parse(SetStateBody, await read_body(request))
        force = bool(value_or(action.force, False))
        result, status = await api.run(
            _task_runs.set_task_run_state, api.tasks, run_id, action.state, force=force
        )
        return ok(result, status)

    async def filter_task_runs(request: Request) -> Response:
        return ok(await api.run(_task_runs.filter_task_runs, await json_body(request)))

    async def create_logs(request: Request) -> Response:
        body = await read_body(request)
        if not isinstance(body, list):
            raise invalid([_type_error("list_type", "Input should be a valid list", body)], body)
        logs = parse_list(LogCreate, body)
        await api.run(_logs.create_logs, logs)
        return ok(None, 201)

    async def filter_logs(request: Request) -> Response:
        return ok(await api.run(_logs.filter_logs, await json_body(request)))

    async def create_variable(request: Request) -> Response:
        action = parse(VariableCreate, await read_body(request))
        return ok(await api.run(_logs.create_variable, action), 201)

    async def read_variable_by_name(request: Request) -> Response:
        return ok(await api.run(_logs.read_variable, name=request.path_params["name"]))

    async def update_variable_by_name(request: Request) -> Response:
        action = parse(VariableUpdate, await read_body(request))
        await api.run(_logs.update_variable, action, name=request.path_params["name"])
        return empty()

    async def delete_variable_by_name(request: Request) -> Response:
        await api.run(_logs.delete_variable, name=request.path_params["name"])
        return empty()

    async def read_variable(request: Request) -> Response:
        return ok(await api.run(_logs.read_variable, var_id=path_id(request)))

    async def update_variable(request: Request) -> Response:
        var_id = path_id(request)
        action = parse(VariableUpdate, await read_body(request))
        await api.run(_logs.update_variable, action, var_id=var_id)
        return empty()

    async def delete_variable(request: Request) -> Response:
        await api.run(_logs.delete_variable, var_id=path_id(request))
        return empty()

    async def filter_variables(request: Request) -> Response:
        return ok(await api.run(_logs.filter_variables, await json_body(request)))

    async def holders(request: Request) -> Response:
        action = parse(HoldersQuery, await read_body(request))
        flow_ids = [str(i) for i in value_or(action.flow_run_ids, [])]
        task_ids = [str(i) for i in value_or(action.task_run_ids, [])]
        check_held_ids(flow_ids, "flow_run_ids")
        check_held_ids(task_ids, "task_run_ids")
        return ok(await api.run(read_holders, flow_ids, task_ids))

    async def renew_task_run_leases(request: Request) -> Response:
        action = parse(LeaseRenewal, await read_body(request))
        check_held_ids(action.task_run_ids, "task_run_ids")
        seconds = api.tasks.lease_seconds
        ids = [str(i) for i in action.task_run_ids]
        lost = await api.run(renew_leases, action.client_id[:200], ids, now(), seconds)
        return ok({"lease_seconds": seconds, "lost": lost})

    async def post_events(request: Request) -> Response:
        body = await read_body(request)
        if not isinstance(body, list):
            raise invalid([_type_error("list_type", "Input should be a valid list", body)], body)
        await ingest_events(api, [normalize_event(event) for event in body])
        return empty()

    async def filter_events(request: Request) -> Response:
        body = await json_body(request)
        try:
            event_filter = validate_filter(body.get("filter"))
        except ValueError as exc:
            problem = _type_error("value_error", f"Value error, {exc}", body.get("filter"))
            problem["loc"] = ["body", "filter"]
            raise invalid([problem], body) from None
        limit = body.get("limit", 50)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 0 <= limit <= DEFAULT_LIMIT:
            raise APIProblem(
                422, {"detail": f"Invalid limit: must be less than or equal to {DEFAULT_LIMIT}."}
            )
        events, total = await api.run(read_events, event_filter, limit)
        return ok({"events": events, "total": total, "next_page": None})

    return [
        Route("/flow_runs/", create_flow_run, methods=["POST"]),
        Route("/flow_runs/filter", filter_flow_runs, methods=["POST"]),
        Route("/flow_runs/{id}/set_state", set_flow_run_state, methods=["POST"]),
        Route("/flow_runs/{id}/labels", update_labels, methods=["PATCH"]),
        Route("/flow_runs/{id}", read_flow_run, methods=["GET"]),
        Route("/flow_runs/{id}", update_flow_run, methods=["PATCH"]),
        Route("/flow_runs/{id}", delete_flow_run, methods=["DELETE"]),
        Route("/flow_run_states/", flow_run_states, methods=["GET"]),
        Route("/task_runs/", create_task_run, methods=["POST"]),
        Route("/task_runs/filter", filter_task_runs, methods=["POST"]),
        Route("/task_runs/renew_leases", renew_task_run_leases, methods=["POST"]),
        Route("/task_runs/{id}/set_state", set_task_run_state, methods=["POST"]),
        Route("/task_runs/{id}", read_task_run, methods=["GET"]),
        Route("/task_runs/{id}", delete_task_run, methods=["DELETE"]),
        Route("/logs/", create_logs, methods=["POST"]),
        Route("/logs/filter", filter_logs, methods=["POST"]),
        Route("/variables/", create_variable, methods=["POST"]),
        Route("/variables/filter", filter_variables, methods=["POST"]),
        Route("/variables/name/{name}", read_variable_by_name, methods=["GET"]),
        Route("/variables/name/{name}", update_variable_by_name, methods=["PATCH"]),
        Route("/variables/name/{name}", delete_variable_by_name, methods=["DELETE"]),
        Route("/variables/{id}", read_variable, methods=["GET"]),
        Route("/variables/{id}", update_variable, methods=["PATCH"]),
        Route("/variables/{id}", delete_variable, methods=["DELETE"]),
        Route("/events", post_events, methods=["POST"]),
        Route("/liveness/holders", holders, methods=["POST"]),
        Route("/events/filter", filter_events, methods=["POST"]),
    ]


def parse_list(cls: type[LogCreate], items: list[Any]) -> list[LogCreate]:
    """Structure every item, reporting all problems with their index in the body."""
    parsed: list[LogCreate] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:
            parsed.append(structure(cls, item, ("body", index)))
        except RequestValidationError as exc:
            errors.extend(exc.errors)
    if errors:
        raise invalid(errors, items)
    return parsed
