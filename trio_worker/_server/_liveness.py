"""Nothing is ever stuck: the embedded API ends or gives back runs whose owner died.

A run that is not final has an owner that says, periodically, that it is alive
(``_holders`` records the signals). When the signals stop, a sweep that runs
inside the server (a service task of the app's lifespan, no setup) acts, in
one transaction per sweep:

- **a started flow run** (RUNNING, CANCELLING, or PENDING with an
  infrastructure pid, as a plain command run is) with no heartbeat from its
  engine and no heartbeat of a worker listing it for ``heartbeat_timeout``
  becomes CRASHED (CANCELLING: CANCELLED), its message naming the missing
  heartbeat and the last worker;
- **a PENDING claim** that never started within ``pending_timeout`` and that
  no live worker lists goes back to SCHEDULED (a live worker runs it), once:
  a second claim that never starts is CRASHED rather than released again;
- **a task run's lease** that its task worker stopped renewing: the run is
  delivered again when the task allows retries (Prefect's
  ``empirical_policy.retries``, one per lapse) or is marked idempotent
  (label ``trio-worker.idempotent``), else it becomes CRASHED with the reason,
  which a caller waiting on ``.result()`` gets as the error.

Concurrency slots follow: deployment, pool and queue limits count runs in
PENDING/RUNNING/CANCELLING, so a run leaving those states frees its slot.

Timing: each timeout is "final within": the sweep runs every :attr:`period`
(a sixth of the shortest timeout, at most 15 s) and acts on signals older
than the timeout minus that period. Runs that have never been watched (no
pid, no heartbeat, no holder: e.g. a Prefect flow called directly against
the embedded API) are left alone by the heartbeat rule.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Final

import attrs
import trio

from trio_worker._server._common import format_time, loads, now, parse_time
from trio_worker._server._events import EventBus
from trio_worker._server._flow_run_states import write_rule_state as write_flow_run_state
from trio_worker._server._orchestration import build_state
from trio_worker._server._records import FLOW_RUN_SELECT
from trio_worker._server._storage import Database, Tx
from trio_worker._server._task_queue import TaskQueue
from trio_worker._server._task_runs import write_rule_state as write_task_run_state

__all__ = [
    "IDEMPOTENT_LABEL",
    "LivenessCounts",
    "LivenessRules",
    "serve_liveness",
    "sweep",
]

logger = logging.getLogger("trio_worker.server.liveness")

IDEMPOTENT_LABEL: Final = "trio-worker.idempotent"
"""A task run label that allows redelivery after a lapsed lease without retries."""

MAX_IDEMPOTENT_REDELIVERIES: Final = 3
"""How often an idempotent task run is redelivered before it is CRASHED (a poison run)."""

MAX_PERIOD_SECONDS: Final = 15.0
MIN_PERIOD_SECONDS: Final = 0.01


@attrs.frozen(kw_only=True)
class LivenessRules:
    """The thresholds of the rules, in seconds; 0 turns a rule off.

    Attributes:
        heartbeat_timeout: a started flow run whose heartbeats stop is final within this.
        pending_timeout: a PENDING claim that never started is released within this.
        task_lease: a task run whose lease is not renewed is redelivered or CRASHED
            within this.
    """

    heartbeat_timeout: float = 90.0
    pending_timeout: float = 90.0
    task_lease: float = 60.0

    @classmethod
    def from_settings(cls, settings: Any) -> LivenessRules:
        """Read the ``server_*`` fields of a :class:`~trio_worker._core._settings.Settings`."""
        return cls(
            heartbeat_timeout=settings.server_heartbeat_timeout,
            pending_timeout=settings.server_pending_timeout,
            task_lease=settings.server_task_lease,
        )

    @property
    def period(self) -> float:
        """Seconds between sweeps (``inf`` when every rule is off)."""
        enabled = [t for t in (self.heartbeat_timeout, self.pending_timeout, self.task_lease) if t]
        if not enabled:
            return math.inf
        return min(max(min(enabled) / 6, MIN_PERIOD_SECONDS), MAX_PERIOD_SECONDS)

    def silence(self, timeout: float) -> timedelta:
        """How old the last signal may be before a rule with ``timeout`` acts."""
        return timedelta(seconds=max(timeout - self.period, timeout / 2))

    @property
    def lease_seconds(self) -> float:
        """How long an ack or a renewal extends a task run's lease (0: leases off)."""
        return self.silence(self.task_lease).total_seconds() if self.task_lease else 0.0


