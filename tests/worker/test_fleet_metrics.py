"""The figures an operator of a fleet alerts on, in ``/metrics``.

Schedule-to-start latency (a run's scheduled time to its process started),
free slots, and failing polls, read over HTTP from the worker's health server
as Prometheus would.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import attrs
import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import make_deployment, wait_for, wait_for_state
from tests.proxy import Fault, faulty_proxy
from tests.worker.conftest import WorkerFactory, fast_settings
from trio_worker._client._client import PrefectClient
from trio_worker._core._models import State, StateDetails, StateType, now

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def _samples(base: str) -> Samples:
    async with httpx.AsyncClient(base_url=base) as http:
        text = (await http.get("/metrics")).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _bucket(samples: Samples, le: str) -> float:
    return samples[("trio_worker_schedule_to_start_seconds_bucket", (("le", le),))]


async def test_schedule_to_start_latency_is_a_histogram(
    client: PrefectClient, running_worker: WorkerFactory, pool_name: str
) -> None:
    deployment = await make_deployment(client, pool_name, job_variables={"command": "true"})
    # Due 200 s ago: a run that waited out a worker's downtime.
    overdue = State(
        type=StateType.SCHEDULED,
        name="Scheduled",
        state_details=StateDetails(scheduled_time=now() - dt.timedelta(seconds=200)),
    )
    late = await client.create_flow_run_from_deployment(deployment.id, state=overdue)
    async with running_worker(with_healthcheck=True, limit=3) as worker:
        base = worker.health_urls[0]
        await wait_for_state(client, late.id, [StateType.COMPLETED])
        prompt = await client.create_flow_run_from_deployment(deployment.id)
        await wait_for_state(client, prompt.id, [StateType.COMPLETED])
        await wait_for(lambda: _idle(worker), what="slots returned")
        samples = await _samples(base)
    assert samples[("trio_worker_schedule_to_start_seconds_count", ())] == 2
    assert samples[("trio_worker_schedule_to_start_seconds_sum", ())] >= 200
    # The overdue run lands above 120 s; the prompt one well below it.
    assert _bucket(samples, "120.0") == 1
    assert _bucket(samples, "+Inf") == 2
    assert samples[("trio_worker_slots_free", ())] == 3
    assert samples[("trio_worker_polls_failed_total", ())] == 0


async def _idle(worker: object) -> bool:
    return not worker.in_flight  # type: ignore[attr-defined]


async def test_failing_polls_are_counted_and_reset(
    api_url: str, running_worker: WorkerFactory, pool_name: str, state_dir: Path
) -> None:
    outage = True

    def poll_outage(path: str, number: int) -> Fault:
        return "refuse" if outage and path.endswith("/get_scheduled_flow_runs") else None

    async with faulty_proxy(api_url, poll_outage) as (_, proxy_url):
        settings = attrs.evolve(fast_settings(proxy_url, state_dir), max_retries=0)
        async with running_worker(settings=settings, with_healthcheck=True) as worker:
            base = worker.health_urls[0]

            async def failed_twice() -> Samples | None:
                samples = await _samples(base)
                in_a_row = samples[("trio_worker_poll_failures_in_a_row", ())]
                return samples if in_a_row >= 2 else None

            failing = await wait_for(failed_twice, what="two failed polls")
            outage = False

            async def recovered() -> Samples | None:
                samples = await _samples(base)
                in_a_row = samples[("trio_worker_poll_failures_in_a_row", ())]
                return samples if in_a_row == 0 else None

            healthy = await wait_for(recovered, what="a poll to succeed")
    assert failing[("trio_worker_polls_failed_total", ())] >= 2
    assert healthy[("trio_worker_polls_failed_total", ())] >= 2
    # No limit: every slot is free, always.
    assert math.isinf(healthy[("trio_worker_slots_free", ())])
