"""Prefect's ``/…/filter`` bodies, validated and compiled to SQL.

Prefect filter objects (``FlowRunFilter`` and friends) forbid unknown fields, and
a cancellation loop whose filter is silently ignored would cancel the wrong
runs, so every field is either understood or refused with a 422. A filter spec
maps each field to the column it constrains, the kind of value, and the
operators (``any_``, ``not_any_``, ``like_``, ``is_null_``, ``before_``,
``after_``, ``all_``, ``ge_``, ``le_``, ``startswith_``) Prefect allows on it.
Objects combine with their ``operator`` (``and_`` by default, or ``or_``).
"""

from __future__ import annotations

import uuid
from typing import Any, Final

from trio_worker._server._common import DEFAULT_LIMIT, APIProblem, format_time
from trio_worker._server._validation import INT_MAX, int_bound_problem, parse_datetime

__all__ = [
    "DEPLOYMENT_SPEC",
    "FLOW_RUN_SPEC",
    "FLOW_SPEC",
    "LOG_SPEC",
    "POOL_SPEC",
    "QUEUE_SPEC",
    "TASK_RUN_SPEC",
    "VARIABLE_SPEC",
    "WORKER_SPEC",
    "Compiled",
    "FilterErrors",
    "compile_filter",
    "invalid",
    "page",
]

# field -> (column SQL, value kind, allowed operators); a dict value is a nested object.
Spec = dict[str, Any]
Compiled = tuple[str, list[Any]]

_ID_OPS: Final = frozenset({"any_", "not_any_"})

FLOW_SPEC: Final[Spec] = {
    "id": ("f.id", "uuid", _ID_OPS),
    "name": ("f.name", "str", frozenset({"any_", "like_"})),
    "tags": ("f.tags", "tags", frozenset({"all_", "any_", "is_null_"})),
}
FLOW_RUN_SPEC: Final[Spec] = {
    "id": ("fr.id", "uuid", _ID_OPS),
    "name": ("fr.name", "str", frozenset({"any_", "like_"})),
    "tags": ("json_extract(fr.body, '$.tags')", "tags", frozenset({"all_", "any_", "is_null_"})),
    "deployment_id": ("fr.deployment_id", "uuid", frozenset({"any_", "is_null_"})),
    "work_queue_name": ("wq.name", "str", frozenset({"any_", "is_null_"})),
    "work_queue_id": ("fr.work_queue_id", "uuid", frozenset({"any_", "is_null_"})),
    "flow_id": ("fr.flow_id", "uuid", frozenset({"any_", "not_any_"})),
    "state": {
        "type": ("fr.state_type", "str", _ID_OPS),
        "name": ("fr.state_name", "str", _ID_OPS),
    },
    "flow_version": ("json_extract(fr.body, '$.flow_version')", "str", _ID_OPS),
    "start_time": ("fr.start_time", "time", frozenset({"before_", "after_", "is_null_"})),
    "end_time": ("fr.end_time", "time", frozenset({"before_", "after_", "is_null_"})),
    "expected_start_time": ("fr.expected_start_time", "time", frozenset({"before_", "after_"})),
    "next_scheduled_start_time": (
        "fr.next_scheduled_start_time",
        "time",
        frozenset({"before_", "after_"}),
    ),
    "parent_task_run_id": (
        "json_extract(fr.body, '$.parent_task_run_id')",
        "uuid",
        frozenset({"any_", "is_null_"}),
    ),
    "idempotency_key": ("fr.idempotency_key", "str", _ID_OPS),
}
DEPLOYMENT_SPEC: Final[Spec] = {
    "id": ("d.id", "uuid", _ID_OPS),
    "name": ("d.name", "str", frozenset({"any_", "like_"})),
    "tags": ("json_extract(d.body, '$.tags')", "tags", frozenset({"all_", "any_", "is_null_"})),
    "work_queue_name": ("wq.name", "str", frozenset({"any_"})),
    "work_queue_id": ("d.work_queue_id", "uuid", frozenset({"any_"})),
    "flow_id": ("d.flow_id", "uuid", frozenset({"any_"})),
}
POOL_SPEC: Final[Spec] = {
    "id": ("wp.id", "uuid", frozenset({"any_"})),
    "name": ("wp.name", "str", frozenset({"any_"})),
    "type": ("wp.type", "str", frozenset({"any_"})),
}
QUEUE_SPEC: Final[Spec] = {
    "id": ("wq.id", "uuid", frozenset({"any_"})),
    "name": ("wq.name", "str", frozenset({"any_", "startswith_"})),
}
WORKER_SPEC: Final[Spec] = {
    "last_heartbeat_time": ("w.last_heartbeat_time", "time", frozenset({"before_", "after_"})),
    "name": ("w.name", "str", frozenset({"any_"})),
}
TASK_RUN_SPEC: Final[Spec] = {
    "id": ("tr.id", "uuid", _ID_OPS),
    "name": ("tr.name", "str", frozenset({"any_", "like_"})),
    "tags": ("json_extract(tr.body, '$.tags')", "tags", frozenset({"all_", "is_null_"})),
    "state": {
        "type": ("tr.state_type", "str", _ID_OPS),
        "name": ("tr.state_name", "str", _ID_OPS),
    },
    "flow_run_id": ("tr.flow_run_id", "uuid", frozenset({"any_", "is_null_"})),
    "task_key": ("tr.task_key", "str", frozenset({"any_"})),
    "start_time": ("tr.start_time", "time", frozenset({"before_", "after_", "is_null_"})),
    "expected_start_time": ("tr.expected_start_time", "time", frozenset({"before_", "after_"})),
}
LOG_SPEC: Final[Spec] = {
    "level": ("l.level", "int", frozenset({"ge_", "le_"})),
    "timestamp": ("l.timestamp", "time", frozenset({"before_", "after_"})),
    "flow_run_id": ("l.flow_run_id", "uuid", frozenset({"any_"})),
    "task_run_id": ("l.task_run_id", "uuid", frozenset({"any_", "is_null_"})),
}
VARIABLE_SPEC: Final[Spec] = {
    "id": ("v.id", "uuid", frozenset({"any_"})),
    "name": ("v.name", "str", frozenset({"any_", "like_"})),
    "tags": ("v.tags", "tags", frozenset({"all_", "is_null_"})),
}


