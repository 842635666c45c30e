"""Helpers for testing against trio-worker: a real embedded API on a free loopback port."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from trio_worker._server import ApiSecurity, LivenessRules, serve_api

__all__ = ["LivenessRules", "open_embedded_api"]


@asynccontextmanager
async def open_embedded_api(
    db_path: str | Path | None = None,
    *,
    auth_string: str | None = None,
    liveness: LivenessRules | None = None,
) -> AsyncIterator[str]:
    """Run the embedded API on 127.0.0.1, on a free port, for the duration of the block.

    Yields the API URL to use as ``PREFECT_API_URL``, e.g.
    ``http://127.0.0.1:54321/api``. With ``db_path=None`` the data lives in a
    temporary directory removed afterwards; pass a path to keep it (or to
    reopen a database, e.g. to test a restart). With ``auth_string``
    (``user:password``) the API requires it, as with
    ``PREFECT_SERVER_API_AUTH_STRING``; clients send it as ``PREFECT_API_AUTH_STRING``.
    ``liveness`` sets the thresholds of the rules for runs whose owner died
    (small ones make such tests take seconds); by default they come from the
    environment.
    """
    security = ApiSecurity(auth_string=auth_string)
    with tempfile.TemporaryDirectory(prefix="trio-worker-api-") as tmp:
        path = Path(db_path) if db_path is not None else Path(tmp) / "api.db"
        async with trio.open_nursery() as nursery:
            url: str = await nursery.start(_serve, path, security, liveness)
            try:
                yield url
            finally:
                nursery.cancel_scope.cancel()


async def _serve(
    path: Path,
    security: ApiSecurity,
    liveness: LivenessRules | None,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    await serve_api(
        host="127.0.0.1",
        port=0,
        db_path=path,
        security=security,
        task_status=task_status,
        liveness=liveness,
    )
