"""Running one task run: its parameters in, the function called, its result or error out.

The task worker's other modules are about getting runs (the subscription, the
handoff, leases, the drain); this one is what happens once a run is in hand
and claimed, so it can be read, and changed, without the websocket around it.
An async task runs in the worker's own Trio; a sync one runs in a thread that
holds the run's slot until it really ends (:mod:`._slots`). Results and
errors are written to the task's store as JSON records, and the final state
refers to them (``storage_key``), as Prefect's does.
"""

from __future__ import annotations

import functools
import logging
import traceback
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import attrs
import trio

from trio_worker._client._client import PrefectClient
from trio_worker._core._exceptions import APIError, TrioWorkerError
from trio_worker._core._models import SetStateStatus, State, StateType, TaskRun
from trio_worker._taskworker._reports import TaskRunReporter
from trio_worker._taskworker._slots import RunSlots, Slot
from trio_worker._taskworker._store import (
    TaskStore,
    check_json,
    decode_record,
    default_task_store,
    encode_record,
    parameters_key,
    result_key,
)
from trio_worker._taskworker._tasks import Task

__all__ = [
    "Progress",
    "StopTaskWorker",
    "describe",
    "log_finished",
    "record_state",
    "report",
    "run_task",
    "state_of",
]

logger = logging.getLogger("trio_worker.task_worker")

REPORT_TIMEOUT_SECONDS: Final = 10.0  # a final state after cancellation


class StopTaskWorker(TrioWorkerError):
    """Raise it inside a task to make its worker drain and stop.

    The run that raised it ends FAILED with that message; the others in flight
    finish (up to the drain timeout).
    """


@attrs.define
class Progress:
    """What a run's task knows of it: its record for the events, and its current state."""

    record: dict[str, Any]
    state: State


def state_of(type_: StateType, message: str | None = None, **details: Any) -> State:
    """A new state of ``type_`` with ``details`` set on its state details."""
    state = State.of(type_, message)
    return attrs.evolve(state, state_details=attrs.evolve(state.state_details, **details))


def _reference(key: str) -> dict[str, Any]:
    # What a final state's ``data`` carries: where the record is, not the value.
    return {"storage_key": key, "serializer": {"type": "json"}}


async def run_task(
    tasks: Mapping[str, Task[..., Any]],
    task_run: TaskRun,
    *,
    store: TaskStore | None,
    slots: RunSlots,
    slot: Slot,
    record_running: Callable[[], Awaitable[None]],
    delete_failed: bool,
) -> tuple[State | None, bool]:
    """Run ``task_run``; return its final state (None: not started) and whether to delete it.

    ``store`` is where tasks without a store of their own keep their records
    (the env-configured directory when None, read through ``Settings`` even when
    the worker was handed settings: submitters find it there too);
    ``record_running`` records RUNNING once the parameters are read.
    """
    task = tasks.get(task_run.task_key)
    if task is None:
        reason = f"no task with key {task_run.task_key!r} here (serving {', '.join(tasks)})"
        logger.error("task run %s: %s", task_run.id, reason)
        return state_of(StateType.FAILED, reason), delete_failed
    store = task.store if task.store is not None else store or default_task_store()
    try:
        parameters = await read_parameters(task_run, store)
        args, kwargs = task.call_arguments(parameters)
    except (OSError, ValueError, TypeError) as exc:
        reason = f"cannot read the parameters of task run {task_run.id}: {exc}"
        logger.error("%s", reason)
        return state_of(StateType.FAILED, reason), delete_failed
    try:
        await record_running()
    except APIError as exc:
        logger.error("task run %s not started: RUNNING was not recorded: %s", task_run.id, exc)
        return None, False
    key = result_key(task_run.id)
    try:
        if task.is_async:
            value = await task.fn(*args, **kwargs)
        else:
            value = await slots.run_sync(slot, functools.partial(task.fn, *args, **kwargs))
    except StopTaskWorker:
        raise
    except Exception as exc:
        error = describe(exc)
        await trio.to_thread.run_sync(store.write, key, encode_record(key, error))
        message = f"Task run encountered an exception {type(exc).__name__}: {exc}"
        return state_of(StateType.FAILED, message), False
    try:
        check_json(value, f"the return value of {task.key}")
        await trio.to_thread.run_sync(store.write, key, encode_record(key, value))
    except (TypeError, OSError) as exc:
        return state_of(StateType.FAILED, f"cannot store the result: {exc}"), False
    completed = state_of(StateType.COMPLETED)
    return attrs.evolve(completed, data=_reference(key)), False


