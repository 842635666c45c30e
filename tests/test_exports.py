"""The public surface: one sorted ``__all__``, public ``__module__`` names, ``models``."""

from __future__ import annotations

import importlib
import pickle
import types
import typing

import attrs

import trio_worker
import trio_worker._core._models
import trio_worker.models

INCLUDED_PRIVATE_MEMBERS = ["__version__"]


def test_all_imports_are_exported() -> None:
    for name in trio_worker.__all__:  # lazily loaded names resolve, and stay
        getattr(trio_worker, name)
    public = sorted(
        name
        for name, value in vars(trio_worker).items()
        if (not name.startswith("_") or name in INCLUDED_PRIVATE_MEMBERS)
        and not isinstance(value, types.ModuleType)  # submodules, e.g. trio_worker.models
    )
    assert trio_worker.__all__ == public
    assert trio_worker.__all__ == sorted(trio_worker.__all__)


def test_exports_report_the_public_module() -> None:
    for name in trio_worker.__all__:
        value = getattr(trio_worker, name)
        if name in INCLUDED_PRIVATE_MEMBERS:
            continue
        if name in trio_worker._STRUCTURED:
            # Structured from JSON: their string annotations resolve in their own module.
            assert value.__module__.startswith("trio_worker._"), name
            continue
        assert value.__module__ == "trio_worker", name
        assert value.__qualname__ == name
        if isinstance(value, type):
            assert repr(value) == f"<class 'trio_worker.{name}'>"


def test_version_is_a_string() -> None:
    assert isinstance(trio_worker.__version__, str)
    assert trio_worker.__version__


def test_renamed_classes_still_resolve_their_annotations() -> None:
    # __module__ is where typing (and so cattrs) looks up string annotations.
    for name in trio_worker.__all__:
        value = getattr(trio_worker, name)
        if attrs.has(value):
            attrs.resolve_types(value)
            assert typing.get_type_hints(value)


def test_renamed_exceptions_pickle() -> None:
    err = trio_worker.NotFoundError("gone", method="GET", url="http://x/api/y", status_code=404)
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is trio_worker.NotFoundError
    assert (str(copy), copy.status_code, copy.url) == ("gone", 404, "http://x/api/y")


def test_models_module_reexports_every_model() -> None:
    assert trio_worker.models.__all__ == trio_worker._core._models.__all__
    for name in trio_worker._core._models.__all__:
        assert getattr(trio_worker.models, name) is getattr(trio_worker._core._models, name)
    public = sorted(
        name
        for name in vars(trio_worker.models)
        if not name.startswith("_")
        and not isinstance(getattr(trio_worker.models, name), types.ModuleType)
    )
    assert sorted(trio_worker.models.__all__) == public


def test_models_are_importable_by_their_public_path() -> None:
    module = importlib.import_module("trio_worker.models")
    assert module.FlowRun is trio_worker._core._models.FlowRun
    assert module.StateType.PENDING == "PENDING"


def test_the_worker_command_line_does_not_load_the_server_or_the_task_worker() -> None:
    # Start-up time is a feature: `trio-worker start` imports what a worker uses.
    import subprocess
    import sys

    code = (
        "import sys, trio_worker._cli, trio_worker._cli._start, trio_worker._process._worker;"
        "print(sorted(m for m in sys.modules if m.startswith(('trio_worker._server',"
        " 'trio_worker._taskworker._worker', 'hypercorn', 'rich'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"
