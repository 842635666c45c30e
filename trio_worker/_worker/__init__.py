"""The worker daemon: ``BaseWorker`` and the parts it composes.

The loops, the submission pipeline, cancellation, the health server, metrics,
the events a worker emits and the start-rate limit. Infrastructure backends
(``_process`` and third-party ones) stand on this package.
"""
