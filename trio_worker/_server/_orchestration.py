"""Orchestration rules: what happens when a client proposes a new state for a run.

This is the part of the API that makes many workers on one pool safe: only a
SCHEDULED run may become PENDING, so of two workers that both received a run
from ``get_scheduled_flow_runs`` exactly one gets ACCEPT and the other ABORT.
The storage owner runs every proposal inside one SQLite write transaction, so
two proposals for the same run are decided one after the other, never
concurrently.

:func:`decide` is pure: it sees the run's current state and the proposal and
returns a :class:`Decision`; writing it is the caller's job. The outcomes follow
Prefect 3.9's core flow policy as captured in ``prefect-api-subset.md`` §3.8,
with one deliberate difference the issue asks for: a terminal state is never
replaced by another terminal or RUNNING state unless the proposal is forced.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Final, Literal

import attrs

from trio_worker._server._common import format_time, new_id, parse_time
from trio_worker._server._filters import invalid
from trio_worker._server._records import STATE_NAMES, default_state_details
from trio_worker._server._validation import parse_datetime

__all__ = [
    "CONCURRENCY_SLOT_WAIT_SECONDS",
    "TERMINAL",
    "Decision",
    "RunFacts",
    "build_state",
    "decide",
    "result_json",
]

TERMINAL: Final = frozenset({"COMPLETED", "FAILED", "CANCELLED", "CRASHED"})
"""State types a run does not leave on its own."""

ACTIVE: Final = ("PENDING", "RUNNING", "CANCELLING")
"""State types that hold a concurrency slot."""

CONCURRENCY_SLOT_WAIT_SECONDS: Final = 5.0
"""How far in the future a run refused a deployment slot is rescheduled."""

_TIME_DETAILS: Final = ("scheduled_time", "cache_expiration", "pause_timeout")
"""``state_details`` keys holding datetimes, stored in the API's canonical form."""

Status = Literal["ACCEPT", "REJECT", "ABORT", "WAIT"]


@attrs.frozen(kw_only=True)
class RunFacts:
    """What the rules need to know about the run, read in the same transaction.

    Attributes:
        state: the current state JSON, or ``None`` for a run that has none.
        infrastructure_pid: the run's recorded pid, if any.
        deployment_slots_full: the run's deployment has a concurrency limit and
            as many other runs of it are already active (PENDING/RUNNING/CANCELLING).
    """

    state: dict[str, Any] | None
    infrastructure_pid: str | None = None
    deployment_slots_full: bool = False


@attrs.frozen(kw_only=True)
class Decision:
    """The outcome of one proposal.

    Attributes:
        status: ACCEPT, REJECT, ABORT or WAIT.
        new_state: the state to write (the proposal when accepted, or a state
            the rules chose instead, e.g. CANCELLED for a run with nothing to
            cancel); ``None`` when the run keeps its current state.
        reason: why, for REJECT/ABORT/WAIT.
        delay_seconds: for WAIT, how long to wait before proposing again.
    """

    status: Status
    new_state: dict[str, Any] | None = None
    reason: str | None = None
    delay_seconds: int = 0


def build_state(
    state_type: str,
    *,
    name: str | None,
    message: str | None,
    data: Any,
    details: dict[str, Any] | None,
    timestamp: datetime,
    run_field: str,
    run_id: str,
) -> dict[str, Any]:
    """Build a complete state JSON from a proposal, filling Prefect's defaults.

    A SCHEDULED state without ``scheduled_time`` is scheduled for ``timestamp``.
    """
    state_details = default_state_details()
    if details:
        state_details.update(details)
    for key in _TIME_DETAILS:
        value = state_details.get(key)
        if isinstance(value, str):
            try:
                state_details[key] = format_time(parse_datetime(value))
            except ValueError:
                raise invalid(
                    [
                        {
                            "type": "datetime_parsing",
                            "loc": ["body", "state", "state_details", key],
                            "msg": "Input should be a valid datetime",
                            "input": value,
                        }
                    ],
                    None,
                ) from None
    state_details[run_field] = run_id
    if state_type == "SCHEDULED":
        if not state_details.get("scheduled_time"):
            state_details["scheduled_time"] = format_time(timestamp)
        if state_details.get("deferred") is None:
            state_details["deferred"] = False
    return {
        "id": new_id(),
        "type": state_type,
        "name": name or STATE_NAMES[state_type],
        "timestamp": format_time(timestamp),
        "message": message,
        "data": data,
        "state_details": state_details,
    }


def _derived(current: dict[str, Any], state_type: str, reason: str, at: datetime) -> dict[str, Any]:
    """A state the rules substitute for the proposal, carrying the run's details."""
    details = dict(current.get("state_details") or {})
    details["transition_id"] = None
    return {
        "id": new_id(),
        "type": state_type,
        "name": STATE_NAMES[state_type],
        "timestamp": format_time(at),
        "message": reason,
        "data": None,
        "state_details": details,
    }


