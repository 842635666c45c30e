"""``trio-worker start``: serve a work pool, as ``prefect worker start`` does.

The command's nursery holds the signal watcher, the embedded API (only when no
``PREFECT_API_URL`` is configured) and the worker, which owns everything it
starts. The first SIGINT/SIGTERM drains the worker; the second cancels at once.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from typing import Any, Literal

import attrs
import click
import httpx
import trio

from trio_worker._cli import did_you_mean, main
from trio_worker._cli._common import get_settings, run_async, usage_error
from trio_worker._cli._database_claim import DatabaseClaim, claim_database, serving_url
from trio_worker._cli._registry import get_worker_class, installed_worker_types, worker_type_package
from trio_worker._client._client import PrefectClient
from trio_worker._core._exceptions import ConfigurationError, NotFoundError, WorkerTypeNotFoundError
from trio_worker._core._logging import configure_logging
from trio_worker._core._settings import Settings, parse_module_list
from trio_worker._core._signals import watch_shutdown_signals
from trio_worker._worker._base import BaseWorker

__all__ = ["start"]

logger = logging.getLogger("trio_worker.cli")


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


async def _install_worker_type(type_name: str) -> None:
    """Install the package that provides worker type ``type_name`` with pip.

    Raises:
        ConfigurationError: the type is not a plain name (checked before pip runs).
        WorkerTypeNotFoundError: pip could not install it.
    """
    package = worker_type_package(type_name)
    logger.info("Installing %s ...", package)
    result = await trio.run_process(
        [sys.executable, "-m", "pip", "install", package],
        check=False,
        capture_stdout=True,
        capture_stderr=True,
    )
    if result.returncode != 0:
        raise WorkerTypeNotFoundError(
            f"could not install {package} for worker type {type_name!r}; "
            f"installed types: {', '.join(installed_worker_types())}"
        )


async def _resolve_worker_class(type_name: str, policy: str) -> type[BaseWorker[Any, Any]]:
    """Find the worker type, installing its package as ``--install-policy`` allows.

    ``always`` installs (or upgrades) first; ``if-not-present`` installs a
    missing type; ``prompt`` asks, on a terminal only; ``never`` does not.
    """
    if policy == "always" and type_name != "process":
        await _install_worker_type(type_name)
    try:
        return get_worker_class(type_name)
    except WorkerTypeNotFoundError:
        if policy == "never" or (policy == "prompt" and not sys.stdin.isatty()):
            raise
        if policy == "prompt":
            package = worker_type_package(type_name)  # never ask about a non-name
            question = f"Worker type {type_name!r} is not installed. Install {package}?"
            if not await trio.to_thread.run_sync(click.confirm, question):
                raise
        await _install_worker_type(type_name)
        return get_worker_class(type_name)


async def _existing_api(url: str) -> bool:
    """Whether an API already answers at ``url`` (e.g. a running `trio-worker server start`)."""
    try:
        async with httpx.AsyncClient(timeout=1.0) as client:
            response = await client.get(url + "/health")
    except httpx.HTTPError:
        return False
    return response.status_code == 200


async def _pool_type(settings: Settings, api_url: str, pool: str) -> str | None:
    """Return the pool's type; None when it does not exist yet (the worker creates it).

    A pool that does not exist while one of a close name does may be a typo,
    or a new pool of a family (``etl-1``, ``etl-2``): a worker is a daemon that
    a deployment tool starts, so it goes on as Prefect's does, but says so
    first, with the close name, on a WARNING line of its own.
    """
    async with PrefectClient(api_url, settings=settings) as client:
        try:
            return (await client.read_work_pool(pool)).type
        except NotFoundError:
            names = [p.name for p in await client.read_work_pools()]
    hint = did_you_mean(pool, names)
    if hint:
        logger.warning(
            "Work pool %r not found.%s Serving a new pool of that name; stop the worker "
            "(Ctrl-C) if it is a typo.",
            pool,
            hint,
        )
    return None


@attrs.frozen
class StartOptions:
    """The flags of ``trio-worker start``, after validation."""

    pool: str
    name: str | None
    work_queues: tuple[str, ...]
    type: str | None
    prefetch_seconds: float | None
    run_once: bool
    limit: int | None
    with_healthcheck: bool
    install_policy: str
    base_job_template: dict[str, Any] | None
    create_pool_if_not_found: bool
    cancel_grace_seconds: float
    drain_timeout: float
    on_shutdown: Literal["crash", "reschedule"]
    reconcile: Literal["adopt", "kill"]
    max_starts_per_second: float | None = None
    start_burst: int | None = None


async def _serve(options: StartOptions, settings: Settings) -> None:
    async with trio.open_nursery() as nursery:
        workers: list[BaseWorker[Any, Any]] = []
        # A second signal stops the worker at once, but not the embedded API
        # in this nursery: the runs still report their final states to it.
        worker_scope = trio.CancelScope()

        def on_first_signal() -> None:
            if workers:
                nursery.start_soon(workers[0].drain, options.drain_timeout)
            else:  # nothing started yet: there is nothing to drain
                nursery.cancel_scope.cancel()

        # Installed first, so a signal at any point of start-up is handled.
        await nursery.start(watch_shutdown_signals, on_first_signal, worker_scope)
        api_url = settings.api_url
        if not api_url:
            api_url = await _start_embedded_api(nursery, settings)
            # The API this process serves asks for the auth string it was given.
            auth = settings.api_auth_string or settings.server_api_auth_string
            settings = attrs.evolve(settings, api_url=api_url, api_auth_string=auth)
        pool_type = await _pool_type(settings, api_url, options.pool)
        type_name = options.type or pool_type or "process"
        worker_cls = await _resolve_worker_class(type_name, options.install_policy)
        if pool_type is None and options.create_pool_if_not_found:
            logger.info("Work pool %r does not exist yet: the worker creates it.", options.pool)
        worker = worker_cls(
            options.pool,
            work_queues=options.work_queues,
            name=options.name,
            prefetch_seconds=options.prefetch_seconds,
            create_pool_if_not_found=options.create_pool_if_not_found,
            limit=options.limit,
            base_job_template=options.base_job_template,
            settings=settings,
            cancel_grace_seconds=options.cancel_grace_seconds,
            on_shutdown=options.on_shutdown,
            reconcile=options.reconcile,
            max_starts_per_second=options.max_starts_per_second,
            start_burst=options.start_burst,
        )
        with worker_scope:
            async with worker:
                workers.append(worker)
                await worker.start(
                    run_once=options.run_once,
                    with_healthcheck=options.with_healthcheck,
                    printer=logger.info,
                )
        logger.info("Worker %r stopped!", worker.name)
        nursery.cancel_scope.cancel()


async def _start_embedded_api(nursery: trio.Nursery, settings: Settings) -> str:
    """Use the API on the embedded API port if one answers there, else serve one here.

    Either way the first line printed says which API and which database the
    worker uses, and how to choose another: zero setup, but no surprise.
    """
    from trio_worker._cli._server import default_db_path

    port = settings.embedded_api_port
    db_path = default_db_path(settings)
    url = f"http://127.0.0.1:{port}/api"
    if port and await _existing_api(url):
        database = f" (database {db_path})" if serving_url(db_path) == url else ""
        logger.info(
            "PREFECT_API_URL is not set; using the API already running at %s%s; "
            "set PREFECT_API_URL to use another API",
            url,
            database,
        )
        return url
    from trio_worker._server import ApiSecurity, serve_api

    serve = functools.partial(
        serve_api,
        port=port,
        db_path=db_path,
        security=ApiSecurity.from_settings(settings),
        max_body_bytes=settings.api_max_body_bytes,
    )
    claim = claim_database(db_path)
    try:
        api_url: str = await nursery.start(serve)
    except OSError as exc:
        claim.release()
        raise ConfigurationError(
            f"cannot serve the embedded API on port {port}: {exc.strerror}; "
            "set PREFECT_API_URL to the API to use, or TRIO_WORKER_API_PORT to a free port"
        ) from None
    claim.publish(api_url)
    nursery.start_soon(_hold_claim, claim)
    logger.info(
        "PREFECT_API_URL is not set; serving the embedded API at %s (database %s); "
        "set PREFECT_API_URL to use another API",
        api_url,
        db_path,
    )
    return api_url


async def _hold_claim(claim: DatabaseClaim) -> None:
    """Keep the database claimed while the command's nursery (and its API) lives."""
    try:
        await trio.sleep_forever()
    finally:
        claim.release()


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
    run_async(_serve, options, _with_warm_start_flags(get_settings(), warm_start, preload))


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
