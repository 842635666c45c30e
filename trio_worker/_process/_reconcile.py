"""Reconciling the runs an earlier worker of the same name left on this host.

For each entry of the run record (``_run_records.py``):

- its process group is still alive: **adopt** it (the default) — the run is
  tracked like any other, holds a limiter token, is cancellable, and when the
  group ends while the run is still not final it is CRASHED "exit status
  unknown" (we are not its parent, so we cannot read its exit status) — or,
  with ``reconcile="kill"``, kill the group and report the run CRASHED;
- its process is gone: a run still not final is CRASHED "worker died; process
  no longer exists";
- no process was recorded yet (the worker died between its claim and its
  process): see ``_claims.py``, which reschedules, crashes or hands back a
  live process to adopt;
- its process exited but the worker died before reporting the run's end:
  ``_claims.py`` reports it from the recorded exit status.

A pid is only ours if its start time matches the record: a reused pid is
never signalled. A run the API now records on other infrastructure (retried
or rescheduled since) is left alone. Adopted runs are not stopped by a drain:
they are not this process's children, and their record stays for the next
worker of this name to adopt again.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Final

import trio

from trio_worker._core._exceptions import APIError
from trio_worker._core._models import FlowRun, State, StateType
from trio_worker._process._claims import settle_claim, settle_exited
from trio_worker._process._group import group_is_alive, kill_process_group, process_start_time
from trio_worker._process._run_records import EXITED, RunRecord
from trio_worker._worker._base import InFlightRun
from trio_worker._worker._submission import (
    REPORT_TIMEOUT_SECONDS,
    propose_final_state,
    report_cancelled,
)

if TYPE_CHECKING:
    from trio_worker._process._worker import ProcessWorker

__all__ = ["reconcile_process_runs"]

logger = logging.getLogger("trio_worker.reconcile")

#: How often an adopted group is checked: we are not its parent, so no exit wake-up.
ADOPTED_POLL_SECONDS: Final = 0.5
GONE_MESSAGE: Final = "Worker {name!r} died; the flow run's process no longer exists."
UNKNOWN_EXIT_MESSAGE: Final = (
    "The flow run's process (adopted by worker {name!r} after a restart) ended; "
    "its exit status is unknown."
)
KILLED_MESSAGE: Final = (
    "Worker {name!r} restarted and killed the flow run's process it found still running "
    "(--reconcile kill)."
)


def still_ours(record: RunRecord) -> bool:
    """Whether the recorded process group still exists and was not reused."""
    if record.pid is None:
        return False
    ticks = process_start_time(record.pid)
    if ticks is not None:
        # The leader exists: it is ours only if it started when we recorded.
        return record.start_ticks is None or ticks == record.start_ticks
    # The leader is gone; a group id cannot be reused while any member lives.
    return group_is_alive(record.pid)


def _pid(record: RunRecord) -> int:
    """The pid of a ``started`` record (every record past ``settle_claim`` has one)."""
    assert record.pid is not None
    return record.pid


async def reconcile_process_runs(worker: ProcessWorker) -> None:
    """Reconcile every recorded run of ``worker``'s name (see the module docstring)."""
    records = await worker.run_records.load()
    for found in records:
        if found.phase == EXITED:
            await settle_exited(worker, found)
            continue
        record = found if found.pid is not None else await settle_claim(worker, found)
        if record is None:
            continue
        run_id = uuid.UUID(record.flow_run_id)
        if not still_ours(record):
            message = GONE_MESSAGE.format(name=worker.name)
            await _crash_if_unfinished(worker, run_id, message, pid=_pid(record))
            await worker.run_records.remove(record.flow_run_id)
        elif worker.reconcile == "kill":
            pid = _pid(record)
            logger.warning("Killing leftover process group %d of flow run '%s'", pid, run_id)
            await kill_process_group(_pid(record), grace_seconds=worker.cancel_grace_seconds)
            message = KILLED_MESSAGE.format(name=worker.name)
            await _crash_if_unfinished(worker, run_id, message, pid=_pid(record))
            await worker.run_records.remove(record.flow_run_id)
        else:
            await _adopt(worker, record, run_id)


def _still_runs_there(flow_run: FlowRun, pid: int) -> bool:
    """Whether the API still records ``pid`` (of this host) as the run's infrastructure.

    A run that was retried or rescheduled since may run elsewhere now: its
    record here is stale and its state is not ours to touch.
    """
    from trio_worker._process._worker import format_infrastructure_pid

    recorded = flow_run.infrastructure_pid
    return recorded in (None, "", str(pid), format_infrastructure_pid(pid))


async def _crash_if_unfinished(
    worker: ProcessWorker, run_id: uuid.UUID, message: str, *, pid: int
) -> None:
    try:
        flow_run = await worker.client.read_flow_run(run_id)
    except APIError as exc:
        logger.warning("Could not read flow run '%s' to reconcile it: %s", run_id, exc)
        return
    if not _still_runs_there(flow_run, pid):
        logger.info("Flow run '%s' moved on to other infrastructure; leaving it", run_id)
        return
    if flow_run.state is not None and not flow_run.state.is_final:
        logger.warning("Flow run '%s': %s", run_id, message)
        await propose_final_state(worker, run_id, State.of(StateType.CRASHED, message), force=True)


async def _adopt(worker: ProcessWorker, record: RunRecord, run_id: uuid.UUID) -> None:
    from trio_worker._process._worker import format_infrastructure_pid

    try:
        flow_run = await worker.client.read_flow_run(run_id)
    except APIError as exc:
        logger.warning("Could not read flow run '%s' to adopt it: %s", run_id, exc)
        return
    if not _still_runs_there(flow_run, _pid(record)):
        logger.warning(
            "Process group %d of flow run '%s' runs on, but the run moved on to other "
            "infrastructure; leaving the process alone",
            _pid(record),
            run_id,
        )
        await worker.run_records.remove(record.flow_run_id)
        return
    logger.info("Adopting flow run '%s' (process group %d) after a restart", run_id, record.pid)
    # An adopted run holds a token like any other; over the limit it is still
    # watched (it is running whatever we do) but takes none.
    try:
        worker.limiter.acquire_on_behalf_of_nowait(run_id)
        borrowed = True
    except trio.WouldBlock:
        borrowed = False
    tracked = InFlightRun(
        flow_run=flow_run, owned=True, infrastructure_pid=format_infrastructure_pid(_pid(record))
    )
    worker._track(tracked)
    worker.runs_nursery.start_soon(_watch_adopted, worker, tracked, record, borrowed)


async def _watch_adopted(
    worker: ProcessWorker, tracked: InFlightRun, record: RunRecord, borrowed: bool
) -> None:
    run_id = tracked.flow_run.id
    try:
        with tracked.cancel_scope:
            try:
                while still_ours(record):  # noqa: ASYNC110 - no wake-up for a non-child
                    await trio.sleep(ADOPTED_POLL_SECONDS)
            finally:
                if tracked.cancel_scope.cancel_called:
                    with trio.CancelScope(shield=True):
                        await kill_process_group(
                            _pid(record), grace_seconds=worker.cancel_grace_seconds
                        )
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + REPORT_TIMEOUT_SECONDS
            if tracked.cancel_reason is not None:
                await report_cancelled(worker, tracked)
            else:
                message = UNKNOWN_EXIT_MESSAGE.format(name=worker.name)
                await _crash_if_unfinished(worker, run_id, message, pid=_pid(record))
            await worker.run_records.remove(record.flow_run_id)
    finally:
        worker._untrack(run_id, release=borrowed)
