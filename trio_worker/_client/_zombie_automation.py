"""Prefect's documented zombie-detection automation, installed once on a Prefect server.

A self-hosted Prefect server does not end runs whose process died: Prefect
documents an automation for that ("How to detect and respond to zombie
flows"): a *proactive* event trigger that expects, after each
``prefect.flow-run.heartbeat`` of a run, another event of that run
(``prefect.flow-run.*``) within a window, and otherwise changes the run's
state to CRASHED. Prefect Cloud ships it as a managed automation; on a
self-hosted server someone must create it. This module builds that automation
(the documented shape, as JSON for ``POST /automations/``) and installs it
idempotently: an automation of the same name is left alone.

The embedded API needs none of this (its own rule ends such runs); it has no
``/automations`` endpoints, which :func:`install_zombie_automation` reports.
"""

from __future__ import annotations

from typing import Any, Final

import attrs

from trio_worker._client._client import PrefectClient
from trio_worker._core._exceptions import APIError

__all__ = [
    "AUTOMATION_NAME",
    "MIN_WITHIN_SECONDS",
    "ZombieAutomation",
    "install_zombie_automation",
    "zombie_automation",
]

AUTOMATION_NAME: Final = "Crash zombie flows"
"""The name Prefect's docs give it; how a second install finds the first."""

MIN_WITHIN_SECONDS: Final = 10.0
"""Prefect refuses a proactive trigger with a shorter window."""

CRASH_MESSAGE: Final = "Flow run marked as crashed due to missing heartbeats."


def zombie_automation(within_seconds: float, *, name: str = AUTOMATION_NAME) -> dict[str, Any]:
    """The documented automation, with a window of ``within_seconds`` (3 heartbeats is usual).

    Raises:
        ValueError: ``within_seconds`` is below Prefect's minimum for proactive triggers.
    """
    if within_seconds < MIN_WITHIN_SECONDS:
        raise ValueError(
            f"the window must be at least {MIN_WITHIN_SECONDS:g} s (Prefect's minimum for a "
            f"proactive trigger), not {within_seconds:g} s"
        )
    return {
        "name": name,
        "description": (
            "Marks a flow run CRASHED when no event of it follows a heartbeat within "
            f"{within_seconds:g} s (installed by trio-worker automation zombie --create)."
        ),
        "enabled": True,
        "trigger": {
            "type": "event",
            "after": ["prefect.flow-run.heartbeat"],
            "expect": ["prefect.flow-run.*"],
            "match": {"prefect.resource.id": ["prefect.flow-run.*"]},
            "match_related": {},
            "for_each": ["prefect.resource.id"],
            "posture": "Proactive",
            "threshold": 1,
            "within": within_seconds,
        },
        "actions": [
            {"type": "change-flow-run-state", "state": "CRASHED", "message": CRASH_MESSAGE}
        ],
    }


@attrs.frozen
class ZombieAutomation:
    """The outcome of an install.

    Attributes:
        created: True when this call created it; False when it was there already.
        automation: the automation as the server stores it.
        supported: False when the API has no automations (the embedded API).
    """

    created: bool
    automation: dict[str, Any] | None
    supported: bool = True


async def find_automation(client: PrefectClient, name: str) -> dict[str, Any] | bool | None:
    """The automation named ``name``, ``None`` if there is none, False without automations."""
    body = {"automations": {"name": {"any_": [name]}}, "limit": 1}
    try:
        found = await client.request("POST", "automations/filter", json_body=body)
    except APIError as exc:
        if exc.status_code in (404, 405):
            return False
        raise
    if isinstance(found, list) and found and isinstance(found[0], dict):
        return found[0]
    return None


async def install_zombie_automation(
    client: PrefectClient, within_seconds: float, *, name: str = AUTOMATION_NAME
) -> ZombieAutomation:
    """Create the automation unless one of that name exists (then leave it as it is).

    Raises:
        ValueError: the window is too short for Prefect.
        APIError: the server refused (e.g. no permission to create automations).
    """
    wanted = zombie_automation(within_seconds, name=name)
    existing = await find_automation(client, name)
    if existing is False:
        return ZombieAutomation(created=False, automation=None, supported=False)
    if isinstance(existing, dict):
        return ZombieAutomation(created=False, automation=existing)
    created = await client.request("POST", "automations/", json_body=wanted)
    return ZombieAutomation(created=True, automation=created if isinstance(created, dict) else None)
