"""Reconciling the runs an earlier worker of the same name left on this host.

For each entry of the run record (``_run_records.py``), :class:`Reconciler`:

- its process group is still alive: **adopt** it (the default) — the run is
  tracked like any other, holds a limiter token, is cancellable, and when the
  group ends while the run is still not final it is CRASHED "exit status
  unknown" (we are not its parent, so we cannot read its exit status) — or,
  with ``reconcile="kill"``, kill the group and report the run CRASHED;
- its process is gone: a run still not final is CRASHED "worker died; process
  no longer exists";
- no process was recorded yet (the worker died between its claim and its
  process): ``_claims.py``'s :class:`~trio_worker._process._claims.ClaimSettler`
  reschedules, crashes or hands back a live process to adopt;
- its process exited but the worker died before reporting the run's end:
  the settler reports it from the recorded exit status.

A pid is only ours if its start time matches the record: a reused pid is
never signalled. A run the API now records on other infrastructure (retried
or rescheduled since) is left alone. Adopted runs are not stopped by a drain:
they are not this process's children, and their record stays for the next
worker of this name to adopt again.
"""

from __future__ import annotations

import logging
import uuid
from typing import Final, Literal

import trio

from trio_worker._client._client import PrefectClient
from trio_worker._core._exceptions import APIError
from trio_worker._core._models import FlowRun, State, StateType
from trio_worker._process._claims import GONE_MESSAGE, ClaimSettler
from trio_worker._process._group import (
    format_infrastructure_pid,
    group_is_alive,
    kill_process_group,
    process_start_time,
)
from trio_worker._process._run_records import EXITED, RunRecord, RunRecords
from trio_worker._worker._reporter import Reporter
from trio_worker._worker._run_table import InFlightRun, RunTable

__all__ = ["GONE_MESSAGE", "Reconciler", "still_ours"]

logger = logging.getLogger("trio_worker.reconcile")

#: How often an adopted group is checked: we are not its parent, so no exit wake-up.
ADOPTED_POLL_SECONDS: Final = 0.5
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


def _still_runs_there(flow_run: FlowRun, pid: int) -> bool:
    """Whether the API still records ``pid`` (of this host) as the run's infrastructure.

    A run that was retried or rescheduled since may run elsewhere now: its
    record here is stale and its state is not ours to touch.
    """
    recorded = flow_run.infrastructure_pid
    return recorded in (None, "", str(pid), format_infrastructure_pid(pid))


class Reconciler:
    """Reconcile every recorded run of a worker's name (see the module docstring).

    Args:
        client: the worker's open API client.
        records: the on-disk record of the runs this worker name started.
        table: adopted runs hold a slot here, like any other.
        reporter: reports how adopted (or killed) runs ended.
        runs_nursery: where adopted runs are watched.
        worker_name: named in the messages.
        mode: ``"adopt"`` leftover groups, or ``"kill"`` them.
        cancel_grace_seconds: how long a killed group may take to stop.
    """

    def __init__(
        self,
        client: PrefectClient,
        *,
        records: RunRecords,
        table: RunTable,
        reporter: Reporter,
        runs_nursery: trio.Nursery,
        worker_name: str,
        mode: Literal["adopt", "kill"],
        cancel_grace_seconds: float,
    ) -> None:
        self._client = client
        self._records = records
        self._table = table
        self._reporter = reporter
        self._runs = runs_nursery
        self._name = worker_name
        self._mode = mode
        self._grace = cancel_grace_seconds
        self._claims = ClaimSettler(
            client, records=records, reporter=reporter, worker_name=worker_name
        )

    async def reconcile(self) -> None:
        """Settle, adopt, kill or close every recorded run."""
        for found in await self._records.load():
            if found.phase == EXITED:
                await self._claims.settle_exited(found)
                continue
            record = found if found.pid is not None else await self._claims.settle_claim(found)
            if record is None or record.pid is None:
                continue
            run_id = uuid.UUID(record.flow_run_id)
            pid = record.pid
            if not still_ours(record):
                message = GONE_MESSAGE.format(name=self._name)
                await self._crash_if_unfinished(run_id, message, pid=pid)
                await self._records.remove(record.flow_run_id)
            elif self._mode == "kill":
                logger.warning("Killing leftover process group %d of flow run '%s'", pid, run_id)
                await kill_process_group(pid, grace_seconds=self._grace)
                message = KILLED_MESSAGE.format(name=self._name)
                await self._crash_if_unfinished(run_id, message, pid=pid)
                await self._records.remove(record.flow_run_id)
            else:
                await self._adopt(record, run_id, pid)

    async def _crash_if_unfinished(self, run_id: uuid.UUID, message: str, *, pid: int) -> None:
        try:
            flow_run = await self._client.read_flow_run(run_id)
        except APIError as exc:
            logger.warning("Could not read flow run '%s' to reconcile it: %s", run_id, exc)
            return
        if not _still_runs_there(flow_run, pid):
            logger.info("Flow run '%s' moved on to other infrastructure; leaving it", run_id)
            return
        if flow_run.state is not None and not flow_run.state.is_final:
            logger.warning("Flow run '%s': %s", run_id, message)
            await self._reporter.propose(run_id, State.of(StateType.CRASHED, message), force=True)

    async def _adopt(self, record: RunRecord, run_id: uuid.UUID, pid: int) -> None:
        try:
            flow_run = await self._client.read_flow_run(run_id)
        except APIError as exc:
            logger.warning("Could not read flow run '%s' to adopt it: %s", run_id, exc)
            return
        if not _still_runs_there(flow_run, pid):
            logger.warning(
                "Process group %d of flow run '%s' runs on, but the run moved on to other "
                "infrastructure; leaving the process alone",
                pid,
                run_id,
            )
            await self._records.remove(record.flow_run_id)
            return
        logger.info("Adopting flow run '%s' (process group %d) after a restart", run_id, pid)
        await self._runs.start(self._watch_adopted, flow_run, record, pid)

    async def _watch_adopted(
        self,
        flow_run: FlowRun,
        record: RunRecord,
        pid: int,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        # An adopted run holds a token like any other; over the limit it is still
        # watched (it is running whatever we do) but takes none.
        async with self._table.slot(flow_run, require_token=False) as tracked:
            tracked.owned = True
            tracked.infrastructure_pid = format_infrastructure_pid(pid)
            task_status.started()
            await self._watch(tracked, record, pid)

    async def _watch(self, tracked: InFlightRun, record: RunRecord, pid: int) -> None:
        with tracked.cancel_scope:
            try:
                while still_ours(record):  # noqa: ASYNC110 - no wake-up for a non-child
                    await trio.sleep(ADOPTED_POLL_SECONDS)
            finally:
                if tracked.cancel_scope.cancel_called:
                    with trio.CancelScope(shield=True):
                        await kill_process_group(pid, grace_seconds=self._grace)
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + self._reporter.report_timeout_seconds
            if tracked.cancel_reason is not None:
                await self._reporter.cancelled(
                    tracked.flow_run, tracked.cancel_reason, tracked.limits
                )
            else:
                message = UNKNOWN_EXIT_MESSAGE.format(name=self._name)
                await self._crash_if_unfinished(tracked.flow_run.id, message, pid=pid)
            await self._records.remove(record.flow_run_id)