async def read_parameters(task_run: TaskRun, store: TaskStore) -> dict[str, Any]:
    """The run's parameters, read from the record its submitter wrote (``{}`` without one)."""
    details = task_run.state.state_details if task_run.state else None
    parameters_id = details.task_parameters_id if details else None
    if parameters_id is None:
        return {}
    data = await trio.to_thread.run_sync(store.read, parameters_key(parameters_id))
    payload = decode_record(data)
    if not isinstance(payload, dict) or not isinstance(payload.get("parameters"), dict):
        raise ValueError("the parameters record has no 'parameters' object")
    parameters: dict[str, Any] = payload["parameters"]
    return parameters


def log_finished(task_run: TaskRun, state: State, seconds: float) -> None:
    """One line per run that ended here: which task, which run, how, how long."""
    level = logging.INFO if state.type is StateType.COMPLETED else logging.WARNING
    why = f": {state.message}" if state.message and state.type is not StateType.COMPLETED else ""
    logger.log(
        level,
        "%s %r %s in %.2f s%s",
        task_run.task_key,
        task_run.name,
        state.type.value,
        seconds,
        why,
    )


def describe(exc: Exception) -> dict[str, Any]:
    """Turn an exception into the JSON error record ``.result()`` re-raises from."""
    args: list[Any] | None = list(exc.args)
    try:
        check_json(args, "args")
    except TypeError:
        args = None
    return {
        "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "message": str(exc),
        "args": args,
        "traceback": "".join(traceback.format_exception(exc)),
    }


async def record_state(
    reporter: TaskRunReporter | None, task_run: TaskRun, progress: Progress, state: State
) -> None:
    """Record ``state`` for the run through the batched reporter; it becomes the run's state."""
    assert reporter is not None, "the task worker records states only while it has an API"
    progress.state = await reporter.record(task_run.id, progress.record, progress.state, state)


async def report(
    client: PrefectClient,
    reporter: TaskRunReporter | None,
    task_run: TaskRun,
    progress: Progress,
    state: State,
    *,
    delete: bool,
) -> None:
    """Record the run's final ``state``: shielded, bounded, logged (not raised) when refused.

    Shielded so that a run cancelled by a drain or a stop still reports how it
    ended; bounded by :data:`REPORT_TIMEOUT_SECONDS` so that an API that does
    not answer cannot hold the stop up. With ``delete`` (a run that could not
    start at all) the state is set directly and the run deleted, so that no
    event arriving late re-creates it.
    """
    with trio.CancelScope(shield=True) as reporting:
        reporting.deadline = trio.current_time() + REPORT_TIMEOUT_SECONDS
        await _report(client, reporter, task_run, progress, state, delete=delete)


async def _report(
    client: PrefectClient,
    reporter: TaskRunReporter | None,
    task_run: TaskRun,
    progress: Progress,
    state: State,
    *,
    delete: bool,
) -> None:
    try:
        if not delete:
            await record_state(reporter, task_run, progress, state)
            return
        result = await client.set_task_run_state(task_run.id, state)
        if result.status is not SetStateStatus.ACCEPT:
            logger.warning(
                "task run %s: %s not accepted (%s)", task_run.id, state.type, result.reason
            )
        await client.delete_task_run(task_run.id)
    except APIError as exc:
        logger.error("could not record %s for task run %s: %s", state.type, task_run.id, exc)
