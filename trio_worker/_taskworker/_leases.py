"""Task-run leases, the task worker's half: renew them while the runs are in our hands.

The embedded API leases a task run to the task worker that acked it; unless
the lease is renewed, the API takes the run back (redelivers it, or records
CRASHED) once the lease lapses, which is how a dead task worker's runs end.
:class:`LeaseKeeper` renews the leases of every run this worker holds in one
request, a third of a lease apart, and stops a run whose lease the API says
was lost (it lapsed while we could not reach the API, and another worker may
run it now): the run is cancelled and reports nothing.

A Prefect server has no leases (it answers 404/405 to the renewal): the keeper
then stops asking, after one request.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import trio

from trio_worker._client._client import PrefectClient
from trio_worker._core._exceptions import APIError, ModelError

__all__ = ["DEFAULT_RENEW_SECONDS", "LeaseKeeper"]

logger = logging.getLogger("trio_worker.task_worker")

DEFAULT_RENEW_SECONDS: Final = 15.0
"""Renewal interval until the API has said how long its leases last."""

MIN_RENEW_SECONDS: Final = 0.01


class LeaseKeeper:
    """Renew the leases of the runs held (:meth:`holding`); cancel the runs whose lease is lost."""

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.renew_seconds = DEFAULT_RENEW_SECONDS
        #: False once the API answered that it has no leases (a Prefect server).
        self.supported = True
        self._scopes: dict[uuid.UUID, trio.CancelScope] = {}
        self._lost: set[uuid.UUID] = set()

    @contextmanager
    def holding(self, run_id: uuid.UUID) -> Iterator[trio.CancelScope]:
        """Keep ``run_id``'s lease while the block runs; the block is cancelled if it is lost.

        The block runs inside the lease's cancel scope, so a lost lease stops it
        where it is (the scope absorbs its own cancellation); :meth:`lost` then
        tells the caller not to report an outcome.
        """
        scope = trio.CancelScope()
        self._scopes[run_id] = scope
        try:
            with scope:
                yield scope
        finally:
            self._scopes.pop(run_id, None)

    def lost(self, run_id: uuid.UUID) -> bool:
        """Whether the API took ``run_id`` back: its outcome must not be reported."""
        return run_id in self._lost

    def forget(self, run_id: uuid.UUID) -> None:
        """Drop what is known about a run that is done here."""
        self._lost.discard(run_id)

    async def renew(self, client: PrefectClient, *, always: bool = False) -> None:
        """Renew every lease held now, once (``always``: even with none, to learn the length)."""
        held = list(self._scopes)
        if not self.supported or not (held or always):
            return
        answer = await client.renew_task_run_leases(self.client_id, held)
        if answer is None:
            self.supported = False
            logger.info("the API has no task-run leases (a Prefect server): not renewing them")
            return
        lease_seconds, lost = answer
        if lease_seconds > 0:
            self.renew_seconds = max(lease_seconds / 3, MIN_RENEW_SECONDS)
        for run_id in lost:
            scope = self._scopes.get(run_id)
            if scope is not None:
                logger.warning(
                    "task run %s: the API took it back (our lease lapsed); stopping it here",
                    run_id,
                )
                self._lost.add(run_id)
                scope.cancel()

    async def serve(self, client: PrefectClient) -> None:
        """Renew leases until cancelled; an API error is logged and retried next time.

        The first request goes out at once, with or without runs, to learn how
        long the API's leases last (or that it has none).
        """
        first = True
        while self.supported:
            try:
                await self.renew(client, always=first)
                first = False
            except (APIError, ModelError) as exc:
                logger.warning("task-run leases not renewed: %s", exc)
            await trio.sleep(self.renew_seconds)
