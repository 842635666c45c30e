"""The converters between JSON and attrs classes: strict for the API, lax for job variables.

One story, two policies, both built here by functions (never patched from
elsewhere):

- :data:`CONVERTER` (:func:`make_converter`), **strict**, for the API's JSON and
  the models in ``_models.py``. It reads what a Prefect 3 server sends: ISO
  datetimes with ``Z`` or an offset (or a space instead of ``T``), UUID strings,
  enum values; extra fields are ignored because servers add fields; missing
  optional fields take their defaults. It writes what the server accepts: ISO
  datetimes with an offset and UUIDs as strings. A wrong shape is an error.
- :func:`make_lax_converter`, **lax**, for rendered job templates: it converts
  what pydantic's lax mode converts (``"5"`` to 5, ``"yes"`` to True, a value to
  its ``Enum`` member), so a template that works with Prefect's worker works
  here. Its errors are :class:`LaxValueError`, carrying the path and the
  expected type, which ``_job_schema.py`` words for the person who set the job
  variable. It knows str, bool, int, float, None, ``pathlib.Path``, ``Any``,
  ``Literal``, ``Enum``, ``dict[str, X]``, ``list[X]``, unions and nested attrs
  classes.

The embedded API's request validation (``_server/_validation.py``) is a third
walker on purpose; its docstring says why.
"""

from __future__ import annotations

import datetime as dt
import enum
import pathlib
import types
import typing
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, TypeVar, Union

import attrs
import cattrs
import cattrs.cols
import cattrs.gen

from trio_worker._core._exceptions import ModelError
from trio_worker._core._time import format_datetime, parse_datetime

