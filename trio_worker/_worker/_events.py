"""The events a worker emits, as Prefect's worker does, over ``/events/in``.

``prefect.worker.started`` / ``.stopped`` frame a worker's life;
``.submitted-flow-run``, ``.executed-flow-run`` and ``.cancelled-flow-run``
tell what it did with each run, with the same resource ids and related
resources as Prefect's. Emitting never blocks a run: events go into a bounded
channel (dropped and counted when full) and one task streams them over the
websocket, reconnecting with backoff. At shutdown what is left is posted over
HTTP.
"""

from __future__ import annotations

import logging
import re
import ssl
import uuid
from collections.abc import Callable
from typing import Any, Final

import trio

from trio_worker._client._client import PrefectClient
from trio_worker._client._subscriptions import JsonWebSocket, serve_subscription, websocket_token
from trio_worker._core._converter import unstructure
from trio_worker._core._exceptions import APIError
from trio_worker._core._models import Event, FlowRun, WorkPool
from trio_worker._core._settings import Settings
from trio_worker._version import __version__

__all__ = ["EventEmitter"]

logger = logging.getLogger("trio_worker.events")

BUFFER_SIZE: Final = 1000


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


class EventEmitter:
    """Build a worker's events and deliver them without ever blocking the caller.

    Args:
        worker_type: the worker's type, as in its resource id.
        worker_name: the worker's name.
        work_pool: returns the pool as last read (related to every event).
    """

    def __init__(
        self, *, worker_type: str, worker_name: str, work_pool: Callable[[], WorkPool | None]
    ) -> None:
        self._type = worker_type
        self._name = worker_name
        self._work_pool = work_pool
        self._send, self._receive = trio.open_memory_channel[Event](BUFFER_SIZE)
        self.dropped = 0
        self.sent = 0
        self.started_event_id: uuid.UUID | None = None

    # -- building -------------------------------------------------------------

    def _resource(self) -> dict[str, str]:
        return {
            "prefect.resource.id": f"prefect.worker.{self._type}.{_slug(self._name)}",
            "prefect.resource.name": self._name,
            "prefect.version": __version__,
            "prefect.worker-type": self._type,
        }

    def _pool_related(self) -> list[dict[str, str]]:
        pool = self._work_pool()
        if pool is None:
            return []
        return [
            {
                "prefect.resource.id": f"prefect.work-pool.{pool.id}",
                "prefect.resource.role": "work-pool",
                "prefect.resource.name": pool.name,
            }
        ]

    def _run_related(self, flow_run: FlowRun) -> list[dict[str, str]]:
        related = [
            {
                "prefect.resource.id": f"prefect.flow-run.{flow_run.id}",
                "prefect.resource.role": "flow-run",
                "prefect.resource.name": flow_run.name,
            },
            {
                "prefect.resource.id": f"prefect.flow.{flow_run.flow_id}",
                "prefect.resource.role": "flow",
            },
        ]
        if flow_run.deployment_id is not None:
            related.append(
                {
                    "prefect.resource.id": f"prefect.deployment.{flow_run.deployment_id}",
                    "prefect.resource.role": "deployment",
                }
            )
        related += [
            {"prefect.resource.id": f"prefect.tag.{tag}", "prefect.resource.role": "tag"}
            for tag in flow_run.tags
        ]
        return related + self._pool_related()

    def emit(self, name: str, *, related: list[dict[str, str]] | None = None, **kw: Any) -> Event:
        """Queue the event ``prefect.worker.<name>``; drop it (counted) when the buffer is full."""
        event = Event(
            event=f"prefect.worker.{name}",
            resource=self._resource(),
            related=related if related is not None else self._pool_related(),
            **kw,
        )
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.dropped += 1
        return event

    def started(self) -> None:
        """Emit ``prefect.worker.started``."""
        self.started_event_id = self.emit("started").id

    def stopped(self) -> None:
        """Emit ``prefect.worker.stopped`` following the started event."""
        self.emit("stopped", follows=self.started_event_id)

    def submitted(self, flow_run: FlowRun) -> uuid.UUID:
        """Emit ``prefect.worker.submitted-flow-run``; return its id for :meth:`executed`.

        The caller keeps the id (no table here that a run cancelled between
        the two events would leave an entry in).
        """
        return self.emit("submitted-flow-run", related=self._run_related(flow_run)).id

    def executed(
        self,
        flow_run: FlowRun,
        identifier: str | None,
        status_code: int | None,
        *,
        follows: uuid.UUID | None,
    ) -> None:
        """Emit ``prefect.worker.executed-flow-run`` following the submitted event."""
        related = self._run_related(flow_run)
        if identifier is not None:
            related[0]["prefect.infrastructure.identifier"] = identifier
        if status_code is not None:
            related[0]["prefect.infrastructure.status-code"] = str(status_code)
        self.emit("executed-flow-run", related=related, follows=follows)

    def cancelled(self, flow_run: FlowRun, reason: str) -> None:
        """Emit ``prefect.worker.cancelled-flow-run``."""
        self.emit(
            "cancelled-flow-run", related=self._run_related(flow_run), payload={"reason": reason}
        )

    # -- delivering -------------------------------------------------------------

    async def serve(
        self, api_url: str, *, settings: Settings, ssl_context: ssl.SSLContext | None
    ) -> None:
        """Stream queued events over ``/events/in`` until cancelled, reconnecting forever."""
        pending: list[Event] = []  # the event being sent survives a reconnect

        async def stream(socket: JsonWebSocket) -> None:
            while True:
                if not pending:
                    pending.append(await self._receive.receive())
                await socket.send_json(self._wire(pending[0]))
                pending.clear()
                self.sent += 1

        await serve_subscription(
            api_url,
            "events/in",
            stream,
            token=websocket_token(settings),
            ssl_context=ssl_context,
        )

    @staticmethod
    def _wire(event: Event) -> dict[str, Any]:
        body: dict[str, Any] = unstructure(event)
        body.pop("received", None)
        return body

    async def flush_over_http(self, client: PrefectClient) -> None:
        """Post whatever is still queued (used at shutdown, when the stream is gone)."""
        events: list[Event] = []
        while True:
            try:
                events.append(self._receive.receive_nowait())
            except trio.WouldBlock:
                break
        if not events:
            return
        try:
            await client.emit_events(events)
            self.sent += len(events)
        except APIError as exc:
            self.dropped += len(events)
            logger.warning("Could not deliver %d events at shutdown: %s", len(events), exc)
