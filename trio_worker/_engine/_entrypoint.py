"""Entrypoints: finding the function a deployment names, and telling a Prefect flow.

Kept apart from the engine's orchestration (``_run.py``) because it is what
runs the user's import: a file path or a module, a dotted attribute, and the
one question the engine asks of the result (is it a Prefect ``@flow``, to hand
over to Prefect's own engine) without importing Prefect itself.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = [
    "EntrypointError",
    "is_prefect_flow",
    "load_entrypoint",
    "prefect_available",
    "prefect_engine_argv",
]


class EntrypointError(Exception):
    """The entrypoint names no file, module or callable; ``str()`` says which part is missing.

    Raised by :func:`load_entrypoint`; the engine turns it into the run's FAILED
    message, so it never leaves the engine process.
    """


def load_entrypoint(entrypoint: str, *, search_dirs: Sequence[Path]) -> Any:
    """Import ``entrypoint`` and return the object it names.

    Args:
        entrypoint: ``path/to/file.py:func`` (relative paths are tried in each
            of ``search_dirs`` in order) or ``package.module:func``; ``func``
            may be dotted (``Class.method``).
        search_dirs: where a relative file path is looked for.

    Returns:
        The named callable.

    Raises:
        EntrypointError: the file, module or attribute does not exist, or is not callable.
        Exception: whatever the module's own code raises while it is imported.
    """
    target, sep, attr_path = entrypoint.rpartition(":")
    if not sep or not target or not attr_path:
        raise EntrypointError("expected 'path/to/file.py:function' or 'package.module:function'")
    if target.endswith(".py") or "/" in target or os.sep in target:
        module = _import_file(target, search_dirs)
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            raise EntrypointError(f"no module named {exc.name or target!r}") from exc
    obj: Any = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise EntrypointError(f"{target!r} has no attribute {attr_path!r}") from None
    if not callable(obj):
        raise EntrypointError(f"{attr_path!r} in {target!r} is not callable")
    return obj


def _import_file(target: str, search_dirs: Sequence[Path]) -> ModuleType:
    relative = Path(target)
    candidates = [relative] if relative.is_absolute() else [d / relative for d in search_dirs]
    path = next((c.resolve() for c in candidates if c.is_file()), None)
    if path is None:
        where = ", ".join(str(d) for d in search_dirs) if not relative.is_absolute() else "/"
        raise EntrypointError(f"file {target!r} not found (looked in {where})")
    # A flow file's stem may shadow a loaded module ("trio.py"); then use a private name.
    name = (
        path.stem
        if path.stem.isidentifier() and path.stem not in sys.modules
        else "__trio_worker_entrypoint__"
    )
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise EntrypointError(f"{target!r} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))  # so the flow file can import its siblings
    sys.modules[name] = module  # dataclasses and pickle look their module up here
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def is_prefect_flow(obj: object) -> bool:
    """Tell whether ``obj`` is a Prefect ``@flow`` (an object of Prefect's with the wrapped ``fn``).

    Checked by the type's module rather than ``isinstance`` so that the engine
    never imports Prefect itself.
    """
    return type(obj).__module__.partition(".")[0] == "prefect" and callable(
        getattr(obj, "fn", None)
    )


def prefect_available() -> bool:
    """Tell whether ``prefect`` can be imported by this interpreter."""
    return importlib.util.find_spec("prefect") is not None


def prefect_engine_argv() -> list[str]:
    """Return the command that replaces this process for a Prefect flow."""
    return [sys.executable, "-m", "prefect.engine"]
