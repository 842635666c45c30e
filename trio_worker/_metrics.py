"""Prometheus metrics of one worker, in a registry of its own (no process globals).

The health server exposes them at ``/metrics``; the submission pipeline and
the loops update them. Counting lives here so the pipeline's code reads as
what it does, with one ``metrics.x.inc()`` where something happens.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["WorkerMetrics"]

_LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


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

    def render(self) -> bytes:
        """Return the metrics in Prometheus' text format."""
        return generate_latest(self.registry)
