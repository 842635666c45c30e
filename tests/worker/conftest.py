"""Fixtures for worker tests: an open client and a running ProcessWorker factory."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_worker._client._client import PrefectClient
from trio_worker._core._settings import Settings
from trio_worker._process._worker import ProcessWorker


@pytest.fixture
async def client(api_url: str) -> AsyncIterator[PrefectClient]:
    async with PrefectClient(api_url, backoff_seconds=0.05) as client:
        yield client


@pytest.fixture
def pool_name() -> str:
    return f"pool-{uuid.uuid4().hex[:8]}"


def fast_settings(api_url: str, state_dir: Path) -> Settings:
    """Settings that poll often, so tests don't wait on intervals.

    Warm start follows ``TRIO_WORKER_WARM_START`` (on unless set false), so
    ``nox -s tests_cold`` runs the same tests through the cold path.
    """
    return Settings(
        warm_start=Settings.from_env().warm_start,
        api_url=api_url,
        query_seconds=0.2,
        heartbeat_seconds=1.0,
        prefetch_seconds=0,
        state_dir=str(state_dir),
        webserver_port=0,
    )


WorkerFactory = Callable[..., Any]


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def running_worker(api_url: str, pool_name: str, state_dir: Path) -> WorkerFactory:
    """``async with running_worker(**kwargs) as worker``: a started ProcessWorker."""

    @asynccontextmanager
    async def start(**kwargs: Any) -> AsyncIterator[ProcessWorker]:
        kwargs.setdefault("cancel_grace_seconds", 2.0)
        kwargs.setdefault("client_backoff_seconds", 0.05)
        settings = kwargs.pop("settings", None) or fast_settings(api_url, state_dir)
        with_healthcheck = kwargs.pop("with_healthcheck", False)
        worker = ProcessWorker(kwargs.pop("pool", pool_name), settings=settings, **kwargs)
        async with worker, trio.open_nursery() as nursery:
            await nursery.start(_start, worker, with_healthcheck)
            yield worker
            nursery.cancel_scope.cancel()

    return start


async def _start(
    worker: ProcessWorker, with_healthcheck: bool, *, task_status: trio.TaskStatus[None]
) -> None:
    started = False

    def printer(line: str) -> None:
        nonlocal started
        if not started:
            started = True
            task_status.started()

    await worker.start(printer=printer, with_healthcheck=with_healthcheck)
