"""Structure request JSON into attrs action models, reporting errors as Prefect does.

Prefect validates request bodies with pydantic and answers 422 with a list of
error entries (``type``, ``loc``, ``msg``, ``input``). Clients and tests look at
those shapes, and the point of 422-on-unknown-field is that a client bug which
would fail against Prefect fails here too. This module walks the annotations
of small attrs classes (the ``*Create``/``*Update`` action models) and collects
every error with the same ``type`` names and messages pydantic uses, instead of
pulling pydantic in.

Only the handful of types the action models use are supported: ``str``,
``int``, ``float``, ``bool``, ``UUID``, ``datetime``, ``StrEnum`` subclasses,
``Any``, ``X | None``, ``list[X]``, ``dict[str, X]`` and nested attrs classes.
Fields left out of a request keep the :data:`UNSET` default, so an update can
tell "not sent" from ``null``.

Why this is not the cattrs converter of ``_core/_converter.py`` (which reads
the API's JSON strictly, and job variables laxly): a request body is judged
by other rules. Every problem is collected, not the first; each becomes a
pydantic entry whose ``type`` and ``msg`` depend on the type *and* the value
(``int_from_float``, ``less_than_equal`` at SQLite's integer bounds,
``union_type``, ``extra_forbidden``); "not sent" must stay distinct from
``null``; and a body is the client's mistake (a 422), never a model error.
cattrs' detailed validation would still need one branch per type to word
these, so the walk is kept here, beside the only code that needs it. The
server imports only ``_core``, so nothing here may come from the worker side;
job variables sent to the server are checked against the pool's JSON schema
(``_schema_check.py``), not by either converter.
"""

from __future__ import annotations

import enum
import types
import typing
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar, Union

import attrs

from trio_worker._core import _time

__all__ = [
    "INT_MAX",
    "INT_MIN",
    "UNSET",
    "RequestValidationError",
    "UnsetType",
    "field_is_set",
    "int_bound_problem",
    "parse_datetime",
    "structure",
]

T = TypeVar("T")


class UnsetType(enum.Enum):
    """The type of :data:`UNSET`: a field the request did not send."""

    UNSET = "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Final = UnsetType.UNSET

Loc = tuple[str | int, ...]

FORBID_EXTRA_KEY: Final = "forbid_extra"
"""Class attribute name: set ``__forbid_extra__ = False`` to ignore unknown keys."""


class RequestValidationError(Exception):
    """The request body does not fit its action model.

    Attributes:
        errors: pydantic-shaped error entries, ready to be the
            ``exception_detail`` of a 422 answer.
    """

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} validation error(s)")
        self.errors = errors


def _err(kind: str, loc: Loc, msg: str, value: Any) -> dict[str, Any]:
    return {"type": kind, "loc": list(loc), "msg": msg, "input": value}


def field_is_set(value: object) -> bool:
    """Tell whether an action model field was present in the request."""
    return value is not UNSET


def parse_datetime(value: str) -> datetime:
    """Parse an ISO-8601 datetime as Prefect accepts it, naive meaning UTC.

    Accepts ``…Z``, ``…+00:00`` and Python's ``str(datetime)`` (space separator).

    Raises:
        ValueError: the string is not a datetime, or one too close to the ends of
            the range of datetimes for the server to compute with.
    """
    parsed = _time.parse_datetime(value)
    try:
        # Two days inside datetime's range, so the server's own arithmetic
        # (offsets, timeouts, comparisons in UTC) never leaves it either.
        utc = parsed.astimezone(UTC)
        if not _EARLIEST <= utc <= _LATEST:
            raise OverflowError
    except OverflowError:
        raise ValueError(f"{value!r} is out of the supported range") from None
    return utc


_EARLIEST: Final = datetime.min.replace(tzinfo=UTC) + timedelta(days=2)
_LATEST: Final = datetime.max.replace(tzinfo=UTC) - timedelta(days=2)

INT_MIN: Final = -(2**63)
INT_MAX: Final = 2**63 - 1
"""The range of an integer the server stores: SQLite's (and PostgreSQL's BIGINT)."""


def int_bound_problem(value: int) -> tuple[str, str] | None:
    """Return pydantic's (type, message) for an integer outside :data:`INT_MIN`..:data:`INT_MAX`."""
    if value > INT_MAX:
        return "less_than_equal", f"Input should be less than or equal to {INT_MAX}"
    if value < INT_MIN:
        return "greater_than_equal", f"Input should be greater than or equal to {INT_MIN}"
    return None


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = typing.get_type_hints(cls)
        _HINTS[cls] = hints
    return hints


def structure(cls: type[T], data: Any, loc: Loc = ("body",)) -> T:
    """Build ``cls`` from JSON ``data`` or raise every problem at once.

    Raises:
        RequestValidationError: listing each missing, unknown or ill-typed field.
    """
    errors: list[dict[str, Any]] = []
    result = _structure_class(cls, data, loc, errors)
    if errors:
        raise RequestValidationError(errors)
    return typing.cast(T, result)