@attrs.define
class LivenessCounts:
    """What the rules did since the server started (``/api/metrics``)."""

    flow_runs_crashed: int = 0
    flow_runs_cancelled: int = 0
    claims_released: int = 0
    claims_crashed: int = 0
    task_runs_redelivered: int = 0
    task_runs_crashed: int = 0

    def add(self, other: LivenessCounts) -> None:
        """Add another sweep's counts to these."""
        for field in attrs.fields(LivenessCounts):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

    def total(self) -> int:
        """How many runs the rules acted on."""
        return sum(getattr(self, f.name) for f in attrs.fields(LivenessCounts))

    def exposition(self) -> str:
        """The counts in Prometheus' text format (``GET /api/metrics``)."""
        name = "trio_worker_server_liveness_runs_total"
        lines = [
            f"# HELP {name} Runs the liveness rules ended or gave back, by action.",
            f"# TYPE {name} counter",
        ]
        for field in attrs.fields(LivenessCounts):
            lines.append(f'{name}{{action="{field.name}"}} {getattr(self, field.name)}')
        return "\n".join(lines) + "\n"


# -- flow runs ------------------------------------------------------------------------


def _latest(*stamps: str | None) -> datetime | None:
    times = [t for t in (parse_time(s) for s in stamps) if t is not None]
    return max(times) if times else None


def _ago(at: datetime, then: datetime | None) -> str:
    if then is None:
        return "never"
    return f"{(at - then).total_seconds():.0f} s ago"


def _flow_state(row: Any, state_type: str, message: str, at: datetime) -> dict[str, Any]:
    current = loads(row["state"]) if row["state"] else {}
    details = dict(current.get("state_details") or {})
    details.update(transition_id=None, scheduled_time=None)
    if state_type == "SCHEDULED":
        details["scheduled_time"] = format_time(at)
    return build_state(
        state_type, name=None, message=message, data=None, details=details,
        timestamp=at, run_field="flow_run_id", run_id=row["id"],
    )  # fmt: skip


def _sweep_flow_runs(
    tx: Tx, bus: EventBus, rules: LivenessRules, at: datetime, counts: LivenessCounts
) -> None:
    # Runs that signalled within the shorter silence are alive under both
    # rules: only the others are read (most active runs heartbeat).
    silences = [rules.silence(t) for t in (rules.heartbeat_timeout, rules.pending_timeout) if t]
    cutoff = format_time(at - min(silences))
    rows = tx.all(
        f"{FLOW_RUN_SELECT} WHERE fr.state_type IN ('PENDING', 'RUNNING', 'CANCELLING') "
        "AND max(coalesce(fr.heartbeat_at, ''), coalesce(fr.holder_seen, '')) < ?",
        (cutoff,),
    )
    for row in rows:
        current = loads(row["state"]) if row["state"] else {}
        since = parse_time(current.get("timestamp"))
        seen = _latest(row["heartbeat_at"], row["holder_seen"])
        started = row["state_type"] != "PENDING" or bool(row["infrastructure_pid"])
        worker = f"worker {row['holder']!r}" if row["holder"] else "no worker"
        if started:
            watched = seen is not None or bool(row["infrastructure_pid"])
            last = _latest(row["heartbeat_at"], row["holder_seen"], current.get("timestamp"))
            if not rules.heartbeat_timeout or not watched or last is None:
                continue
            if at - last <= rules.silence(rules.heartbeat_timeout):
                continue
            cancelling = row["state_type"] == "CANCELLING"
            listing = (
                f"no heartbeat of worker {row['holder']!r} listing it "
                f"(last {_ago(at, parse_time(row['holder_seen']))})"
                if row["holder"]
                else "no worker heartbeat listing it"
            )
            message = (
                f"No prefect.flow-run.heartbeat from its engine "
                f"(last {_ago(at, parse_time(row['heartbeat_at']))}) and {listing} for "
                f"{rules.heartbeat_timeout:g} s: the run's process or host is presumed dead"
            )
            new_type = "CANCELLED" if cancelling else "CRASHED"
            write_flow_run_state(tx, bus, row, _flow_state(row, new_type, message, at))
            if cancelling:
                counts.flow_runs_cancelled += 1
            else:
                counts.flow_runs_crashed += 1
            logger.warning("flow run %s (%s) %s: %s", row["id"], row["name"], new_type, message)
            continue
        # A PENDING claim whose process never started.
        if not rules.pending_timeout or since is None:
            continue
        silence = rules.silence(rules.pending_timeout)
        if at - since <= silence:
            continue
        holder_seen = parse_time(row["holder_seen"])
        if holder_seen is not None and at - holder_seen <= silence:
            continue  # a live worker still lists it (e.g. waiting for its infrastructure)
        if row["claims_released"]:
            message = (
                f"PENDING for {rules.pending_timeout:g} s without starting, claimed by "
                f"{worker}, after an earlier claim was already released: not released twice"
            )
            write_flow_run_state(tx, bus, row, _flow_state(row, "CRASHED", message, at))
            counts.claims_crashed += 1
        else:
            message = (
                f"Released: PENDING for {rules.pending_timeout:g} s without starting and "
                f"{worker} holding it (last listed {_ago(at, holder_seen)})"
            )
            tx.execute("UPDATE flow_runs SET claims_released = 1 WHERE id = ?", (row["id"],))
            write_flow_run_state(tx, bus, row, _flow_state(row, "SCHEDULED", message, at))
            counts.claims_released += 1
        logger.warning("flow run %s (%s): %s", row["id"], row["name"], message)


