"""``serve(*tasks)``: the one-call way to run a task worker from a script.

Kept apart from :class:`~trio_worker.TaskWorker` because it is the script's
entry point, with the script's concern: a Ctrl-C that leaves ``trio.run`` as
a plain :class:`KeyboardInterrupt` rather than a group of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from trio_worker._core._settings import Settings
from trio_worker._taskworker._tasks import Task
from trio_worker._taskworker._worker import DEFAULT_LIMIT, TaskWorker

__all__ = ["serve"]


async def serve(
    *tasks: Task[..., Any] | Callable[..., Any],
    limit: int | None = DEFAULT_LIMIT,
    status_server_port: int | None = None,
    settings: Settings | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``tasks`` until cancelled: ``trio.run(serve, add, mul)``.

    The library installs no signal handlers: Ctrl-C cancels, runs in flight
    are recorded CRASHED, and a plain :class:`KeyboardInterrupt` leaves
    ``trio.run`` (catch it for a quiet exit, as ``examples/task_worker/serve.py``
    does). The ``trio-worker task-worker serve`` command adds a drain on the
    first SIGINT/SIGTERM.
    """
    worker = TaskWorker(
        *tasks, limit=limit, settings=settings, status_server_port=status_server_port
    )
    try:
        await worker.start(task_status=task_status)
    except BaseExceptionGroup as group:
        # Ctrl-C reaches us inside nurseries; a script catching KeyboardInterrupt
        # around trio.run must see one, not a group of groups of it.
        matched, rest = group.split(KeyboardInterrupt)
        if matched is not None and rest is None:
            raise KeyboardInterrupt from None
        raise
