"""The background task of the task-worker fleet benchmark: it records its own execution.

``record(markers, token)`` appends the pid that ran it to ``markers/token``,
so exactly-once is read from the disk: a file with two lines is a run executed
twice, a token without a file a run never executed.

- ``trio_record`` is it as a trio-worker task (``trio-worker task-worker serve
  _fleet_tasks:trio_record``);
- ``python _fleet_tasks.py LIMIT`` serves it with Prefect's own task worker;
  the benchmark imports :func:`prefect_record` only to learn Prefect's task
  key for it (submitting goes through the same code for both workers).
"""

# One small append per run is the task under test; not worth a thread.
# ruff: noqa: ASYNC230

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from trio_worker._taskworker._tasks import Task

TRIO_KEY = "fleet-record"


async def record(markers: str, token: str) -> None:
    """Append this process's pid to ``markers/token``: one line per execution."""
    with open(Path(markers) / token, "a", encoding="ascii") as out:
        out.write(f"{os.getpid()}\n")


trio_record: Task[..., Any] = Task(record, key=TRIO_KEY, name="fleet-record")


def prefect_record() -> Any:
    """The same function as a Prefect task (imports prefect: only when measuring it)."""
    from prefect import task

    return task(record, name="fleet-record")


if __name__ == "__main__":
    from prefect.task_worker import serve

    serve(prefect_record(), limit=int(sys.argv[1]))
