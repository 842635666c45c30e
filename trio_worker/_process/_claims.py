"""Claims: runs a process worker proposed PENDING for, recorded before the proposal.

A worker SIGKILLed between its PENDING proposal and the run record of the
process it then starts left the run PENDING for good: nothing on the server
ends a PENDING run, and the restarted worker had no record of it. Measured
with ``benchmarks/bench_fleet.py --scenarios kill``: 5 of 300 runs left
PENDING after two of four workers were killed mid-way.

So the run record (``_run_records.py``) starts before the proposal, in phase
``claimed`` with the proposed state's ``transition_id``; the backend moves it
to ``starting`` just before it spawns, and to ``started`` (with the pid) once
the process exists. A restarted worker of the same name settles what it finds
(:meth:`ClaimSettler.settle_claim`, called by the ``Reconciler``):

- ``claimed``, and the run's state is still that PENDING (same
  ``transition_id``): nothing was started, so the run goes back to SCHEDULED
  ("Rescheduled") and runs once, on whichever worker picks it up; unless that
  PENDING landed over a run another worker had already finished (a proposal
  delayed by a busy server; Prefect accepts PENDING over COMPLETED), whose
  final state is then put back, as a live worker does before starting;
- ``starting``: a process may have been spawned. One that is alive (found by
  the API's ``infrastructure_pid`` or by its ``PREFECT__FLOW_RUN_ID`` among
  this host's session leaders) is handed back as a ``started`` record to be
  adopted like any other; with none alive, a run still not final is CRASHED
  (it may have run: starting it again could run it twice);
- anything else (the claim never landed, another worker has the run, it is
  final): the record is dropped and the run left alone.

The record also outlives the process: it turns ``exited`` (with the exit
status) and is dropped only once the run's end is reported. A worker killed
in between (the same benchmark left 3 runs PENDING this way after the claims
were recorded) is followed by a restart that reports it
(:meth:`ClaimSettler.settle_exited`):
COMPLETED for status 0, CRASHED with the reason otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from typing import Final

from trio_worker._client._client import PrefectClient
from trio_worker._core._exceptions import APIError
from trio_worker._core._exit_reasons import describe_exit
from trio_worker._core._models import FlowRun, State, StateType, now
from trio_worker._core._time import format_datetime
from trio_worker._process._group import (
    HOSTNAME,
    parse_infrastructure_pid,
    process_env_value,
    process_start_time,
)
from trio_worker._process._run_records import (
    CLAIMED,
    EXITED,
    STARTED,
    STARTING,
    RunRecord,
    RunRecords,
)
from trio_worker._worker._reporter import CANCELLED_MESSAGE, Reporter

__all__ = [
    "GONE_MESSAGE",
    "ClaimSettler",
    "find_run_process",
    "record_claim",
    "record_exited",
    "record_starting",
]

logger = logging.getLogger("trio_worker.reconcile")

#: A run whose process is gone and whose end nobody reported (also ``_reconcile.py``'s).
GONE_MESSAGE: Final = "Worker {name!r} died; the flow run's process no longer exists."
RESCHEDULED_MESSAGE: Final = (
    "Worker {name!r} died after claiming the run and before starting it; rescheduled."
)
EXITED_MESSAGE: Final = (
    "The flow run's process exited with status 0; worker {name!r} died before reporting "
    "it, and its restart marked the run Completed."
)
UNKNOWN_START_MESSAGE: Final = (
    "Worker {name!r} died while starting the run's process; no such process is alive, "
    "so whether the run ran is unknown (it is not started again)."
)
RUN_ID_ENV: Final = "PREFECT__FLOW_RUN_ID"


async def record_claim(records: RunRecords, flow_run_id: uuid.UUID, pending: State) -> None:
    """Record, before ``pending`` is proposed, that this worker is claiming the run."""
    transition = pending.state_details.transition_id
    record = RunRecord(
        flow_run_id=str(flow_run_id),
        pid=None,
        start_ticks=None,
        started_at=format_datetime(now()),
        phase=CLAIMED,
        transition_id=None if transition is None else str(transition),
    )
    await records.add(record)


async def record_starting(records: RunRecords, flow_run_id: uuid.UUID) -> None:
    """Record that the run's process is about to be spawned (its pid not known yet)."""
    record = RunRecord(
        flow_run_id=str(flow_run_id),
        pid=None,
        start_ticks=None,
        started_at=format_datetime(now()),
        phase=STARTING,
    )
    await records.add(record)


async def record_exited(
    records: RunRecords, flow_run_id: uuid.UUID, exit_status: int | None
) -> None:
    """Record that the run's process ended (its end is not reported yet)."""
    earlier = records.get(str(flow_run_id))
    if earlier is None:
        return
    await records.add(
        RunRecord(
            flow_run_id=earlier.flow_run_id,
            pid=earlier.pid,
            start_ticks=earlier.start_ticks,
            started_at=earlier.started_at,
            phase=EXITED,
            exit_status=exit_status,
        )
    )


def find_run_process(flow_run_id: uuid.UUID, hint: int | None = None) -> int | None:
    """The pid of a live session leader of this host that carries the run's id, if any.

    ``hint`` (the pid the API records) is looked at first; otherwise every
    process readable here is. Only a process whose environment names the run
    counts, so a reused pid is never taken for the run's.
    """
    wanted = str(flow_run_id)
    candidates: list[int] = [] if hint is None else [hint]
    with contextlib.suppress(OSError):  # no /proc: only the hint can be checked
        candidates += [int(name) for name in os.listdir("/proc") if name.isdigit()]
    for pid in candidates:
        if pid == os.getpid():
            continue
        try:
            if os.getsid(pid) != pid:
                continue
        except OSError:
            continue
        if process_env_value(pid, RUN_ID_ENV) == wanted:
            return pid
    return None


