"""Background tasks: ``@task``, the ``TaskWorker`` daemon and ``serve()``.

The task store, state reports, leases and the status server.
"""