class FilterErrors(list[dict[str, Any]]):
    """Error entries collected while compiling, in the pydantic shape of a 422."""

    def add(self, loc: list[Any], kind: str, msg: str, value: Any) -> None:
        """Record one problem."""
        self.append({"type": kind, "loc": loc, "msg": msg, "input": value})


def invalid(errors: list[dict[str, Any]], body: Any) -> APIProblem:
    """Build the 422 Prefect answers for an invalid request body."""
    return APIProblem(
        422,
        {
            "exception_message": "Invalid request received.",
            "exception_detail": errors,
            "request_body": body,
        },
    )


def _value(kind: str, value: Any, loc: list[Any], errors: FilterErrors) -> Any:
    if kind == "uuid":
        try:
            return str(uuid.UUID(str(value))) if isinstance(value, str) else None
        except ValueError:
            pass
        errors.add(loc, "uuid_parsing", "Input should be a valid UUID", value)
    elif kind == "time":
        if isinstance(value, str):
            try:
                return format_time(parse_datetime(value))
            except ValueError:
                pass
        errors.add(loc, "datetime_parsing", "Input should be a valid datetime", value)
    elif kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            problem = int_bound_problem(value)
            if problem is None:
                return value
            errors.add(loc, *problem, value)
            return None
        errors.add(loc, "int_type", "Input should be a valid integer", value)
    else:
        if isinstance(value, str):
            return value
        errors.add(loc, "string_type", "Input should be a valid string", value)
    return None


