"""The converters between JSON and attrs classes: strict for the API, lax for job variables.

One story, two policies, both built here by functions (never patched from
elsewhere):

- :data:`CONVERTER` (:func:`make_converter`), **strict**, for the API's JSON and
  the models in ``_models.py``. It reads what a Prefect 3 server sends: ISO
  datetimes with ``Z`` or an offset (or a space instead of ``T``), UUID strings,
  enum values; extra fields are ignored because servers add fields; missing
  optional fields take their defaults. It writes what the server accepts: ISO
  datetimes with an offset and UUIDs as strings. A wrong shape is an error.
- :func:`._lax_converter.make_lax_converter`, **lax**, for rendered job templates: it converts
  what pydantic's lax mode converts (``"5"`` to 5, ``"yes"`` to True, a value to
  its ``Enum`` member), so a template that works with Prefect's worker works
  here (built in :mod:`._lax_converter`, on the helpers here). Its errors are
  :class:`~._lax_converter.LaxValueError`, carrying the path and the
  expected type, which ``_job_schema.py`` words for the person who set the job
  variable. It knows str, bool, int, float, None, ``pathlib.Path``, ``Any``,
  ``Literal``, ``Enum``, ``dict[str, X]``, ``list[X]``, unions and nested attrs
  classes.

The embedded API's request validation (``_server/_validation.py``) is a third
walker on purpose; its docstring says why.
"""

from __future__ import annotations

import datetime as dt
import typing
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

import attrs
import cattrs
import cattrs.cols
import cattrs.gen

from trio_worker._core._exceptions import ModelError
from trio_worker._core._time import format_datetime, parse_datetime

__all__ = [
    "CONVERTER",
    "configure_converter",
    "is_dict_type",
    "is_list_type",
    "make_converter",
    "short",
    "structure",
    "type_name",
    "unstructure",
]

T = TypeVar("T")


def _structure_datetime(value: Any, _: type) -> dt.datetime:
    if value is None:  # a required time; optional ones never reach this hook
        raise ValueError("None is not an ISO-8601 datetime")
    parsed: dt.datetime = parse_datetime(value)
    return parsed


def _structure_uuid(value: Any, _: type) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(value)
    except (TypeError, ValueError, AttributeError):
        raise ValueError(f"{value!r} is not a UUID") from None


def _structure_bool(value: Any, _: type) -> bool:
    # cattrs' default is bool(value), which reads the string "false" as True.
    if isinstance(value, bool):
        return value
    raise ValueError(f"{short(value)} is not a boolean")


def _unstructure_datetime(value: dt.datetime) -> str:
    return format_datetime(value)


def short(value: Any) -> str:
    """``repr(value)``, cut short: messages name the value, not a whole document."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def type_name(type_: Any) -> str:
    """``list[Log]`` rather than ``list`` or ``list[trio_worker._core._models.Log]``."""
    origin = typing.get_origin(type_)
    if origin is None:
        return str(getattr(type_, "__name__", type_))
    args = ", ".join(type_name(arg) for arg in typing.get_args(type_))
    return f"{type_name(origin)}[{args}]"


def _describe(exc: BaseException, type_: Any) -> str:
    """Say what was wrong with one value, naming the value when we know it."""
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, ValueError | TypeError) and str(exc):
        return str(exc)
    return f"invalid value, expected {type_name(type_)}"


_Hook = Callable[[Any, Any], Any]


def _guard(
    inner: _Hook, accepts: Callable[[Any], bool], expected: str
) -> Callable[[Any, Any], Any]:
    """Refuse a value of the wrong JSON shape before cattrs iterates over it.

    Without this a string where a list belongs becomes a list of characters,
    and a list where an object belongs fails with an error about indices.
    """

    def structure_checked(value: Any, type_: Any) -> Any:
        if not accepts(value):
            raise ValueError(f"{short(value)} is not {expected}")
        return inner(value, type_)

    return structure_checked


def _is_object(value: Any) -> bool:
    return isinstance(value, Mapping)


def _is_array(value: Any) -> bool:
    return isinstance(value, list | tuple)


def is_list_type(type_: Any) -> bool:
    return typing.get_origin(type_) is list


def is_dict_type(type_: Any) -> bool:
    return typing.get_origin(type_) is dict


def configure_converter(converter: cattrs.Converter) -> None:
    """Install the hooks the API's JSON needs: datetimes, UUIDs, strict shapes."""
    converter.register_structure_hook(dt.datetime, _structure_datetime)
    converter.register_structure_hook(uuid.UUID, _structure_uuid)
    converter.register_structure_hook(bool, _structure_bool)
    converter.register_structure_hook_factory(
        attrs.has,
        lambda cls: _guard(
            cattrs.gen.make_dict_structure_fn(cls, converter), _is_object, "a JSON object"
        ),
    )
    converter.register_structure_hook_factory(
        is_list_type,
        lambda type_: _guard(
            cattrs.cols.list_structure_factory(type_, converter), _is_array, "a JSON array"
        ),
    )
    converter.register_structure_hook_factory(
        is_dict_type,
        lambda type_: _guard(
            cattrs.cols.mapping_structure_factory(type_, converter), _is_object, "a JSON object"
        ),
    )
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
            problems = f"{_describe(exc, cls)} @ $"
        raise ModelError(f"API JSON does not fit {type_name(cls)}: {problems}") from exc


def unstructure(value: Any) -> Any:
    """Turn a model (or a container of models) into JSON-ready values."""
    return CONVERTER.unstructure(value)