# -- task runs ------------------------------------------------------------------------


def _redeliverable(row: Any) -> bool:
    body = loads(row["body"])
    retries = int((body.get("empirical_policy") or {}).get("retries") or 0)
    if row["lease_lapses"] < retries:
        return True
    idempotent = str((body.get("labels") or {}).get(IDEMPOTENT_LABEL, "")).lower() == "true"
    return idempotent and row["lease_lapses"] < MAX_IDEMPOTENT_REDELIVERIES


def _parameters_id(tx: Tx, run_id: str) -> str | None:
    """The run's ``task_parameters_id``: its RUNNING state may lack it, its SCHEDULED one has it."""
    for state_row in tx.all(
        "SELECT body FROM task_run_states WHERE task_run_id = ? "
        "ORDER BY timestamp DESC, rowid DESC",
        (run_id,),
    ):
        found = (loads(state_row["body"]).get("state_details") or {}).get("task_parameters_id")
        if found:
            return str(found)
    return None


def _sweep_task_leases(tx: Tx, queue: TaskQueue, at: datetime, counts: LivenessCounts) -> None:
    rows = tx.all(
        "SELECT * FROM task_runs WHERE lease_holder IS NOT NULL AND lease_expires < ? "
        "AND state_type IN ('PENDING', 'RUNNING')",
        (format_time(at),),
    )
    for row in rows:
        current = loads(row["state"]) if row["state"] else {}
        details = dict(current.get("state_details") or {})
        details.update(transition_id=None)
        since = parse_time(row["lease_since"])
        lapse = (
            f"task worker {row['lease_holder']!r} stopped renewing its lease "
            f"(held since {_ago(at, since)}, expired {_ago(at, parse_time(row['lease_expires']))})"
        )
        if _redeliverable(row):
            details.update(
                deferred=True,
                scheduled_time=format_time(at),
                task_parameters_id=_parameters_id(tx, row["id"]),
            )
            message = f"Redelivered: {lapse}"
            state = build_state(
                "SCHEDULED", name="AwaitingRetry", message=message, data=None, details=details,
                timestamp=at, run_field="task_run_id", run_id=row["id"],
            )  # fmt: skip
            counts.task_runs_redelivered += 1
        else:
            message = (
                f"Crashed: {lapse}; the task allows no retries and is not marked idempotent, "
                "so it was not run again"
            )
            state = build_state(
                "CRASHED", name=None, message=message, data=None, details=details,
                timestamp=at, run_field="task_run_id", run_id=row["id"],
            )  # fmt: skip
            counts.task_runs_crashed += 1
        tx.execute(
            "UPDATE task_runs SET lease_lost_by = lease_holder, lease_lapses = lease_lapses + 1, "
            "lapsed_run_count = run_count WHERE id = ?",
            (row["id"],),
        )
        write_task_run_state(tx, queue, row, state)
        logger.warning("task run %s (%s): %s", row["id"], row["name"], message)


# -- the sweep and its service ----------------------------------------------------------


def sweep(
    tx: Tx, bus: EventBus, queue: TaskQueue, rules: LivenessRules, at: datetime
) -> LivenessCounts:
    """Apply every rule once, as of ``at``; return what was done."""
    counts = LivenessCounts()
    if rules.heartbeat_timeout or rules.pending_timeout:
        _sweep_flow_runs(tx, bus, rules, at, counts)
    if rules.task_lease:
        _sweep_task_leases(tx, queue, at, counts)
    return counts


def _sweep_tx(
    bus: EventBus, queue: TaskQueue, rules: LivenessRules, at: datetime, tx: Tx
) -> LivenessCounts:
    return sweep(tx, bus, queue, rules, at)


async def serve_liveness(
    db: Database,
    bus: EventBus,
    queue: TaskQueue,
    rules: LivenessRules,
    counts: LivenessCounts,
    *,
    clock: Callable[[], datetime] = now,
) -> None:
    """Sweep every :attr:`LivenessRules.period` until cancelled (a service of the app).

    ``clock`` gives the time the rules compare signals with (tests inject one;
    the pause between sweeps is ``trio.sleep``, so a ``MockClock`` drives it).
    A failed sweep is logged and tried again at the next period.
    """
    period = rules.period
    if math.isinf(period):
        return
    while True:
        await trio.sleep(period)
        at = clock()  # here, on the Trio side: a mock clock is only readable here
        try:
            done = await db.run(functools.partial(_sweep_tx, bus, queue, rules, at))
        except Exception:
            logger.exception("liveness sweep failed; trying again in %.1f s", period)
            continue
        counts.add(done)
