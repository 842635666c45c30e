"""What ``trio-worker start`` runs once its flags are read: the command's nursery.

The nursery holds the signal watcher, the embedded API (only when no
``PREFECT_API_URL`` is configured) and the worker, which owns everything it
starts. The first SIGINT/SIGTERM drains the worker; the second cancels at once.
The embedded API and the server command are imported only when used, so a
worker that talks to another API starts without loading them.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Literal

import attrs
import httpx
import trio

from trio_worker._cli import did_you_mean
from trio_worker._cli._database_claim import DatabaseClaim, claim_database, serving_url
from trio_worker._cli._registry import resolve_worker_class
from trio_worker._client._client import PrefectClient
from trio_worker._core._exceptions import ConfigurationError, NotFoundError
from trio_worker._core._settings import Settings
from trio_worker._core._signals import watch_shutdown_signals
from trio_worker._worker._base import BaseWorker

__all__ = ["StartOptions", "serve_pool"]

logger = logging.getLogger("trio_worker.cli")


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


async def serve_pool(options: StartOptions, settings: Settings) -> None:
    """Serve ``options.pool`` until the worker stops (a drain, ``--run-once``, a second signal)."""
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
        worker_cls = await resolve_worker_class(type_name, options.install_policy)
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
