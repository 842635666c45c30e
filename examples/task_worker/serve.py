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

from trio_worker import TrioWorkerError, serve

if __name__ == "__main__":
    # The worker's lines at INFO (one per finished run); other libraries' at WARNING.
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("trio_worker").setLevel(logging.INFO)
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    try:
        trio.run(functools.partial(serve, tasks.add, tasks.slugify, limit=limit))
    except KeyboardInterrupt:  # Ctrl-C: runs in flight were recorded CRASHED
        print("Stopped.", file=sys.stderr)
        sys.exit(130)
    except TrioWorkerError as exc:  # no API URL, an API that does not answer, ...
        sys.exit(f"Error: {exc}")
