"""Serve the tasks in ``tasks.py``: ``python serve.py`` (Ctrl-C to stop).

The same as ``trio-worker task-worker serve tasks:add tasks:slugify``, which
also drains on the first SIGINT/SIGTERM. Needs PREFECT_API_URL.
"""

from __future__ import annotations

import functools
import logging
import sys

import tasks
import trio

from trio_worker import serve

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    trio.run(functools.partial(serve, tasks.add, tasks.slugify, limit=limit))
