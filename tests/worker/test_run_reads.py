"""Reads of runs whose process exited, coalesced into one filter request when they overlap."""

from __future__ import annotations

import uuid

import pytest
import trio
import trio.testing

from tests.helpers import make_deployment
from trio_worker._client._client import PrefectClient
from trio_worker._client._run_reads import RunReader
from trio_worker._core._exceptions import NotFoundError


async def test_overlapping_reads_share_requests(client: PrefectClient, pool_name: str) -> None:
    deployment = await make_deployment(client, pool_name, job_variables={"command": "true"})
    runs = [await client.create_flow_run_from_deployment(deployment.id) for _ in range(30)]
    reader = RunReader(client, max_batch=8)
    results: dict[uuid.UUID, uuid.UUID] = {}

    async def read(run_id: uuid.UUID) -> None:
        results[run_id] = (await reader.read(run_id)).id

    async with trio.open_nursery() as nursery:
        for run in runs:
            nursery.start_soon(read, run.id)
    assert results == {run.id: run.id for run in runs}
    # All 30 are queued before the first request goes: 8 per request.
    assert reader.requests == 4


async def test_a_lone_read_and_a_missing_run(client: PrefectClient, pool_name: str) -> None:
    deployment = await make_deployment(client, pool_name, job_variables={"command": "true"})
    run = await client.create_flow_run_from_deployment(deployment.id)
    reader = RunReader(client)
    assert (await reader.read(run.id)).name == run.name
    with pytest.raises(NotFoundError):
        await reader.read(uuid.uuid4())
    assert reader.requests == 2


async def test_reads_of_a_cancelled_reader_are_done_by_the_next(
    client: PrefectClient, pool_name: str
) -> None:
    deployment = await make_deployment(client, pool_name, job_variables={"command": "true"})
    runs = [await client.create_flow_run_from_deployment(deployment.id) for _ in range(4)]
    reader = RunReader(client)
    got: list[uuid.UUID] = []

    async def read(run_id: uuid.UUID) -> None:
        got.append((await reader.read(run_id)).id)

    async with trio.open_nursery() as nursery:
        leader = trio.CancelScope()

        async def cancelled_leader() -> None:
            with leader:
                await reader.read(runs[0].id)

        nursery.start_soon(cancelled_leader)
        await trio.testing.wait_all_tasks_blocked()  # the leader's request is in flight
        for run in runs[1:]:
            nursery.start_soon(read, run.id)
        await trio.testing.wait_all_tasks_blocked()
        leader.cancel()
    assert sorted(got) == sorted(run.id for run in runs[1:])
