"""The one backoff policy: its schedule, its cap, its reset, and its jitter.

Trio's clock is mocked (``autojump_clock``): the waits are real ``trio.sleep``
calls, measured on the virtual clock, so the schedules below are the ones a
worker would follow, without the test waiting for them.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable

import httpx
import pytest
import trio
import trio.testing

from trio_worker._client._transport import RetryTransport
from trio_worker._core._exceptions import APIError, NotFoundError, ServerUnavailableError
from trio_worker._core._retry import Backoff, until_answered
from trio_worker._core._services import service_loop

JITTER = 0.3


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def _within(gap: float, centre: float, jitter: float = JITTER) -> bool:
    return centre * (1 - jitter) - 1e-9 <= gap <= centre * (1 + jitter) + 1e-9


def test_delays_double_up_to_the_cap_and_stay_spread_there() -> None:
    policy = Backoff(first_seconds=1.0, max_seconds=30.0)
    assert [policy.centre(n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    for attempt in range(12):
        waits = [policy.delay(attempt) for _ in range(50)]
        assert all(_within(w, policy.centre(attempt)) for w in waits), (attempt, waits)
        assert len(set(waits)) > 1  # jittered, even at the cap
    assert policy.centre(10_000) == 30.0  # no overflow on a very long outage


def test_steps_of_several_failures_and_no_jitter() -> None:
    policy = Backoff(first_seconds=10.0, max_seconds=40.0, failures_per_step=3, jitter=0)
    assert [policy.delay(n) for n in range(10)] == [10, 10, 10, 20, 20, 20, 40, 40, 40, 40]


def test_a_wait_asked_for_is_never_shortened() -> None:
    policy = Backoff(first_seconds=5.0, max_seconds=30.0)
    waits = [policy.delay(0, at_least=2.0) for _ in range(50)]
    assert all(2.0 <= w <= 2.0 * (1 + JITTER) for w in waits)
    assert len(set(waits)) > 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"first_seconds": 2.0, "max_seconds": 1.0},
        {"first_seconds": 1.0, "max_seconds": 2.0, "jitter": 1.0},
        {"first_seconds": 1.0, "max_seconds": 2.0, "factor": 0.5},
        {"first_seconds": 1.0, "max_seconds": 2.0, "failures_per_step": 0},
    ],
)
def test_a_policy_that_makes_no_sense_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="need"):
        Backoff(**kwargs)  # type: ignore[arg-type]


def _unavailable_then(times: list[float], failures: int) -> Callable[[], Awaitable[str]]:
    async def call() -> str:
        times.append(trio.current_time())
        if len(times) <= failures:
            raise ServerUnavailableError("down", status_code=503)
        return "answered"

    return call


async def test_until_answered_follows_the_schedule(autojump_clock: trio.testing.MockClock) -> None:
    times: list[float] = []
    result = await until_answered(_unavailable_then(times, 7), what="test", patience=600)
    assert result == "answered"
    centres = [1, 2, 4, 8, 16, 30, 30]
    gaps = _gaps(times)
    assert len(gaps) == len(centres)
    assert all(_within(g, c) for g, c in zip(gaps, centres, strict=True)), gaps


async def test_until_answered_gives_up_when_the_next_wait_would_pass_patience(
    autojump_clock: trio.testing.MockClock,
) -> None:
    times: list[float] = []
    start = trio.current_time()
    with pytest.raises(ServerUnavailableError):
        await until_answered(_unavailable_then(times, 1000), what="test", patience=20)
    assert trio.current_time() - start <= 20
    # Waits of 1, 2, 4, 8 s (+-30 %) end by 19.5 s at the latest, so a fifth call is
    # always made; the next wait (16 s, at least 11.2) would end past 20 s.
    assert len(times) == 5


async def test_until_answered_does_not_retry_other_errors(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        raise NotFoundError("gone", status_code=404)

    with pytest.raises(NotFoundError):
        await until_answered(call, what="test", patience=600)
    assert calls == 1


async def test_two_workers_reproposing_after_an_outage_do_not_move_in_lockstep(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Both lose the API at the same instant; without jitter their retries
    # (1, 3, 7, 15, 31 s ...) would land on the API together every time.
    first: list[float] = []
    second: list[float] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: until_answered(_unavailable_then(first, 6), what="a", patience=600)
        )
        nursery.start_soon(
            lambda: until_answered(_unavailable_then(second, 6), what="b", patience=600)
        )
    assert first[0] == second[0]
    assert all(abs(a - b) > 1e-6 for a, b in zip(first[1:], second[1:], strict=True))


async def test_service_loop_backs_off_after_three_failures_and_resets_on_success(
    autojump_clock: trio.testing.MockClock,
) -> None:
    interval = 10.0
    # fail x6, succeed, fail x1, succeed ...
    outcomes = [False] * 6 + [True, False] + [True] * 3
    times: list[float] = []

    async def workload() -> None:
        times.append(trio.current_time())
        if len(times) <= len(outcomes) and not outcomes[len(times) - 1]:
            raise ServerUnavailableError("down", status_code=503)

    with trio.move_on_after(1000):
        await service_loop(workload, interval=interval, name="test")
        pytest.fail("the loop ended")
    gaps = _gaps(times)[: len(outcomes) - 1]
    assert len(gaps) == len(outcomes) - 1
    # waits after failure 1, 2 at the interval; 3, 4, 5 doubled; 6 doubled again;
    # after the success: back to the interval, whatever came before.
    centres = [10, 10, 20, 20, 20, 40, 10, 10, 10, 10][: len(gaps)]
    assert all(_within(g, c) for g, c in zip(gaps, centres, strict=True)), gaps


async def test_service_loop_backoff_is_capped(autojump_clock: trio.testing.MockClock) -> None:
    times: list[float] = []

    async def workload() -> None:
        times.append(trio.current_time())
        raise APIError("refused", status_code=409)

    with trio.move_on_after(5000):
        await service_loop(workload, interval=1.0, name="test", max_backoff_doublings=2)
    assert all(g <= 4 * (1 + JITTER) + 1e-9 for g in _gaps(times))
    assert max(_gaps(times)) >= 4 * (1 - JITTER)


async def test_request_retries_follow_the_policy(autojump_clock: trio.testing.MockClock) -> None:
    times: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        times.append(trio.current_time())
        return httpx.Response(503 if len(times) <= 4 else 200)

    transport = RetryTransport(httpx.MockTransport(handler), max_retries=5, backoff_seconds=1.0)
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get("http://api.invalid/")
    assert response.status_code == 200
    gaps = _gaps(times)
    assert all(_within(g, c) for g, c in zip(gaps, [1, 2, 4, 8], strict=True)), gaps


async def test_retry_after_is_waited_at_least(autojump_clock: trio.testing.MockClock) -> None:
    times: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        times.append(trio.current_time())
        if len(times) == 1:
            return httpx.Response(429, headers={"Retry-After": "7"})
        return httpx.Response(200)

    transport = RetryTransport(httpx.MockTransport(handler), backoff_seconds=1.0)
    async with httpx.AsyncClient(transport=transport) as client:
        await client.get("http://api.invalid/")
    (gap,) = _gaps(times)
    assert 7.0 <= gap <= 7.0 * (1 + JITTER)
