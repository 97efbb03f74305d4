"""Typed program state: reducers on list fields, updates that stay pydantic, prompt templates.

A workflow's state is a pydantic model. A field may declare a reducer with `Annotated`; writes to
it are merged instead of replacing the value (fan-out branches append to the same list this way):

>>> class Notes(BaseModel):
...     topic: str = ""
...     notes: Annotated[list[str], append] = []
"""
from __future__ import annotations

import string
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError


class Reducer:
    """Marker for `Annotated[T, Reducer(fn)]`: a write `new` becomes `fn(old, new)`."""

    __slots__ = ("fn", "name")

    def __init__(self, fn: Callable[[Any, Any], Any], name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "reducer")

    def __call__(self, old: Any, new: Any) -> Any:
        return self.fn(old, new)

    def __repr__(self) -> str:
        return f"Reducer({self.name})"


def _append(old: list, new: Any) -> list:
    items = list(new) if isinstance(new, (list, tuple)) else [new]
    return [*(old or []), *items]


append = Reducer(_append, "append")
"""Reducer for list fields: a write of one item appends it, a write of a list extends by it."""


class StateError(ValueError):
    """An update does not fit the workflow's state model."""


def reducers_of(model: type[BaseModel]) -> dict[str, Reducer]:
    """Fields of `model` that declare a reducer, with it."""
    found = {}
    for name, info in model.model_fields.items():
        for meta in info.metadata:
            if isinstance(meta, Reducer):
                found[name] = meta
            elif isinstance(meta, (types.FunctionType, types.BuiltinFunctionType)):
                found[name] = Reducer(meta)     # LangGraph style: Annotated[list[str], operator.add]
    return found


def apply_update(state: BaseModel, update: Mapping[str, Any], reducers: Mapping[str, Reducer]) -> BaseModel:
    """A new state with `update` written into it (reducer fields merged), validated by the model."""
    if not update:
        return state
    unknown = [k for k in update if k not in type(state).model_fields]
    if unknown:
        raise StateError(f"{type(state).__name__} has no field {unknown[0]!r} "
                         f"(fields: {', '.join(type(state).model_fields)})")
    values = dict(state)
    for key, value in update.items():
        if key not in reducers:
            values[key] = value
            continue
        try:
            values[key] = reducers[key](values[key], value)
        except Exception as exc:        # e.g. operator.add of a list and a single item
            raise StateError(f"update {sorted(update)} does not fit {type(state).__name__}: {key}: "
                             f"reducer {reducers[key].name} failed: {type(exc).__name__}: {exc}") from exc
    try:
        return type(state).model_validate(values)
    except ValidationError as exc:
        raise StateError(f"update {sorted(update)} does not fit {type(state).__name__}: "
                         f"{_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}"


def is_list_type(annotation: Any) -> bool:
    origin = typing.get_origin(annotation) or annotation
    if origin is typing.Annotated:
        return is_list_type(typing.get_args(annotation)[0])
    return origin in (list, tuple, set, frozenset) or (
        isinstance(origin, type) and origin.__name__ in ("Sequence", "MutableSequence"))


def accepts_text(annotation: Any, reducer: Reducer | None) -> bool:
    """Whether a model's text (str) can be written into a field of this type as it is."""
    origin = typing.get_origin(annotation)
    if annotation in (str, Any, object):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(accepts_text(a, None) for a in typing.get_args(annotation))
    if reducer is not None and is_list_type(annotation):
        args = typing.get_args(annotation)
        return not args or accepts_text(args[0], None)
    return False


# ------------------------------------------------------------------------------------- templates
def template_fields(template: str) -> list[str]:
    """Root names a `str.format` template reads: "{a.b} {c[0]}" -> ["a", "c"]."""
    roots = []
    for _, field, _, _ in string.Formatter().parse(template):
        if field is None:
            continue
        root = field.split(".", 1)[0].split("[", 1)[0]
        if not root or root.isdigit():
            raise ValueError(f"template field {{{field}}} must be named after a state field")
        roots.append(root)
    return roots


class _PromptFormatter(string.Formatter):
    """Lists render one item per line ("- item"), models as their JSON, the rest with str()."""

    def format_field(self, value: Any, format_spec: str) -> str:
        if format_spec:
            return super().format_field(value, format_spec)
        if isinstance(value, (list, tuple)):
            return "\n".join(f"- {item}" for item in value) if value else "(none)"
        if isinstance(value, BaseModel):
            return value.model_dump_json()
        return str(value)


_FORMATTER = _PromptFormatter()


def render(template: str, scope: Mapping[str, Any]) -> str:
    return _FORMATTER.vformat(template, (), scope)
