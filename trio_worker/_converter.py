"""The one cattrs converter between API JSON and the models in ``_models.py``.

Built in one place by :func:`make_converter` (never patched from elsewhere) and
shared as :data:`CONVERTER`. It reads what a Prefect 3 server sends: ISO
datetimes with ``Z`` or an offset (or a space instead of ``T``), UUID strings,
enum values; extra fields are ignored because servers add fields; missing
optional fields take their defaults. It writes what the server accepts:
ISO datetimes with an offset and UUIDs as strings.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Final, TypeVar

import cattrs

from trio_worker._exceptions import ModelError

__all__ = ["CONVERTER", "configure_converter", "make_converter", "structure", "unstructure"]

T = TypeVar("T")


def _structure_datetime(value: Any, _: type) -> dt.datetime:
    if isinstance(value, dt.datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO-8601 datetime") from None
    else:
        raise ValueError(f"{value!r} is not an ISO-8601 datetime")
    # The API speaks UTC; a naive timestamp from an old client means UTC.
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _structure_uuid(value: Any, _: type) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(value)
    except (TypeError, ValueError, AttributeError):
        raise ValueError(f"{value!r} is not a UUID") from None


def _unstructure_datetime(value: dt.datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.isoformat()


def _describe(exc: BaseException, type_: Any) -> str:
    """Say what was wrong with one value, naming the value when we know it."""
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, ValueError | TypeError) and str(exc):
        return str(exc)
    name = getattr(type_, "__name__", str(type_))
    return f"invalid value, expected {name}"


def configure_converter(converter: cattrs.Converter) -> None:
    """Install the datetime and UUID hooks the API's JSON needs."""
    converter.register_structure_hook(dt.datetime, _structure_datetime)
    converter.register_structure_hook(uuid.UUID, _structure_uuid)
    converter.register_unstructure_hook(dt.datetime, _unstructure_datetime)
    converter.register_unstructure_hook(uuid.UUID, str)


def make_converter() -> cattrs.Converter:
    """Build a converter configured for the API's JSON."""
    converter = cattrs.Converter(forbid_extra_keys=False, detailed_validation=True)
    configure_converter(converter)
    return converter


CONVERTER: Final = make_converter()


def structure(data: Any, cls: type[T]) -> T:
    """Read JSON ``data`` into ``cls``.

    Raises:
        ModelError: when a value does not fit; the message names each field
            path and the value found there.
    """
    try:
        return CONVERTER.structure(data, cls)
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as exc:
        if isinstance(exc, cattrs.BaseValidationError):
            problems = "; ".join(cattrs.transform_error(exc, path="$", format_exception=_describe))
        else:
            problems = str(exc)
        name = getattr(cls, "__name__", str(cls))
        raise ModelError(f"API JSON does not fit {name}: {problems}") from exc


def unstructure(value: Any) -> Any:
    """Turn a model (or a container of models) into JSON-ready values."""
    return CONVERTER.unstructure(value)
