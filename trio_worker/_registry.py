"""Worker types, found through the ``trio_worker.workers`` entry-point group.

A package adds an infrastructure type by subclassing ``BaseWorker`` and
declaring, in its ``pyproject.toml``::

    [project.entry-points."trio_worker.workers"]
    my-type = "my_package.worker:MyWorker"

``process`` is registered the same way by trio-worker itself, with a built-in
fallback so a source checkout works before it is installed.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Final

from trio_worker._exceptions import WorkerTypeNotFoundError
from trio_worker._worker import BaseWorker

__all__ = ["ENTRY_POINT_GROUP", "get_worker_class", "installed_worker_types"]

ENTRY_POINT_GROUP: Final = "trio_worker.workers"


def installed_worker_types() -> list[str]:
    """Names of every worker type that can be used, sorted."""
    names = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    names.add("process")
    return sorted(names)


def get_worker_class(type_name: str) -> type[BaseWorker]:
    """Load the worker class registered as ``type_name``.

    Raises:
        WorkerTypeNotFoundError: no such type is installed; the message lists those that are.
    """
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=type_name):
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, BaseWorker)):
            raise WorkerTypeNotFoundError(
                f"entry point {ep.value!r} for worker type {type_name!r} is not a BaseWorker"
            )
        return cls
    if type_name == "process":
        from trio_worker._process import ProcessWorker

        return ProcessWorker
    raise WorkerTypeNotFoundError(
        f"no worker type {type_name!r} is installed; installed types: "
        + ", ".join(installed_worker_types())
    )