def _structure_class(cls: type, data: Any, loc: Loc, errors: list[dict[str, Any]]) -> Any:
    if not isinstance(data, dict):
        errors.append(
            _err(
                "model_attributes_type",
                loc,
                "Input should be a valid dictionary or object to extract fields from",
                data,
            )
        )
        return None
    hints = _hints(cls)
    fields = attrs.fields(cls)
    known = {f.name for f in fields}
    if getattr(cls, "__forbid_extra__", True):
        for key, value in data.items():
            if key not in known:
                errors.append(
                    _err("extra_forbidden", (*loc, key), "Extra inputs are not permitted", value)
                )
    kwargs: dict[str, Any] = {}
    before = len(errors)
    for field in fields:
        if field.name in data:
            field_errors = len(errors)
            kwargs[field.name] = _convert(
                hints[field.name], data[field.name], (*loc, field.name), errors
            )
            check = field.metadata.get("check")
            if check is not None and len(errors) == field_errors:
                problem = check(kwargs[field.name])
                if problem is not None:
                    kind, msg = problem
                    errors.append(_err(kind, (*loc, field.name), msg, data[field.name]))
        elif field.default is attrs.NOTHING:
            errors.append(_err("missing", (*loc, field.name), "Field required", data))
    if len(errors) != before:
        return None
    return cls(**kwargs)


def _enum_message(enum_cls: type[enum.Enum]) -> str:
    values = [f"'{member.value}'" for member in enum_cls]
    if len(values) == 1:
        return f"Input should be {values[0]}"
    return f"Input should be {', '.join(values[:-1])} or {values[-1]}"


def _convert(tp: Any, value: Any, loc: Loc, errors: list[dict[str, Any]]) -> Any:
    # One branch per supported annotation; the error entries mimic pydantic's.
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        members = [m for m in typing.get_args(tp) if m is not UnsetType]
        if value is None and type(None) in members:
            return None
        others = [m for m in members if m is not type(None)]
        if len(others) == 1:
            if value is None:
                errors.append(_none_error(others[0], loc))
                return None
            return _convert(others[0], value, loc, errors)
        for member in others:  # first member that fits wins, as pydantic's smart mode
            trial: list[dict[str, Any]] = []
            result = _convert(member, value, loc, trial)
            if not trial:
                return result
        errors.append(_err("union_type", loc, "Input does not match any allowed type", value))
        return None
    if tp is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            errors.append(_err("list_type", loc, "Input should be a valid list", value))
            return None
        (item_tp,) = typing.get_args(tp)
        return [_convert(item_tp, item, (*loc, i), errors) for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(_err("dict_type", loc, "Input should be a valid dictionary", value))
            return None
        _key_tp, value_tp = typing.get_args(tp)
        return {k: _convert(value_tp, v, (*loc, k), errors) for k, v in value.items()}
    if isinstance(tp, type):
        return _convert_simple(tp, value, loc, errors)
    raise TypeError(f"unsupported annotation {tp!r} in an action model")  # pragma: no cover


def _none_error(tp: Any, loc: Loc) -> dict[str, Any]:
    names = {str: "string", int: "integer", float: "number", bool: "boolean"}
    if tp in names:
        kind = {str: "string_type", int: "int_type", float: "float_type", bool: "bool_type"}[tp]
        return _err(kind, loc, f"Input should be a valid {names[tp]}", None)
    return _err("none_forbidden", loc, "Input should not be None", None)


def _convert_simple(tp: type, value: Any, loc: Loc, errors: list[dict[str, Any]]) -> Any:
    if attrs.has(tp):
        return _structure_class(tp, value, loc, errors)
    if issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            errors.append(_err("enum", loc, _enum_message(tp), value))
            return None
    if tp is bool:
        if isinstance(value, bool):
            return value
        errors.append(_err("bool_type", loc, "Input should be a valid boolean", value))
        return None
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            problem = int_bound_problem(value)
            if problem is None:
                return value
            errors.append(_err(problem[0], loc, problem[1], value))
            return None
        kind, msg = "int_type", "Input should be a valid integer"
        if isinstance(value, float):
            kind = "int_from_float"
            msg = "Input should be a valid integer, got a number with a fractional part"
        errors.append(_err(kind, loc, msg, value))
        return None
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:
                errors.append(_err("finite_number", loc, "Input should be a finite number", value))
                return None
        errors.append(_err("float_type", loc, "Input should be a valid number", value))
        return None
    if tp is str:
        if isinstance(value, str):
            return value
        errors.append(_err("string_type", loc, "Input should be a valid string", value))
        return None
    if tp is uuid.UUID:
        if isinstance(value, str):
            try:
                return uuid.UUID(value)
            except ValueError:
                pass
        errors.append(
            _err("uuid_parsing", loc, "Input should be a valid UUID, unable to parse string", value)
        )
        return None
    if tp is datetime:
        if isinstance(value, str):
            try:
                return parse_datetime(value)
            except ValueError:
                pass
        errors.append(_err("datetime_parsing", loc, "Input should be a valid datetime", value))
        return None
    raise TypeError(f"unsupported type {tp!r} in an action model")  # pragma: no cover
