"""Show a run's result where ``inspect`` prints it: the value, not where it is stored.

A final state's ``data`` is either the value itself or, as the task worker
and Prefect write it, a reference ``{"storage_key": ..., "serializer": ...}``
to a result record in the task store (a directory shared by submitters and
task workers). The record is read here when this machine can reach it; when
it cannot, the line says where the result is and why it was not read.
"""

from __future__ import annotations

import json
from typing import Any

from trio_worker._core._models import State, StateType

__all__ = ["describe_result"]


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def describe_result(state: State | None) -> str | None:
    """Return the run's result (or error) as one line, or None when there is none."""
    if state is None or state.data is None:
        return None
    data = state.data
    if not (isinstance(data, dict) and isinstance(data.get("storage_key"), str)):
        return _compact(data)
    from trio_worker._taskworker._store import decode_record, default_task_store

    store = default_task_store()
    key = data["storage_key"]
    try:
        value = decode_record(store.read(key))
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return f"stored as {key} in {store.base}, not readable here: {reason}"
    if state.type is not StateType.COMPLETED and isinstance(value, dict) and "type" in value:
        return f"error {value['type']}: {value.get('message', '')}"
    return _compact(value)
