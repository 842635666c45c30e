"""Two background tasks: one sync, one async.

Both sides import this module: the task worker to run the functions, the
submitter to compute the same task keys (``tasks.add``, ``tasks.slugify``).
"""

from __future__ import annotations

import re

import trio

from trio_worker import task


@task
def add(x: int, y: int) -> int:
    """A sync task: runs in a worker thread, under the worker's limit."""
    return x + y


@task
async def slugify(title: str, *, max_length: int = 40) -> str:
    """An async task: runs in the worker's nursery."""
    await trio.lowlevel.checkpoint()
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:max_length]