__all__ = [
    "BOOL_WORDS",
    "CONVERTER",
    "LaxValueError",
    "configure_converter",
    "make_converter",
    "make_lax_converter",
    "structure",
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
    raise ValueError(f"{_short(value)} is not a boolean")


def _unstructure_datetime(value: dt.datetime) -> str:
    return format_datetime(value)


def _short(value: Any) -> str:
    """``repr(value)``, cut short: messages name the value, not a whole document."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _type_name(type_: Any) -> str:
    """``list[Log]`` rather than ``list`` or ``list[trio_worker._core._models.Log]``."""
    origin = typing.get_origin(type_)
    if origin is None:
        return str(getattr(type_, "__name__", type_))
    args = ", ".join(_type_name(arg) for arg in typing.get_args(type_))
    return f"{_type_name(origin)}[{args}]"


def _describe(exc: BaseException, type_: Any) -> str:
    """Say what was wrong with one value, naming the value when we know it."""
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, ValueError | TypeError) and str(exc):
        return str(exc)
    return f"invalid value, expected {_type_name(type_)}"


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
            raise ValueError(f"{_short(value)} is not {expected}")
        return inner(value, type_)

    return structure_checked


def _is_object(value: Any) -> bool:
    return isinstance(value, Mapping)


def _is_array(value: Any) -> bool:
    return isinstance(value, list | tuple)


def _is_list_type(type_: Any) -> bool:
    return typing.get_origin(type_) is list


def _is_dict_type(type_: Any) -> bool:
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
        _is_list_type,
        lambda type_: _guard(
            cattrs.cols.list_structure_factory(type_, converter), _is_array, "a JSON array"
        ),
    )
    converter.register_structure_hook_factory(
        _is_dict_type,
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
        raise ModelError(f"API JSON does not fit {_type_name(cls)}: {problems}") from exc


def unstructure(value: Any) -> Any:
    """Turn a model (or a container of models) into JSON-ready values."""
    return CONVERTER.unstructure(value)


# -- the lax converter, for job variables ----------------------------------------

#: The strings (and 0/1) pydantic's lax mode reads as booleans.
BOOL_WORDS: Final[Mapping[str, bool]] = {
    **dict.fromkeys(("true", "t", "yes", "y", "on", "1"), True),
    **dict.fromkeys(("false", "f", "no", "n", "off", "0"), False),
}

#: Stands for a required field the data does not have, in :class:`LaxValueError`.
MISSING: Final = attrs.NOTHING

Path = tuple[str | int, ...]


class LaxValueError(ValueError):
    """A value that does not fit its type, found by the lax converter.

    Attributes:
        expected: the type the value had to fit (a union as a whole).
        value: the value found, or :data:`MISSING` for a required field not given.
        path: where: field names and dict keys (``str``) and list indices (``int``).
    """

    def __init__(self, expected: Any, value: Any, path: Path = ()) -> None:
        super().__init__(f"{_short(value)} does not fit {_type_name(expected)} at {path}")
        self.expected = expected
        self.value = value
        self.path = path

    def within(self, step: str | int) -> LaxValueError:
        """The same error, one level further out (``step`` is the key or index)."""
        return LaxValueError(self.expected, self.value, (step, *self.path))


def _lax_number(value: Any, tp: type[int] | type[float]) -> int | float:
    if isinstance(value, bool):
        raise LaxValueError(tp, value)
    number = value
    if isinstance(value, str):
        try:
            number = float(value) if tp is float or "." in value else int(value)
        except ValueError:
            raise LaxValueError(tp, value) from None
    if isinstance(number, int) or (isinstance(number, float) and tp is float):
        return tp(number)
    if isinstance(number, float) and number.is_integer():
        return int(number)
    raise LaxValueError(tp, value)


def _lax_scalar(value: Any, tp: Any) -> Any:
    """str, Path, bool, int, float and Enum: one singledispatch hook for all.

    One hook because cattrs dispatches on the MRO first, where a ``StrEnum`` is
    a ``str`` before it is an ``Enum``.
    """
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value
        try:
            return tp(value)
        except ValueError:
            raise LaxValueError(tp, value) from None
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int | str) and str(value).strip().lower() in BOOL_WORDS:
            return BOOL_WORDS[str(value).strip().lower()]
        raise LaxValueError(tp, value)
    if tp is int or tp is float:
        return _lax_number(value, tp)
    if isinstance(value, str):  # str and pathlib.Path (pydantic does not stringify numbers)
        return tp(value)
    raise LaxValueError(tp, value)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _is_literal(tp: Any) -> bool:
    return typing.get_origin(tp) is Literal


def _is_dict_or_dict_type(tp: Any) -> bool:
    return tp is dict or _is_dict_type(tp)


def _is_list_or_list_type(tp: Any) -> bool:
    return tp is list or _is_list_type(tp)


def make_lax_converter(
    *, before: Callable[[attrs.Attribute[Any]], Callable[[Any], Any] | None] | None = None
) -> cattrs.Converter:
    """Build the lax converter for rendered job templates (see the module docstring).

    Args:
        before: given an attrs field, the function (if any) applied to its raw
            value first, e.g. to make env values strings as Prefect does.

    Returns:
        A converter whose ``structure`` raises :class:`LaxValueError`.
    """
    converter = cattrs.Converter(forbid_extra_keys=False)
    for scalar in (str, pathlib.Path, bool, int, float, enum.Enum):
        converter.register_structure_hook(scalar, _lax_scalar)

    def none(value: Any, tp: Any) -> None:
        if value is not None:
            raise LaxValueError(tp, value)

    def union(tp: Any) -> Callable[[Any, Any], Any]:
        members = typing.get_args(tp)

        def structure_union(value: Any, _: Any) -> Any:
            for member in members:
                try:
                    return converter.structure(value, member)
                except LaxValueError:
                    continue
            raise LaxValueError(tp, value)

        return structure_union

    def literal(tp: Any) -> Callable[[Any, Any], Any]:
        allowed = typing.get_args(tp)

        def structure_literal(value: Any, _: Any) -> Any:
            # Equal and of the same type: 1 is not True, "1" is not 1.
            for option in allowed:
                if type(value) is type(option) and value == option:
                    return option
            raise LaxValueError(tp, value)

        return structure_literal

    def mapping(tp: Any) -> Callable[[Any, Any], Any]:
        args = typing.get_args(tp)
        item_tp = args[1] if args else Any

        def structure_dict(value: Any, _: Any) -> dict[str, Any]:
            if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
                raise LaxValueError(tp, value)
            out = {}
            for key, item in value.items():
                try:
                    out[key] = converter.structure(item, item_tp)
                except LaxValueError as exc:
                    raise exc.within(key) from None
            return out

        return structure_dict

    def sequence(tp: Any) -> Callable[[Any, Any], Any]:
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any

        def structure_list(value: Any, _: Any) -> list[Any]:
            if not isinstance(value, list):
                raise LaxValueError(tp, value)
            out = []
            for index, item in enumerate(value):
                try:
                    out.append(converter.structure(item, item_tp))
                except LaxValueError as exc:
                    raise exc.within(index) from None
            return out

        return structure_list

    def attrs_class(cls: Any) -> Callable[[Any, Any], Any]:
        def structure_attrs(value: Any, _: Any) -> Any:
            if not isinstance(value, Mapping):
                raise LaxValueError(cls, value)
            kwargs: dict[str, Any] = {}
            for field in attrs.fields(attrs.resolve_types(cls)):
                if not field.init:
                    continue
                if field.name not in value:
                    if field.default is attrs.NOTHING:
                        raise LaxValueError(field.type, MISSING, (field.name,))
                    continue
                item = value[field.name]
                hook = before(field) if before is not None else None
                try:
                    item = hook(item) if hook is not None else item
                    kwargs[field.alias or field.name] = converter.structure(item, field.type)
                except LaxValueError as exc:
                    raise exc.within(field.name) from None
            return cls(**kwargs)

        return structure_attrs

    converter.register_structure_hook_func(lambda tp: tp is type(None), none)
    converter.register_structure_hook_func(lambda tp: tp is Any, lambda value, _: value)
    converter.register_structure_hook_factory(_is_union, union)
    converter.register_structure_hook_factory(_is_literal, literal)
    converter.register_structure_hook_factory(_is_dict_or_dict_type, mapping)
    converter.register_structure_hook_factory(_is_list_or_list_type, sequence)
    converter.register_structure_hook_factory(attrs.has, attrs_class)
    return converter
