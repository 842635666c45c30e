"""``trio-worker automation zombie``: Prefect's zombie-detection automation on a Prefect server."""

from __future__ import annotations

import click

from trio_worker._cli import main
from trio_worker._cli._common import echo_json, get_settings, open_client, run_async
from trio_worker._client._zombie_automation import (
    AUTOMATION_NAME,
    MIN_WITHIN_SECONDS,
    ZombieAutomation,
    find_automation,
    install_zombie_automation,
    zombie_automation,
)
from trio_worker._core._settings import Settings

__all__ = ["automation"]

EMBEDDED_NOTE = (
    "This API has no automations: it is trio-worker's embedded API, which ends runs "
    "whose heartbeats stop by itself (see docs/operations.md); nothing to install."
)


@main.group()
def automation() -> None:
    """Automations on a Prefect server that keep runs from getting stuck."""


async def _status(settings: Settings, name: str) -> ZombieAutomation:
    async with open_client(settings) as client:
        found = await find_automation(client, name)
    if found is False:
        return ZombieAutomation(created=False, automation=None, supported=False)
    return ZombieAutomation(created=False, automation=found if isinstance(found, dict) else None)


async def _install(settings: Settings, within: float, name: str) -> ZombieAutomation:
    async with open_client(settings) as client:
        return await install_zombie_automation(client, within, name=name)


@automation.command()
@click.option("--create", is_flag=True, help="Install it (idempotent: an existing one is kept).")
@click.option(
    "--within",
    type=click.FloatRange(min=MIN_WITHIN_SECONDS),
    default=None,
    help="Seconds without any event of a run after a heartbeat before it is CRASHED "
    "[default: 3 x PREFECT_FLOWS_HEARTBEAT_FREQUENCY, 90 s].",
)
@click.option("--name", default=AUTOMATION_NAME, show_default=True, help="Automation name.")
@click.option("--show", is_flag=True, help="Print the automation's JSON and do nothing else.")
def zombie(create: bool, within: float | None, name: str, show: bool) -> None:
    """Prefect's zombie-flow automation: CRASHED when a run's heartbeats stop.

    Without --create, tells whether it is installed on the server at
    PREFECT_API_URL.
    """
    settings = get_settings()
    window = within if within is not None else max(3 * settings.flow_heartbeat_seconds, 10.0)
    if show:
        echo_json(zombie_automation(window, name=name))
        return
    if create:
        outcome = run_async(_install, settings, window, name)
    else:
        outcome = run_async(_status, settings, name)
    if not outcome.supported:
        click.echo(EMBEDDED_NOTE)
        return
    ident = (outcome.automation or {}).get("id", "?")
    if outcome.created:
        click.echo(f"Created automation {name!r} ({ident}): runs silent for {window:g} s crash.")
    elif outcome.automation is not None:
        click.echo(f"Automation {name!r} already installed ({ident}).")
    else:
        click.echo(f"Automation {name!r} is not installed; run with --create to install it.")
