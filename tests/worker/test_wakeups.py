"""Pick-up by event: while ``/events/out`` is up the poll loop rests (``_worker/_wakeups.py``).

The unit tests drive :class:`Wakeups` under a mock clock; the worker tests use
a query interval so long (60 s) that only an event or a look-ahead timer can
have started the run within the wait.
"""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path
from typing import Any

import attrs
import trio
import trio.testing

from tests.helpers import make_deployment, wait_for, wait_for_state
from tests.worker.conftest import WorkerFactory, fast_settings
from trio_worker._client._client import PrefectClient
from trio_worker._core._models import State, StateDetails, StateType, now
from trio_worker._worker._wakeups import FALLBACK_MAX_SECONDS, Wakeups

FINAL = (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED)
#: Without event pick-up, the next poll would come after at least 0.7 * 60 s.
LONG_QUERY_SECONDS = 60.0
PICKUP_WAIT_SECONDS = 20.0


def _event(pool: str, name: str = "prefect.flow-run.Scheduled", queue: str = "default") -> Any:
    related = [
        {"prefect.resource.role": "work-pool", "prefect.resource.name": pool},
        {"prefect.resource.role": "work-queue", "prefect.resource.name": queue},
    ]
    return {"type": "event", "event": {"event": name, "related": related}}


async def _woken_within(wakeups: Wakeups, seconds: float) -> bool:
    with trio.move_on_after(seconds):
        await wakeups.wait()
        return True
    return False


async def test_an_event_of_the_pool_wakes_the_loop_others_do_not(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wakeups = Wakeups()
    wakeups.stream_up()
    assert await _woken_within(wakeups, 1)  # coming up: one poll for what was missed
    assert wakeups.on_event(_event("elsewhere"), "mine")  # consumed, not for us
    assert wakeups.on_event({"type": "event", "event": {"event": "x.y"}}, "mine") is False
    assert not await _woken_within(wakeups, 100)
    assert wakeups.on_event(_event("mine", "prefect.flow-run.AwaitingRetry"), "mine")
    assert await _woken_within(wakeups, 1)
    # A queue-bound worker only wakes for its queues.
    wakeups.on_event(_event("mine", queue="other"), "mine", ("etl",))
    assert not await _woken_within(wakeups, 100)
    wakeups.on_event(_event("mine", queue="etl"), "mine", ("etl",))
    assert await _woken_within(wakeups, 1)


def test_a_message_of_any_other_shape_is_not_a_wakeup() -> None:
    # The stream is the network's input: a message the server (or a proxy) sends
    # in another shape must be passed over, never raise out of the listener.
    wakeups = Wakeups()
    odd: list[Any] = [
        None,
        [],
        "event",
        {"type": "event"},
        {"type": "event", "event": "prefect.flow-run.Scheduled"},
        {"type": "event", "event": ["x"]},
        {"type": "event", "event": {"event": "prefect.flow-run.Scheduled", "related": "x"}},
    ]
    assert [wakeups.on_event(message, "pool") for message in odd] == [False] * 6 + [True]


async def test_the_loop_rests_only_while_the_stream_is_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wakeups = Wakeups()
    assert wakeups.pause_seconds(1.0) == 1.0
    wakeups.stream_up()
    assert wakeups.pause_seconds(1.0) == 10.0
    assert wakeups.pause_seconds(10.0) == FALLBACK_MAX_SECONDS
    await wakeups.wait()
    # The stream dropping mid-rest wakes the loop, which then polls every interval.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wakeups.wait)
        await trio.sleep(5)
        wakeups.stream_down()
    assert wakeups.pause_seconds(1.0) == 1.0


async def test_a_known_run_wakes_the_loop_when_it_comes_due_then_the_next_is_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wakeups = Wakeups()
    reads: list[float] = []
    due_in = [30.0, None]

    async def read_next_due() -> dt.datetime | None:
        reads.append(trio.current_time())
        seconds = due_in.pop(0)
        return None if seconds is None else now() + dt.timedelta(seconds=seconds)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wakeups.serve, read_next_due)
        wakeups.stream_up()  # asks for a look-ahead read
        await wakeups.wait()
        start = trio.current_time()
        await wakeups.wait()  # no event: the timer of the run due in 30 s
        assert 29 <= trio.current_time() - start <= 31
        await trio.sleep(1)
        assert len(reads) == 2  # after the timed wake-up, the next run is looked up
        assert not await _woken_within(wakeups, 1000)  # none known: only the caller's bound
        nursery.cancel_scope.cancel()


async def test_a_late_run_wakes_the_loop_without_a_look_ahead_read_and_reads_are_spaced(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wakeups = Wakeups()
    reads: list[float] = []

    async def read_next_due() -> dt.datetime | None:
        reads.append(trio.current_time())
        return None

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wakeups.serve, read_next_due)
        wakeups.stream_up()
        await wakeups.wait()
        await trio.sleep(5)
        assert len(reads) == 1
        wakeups.on_event(_event("mine", "prefect.flow-run.Late"), "mine")
        assert await _woken_within(wakeups, 1)
        await trio.sleep(5)
        assert len(reads) == 1  # a Late run is due: nothing to look ahead for
        for _ in range(5):  # a burst of Scheduled events: reads at most one a second
            wakeups.on_event(_event("mine"), "mine")
            await trio.sleep(0.1)
        await trio.sleep(5)
        assert len(reads) in (2, 3)
        assert all(b - a >= 1 for a, b in itertools.pairwise(reads))
        nursery.cancel_scope.cancel()


async def _streaming(worker: Any) -> bool:
    return bool(worker.wakeups.live)


async def test_worker_picks_up_a_new_run_by_event_not_by_poll(
    api_url: str,
    client: PrefectClient,
    running_worker: WorkerFactory,
    pool_name: str,
    state_dir: Path,
) -> None:
    settings = attrs.evolve(fast_settings(api_url, state_dir), query_seconds=LONG_QUERY_SECONDS)
    deployment = await make_deployment(client, pool_name, job_variables={"command": "true"})
    async with running_worker(settings=settings) as worker:
        await wait_for(lambda: _streaming(worker), what="the events stream")
        await trio.sleep(0.5)  # the poll the stream's coming up asked for is done
        run = await client.create_flow_run_from_deployment(deployment.id)
        done = await wait_for_state(client, run.id, FINAL, timeout=PICKUP_WAIT_SECONDS)
    assert done.state is not None
    assert done.state.type is StateType.COMPLETED


async def test_worker_starts_a_run_scheduled_ahead_when_it_comes_due(
    api_url: str,
    client: PrefectClient,
    running_worker: WorkerFactory,
    pool_name: str,
    state_dir: Path,
) -> None:
    settings = attrs.evolve(fast_settings(api_url, state_dir), query_seconds=LONG_QUERY_SECONDS)
    deployment = await make_deployment(client, pool_name, job_variables={"command": "true"})
    async with running_worker(settings=settings) as worker:
        await wait_for(lambda: _streaming(worker), what="the events stream")
        due = now() + dt.timedelta(seconds=3)
        scheduled = attrs.evolve(
            State.of(StateType.SCHEDULED), state_details=StateDetails(scheduled_time=due)
        )
        run = await client.create_flow_run_from_deployment(deployment.id, state=scheduled)
        done = await wait_for_state(client, run.id, FINAL, timeout=PICKUP_WAIT_SECONDS)
    assert done.state is not None
    assert done.state.type is StateType.COMPLETED
    history = await client.read_flow_run_states(run.id)
    pending = [s for s in history if s.type is StateType.PENDING]
    assert pending
    assert pending[0].timestamp is not None
    assert pending[0].timestamp >= due