def _has_persisted_result(state: dict[str, Any]) -> bool:
    data = state.get("data")
    return isinstance(data, dict) and data.get("type") != "unpersisted" and bool(data)


def decide(facts: RunFacts, proposed: dict[str, Any], *, force: bool, at: datetime) -> Decision:
    """Decide a proposal, as Prefect's core policy would (or its minimal one under ``force``).

    Args:
        facts: the run's current situation.
        proposed: the complete proposed state (see :func:`build_state`).
        force: bypass every rule except "a scheduled run with no infrastructure
            cannot be cancelling", as Prefect's ``force=true``.
        at: the time of the decision.
    """
    current = facts.state
    to = proposed["type"]
    if current is None:
        return Decision(status="ACCEPT", new_state=proposed)
    origin = current["type"]

    # BypassCancellingFlowRunsWithNoInfra survives force, as in Prefect.
    if to == "CANCELLING" and origin in ("SCHEDULED", "PAUSED") and not facts.infrastructure_pid:
        reason = "Scheduled flow run has no infrastructure to terminate."
        cancelled = _derived(current, "CANCELLED", proposed.get("message") or reason, at)
        return Decision(status="REJECT", new_state=cancelled, reason=reason)
    if force:
        return Decision(status="ACCEPT", new_state=_carry_scheduled_time(current, proposed))

    transition_id = (proposed.get("state_details") or {}).get("transition_id")
    if transition_id and transition_id == (current.get("state_details") or {}).get("transition_id"):
        return Decision(status="REJECT", reason="This run has already made this state transition.")

    if origin == "CANCELLING" and to != "CANCELLED":
        return Decision(
            status="REJECT",
            reason="Cannot transition flows that are cancelling to a state other than Cancelled.",
        )
    if to == "PENDING" and origin in ("PENDING", "RUNNING", "CANCELLED"):
        if origin == "PENDING" and proposed["name"] != "Pending":
            # A named sub-state of PENDING ("Submitting") by the run's own worker.
            return Decision(status="ACCEPT", new_state=_carry_scheduled_time(current, proposed))
        return Decision(
            status="ABORT",
            reason=f"This run is in a {origin} state and cannot transition to a PENDING state.",
        )
    if origin in TERMINAL:
        if (
            origin == "COMPLETED"
            and to in ("PENDING", "SCHEDULED")
            and _has_persisted_result(current)
        ):
            return Decision(status="REJECT", reason="Run is already COMPLETED.")
        if to not in ("PENDING", "SCHEDULED"):
            return Decision(status="ABORT", reason=f"Run is already in terminal state {origin}.")
    if to == "PENDING" and facts.deployment_slots_full:
        waiting = _derived(current, "SCHEDULED", "Deployment concurrency limit reached.", at)
        waiting["name"] = "AwaitingConcurrencySlot"
        waiting["state_details"]["scheduled_time"] = format_time(
            at + timedelta(seconds=CONCURRENCY_SLOT_WAIT_SECONDS)
        )
        return Decision(
            status="REJECT", new_state=waiting, reason="Deployment concurrency limit reached."
        )
    if to == "RUNNING" and origin in ("SCHEDULED", "PENDING"):
        scheduled = parse_time((current.get("state_details") or {}).get("scheduled_time"))
        if scheduled is not None and scheduled > at:
            delay = int((scheduled - at).total_seconds())
            return Decision(
                status="WAIT", reason="Scheduled time is in the future", delay_seconds=delay
            )
    return Decision(status="ACCEPT", new_state=_carry_scheduled_time(current, proposed))


def _carry_scheduled_time(current: dict[str, Any], proposed: dict[str, Any]) -> dict[str, Any]:
    """Copy the scheduled time into a PENDING state, as Prefect's CopyScheduledTime."""
    if proposed["type"] == "PENDING" and current["type"] in ("SCHEDULED", "PENDING"):
        scheduled = (current.get("state_details") or {}).get("scheduled_time")
        if scheduled and not proposed["state_details"].get("scheduled_time"):
            proposed["state_details"]["scheduled_time"] = scheduled
    return proposed


def result_json(decision: Decision, state: dict[str, Any] | None) -> dict[str, Any]:
    """Build the ``OrchestrationResult`` answer for a decision; ``state`` is the run's state now."""
    details: dict[str, Any]
    if decision.status == "ACCEPT":
        details = {"type": "accept_details"}
    elif decision.status == "WAIT":
        details = {
            "type": "wait_details",
            "delay_seconds": decision.delay_seconds,
            "reason": decision.reason,
        }
    else:
        kind = "reject_details" if decision.status == "REJECT" else "abort_details"
        details = {"type": kind, "reason": decision.reason}
    return {"state": state, "status": decision.status, "details": details}
