"""``trio-worker server start``: run the embedded API in the foreground."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import click
import platformdirs
import trio

from trio_worker._cli import main
from trio_worker._cli._common import get_settings
from trio_worker._cli._database_claim import claim_database
from trio_worker._exceptions import ConfigurationError
from trio_worker._server import DEFAULT_HOST, DEFAULT_PORT, serve_api

__all__ = ["default_db_path", "server"]

DB_ENV_VAR = "TRIO_WORKER_DB"
"""Environment variable naming the database file when ``--db`` is not given."""


def default_db_path() -> Path:
    """Return ``$TRIO_WORKER_DB``, else ``api.db`` in the user's data directory."""
    override = os.environ.get(DB_ENV_VAR)
    if override:
        return Path(override)
    return Path(platformdirs.user_data_dir("trio-worker")) / "api.db"


@main.group()
def server() -> None:
    """Run the embedded API (a SQLite-backed Prefect API subset)."""


async def _watch_signals(scope: trio.CancelScope) -> None:
    # SIGINT/SIGTERM end the server: cancelling its scope closes the
    # listener, ends the lifespan (closing the database) and returns.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _signum in signals:
            scope.cancel()
            return


async def _serve(host: str, port: int, db_path: Path) -> str | None:
    """Serve until a signal; return a one-line error if the server could not start."""
    try:
        claim = claim_database(db_path)
    except ConfigurationError as exc:
        return str(exc)
    try:
        return await _serve_claimed(host, port, db_path, claim.publish)
    finally:
        claim.release()


async def _serve_claimed(
    host: str, port: int, db_path: Path, publish: Callable[[str], None]
) -> str | None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, nursery.cancel_scope)
        try:
            url = await nursery.start(lambda task_status: serve_api(
                host=host, port=port, db_path=db_path, task_status=task_status))  # fmt: skip
        except OSError as exc:
            nursery.cancel_scope.cancel()
            return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        except Exception as exc:  # e.g. a database this version cannot use
            nursery.cancel_scope.cancel()
            return f"cannot start the embedded API with {db_path}: {exc}"
        publish(url)
        click.echo(f"export PREFECT_API_URL={url}")
        click.echo(f"Embedded API listening; database {db_path}. Ctrl+C to stop.", err=True)
        sys.stdout.flush()
    return None


@server.command()
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=None,
    type=click.IntRange(0, 65535),
    show_default=f"$TRIO_WORKER_API_PORT or {DEFAULT_PORT}",
    help="Port (0: any free one).",
)
@click.option(
    "--db",
    "db",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"SQLite database file [default: ${DB_ENV_VAR} or the user data directory].",
)
def start(host: str, port: int | None, db: Path | None) -> None:
    """Serve the embedded API until SIGINT/SIGTERM, printing the PREFECT_API_URL to export.

    The port defaults to the one `trio-worker start` looks at when
    PREFECT_API_URL is not set, so that worker finds this API.
    """
    if port is None:
        port = get_settings().embedded_api_port
    db_path = db if db is not None else default_db_path()
    error = trio.run(_serve, host, port, db_path)
    if error is not None:
        raise click.ClickException(error)
