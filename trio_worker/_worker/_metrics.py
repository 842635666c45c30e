"""Prometheus metrics of one worker, in a registry of its own (no process globals).

The health server exposes them at ``/metrics``; the submission pipeline and
the loops update them. Counting lives here so the pipeline's code reads as
what it does, with one ``metrics.x.inc()`` where something happens.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from trio_worker._core._models import FlowRun

__all__ = ["WorkerMetrics", "scheduled_time"]

_LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
#: Schedule-to-start spans a busy fleet's seconds to a backlog's hour.
_START_BUCKETS: Final = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def scheduled_time(flow_run: FlowRun) -> dt.datetime | None:
    """When ``flow_run`` was due: its SCHEDULED state's time, else its expected start."""
    state = flow_run.state
    if state is not None and state.state_details.scheduled_time is not None:
        return state.state_details.scheduled_time
    return flow_run.next_scheduled_start_time or flow_run.expected_start_time


class WorkerMetrics:
    """The counters, gauges and histograms a worker reports.

    Attributes:
        runs_submitted: runs whose PENDING proposal was accepted.
        runs_finished: runs that ended, by outcome (completed, crashed, cancelled,
            failed, aborted).
        runs_in_flight: runs holding a limiter token now.
        limiter_tokens: total and borrowed limiter tokens.
        poll_seconds: how long each poll for scheduled runs took.
        api_errors: API errors, by exception class.
        last_poll: unix time of the last successful poll.
        schedule_to_start: seconds from a run's scheduled time to its
            infrastructure existing (0 for a run prefetched ahead of time).
        slots_free: limiter tokens free now (+Inf without a limit): a fleet with
            none free everywhere needs more workers.
        polls_failed: polls for scheduled runs that failed.
        poll_failures_in_a_row: polls failed since the last success (alert on > 0
            for a while: the worker cannot take runs).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.runs_submitted = Counter(
            "trio_worker_flow_runs_submitted",
            "Flow runs this worker took (PENDING accepted).",
            registry=self.registry,
        )
        self.runs_finished = Counter(
            "trio_worker_flow_runs_finished",
            "Flow runs that ended, by how they ended.",
            ["outcome"],
            registry=self.registry,
        )
        self.runs_in_flight = Gauge(
            "trio_worker_flow_runs_in_flight",
            "Flow runs holding a limiter token.",
            registry=self.registry,
        )
        self.limiter_tokens = Gauge(
            "trio_worker_limiter_tokens",
            "Limiter tokens, total and borrowed (total is +Inf when unlimited).",
            ["kind"],
            registry=self.registry,
        )
        self.poll_seconds = Histogram(
            "trio_worker_poll_seconds",
            "Time taken by one poll for scheduled flow runs.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.api_errors = Counter(
            "trio_worker_api_errors",
            "API errors seen by the worker's loops, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.last_poll = Gauge(
            "trio_worker_last_poll_timestamp_seconds",
            "Unix time of the last successful poll.",
            registry=self.registry,
        )

        self.schedule_to_start = Histogram(
            "trio_worker_schedule_to_start_seconds",
            "Seconds from a flow run's scheduled time to its infrastructure started.",
            buckets=_START_BUCKETS,
            registry=self.registry,
        )
        self.slots_free = Gauge(
            "trio_worker_slots_free",
            "Runs this worker could take now (limiter tokens free; +Inf when unlimited).",
            registry=self.registry,
        )
        self.polls_failed = Counter(
            "trio_worker_polls_failed",
            "Polls for scheduled flow runs that failed.",
            registry=self.registry,
        )
        self.poll_failures_in_a_row = Gauge(
            "trio_worker_poll_failures_in_a_row",
            "Polls failed since the last successful one.",
            registry=self.registry,
        )

    def observe_start(self, flow_run: FlowRun, started: dt.datetime) -> None:
        """Record the schedule-to-start latency of ``flow_run``, started at ``started``."""
        due = scheduled_time(flow_run)
        if due is None:
            return
        self.schedule_to_start.observe(max(0.0, (started - due).total_seconds()))

    def render(self) -> bytes:
        """Return the metrics in Prometheus' text format."""
        return generate_latest(self.registry)
