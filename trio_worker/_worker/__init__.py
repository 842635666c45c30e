"""The worker daemon: ``BaseWorker`` and the parts it composes.

``BaseWorker`` (``_base.py``) is the lifecycle; ``WorkerLoops`` (``_loops.py``)
composes the parts that own their state: the run table, the poller, the
submitter, the reporter, the cancellation watcher and the pool sync. No part
imports the worker. Infrastructure backends (``_process`` and third-party
ones) stand on this package through ``RunContext`` (``_context.py``).
"""
