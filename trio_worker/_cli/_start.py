"""``trio-worker start``: serve a work pool, as ``prefect worker start`` does.

This module is the command line: the flags, their checks and the settings
they overlay. Serving the pool once the flags are read (the signal watcher,
the embedded API, the worker) is :mod:`._serve_pool`'s.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

import attrs
import click

from trio_worker._cli import main
from trio_worker._cli._common import get_settings, run_async, usage_error
from trio_worker._cli._serve_pool import StartOptions, serve_pool
from trio_worker._core._logging import configure_logging
from trio_worker._core._settings import Settings, parse_module_list

__all__ = ["start"]


def _read_base_job_template(path: str | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise usage_error(f"--base-job-template: cannot read {path!r}: {exc.strerror}") from None
    try:
        template = json.loads(text)
    except json.JSONDecodeError as exc:
        raise usage_error(f"--base-job-template: {path!r} is not valid JSON: {exc}") from None
    if not (
        isinstance(template, dict)
        and isinstance(template.get("job_configuration"), dict)
        and isinstance(template.get("variables"), dict)
    ):
        raise usage_error(
            f"--base-job-template: {path!r} must be a JSON object with "
            "'job_configuration' and 'variables'"
        )
    return template


@main.command()
@click.option("-n", "--name", help="Worker name (default: generated). No '/' or '%'.")
@click.option("-p", "--pool", help="The work pool to serve (required).")
@click.option(
    "-q", "--work-queue", "work_queues", multiple=True, help="A queue to serve (repeatable)."
)
@click.option("-t", "--type", "type_", help="Worker type (default: the pool's type).")
@click.option(
    "--prefetch-seconds",
    type=float,
    show_default="10, or PREFECT_WORKER_PREFETCH_SECONDS",
    help="Start runs scheduled up to this many seconds ahead.",
)
@click.option("--run-once", is_flag=True, help="Poll once, wait for those runs, and exit.")
@click.option(
    "-l",
    "--limit",
    type=click.IntRange(min=1),
    show_default="unlimited",
    help="Most flow runs at once.",
)
@click.option(
    "--with-healthcheck",
    is_flag=True,
    help="Serve /health, /ready, /status and /metrics on PREFECT_WORKER_WEBSERVER_HOST:PORT.",
)
@click.option(
    "--install-policy",
    type=click.Choice(["always", "if-not-present", "never", "prompt"]),
    default="prompt",
    show_default=True,
    help="Install the package of a missing worker type (never prompts without a terminal).",
)
@click.option(
    "--base-job-template",
    type=click.Path(dir_okay=False),
    help="JSON file used as the base job template when the pool is created.",
)
@click.option(
    "--create-pool-if-not-found/--no-create-pool-if-not-found",
    default=True,
    show_default=True,
    help="Create the pool when it does not exist.",
)
@click.option(
    "--cancel-grace-seconds",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds a cancelled run has between SIGTERM and SIGKILL.",
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="On SIGINT/SIGTERM, seconds to let runs finish before cancelling them.",
)
@click.option(
    "--on-shutdown",
    type=click.Choice(["crash", "reschedule"]),
    default="crash",
    show_default=True,
    help="What runs cut short by a shutdown become: CRASHED, or SCHEDULED again "
    "for another worker (only for flows safe to run twice).",
)
@click.option(
    "--reconcile",
    type=click.Choice(["adopt", "kill"]),
    default="adopt",
    show_default=True,
    help="Runs an earlier worker of this name left running on this host: adopt them "
    "(watch, cancel, report) or kill them.",
)
@click.option(
    "--max-starts-per-second",
    type=click.FloatRange(min=0, min_open=True, max=1e9),
    help="Start at most this many flow runs per second on average, whatever --limit "
    "allows; the rest stay SCHEDULED [TRIO_WORKER_MAX_STARTS_PER_SECOND; default: unlimited].",
)
@click.option(
    "--start-burst",
    type=click.IntRange(min=1),
    help="With --max-starts-per-second: most runs started at once "
    "[TRIO_WORKER_START_BURST; default: one second's worth].",
)
@click.option(
    "--warm-start/--no-warm-start",
    default=None,
    help="Fork engine runs from a zygote that has already imported the engine and Prefect "
    "(default: on) [TRIO_WORKER_WARM_START].",
)
@click.option(
    "--preload",
    metavar="MODULE,...",
    help="Modules the warm-start zygote imports once for every run to share [TRIO_WORKER_PRELOAD].",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="The worker's own log lines: text for people, JSON lines for log pipelines.",
)
def start(
    name: str | None,
    pool: str | None,
    work_queues: tuple[str, ...],
    type_: str | None,
    prefetch_seconds: float | None,
    run_once: bool,
    limit: int | None,
    with_healthcheck: bool,
    install_policy: str,
    base_job_template: str | None,
    create_pool_if_not_found: bool,
    cancel_grace_seconds: float,
    drain_timeout: float,
    on_shutdown: Literal["crash", "reschedule"],
    reconcile: Literal["adopt", "kill"],
    warm_start: bool | None,
    preload: str | None,
    log_format: Literal["text", "json"],
    max_starts_per_second: float | None,
    start_burst: int | None,
) -> None:
    """Start a worker that runs the flow runs of a work pool.

    Without PREFECT_API_URL the worker needs no setup: it uses the API already
    answering at 127.0.0.1:4200 (TRIO_WORKER_API_PORT), or serves the embedded
    API there itself, on the database file TRIO_WORKER_DB (default: api.db in
    the user data directory). Its first line says which URL and database. Set
    PREFECT_API_URL to use another API: a `trio-worker server start`, or a
    Prefect server.
    """
    if not pool:
        if sys.stdin.isatty():
            pool = click.prompt("Work pool to serve")
        else:
            raise usage_error("--pool is required: name the work pool to serve (-p NAME)")
    if name is not None and ("/" in name or "%" in name or not name):
        raise usage_error(
            f"--name {name!r} is not allowed: it must be non-empty and contain no '/' or '%'"
        )
    options = StartOptions(
        pool=str(pool),
        name=name,
        work_queues=work_queues,
        type=type_,
        prefetch_seconds=prefetch_seconds,
        run_once=run_once,
        limit=limit,
        with_healthcheck=with_healthcheck,
        install_policy=install_policy,
        base_job_template=_read_base_job_template(base_job_template),
        create_pool_if_not_found=create_pool_if_not_found,
        cancel_grace_seconds=cancel_grace_seconds,
        drain_timeout=drain_timeout,
        on_shutdown=on_shutdown,
        reconcile=reconcile,
        max_starts_per_second=max_starts_per_second,
        start_burst=start_burst,
    )
    configure_logging(log_format)
    run_async(serve_pool, options, _with_warm_start_flags(get_settings(), warm_start, preload))


def _with_warm_start_flags(
    settings: Settings, warm_start: bool | None, preload: str | None
) -> Settings:
    """Overlay ``--warm-start/--no-warm-start`` and ``--preload`` on the settings."""
    if warm_start is not None:
        settings = attrs.evolve(settings, warm_start=warm_start)
    if preload is not None:
        try:
            modules = parse_module_list(preload)
        except ValueError as exc:
            raise click.ClickException(f"--preload {preload!r} {exc}") from None
        settings = attrs.evolve(settings, preload=modules)
    return settings
