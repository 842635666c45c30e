"""An idle worker's cost to the server: the cancellation fallback rests while the stream is up.

A fleet of idle workers is mostly polls; with the ``/events/out`` stream
connected, the polling check for cancelled runs (two filter requests) runs only
every ``CHECK_ROUNDS_WHILE_STREAMING`` rounds instead of every round. With the
stream down it runs every round, as before.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from tests.helpers import wait_for
from tests.proxy import faulty_proxy
from tests.worker.conftest import WorkerFactory, fast_settings
from trio_worker._core import _retry
from trio_worker._core._services import service_loop
from trio_worker._process._worker import ProcessWorker
from trio_worker._worker._cancellation import CHECK_ROUNDS_WHILE_STREAMING

POLLS = 40  # with query_seconds 0.05: 20 rounds of the check (every 2 intervals)


def _count(worker: ProcessWorker) -> dict[str, int]:
    """Count the worker's polls and cancellation filter reads from now on."""
    counts = {"polls": 0, "cancel_reads": 0}
    client = worker.client
    poll, read = client.get_scheduled_flow_runs, client.read_flow_runs

    async def counting_poll(*args: Any, **kwargs: Any) -> Any:
        counts["polls"] += 1
        return await poll(*args, **kwargs)

    async def counting_read(*args: Any, **kwargs: Any) -> Any:
        if "CANCEL" in repr(kwargs.get("flow_runs")):
            counts["cancel_reads"] += 1
        return await read(*args, **kwargs)

    client.get_scheduled_flow_runs = counting_poll  # type: ignore[method-assign]
    client.read_flow_runs = counting_read  # type: ignore[method-assign]
    return counts


async def _polled(counts: dict[str, int]) -> bool:
    return counts["polls"] >= POLLS


async def test_with_the_stream_up_the_fallback_check_rests(
    api_url: str, running_worker: WorkerFactory, state_dir: Path
) -> None:
    settings = attrs.evolve(fast_settings(api_url, state_dir), query_seconds=0.05)
    async with running_worker(settings=settings) as worker:
        # Polls every interval (no event pick-up rest), so rounds can be counted in polls.
        worker.wakeups.fallback_factor = 1.0

        async def streaming() -> bool:
            return worker.cancel_stream.live

        await wait_for(streaming, what="the cancellation stream to connect")
        counts = _count(worker)
        await wait_for(lambda: _polled(counts), what=f"{POLLS} polls")
    rounds = POLLS // 2
    # At most one check per CHECK_ROUNDS_WHILE_STREAMING rounds (plus the first after
    # connecting, and one in flight when the worker closes), two filter requests
    # each; both loops are jittered by +-30 %, so rounds are counted loosely. A
    # check every round would be 2 * rounds.
    most = 2 * (rounds // CHECK_ROUNDS_WHILE_STREAMING + 3)
    assert counts["cancel_reads"] <= most < 2 * rounds, counts


async def test_with_the_stream_down_the_fallback_checks_every_round(
    api_url: str, running_worker: WorkerFactory, state_dir: Path
) -> None:
    # The proxy closes every websocket at once: the stream never comes up.
    async with faulty_proxy(api_url, lambda path, number: None) as (_, proxy_url):
        settings = attrs.evolve(fast_settings(proxy_url, state_dir), query_seconds=0.05)
        async with running_worker(settings=settings) as worker:
            counts = _count(worker)
            await wait_for(lambda: _polled(counts), what=f"{POLLS} polls")
            assert not worker.cancel_stream.live
    # Jitter spreads both loops by +-30 %, so not exactly one check per two polls.
    assert counts["cancel_reads"] >= POLLS // 2, counts


async def test_workers_started_together_do_not_poll_in_lockstep(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Eight poll loops started at the same instant (a fleet rolled out at once): the
    # jitter of each interval spreads them, so their tenth polls are far apart.
    monkeypatch.setattr(_retry, "random", random.Random(15))
    interval = 10.0
    polls: list[list[float]] = [[] for _ in range(8)]

    def workload(mine: list[float]) -> Callable[[], Awaitable[None]]:
        async def poll() -> None:
            mine.append(trio.current_time())

        return poll

    async with trio.open_nursery() as nursery:
        for mine in polls:
            nursery.start_soon(
                functools.partial(service_loop, workload(mine), interval=interval, name="poll")
            )
        await trio.sleep(interval * 12)
        nursery.cancel_scope.cancel()
    tenth = sorted(mine[10] for mine in polls)
    assert len({round(t, 3) for t in (mine[0] for mine in polls)}) == 1  # first polls: at once
    assert tenth[-1] - tenth[0] > interval / 2
    assert min(b - a for a, b in itertools.pairwise(tenth)) > 0.01
