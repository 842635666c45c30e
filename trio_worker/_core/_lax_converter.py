"""The lax converter, for rendered job templates: pydantic's lax mode, on cattrs.

A pool's template is shared with Prefect's workers, whose pydantic models read
``"5"`` as 5 and ``"yes"`` as True; a template that works there must work
here. The strict converter for the API (:mod:`._converter`) refuses such
values, so this one is built apart, with its own error type that carries the
path and the expected type for ``_job_schema.py`` to word.
"""

from __future__ import annotations

import enum
import pathlib
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, Union

import attrs
import cattrs

from trio_worker._core._converter import is_dict_type, is_list_type, short, type_name

__all__ = ["BOOL_WORDS", "MISSING", "LaxValueError", "make_lax_converter"]

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
        super().__init__(f"{short(value)} does not fit {type_name(expected)} at {path}")
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
    return tp is dict or is_dict_type(tp)


def _is_list_or_list_type(tp: Any) -> bool:
    return tp is list or is_list_type(tp)


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
