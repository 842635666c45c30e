"""``trio-worker server start``: run the embedded API in the foreground.

The API runs commands on workers for whoever can create a deployment, so it
listens beyond loopback only with an auth string
(``PREFECT_SERVER_API_AUTH_STRING``), or when ``--insecure-no-auth`` says, out
loud, that anyone who reaches the port may do that.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import click
import platformdirs
import trio

from trio_worker._cli import main
from trio_worker._cli._common import get_settings
from trio_worker._cli._database_claim import claim_database
from trio_worker._core._exceptions import ConfigurationError
from trio_worker._core._settings import Settings
from trio_worker._core._signals import watch_shutdown_signals
from trio_worker._server import DEFAULT_HOST, DEFAULT_PORT, ApiSecurity, is_loopback_host, serve_api

__all__ = ["default_db_path", "server"]


def default_db_path(settings: Settings) -> Path:
    """Return ``settings.server_db_path`` (``$TRIO_WORKER_DB``), else the user's ``api.db``."""
    if settings.server_db_path:
        return Path(settings.server_db_path)
    return Path(platformdirs.user_data_dir("trio-worker")) / "api.db"


@main.group()
def server() -> None:
    """Run the embedded API (a SQLite-backed Prefect API subset)."""


async def _serve(
    host: str, port: int, db_path: Path, security: ApiSecurity, max_body_bytes: int
) -> str | None:
    """Serve until a signal; return a one-line error if the server could not start."""
    try:
        claim = claim_database(db_path)
    except ConfigurationError as exc:
        return str(exc)
    try:
        return await _serve_claimed(host, port, db_path, security, max_body_bytes, claim.publish)
    finally:
        claim.release()


async def _serve_claimed(
    host: str,
    port: int,
    db_path: Path,
    security: ApiSecurity,
    max_body_bytes: int,
    publish: Callable[[str], None],
) -> str | None:
    async with trio.open_nursery() as nursery:
        # SIGINT/SIGTERM end the server: cancelling its scope closes the
        # listener, ends the lifespan (closing the database) and returns.
        await nursery.start(watch_shutdown_signals, None, nursery.cancel_scope)
        try:
            url = await nursery.start(lambda task_status: serve_api(
                host=host, port=port, db_path=db_path, security=security,
                max_body_bytes=max_body_bytes,
                task_status=task_status))  # fmt: skip
        except OSError as exc:
            nursery.cancel_scope.cancel()
            return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        except Exception as exc:  # e.g. a database this version cannot use
            nursery.cancel_scope.cancel()
            return f"cannot start the embedded API with {db_path}: {exc}"
        publish(url)
        click.echo(f"export PREFECT_API_URL={url}")
        click.echo(f"Embedded API listening; database {db_path}. Ctrl+C to stop.", err=True)
        if security.auth_string is not None:
            click.echo(
                "Authentication on: clients set PREFECT_API_AUTH_STRING to the same user:password.",
                err=True,
            )
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
    help="SQLite database file [default: $TRIO_WORKER_DB or the user data directory].",
)
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    help="Listen beyond loopback without PREFECT_SERVER_API_AUTH_STRING: anyone who "
    "reaches the port can run commands on your workers.",
)
def start(host: str, port: int | None, db: Path | None, insecure_no_auth: bool) -> None:
    """Serve the embedded API until SIGINT/SIGTERM, printing the PREFECT_API_URL to export.

    The port defaults to the one `trio-worker start` looks at when
    PREFECT_API_URL is not set, so that worker finds this API.

    With PREFECT_SERVER_API_AUTH_STRING set (user:password) every request must
    carry it (HTTP Basic); clients set PREFECT_API_AUTH_STRING to the same value.
    """
    settings = get_settings()
    if port is None:
        port = settings.embedded_api_port
    security = ApiSecurity.from_settings(settings)
    if security.auth_string is None and not is_loopback_host(host):
        if not insecure_no_auth:
            raise click.ClickException(
                f"refusing to serve the API on {host} without authentication: set "
                "PREFECT_SERVER_API_AUTH_STRING=user:password (clients set "
                "PREFECT_API_AUTH_STRING to the same), or pass --insecure-no-auth"
            )
        click.echo(
            f"WARNING: --insecure-no-auth: the API on {host}:{port} has no authentication; "
            "anyone who can reach it can run commands on your workers.",
            err=True,
        )
    db_path = db if db is not None else default_db_path(settings)
    error = trio.run(_serve, host, port, db_path, security, settings.api_max_body_bytes)
    if error is not None:
        raise click.ClickException(error)
