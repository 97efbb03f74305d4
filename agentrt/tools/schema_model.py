"""A tool's arguments model rebuilt from its JSON schema (what a remote worker advertises), so a
remote tool validates its arguments on the caller's side exactly as a local one does.

Covers what `Tool.schema()` produces for ordinary signatures: scalars, lists, tuples, dicts, enums
and literals, optional / union types, nested models (`$defs` / `$ref`) and defaults. Anything it
cannot map becomes `Any` (the worker validates again), never an error.
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, create_model

_SCALARS = {"string": str, "integer": int, "number": float, "boolean": bool, "null": type(None)}


def _label(tp: Any) -> str:
    """Python-like text, as `spec.type_label` gives it for the local function: `Pt | None`."""
    if tp is Any:
        return "Any"
    if tp is type(None):
        return "None"
    origin, args = get_origin(tp), get_args(tp)
    if origin is Union:
        return " | ".join(_label(a) for a in args)
    if origin is Literal:
        return f"Literal[{', '.join(map(repr, args))}]"
    if origin is not None:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(_label(a) for a in args)}]"
    return getattr(tp, "__name__", repr(tp))


class _Builder:
    def __init__(self, root: dict[str, Any], name: str):
        self.defs = root.get("$defs", {}) or root.get("definitions", {})
        self.name, self.models = name, {}

    def type_of(self, node: Any) -> Any:
        if not isinstance(node, dict) or not node:
            return Any
        if "$ref" in node:
            ref = node["$ref"].rsplit("/", 1)[-1]
            if ref not in self.models:
                self.models[ref] = Any                    # a recursive reference ends as Any
                self.models[ref] = self.model(self.defs.get(ref, {}), ref, forbid=False)
            return self.models[ref]
        if "const" in node:
            return Literal[node["const"]]
        if "enum" in node and node["enum"]:
            return Literal[tuple(node["enum"])]
        for key in ("anyOf", "oneOf"):
            if key in node:
                options = tuple(self.type_of(n) for n in node[key])
                return Union[options] if len(options) > 1 else options[0]
        kind = node.get("type")
        if isinstance(kind, list):
            return Union[tuple(self.type_of({**node, "type": k}) for k in kind)]
        if kind in _SCALARS:
            return _SCALARS[kind]
        if kind == "array":
            if "prefixItems" in node:
                return tuple[tuple(self.type_of(n) for n in node["prefixItems"])]
            return list[self.type_of(node.get("items", {}))]
        if kind == "object":
            if "properties" in node:
                return self.model(node, node.get("title") or f"{self.name}_object", forbid=False)
            extra = node.get("additionalProperties")
            return dict[str, self.type_of(extra) if isinstance(extra, dict) else Any]
        return Any

    def model(self, node: dict[str, Any], name: str, *, forbid: bool) -> type[BaseModel]:
        required = set(node.get("required", ()))
        fields: dict[str, Any] = {}
        for i, (prop, sub) in enumerate((node.get("properties") or {}).items()):
            tp = self.type_of(sub)
            extra: dict[str, Any] = {"alias": prop}
            if isinstance(sub, dict) and sub.get("description"):
                extra["description"] = sub["description"]
            if prop not in required:
                extra["default"] = sub.get("default") if isinstance(sub, dict) else None
                if extra["default"] is None and tp is not Any:
                    tp = Optional[tp]
            key = prop if prop.isidentifier() and not prop.startswith(("_", "model_")) \
                and not hasattr(BaseModel, prop) else f"arg{i}__"
            fields[key] = (tp, Field(**extra))
        config = ConfigDict(extra="forbid" if forbid else "allow", populate_by_name=True)
        return create_model(name, __config__=config, **fields)


def model_from_schema(schema: dict[str, Any], name: str) -> tuple[type[BaseModel], list[tuple[str, str, bool, Any, str, str]]]:
    """(arguments model, [(name, type label, required, default, description, field)]) for an
    object schema such as `Tool.schema()["parameters"]`."""
    builder = _Builder(schema, name)
    model = builder.model(schema, f"{name}_args", forbid=True)
    required = set(schema.get("required", ()))
    params = []
    for key, info in model.model_fields.items():
        prop = info.alias or key
        sub = (schema.get("properties") or {}).get(prop, {})
        tp = builder.type_of(sub)
        params.append((prop, _label(tp), prop in required, None if prop in required else info.default,
                       info.description or "", key))
    return model, params
