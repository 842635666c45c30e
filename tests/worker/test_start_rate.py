"""The start rate (``--max-starts-per-second``): a token bucket separate from ``--limit``."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from tests.helpers import make_deployment, wait_for, wait_for_state
from tests.worker.conftest import WorkerFactory
from trio_worker._client._client import PrefectClient
from trio_worker._core._exceptions import ConfigurationError
from trio_worker._core._models import StateType
from trio_worker._worker._start_rate import StartRate


async def test_bucket_allows_the_burst_then_the_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rate = StartRate(2.0, burst=3)
    assert [rate.try_take() for _ in range(4)] == [True, True, True, False]
    assert rate.seconds_until(1) == pytest.approx(0.5)
    await trio.sleep(0.49)
    assert not rate.try_take()
    await trio.sleep(0.01)
    assert rate.try_take()
    # A long pause fills the bucket to the burst, never beyond.
    await trio.sleep(100)
    assert rate.available() == 3
    assert rate.seconds_until(10) == 0  # capped at the burst
    taken = 0
    start = trio.current_time()
    while trio.current_time() - start < 10:
        if rate.try_take():
            taken += 1
        await trio.sleep(0.05)
    # Over [0, 10) s: the burst plus 2 per second (the token due at 10 s may or may not
    # fall inside, by float rounding of the steps), no more.
    assert 3 + 19 <= taken <= 3 + 20


async def test_given_back_token_is_reusable(autojump_clock: trio.testing.MockClock) -> None:
    rate = StartRate(1.0, burst=1)
    assert rate.try_take()
    assert not rate.try_take()
    rate.give_back()
    assert rate.try_take()
    rate.give_back()
    rate.give_back()  # never beyond the burst
    assert rate.available() == 1


async def test_unlimited_and_default_burst(autojump_clock: trio.testing.MockClock) -> None:
    unlimited = StartRate(None)
    assert unlimited.unlimited
    assert all(unlimited.try_take() for _ in range(1000))
    assert math.isinf(unlimited.available())
    assert unlimited.seconds_until(10**6) == 0
    # Default burst: one second's worth, at least one.
    assert StartRate(5.0).burst == 5
    assert StartRate(0.1).burst == 1


@pytest.mark.parametrize(("rate", "burst"), [(0.0, None), (-1.0, None), (math.inf, None), (1.0, 0)])
def test_bad_values_are_configuration_errors(rate: float, burst: int | None) -> None:
    with pytest.raises(ConfigurationError):
        StartRate(rate, burst)


async def test_worker_starts_only_what_the_rate_allows_and_leaves_the_rest_scheduled(
    client: PrefectClient, running_worker: WorkerFactory, pool_name: str
) -> None:
    # One token per 1,000 s after a burst of 2: exactly 2 of 5 due runs may start,
    # whatever the (unset) limit allows; the rest stay SCHEDULED, unclaimed.
    deployment = await make_deployment(client, pool_name, job_variables={"command": "true"})
    runs = [await client.create_flow_run_from_deployment(deployment.id) for _ in range(5)]
    async with running_worker(max_starts_per_second=0.001, start_burst=2) as worker:
        assert worker.limit is None

        async def two_completed() -> bool:
            states = [await client.read_flow_run(run.id) for run in runs]
            done = [r for r in states if r.state and r.state.type is StateType.COMPLETED]
            return len(done) == 2

        await wait_for(two_completed, what="two runs completed")
        # Let the poll loop go round several more times with no token left.
        polls: list[float] = []

        async def polled_again() -> bool:
            if worker.last_polled is not None and worker.last_polled not in polls:
                polls.append(worker.last_polled)
            return len(polls) > 3

        await wait_for(polled_again, what="three more polls")
        states = [await client.read_flow_run(run.id) for run in runs]
    types = sorted(r.state.type.value for r in states if r.state is not None)
    assert types == ["COMPLETED", "COMPLETED", "SCHEDULED", "SCHEDULED", "SCHEDULED"]


async def test_paced_worker_starts_every_run_in_the_end(
    client: PrefectClient, running_worker: WorkerFactory, pool_name: str
) -> None:
    # Paced, not capped: with tokens coming back, every due run starts.
    deployment = await make_deployment(client, pool_name, job_variables={"command": "true"})
    runs = [await client.create_flow_run_from_deployment(deployment.id) for _ in range(6)]
    async with running_worker(max_starts_per_second=20, start_burst=1, limit=2):
        for run in runs:
            await wait_for_state(client, run.id, [StateType.COMPLETED])
