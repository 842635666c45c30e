"""Flow-run heartbeats: the engine says, every few seconds, that its run is alive.

The events are Prefect's ``prefect.flow-run.heartbeat`` (the shape of
Prefect's flow engine: the run as resource; its flow, deployment and tags as
related resources; no payload), so the same signal feeds the embedded API's
dead-run rule and Prefect's zombie-detection automation.

They come from the engine's Trio loop, which a busy flow cannot starve: the
engine runs a sync flow in a worker thread, so the loop stays free however
long the flow computes or blocks. (An *async* flow that blocks the loop does
starve it; the run's worker lists it in its own heartbeats meanwhile.)
Sending is best effort: a heartbeat that cannot be sent within one interval is
dropped with a log line, never failing the run.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import trio

from trio_worker._client._client import PrefectClient
from trio_worker._core._exceptions import APIError, ModelError
from trio_worker._core._models import Event, FlowRun
from trio_worker._version import __version__

__all__ = ["FLOW_RUN_HEARTBEAT", "emitting_heartbeats", "heartbeat_event"]

FLOW_RUN_HEARTBEAT: Final = "prefect.flow-run.heartbeat"

logger = logging.getLogger("trio_worker.engine")


def heartbeat_event(run: FlowRun, flow_name: str) -> Event:
    """Build one heartbeat for ``run`` (of the flow named ``flow_name``)."""
    related = [
        {
            "prefect.resource.id": f"prefect.flow.{run.flow_id}",
            "prefect.resource.role": "flow",
            "prefect.resource.name": flow_name,
        }
    ]
    if run.deployment_id is not None:
        related.append(
            {
                "prefect.resource.id": f"prefect.deployment.{run.deployment_id}",
                "prefect.resource.role": "deployment",
            }
        )
    related += [
        {"prefect.resource.id": f"prefect.tag.{tag}", "prefect.resource.role": "tag"}
        for tag in sorted(set(run.tags))
    ]
    return Event(
        event=FLOW_RUN_HEARTBEAT,
        resource={
            "prefect.resource.id": f"prefect.flow-run.{run.id}",
            "prefect.resource.name": run.name,
            "prefect.version": __version__,
        },
        related=related,
    )


async def _beat(client: PrefectClient, run: FlowRun, interval: float) -> None:
    try:
        flow_name = (await client.read_flow(run.flow_id)).name
    except (APIError, ModelError):
        flow_name = ""  # Prefect sends "" too when it does not know the flow
    while True:
        with trio.move_on_after(interval):
            try:
                await client.emit_events([heartbeat_event(run, flow_name)])
            except (APIError, ModelError) as exc:
                logger.debug("heartbeat of flow run %s not sent: %s", run.id, exc)
            await trio.sleep_forever()  # the rest of the interval


@asynccontextmanager
async def emitting_heartbeats(
    client: PrefectClient, run: FlowRun, interval: float
) -> AsyncIterator[None]:
    """Emit heartbeats for ``run`` every ``interval`` seconds while the block runs.

    The first one goes out at once, as Prefect's engine sends one when the
    run starts.
    """
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_beat, client, run, interval)
        try:
            yield
        finally:
            nursery.cancel_scope.cancel()
