"""``RunTable``: the runs a worker holds, and the limiter tokens they hold.

One owner for slot accounting. A run enters the table through
:meth:`RunTable.slot`, an async context manager that borrows a limiter token on
behalf of the run's id and returns it in its own ``finally``: whatever ends the
run's task (its end, a crash, a cancellation), the token comes back exactly
once, and the part that borrowed it is the part that returns it. The table
also knows when it is empty (a drain waits for that) and wakes a poller when
slots free up.
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping

import attrs
import trio

from trio_worker._core._models import FlowRun
from trio_worker._worker._context import CancelReason, RunLimits
from trio_worker._worker._metrics import WorkerMetrics

__all__ = ["InFlightRun", "RunTable"]


@attrs.define
class InFlightRun:
    """A run in the table, from its slot to its end.

    Attributes:
        flow_run: the run as the poll returned it.
        cancel_scope: cancelling it stops the run and kills its infrastructure.
        accepted_at: when the worker took the run (monotonic seconds).
        infrastructure_pid: set as soon as the infrastructure exists.
        owned: whether this worker's PENDING proposal was accepted, making the
            run its own to start and to report on.
        cancel_reason: why the worker is stopping the run, or ``None``.
        limits: the run's limits, once read from its job variables.
        holds_token: whether the run holds a limiter token (an adopted run
            over the limit is watched without one).
    """

    flow_run: FlowRun
    cancel_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    accepted_at: float = attrs.field(factory=time.monotonic)
    infrastructure_pid: str | None = None
    owned: bool = False
    cancel_reason: CancelReason | None = None
    limits: RunLimits = attrs.field(factory=RunLimits)
    holds_token: bool = True

    @property
    def memory_limit_mb(self) -> int | None:
        """The run's ``memory_limit_mb`` job variable, if any."""
        return self.limits.memory_limit_mb

    @property
    def timeout_seconds(self) -> float | None:
        """The run's ``timeout_seconds`` job variable, if any."""
        return self.limits.timeout_seconds

    def cancel(self, reason: CancelReason) -> bool:
        """Stop the run for ``reason``; False when it is being stopped already."""
        if self.cancel_reason is not None:
            return False
        self.cancel_reason = reason
        self.cancel_scope.cancel()
        return True


class RunTable:
    """The runs in flight, the limiter that bounds them, and events about both.

    Args:
        limit: the most runs holding a token at once; unlimited when None.
        metrics: where the in-flight and slot gauges are kept current.
    """

    def __init__(self, limit: int | None, *, metrics: WorkerMetrics) -> None:
        self.limiter = trio.CapacityLimiter(math.inf if limit is None else limit)
        self._metrics = metrics
        self._runs: dict[uuid.UUID, InFlightRun] = {}
        self._idle = trio.Event()
        self._idle.set()
        self._freed = trio.Event()
        metrics.limiter_tokens.labels("total").set(self.limiter.total_tokens)
        self._count()

    # -- reading --------------------------------------------------------------

    @property
    def runs(self) -> Mapping[uuid.UUID, InFlightRun]:
        """The runs in flight, by id (a read-only view)."""
        return self._runs

    def __len__(self) -> int:
        return len(self._runs)

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._runs

    def __iter__(self) -> Iterator[InFlightRun]:
        return iter(list(self._runs.values()))

    def get(self, run_id: uuid.UUID) -> InFlightRun | None:
        """The run ``run_id`` if it is in flight here."""
        return self._runs.get(run_id)

    @property
    def total_slots(self) -> float:
        """The limit (``inf`` when unlimited)."""
        return self.limiter.total_tokens

    def free_slots(self) -> float:
        """Tokens free now (``inf`` when unlimited)."""
        return self.limiter.total_tokens - self.limiter.borrowed_tokens

    # -- slots ----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def slot(
        self, flow_run: FlowRun, *, require_token: bool = True
    ) -> AsyncIterator[InFlightRun]:
        """Hold ``flow_run`` in the table, with a token borrowed on behalf of its id.

        Args:
            flow_run: the run; it must not be in the table already.
            require_token: raise ``trio.WouldBlock`` when no token is free;
                when False, a run over the limit is held without one (an
                adopted run: it is running whatever we do).

        Entering does not block (and is no checkpoint): a poller asks for as
        many slots as it saw free.

        Raises:
            trio.WouldBlock: no token is free (and one is required).
            RuntimeError: the run is in the table already.
        """
        run_id = flow_run.id
        if run_id in self._runs:
            raise RuntimeError(f"flow run '{run_id}' is in flight already")
        try:
            self.limiter.acquire_on_behalf_of_nowait(run_id)
            holds_token = True
        except trio.WouldBlock:
            if require_token:
                raise
            holds_token = False
        run = InFlightRun(flow_run=flow_run, holds_token=holds_token)
        if not self._runs:
            self._idle = trio.Event()
        self._runs[run_id] = run
        self._count()
        try:
            yield run
        finally:
            del self._runs[run_id]
            if holds_token:
                self.limiter.release_on_behalf_of(run_id)
                self._freed.set()
                self._freed = trio.Event()
            self._count()
            if not self._runs:
                self._idle.set()

    # -- waiting --------------------------------------------------------------

    async def wait_idle(self) -> None:
        """Wait until no run is in flight."""
        while self._runs:
            await self._idle.wait()

    async def wait_free_slots(self, count: float) -> None:
        """Wait until at least ``count`` tokens are free."""
        while self.free_slots() < count:
            await self._freed.wait()

    def _count(self) -> None:
        self._metrics.runs_in_flight.set(len(self._runs))
        self._metrics.limiter_tokens.labels("borrowed").set(self.limiter.borrowed_tokens)
        self._metrics.slots_free.set(self.free_slots())