def _claim_stands(flow_run: FlowRun, record: RunRecord) -> bool:
    """Whether the run's state is still the PENDING this worker proposed."""
    state = flow_run.state
    if state is None or state.type is not StateType.PENDING or record.transition_id is None:
        return False
    return str(state.state_details.transition_id) == record.transition_id


class ClaimSettler:
    """Settle the records a dead worker of this name left short of ``started``.

    Args:
        client: the worker's open API client.
        records: the run records of this worker's name.
        reporter: proposes the states a settlement decides on.
        worker_name: named in the messages.
    """

    def __init__(
        self, client: PrefectClient, *, records: RunRecords, reporter: Reporter, worker_name: str
    ) -> None:
        self._client = client
        self._records = records
        self._reporter = reporter
        self._name = worker_name

    async def settle_exited(self, record: RunRecord) -> None:
        """Report the end of a run whose process ended before its worker could report it."""
        run_id = uuid.UUID(record.flow_run_id)
        try:
            flow_run = await self._client.read_flow_run(run_id)
        except APIError as exc:
            logger.warning("Could not read flow run '%s' to report its end: %s", run_id, exc)
            return
        state = flow_run.state
        if state is not None and not state.is_final:
            if state.type is StateType.CANCELLING:
                final = State.of(StateType.CANCELLED, CANCELLED_MESSAGE)
            elif record.exit_status == 0:
                final = State.of(StateType.COMPLETED, EXITED_MESSAGE.format(name=self._name))
            elif record.exit_status is not None:
                final = State.of(StateType.CRASHED, describe_exit(record.exit_status))
            else:
                final = State.of(StateType.CRASHED, GONE_MESSAGE.format(name=self._name))
            logger.warning("Flow run '%s': reporting %s after a restart", run_id, final.type.value)
            await self._reporter.propose(run_id, final)
        await self._records.remove(record.flow_run_id)

    async def settle_claim(self, record: RunRecord) -> RunRecord | None:
        """Settle a ``claimed`` or ``starting`` record an earlier worker of this name left.

        Returns:
            A ``started`` record for a live process of the run, to be adopted (or
            killed) like any recorded process; None when the claim is settled here.
        """
        run_id = uuid.UUID(record.flow_run_id)
        try:
            flow_run = await self._client.read_flow_run(run_id)
        except APIError as exc:
            # Kept: the next start of this worker tries again.
            logger.warning("Could not read flow run '%s' to settle its claim: %s", run_id, exc)
            return None
        state = flow_run.state
        if record.phase == STARTING and state is not None and not state.is_final:
            started = await self._find_started(flow_run, record)
            if started is not None:
                return started
        reporter = self._reporter
        if state is None or state.is_final:
            pass
        elif (
            record.phase == CLAIMED
            and _claim_stands(flow_run, record)
            and not await reporter.restore_if_finished(flow_run, state)
        ):
            message = RESCHEDULED_MESSAGE.format(name=self._name)
            logger.warning("Flow run '%s': %s", run_id, message)
            rescheduled = State.of(StateType.SCHEDULED, message, name="Rescheduled")
            await reporter.propose(run_id, rescheduled, force=True)
        elif record.phase == STARTING and (
            _claim_stands(flow_run, record) or _started_here_and_gone(flow_run)
        ):
            message = UNKNOWN_START_MESSAGE.format(name=self._name)
            logger.warning("Flow run '%s': %s", run_id, message)
            await reporter.propose(run_id, State.of(StateType.CRASHED, message), force=True)
        else:
            logger.info("Flow run '%s' is not this worker's claim any more; leaving it", run_id)
        await self._records.remove(record.flow_run_id)
        return None

    async def _find_started(self, flow_run: FlowRun, record: RunRecord) -> RunRecord | None:
        """A ``started`` record for a live process of a ``starting`` run, if one is found."""
        hint = None
        if flow_run.infrastructure_pid:
            try:
                _, hint = parse_infrastructure_pid(flow_run.infrastructure_pid)
            except ValueError:
                hint = None
        pid = find_run_process(flow_run.id, hint)
        if pid is None:
            return None
        started = RunRecord(
            flow_run_id=record.flow_run_id,
            pid=pid,
            start_ticks=process_start_time(pid),
            started_at=record.started_at,
            phase=STARTED,
            transition_id=record.transition_id,
        )
        await self._records.add(started)
        return started


def _started_here_and_gone(flow_run: FlowRun) -> bool:
    """A RUNNING run whose recorded process is on this host (or not recorded) and gone.

    The engine of a process spawned in the ``starting`` window reported
    RUNNING before it died or was killed; :meth:`ClaimSettler.settle_claim` found no live
    process carrying the run's id.
    """
    state = flow_run.state
    if state is None or state.type is not StateType.RUNNING:
        return False
    if not flow_run.infrastructure_pid:
        return True
    try:
        host, _ = parse_infrastructure_pid(flow_run.infrastructure_pid)
    except ValueError:
        return False
    return host == HOSTNAME
