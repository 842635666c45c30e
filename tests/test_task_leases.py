"""The task worker's lease keeper: a lease the API takes back stops the run holding it."""

from __future__ import annotations

import uuid
from typing import Any

import trio

from trio_worker._taskworker._leases import LeaseKeeper


class _TakesBack:
    """Stands in for the API client: answers every renewal by taking ``lost`` back."""

    def __init__(self, lost: list[uuid.UUID]) -> None:
        self.lost = lost
        self.asked: list[list[uuid.UUID]] = []

    async def renew_task_run_leases(self, client_id: str, held: list[uuid.UUID]) -> Any:
        self.asked.append(list(held))
        return 30.0, [run_id for run_id in self.lost if run_id in held]


async def test_a_lost_lease_cancels_the_block_holding_it() -> None:
    keeper = LeaseKeeper("tw-1")
    taken, kept = uuid.uuid4(), uuid.uuid4()
    client = _TakesBack([taken])
    reached_end: list[uuid.UUID] = []

    async def hold(run_id: uuid.UUID, task_status: trio.TaskStatus[None]) -> None:
        with keeper.holding(run_id):
            task_status.started()
            await trio.sleep(3600)
            reached_end.append(run_id)
        reached_end.append(run_id)  # after the block: the scope absorbed the cancel

    async with trio.open_nursery() as nursery:
        await nursery.start(hold, taken)
        await nursery.start(hold, kept)
        await keeper.renew(client)  # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked()
        assert keeper.lost(taken) and not keeper.lost(kept)
        assert reached_end == [taken]  # stopped where it was, not run to its end
        assert sorted(client.asked[0]) == sorted([taken, kept])
        nursery.cancel_scope.cancel()
    keeper.forget(taken)
    assert not keeper.lost(taken)
