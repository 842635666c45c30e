"""``python -m trio_worker.engine``: run one flow run inside the process the worker started.

The worker starts this module with ``PREFECT__FLOW_RUN_ID`` and ``PREFECT_API_URL``
in the environment; the logic lives in :mod:`trio_worker._engine._run` so that this
file stays importable without side effects.
"""

if __name__ == "__main__":  # a flow-run process: start up as light as possible
    from trio_worker._core._httpx_cli import skip_httpx_cli

    skip_httpx_cli()

from trio_worker._engine._run import main as main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
