"""Where background tasks' parameters and results live, and their file format.

A submitter (``task.delay()``) and a task worker are usually different
processes, often on different hosts, and the API carries only an id
(``task_parameters_id``). Both must therefore agree on a store. The default is
Prefect's: a directory, ``$PREFECT_RESULTS_LOCAL_STORAGE_PATH`` or
``$PREFECT_HOME/storage`` (``~/.prefect/storage``), with parameters at
``parameters/<id>``. ``TRIO_WORKER_TASK_STORAGE`` overrides both, so hosts can
point at one shared path without changing where Prefect itself keeps results.

Files are Prefect "result records" with the JSON serializer, so a Prefect
process configured with ``result_serializer="json"`` reads ours and we read
its. Pickled records are refused with a message saying so: unpickling what
another process wrote runs its code.

Any object with ``write(key, data)`` and ``read(key)`` is a store
(:class:`TaskStore`); the methods are synchronous and called through
``trio.to_thread.run_sync``, so a store may wrap a blocking S3 or NFS client.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

import attrs

from trio_worker._core._settings import Settings
from trio_worker._version import __version__

__all__ = [
    "JSON_SERIALIZER",
    "LocalTaskStore",
    "TaskStore",
    "check_json",
    "decode_record",
    "default_storage_path",
    "default_task_store",
    "encode_record",
    "parameters_key",
    "result_key",
]

#: ``metadata.serializer`` of a record Prefect's JSON serializer would write.
JSON_SERIALIZER: Final[Mapping[str, Any]] = {
    "type": "json",
    "jsonlib": "json",
    "object_encoder": "prefect.serializers.prefect_json_object_encoder",
    "object_decoder": "prefect.serializers.prefect_json_object_decoder",
    "dumps_kwargs": {},
    "loads_kwargs": {},
}


@runtime_checkable
class TaskStore(Protocol):
    """Byte storage for task parameters and results, addressed by ``a/b`` keys.

    Implementations must make a written key readable from every process that
    serves or submits the same tasks, and should write atomically (a reader
    never sees half a record).
    """

    def write(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing what was there."""

    def read(self, key: str) -> bytes:
        """Return what is stored under ``key``; raise ``FileNotFoundError`` when nothing is."""


def _expand(path: str | os.PathLike[str]) -> Path:
    return Path(path).expanduser()


@attrs.frozen
class LocalTaskStore:
    """A directory used as a :class:`TaskStore`; ``key`` ``a/b`` is file ``<base>/a/b``.

    Writes go to a temporary file that is then renamed, so a worker reading
    ``parameters/<id>`` the instant the run is delivered sees all or nothing.
    """

    base: Path = attrs.field(converter=_expand)

    def path(self, key: str) -> Path:
        """Return the file for ``key``; refuses keys that would leave ``base``."""
        parts = key.split("/")
        if not key or any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"invalid task store key {key!r}")
        return self.base.joinpath(*parts)

    def write(self, key: str, data: bytes) -> None:
        """Write ``data`` to ``key`` atomically (temporary file, then rename)."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def read(self, key: str) -> bytes:
        """Read ``key``; ``FileNotFoundError`` names the path when it is missing."""
        return self.path(key).read_bytes()


def default_storage_path(settings: Settings | None = None) -> Path:
    """Resolve the default store directory the way Prefect does, plus our override.

    ``TRIO_WORKER_TASK_STORAGE``, else ``PREFECT_RESULTS_LOCAL_STORAGE_PATH`` (or its
    alias ``PREFECT_LOCAL_STORAGE_PATH``), else ``$PREFECT_HOME/storage``, else
    ``~/.prefect/storage``; all read by :class:`Settings` (from the environment
    when ``settings`` is not given: submitters, plain scripts calling
    ``.delay()``, have no worker to hand them settings).
    """
    settings = Settings.from_env() if settings is None else settings
    for chosen in (settings.task_storage_path, settings.results_storage_path):
        if chosen:
            return Path(chosen).expanduser()
    return Path(settings.prefect_home or "~/.prefect").expanduser() / "storage"


def default_task_store(settings: Settings | None = None) -> LocalTaskStore:
    """Return a :class:`LocalTaskStore` at :func:`default_storage_path`."""
    return LocalTaskStore(default_storage_path(settings))


def parameters_key(parameters_id: uuid.UUID) -> str:
    """Return the key of a run's parameters, Prefect's ``parameters/<id>``."""
    return f"parameters/{parameters_id}"


def result_key(task_run_id: uuid.UUID) -> str:
    """Return the key of a run's result (or error) record."""
    return f"results/{task_run_id}"


def check_json(value: Any, path: str) -> None:
    """Raise ``TypeError`` naming ``path`` unless ``value`` survives a JSON round trip.

    Stricter than ``json.dumps``, which quietly turns ``{1: "a"}`` into
    ``{"1": "a"}`` and writes ``NaN``: the task would get a different value
    from the one submitted. Tuples are accepted and arrive as lists.
    """
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{path} is {value!r}, which JSON cannot represent")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_json(item, f"{path}[{index}]")
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{path} has key {k!r}; JSON object keys must be strings")
            check_json(item, f"{path}[{k!r}]")
        return
    raise TypeError(
        f"{path} is a {type(value).__module__}.{type(value).__qualname__}, which is not "
        "JSON (task parameters and results are stored as JSON: pass str, int, float, "
        "bool, None, lists or dicts of those)"
    )


def encode_record(key: str, value: Any) -> bytes:
    """Serialize ``value`` as a Prefect result record with the JSON serializer."""
    record = {
        "metadata": {
            "storage_key": key,
            "expiration": None,
            "serializer": dict(JSON_SERIALIZER),
            # Prefect's reader requires a string here (3.9.1 refuses None and
            # deletes the run); it only compares and shows it.
            "prefect_version": f"trio-worker {__version__}",
            "storage_block_id": None,
        },
        "result": json.dumps(value, allow_nan=False),
    }
    return json.dumps(record).encode()


def decode_record(data: bytes) -> Any:
    """Return the value inside a result record.

    Raises:
        ValueError: the bytes are not a record, or its serializer is not JSON
            (Prefect's default ``pickle`` included, said in so many words).
    """
    try:
        record = json.loads(data)
        serializer = record["metadata"]["serializer"]["type"]
        payload = record["result"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not a result record ({type(exc).__name__}: {exc})") from None
    if serializer != "json":
        raise ValueError(
            f"the record was written with the {serializer!r} serializer; trio-worker reads "
            "only JSON records (submit with result_serializer='json' from Prefect)"
        )
    try:
        return json.loads(payload)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"the record's result is not JSON: {exc}") from None
