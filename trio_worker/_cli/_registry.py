"""Worker types, found through the ``trio_worker.workers`` entry-point group.

A package adds an infrastructure type by subclassing ``BaseWorker`` and
declaring, in its ``pyproject.toml``::

    [project.entry-points."trio_worker.workers"]
    my-type = "my_package.worker:MyWorker"

``process`` is registered the same way by trio-worker itself, with a built-in
fallback so a source checkout works before it is installed.
"""

from __future__ import annotations

import re
from importlib.metadata import entry_points
from typing import Any, Final

from trio_worker._core._exceptions import ConfigurationError, WorkerTypeNotFoundError
from trio_worker._worker._base import BaseWorker

__all__ = [
    "ENTRY_POINT_GROUP",
    "get_worker_class",
    "installed_worker_types",
    "worker_type_package",
]

ENTRY_POINT_GROUP: Final = "trio_worker.workers"
PACKAGE_PREFIX: Final = "trio-worker-"
MAX_TYPE_CHARS: Final = 100
#: What may follow ``trio-worker-`` in a package name (PEP 508's name rule).
_TYPE_NAME: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")


def worker_type_package(type_name: str) -> str:
    """Return the package that provides worker type ``type_name``: ``trio-worker-<type>``.

    A pool's type comes from the API, so anyone who may create a pool chooses
    it; it reaches pip only when it is a plain name. Anything else (``x @
    file:///...``, ``x; sys_platform...``, ``--index-url``, a path, spaces)
    would make pip install from somewhere else, so it is refused.

    Raises:
        ConfigurationError: ``type_name`` is not a plain package-name fragment.
    """
    if len(type_name) > MAX_TYPE_CHARS or not _TYPE_NAME.fullmatch(type_name):
        raise ConfigurationError(
            f"worker type {type_name[:MAX_TYPE_CHARS]!r} is not a package name; refusing to "
            f"install {PACKAGE_PREFIX}<type> (a type is letters, digits, '.', '_' and '-', "
            "starting and ending with a letter or digit)"
        )
    return PACKAGE_PREFIX + type_name


def installed_worker_types() -> list[str]:
    """Names of every worker type that can be used, sorted."""
    names = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    names.add("process")
    return sorted(names)


def get_worker_class(type_name: str) -> type[BaseWorker[Any, Any]]:
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
        from trio_worker._process._worker import ProcessWorker

        return ProcessWorker
    raise WorkerTypeNotFoundError(
        f"no worker type {type_name!r} is installed; installed types: "
        + ", ".join(installed_worker_types())
    )