def _op_sql(
    column: str, kind: str, op: str, value: Any, loc: list[Any], errors: FilterErrors
) -> Compiled | None:
    if op == "is_null_":
        if not isinstance(value, bool):
            errors.add(loc, "bool_type", "Input should be a valid boolean", value)
            return None
        if kind == "tags":
            empty = f"({column} IS NULL OR json_array_length({column}) = 0)"
            return (empty if value else f"NOT {empty}"), []
        return f"{column} IS {'' if value else 'NOT '}NULL", []
    if op in ("any_", "not_any_", "all_"):
        if not isinstance(value, list):
            errors.add(loc, "list_type", "Input should be a valid list", value)
            return None
        item_kind = "str" if kind == "tags" else kind
        items = [_value(item_kind, v, [*loc, i], errors) for i, v in enumerate(value)]
        marks = ", ".join("?" for _ in items)
        if kind == "tags":
            exists = f"EXISTS (SELECT 1 FROM json_each({column}) WHERE value = ?)"
            if op == "all_":
                return (" AND ".join([exists] * len(items)) or "1"), items
            return f"EXISTS (SELECT 1 FROM json_each({column}) WHERE value IN ({marks}))", items
        if op == "any_":
            return (f"{column} IN ({marks})" if items else "0"), items
        return (f"({column} IS NULL OR {column} NOT IN ({marks}))" if items else "1"), items
    converted = _value(kind, value, loc, errors)
    if op == "like_":
        return f"{column} LIKE ?", [f"%{converted}%"]
    if op == "startswith_":
        return f"{column} LIKE ?", [f"{converted}%"]
    comparison = {"before_": "<=", "after_": ">=", "ge_": ">=", "le_": "<="}[op]
    return f"{column} {comparison} ?", [converted]


def compile_filter(raw: Any, spec: Spec, loc: list[Any], errors: FilterErrors) -> Compiled:
    """Compile one filter object (``null`` or ``{}`` = no constraint) to a SQL condition."""
    if raw is None:
        return "1", []
    if not isinstance(raw, dict):
        errors.add(loc, "model_attributes_type", "Input should be a valid dictionary", raw)
        return "1", []
    operator = raw.get("operator", "and_")
    if operator not in ("and_", "or_"):
        errors.add([*loc, "operator"], "enum", "Input should be 'and_' or 'or_'", operator)
    parts: list[str] = []
    params: list[Any] = []
    for key, value in raw.items():
        if key == "operator":
            continue
        field_loc = [*loc, key]
        if key not in spec:
            errors.add(field_loc, "extra_forbidden", "Extra inputs are not permitted", value)
            continue
        if value is None:
            continue
        entry = spec[key]
        if isinstance(entry, dict):
            sql, more = compile_filter(value, entry, field_loc, errors)
            parts.append(f"({sql})")
            params.extend(more)
            continue
        column, kind, ops = entry
        if not isinstance(value, dict):
            errors.add(
                field_loc, "model_attributes_type", "Input should be a valid dictionary", value
            )
            continue
        for op, operand in value.items():
            if op not in ops:
                errors.add(
                    [*field_loc, op], "extra_forbidden", "Extra inputs are not permitted", operand
                )
                continue
            if operand is None:
                continue
            compiled = _op_sql(column, kind, op, operand, [*field_loc, op], errors)
            if compiled is not None:
                parts.append(f"({compiled[0]})")
                params.extend(compiled[1])
    if not parts:
        return "1", []
    joiner = " OR " if operator == "or_" else " AND "
    return joiner.join(parts), params


def page(body: dict[str, Any], errors: FilterErrors) -> tuple[int, int]:
    """Read ``limit`` (``null`` = 200, above 200 refused) and ``offset`` from a filter body.

    Raises:
        APIProblem: 422 with Prefect's "Invalid limit" detail.
    """
    limit = body.get("limit")
    offset = body.get("offset") or 0
    if limit is None:
        limit = DEFAULT_LIMIT
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        errors.add(["body", "limit"], "int_type", "Input should be a valid integer", limit)
        limit = DEFAULT_LIMIT
    elif limit > DEFAULT_LIMIT:
        raise APIProblem(
            422, {"detail": f"Invalid limit: must be less than or equal to {DEFAULT_LIMIT}."}
        )
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        errors.add(["body", "offset"], "int_type", "Input should be a valid integer", offset)
        offset = 0
    elif offset > INT_MAX:
        message = f"Input should be less than or equal to {INT_MAX}"
        errors.add(["body", "offset"], "less_than_equal", message, offset)
        offset = 0
    return limit, offset
