"""Worker types, found through the ``trio_worker.workers`` entry-point group.

A package adds an infrastructure type by subclassing ``BaseWorker`` and
declaring, in its ``pyproject.toml``::

    [project.entry-points."trio_worker.workers"]
    my-type = "my_package.worker:MyWorker"

``process`` is registered the same way by trio-worker itself, with a built-in
fallback so a source checkout works before it is installed. A type that is
not installed may be installed with pip, as ``--install-policy`` allows
(:func:`resolve_worker_class`).
"""

from __future__ import annotations

import logging
import re
import sys
from importlib.metadata import entry_points
from typing import Any, Final

import click
import trio

from trio_worker._core._exceptions import ConfigurationError, WorkerTypeNotFoundError
from trio_worker._worker._base import BaseWorker

__all__ = [
    "ENTRY_POINT_GROUP",
    "get_worker_class",
    "installed_worker_types",
    "resolve_worker_class",
    "worker_type_package",
]

logger = logging.getLogger("trio_worker.cli")

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


async def _install_worker_type(type_name: str) -> None:
    """Install the package that provides worker type ``type_name`` with pip.

    Raises:
        ConfigurationError: the type is not a plain name (checked before pip runs).
        WorkerTypeNotFoundError: pip could not install it.
    """
    package = worker_type_package(type_name)
    logger.info("Installing %s ...", package)
    result = await trio.run_process(
        [sys.executable, "-m", "pip", "install", package],
        check=False,
        capture_stdout=True,
        capture_stderr=True,
    )
    if result.returncode != 0:
        raise WorkerTypeNotFoundError(
            f"could not install {package} for worker type {type_name!r}; "
            f"installed types: {', '.join(installed_worker_types())}"
        )


async def resolve_worker_class(type_name: str, policy: str) -> type[BaseWorker[Any, Any]]:
    """Find the worker type, installing its package as ``--install-policy`` allows.

    ``always`` installs (or upgrades) first; ``if-not-present`` installs a
    missing type; ``prompt`` asks, on a terminal only; ``never`` does not.
    """
    if policy == "always" and type_name != "process":
        await _install_worker_type(type_name)
    try:
        return get_worker_class(type_name)
    except WorkerTypeNotFoundError:
        if policy == "never" or (policy == "prompt" and not sys.stdin.isatty()):
            raise
        if policy == "prompt":
            package = worker_type_package(type_name)  # never ask about a non-name
            question = f"Worker type {type_name!r} is not installed. Install {package}?"
            if not await trio.to_thread.run_sync(click.confirm, question):
                raise
        await _install_worker_type(type_name)
        return get_worker_class(type_name)
