"""``RunReader``: reads of single flow runs, coalesced into one filter request.

When a run's process exits 0 the worker reads the run once, to learn whether
its engine already reported a final state. Under load many runs exit within
the same few milliseconds, and a read each is a request each to the server a
whole fleet shares. So reads that arrive while another read is in flight wait
for it to finish and then go together as one ``POST /flow_runs/filter`` by id.
A lone read goes at once, so nothing waits when there is nothing to batch.

No task of its own: whichever caller holds the lock reads for everyone queued.
A caller cancelled mid-read leaves the others' reads undone; each of them puts
itself back in the queue when it gets the lock.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Final

import attrs
import trio

from trio_worker._core._exceptions import NotFoundError

if TYPE_CHECKING:
    from trio_worker._client._client import PrefectClient
    from trio_worker._core._models import FlowRun

__all__ = ["RunReader"]

#: Prefect's server answers at most 200 rows per filter request by default.
MAX_BATCH: Final = 200


@attrs.define(eq=False)
class _Read:
    flow_run_id: uuid.UUID
    done: bool = False
    result: FlowRun | None = None
    error: BaseException | None = None


class RunReader:
    """Read flow runs by id, batching the reads that overlap in time.

    Attributes:
        requests: filter requests sent (for tests and benchmarks).
    """

    def __init__(self, client: PrefectClient, *, max_batch: int = MAX_BATCH) -> None:
        self._client = client
        self._max_batch = max_batch
        self._lock = trio.Lock()
        self._queue: list[_Read] = []
        self.requests = 0

    async def read(self, flow_run_id: uuid.UUID) -> FlowRun:
        """Return the flow run, as ``client.read_flow_run`` would.

        Raises:
            NotFoundError: no such run.
            APIError: the filter request failed (every read of the batch gets it).
        """
        mine = _Read(flow_run_id)
        self._queue.append(mine)
        async with self._lock:
            while not mine.done:
                if mine not in self._queue:  # put back by a reader that was cancelled
                    self._queue.append(mine)
                await self._read_queued()
        if mine.error is not None:
            raise mine.error
        if mine.result is None:
            raise NotFoundError(f"flow run {flow_run_id} not found")
        return mine.result

    async def _read_queued(self) -> None:
        batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
        ids = list({read.flow_run_id: None for read in batch})
        self.requests += 1
        try:
            runs = await self._client.read_flow_runs(
                flow_runs={"id": {"any_": [str(i) for i in ids]}}, limit=len(ids)
            )
        except Exception as exc:
            for read in batch:
                read.error, read.done = exc, True
            return
        found = {run.id: run for run in runs}
        for read in batch:
            read.result, read.done = found.get(read.flow_run_id), True
