"""Prefect's half of the task-worker benchmark: the same no-op task, as a Prefect task.

``python _prefect_noop.py LIMIT`` serves it with Prefect's own task worker; the
benchmark imports it only to learn Prefect's ``task_key`` for it.
"""

from __future__ import annotations

import sys

from prefect import task


@task(name="bench-noop")
async def noop() -> None:
    """Does nothing, so what is measured is the machinery."""


if __name__ == "__main__":
    from prefect.task_worker import serve

    serve(noop, limit=int(sys.argv[1]))
