"""Model-driven tool calling: the prompt text that teaches the format, and a lenient parser.

An agent calls a tool by emitting

    <tool_call>{"name": "search", "arguments": {"query": "paged attention"}}</tool_call>

and answers normally (no tool call) when it is done. Only the first call of a reply is used;
anything after it (more calls included) is ignored.
"""
from __future__ import annotations

import ast
import json
import re
from typing import Any, Mapping, NamedTuple, Sequence

from pydantic import BaseModel

from agentrt.tools.spec import Tool, ToolArgumentError, ToolParam

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
_OPEN_RE = re.compile(r"<\s*tool_call\s*>", re.IGNORECASE)
_CLOSE_RE = re.compile(r"<\s*/\s*tool_call\s*>", re.IGNORECASE)
_ARG_KEYS = ("arguments", "args", "parameters", "input")
_META_KEYS = frozenset({"name", "tool", "type", "id", "function"})
_JSON_WORDS = re.compile(r"""\\.|["']|\b(?:true|false|null)\b""")
_PY_WORDS = {"true": "True", "false": "False", "null": "None"}
_EXAMPLE_VALUES: dict[str, Any] = {"str": "...", "int": 1, "float": 1.5, "bool": True, "list": [], "dict": {}}
_LINE_BUDGET = 240  # characters per tool line (~60 tokens)
_FORMAT_HINT = ('Write exactly one call as <tool_call>{"name": "TOOL_NAME", "arguments": {"ARG": "VALUE"}}'
                "</tool_call> with valid JSON, or answer without a tool call.")


class ToolCall(NamedTuple):
    name: str
    arguments: dict[str, Any]


class ToolCallParse(NamedTuple):
    """A reply split into its text and its (first) tool call; `error` is written for the model."""

    content: str  # text before the call, stripped; the whole reply unchanged when there is no call
    call: ToolCall | None
    error: str | None


def render_tool_instructions(tools: Sequence[Tool]) -> str:
    """Text for an agent's system prompt: the tools, the call format, one example. "" if no tools."""
    if not tools:
        return ""
    first = tools[0]
    example = {"name": first.name, "arguments": {p.name: _example_value(p) for p in first.params if p.required}}
    return "\n".join([
        "You can use these tools:",
        *(_tool_line(t) for t in tools),
        "To use a tool, reply with one call in this exact format, then stop and wait:",
        f"{TOOL_CALL_OPEN}{json.dumps(example)}{TOOL_CALL_CLOSE}",
        "The result comes back in the next message. When you have the answer, reply normally, "
        "without a tool call.",
    ])


def _tool_line(t: Tool) -> str:
    line = f"- {t.signature_text()}: {t.description}".rstrip(": ")
    arg_docs = "; ".join(f"{p.name}: {p.description.rstrip('.')}" for p in t.params if p.description)
    if arg_docs and len(line) + len(arg_docs) + 3 <= _LINE_BUDGET:
        return f"{line} ({arg_docs})"
    if len(line) > _LINE_BUDGET:  # keep the first sentence, or cut
        sentence = line.split(". ")[0] + "."
        line = sentence if len(sentence) <= _LINE_BUDGET else line[: _LINE_BUDGET - 3] + "..."
    return line


def _example_value(p: ToolParam) -> Any:
    return _EXAMPLE_VALUES.get(p.type_label.split("[")[0], "...")


def parse_tool_call(text: str) -> ToolCallParse:
    """Split a reply into content and its first tool call. Never raises.

    Lenient: a missing close tag, code fences, text after the JSON, single-quoted Python-like
    dicts, "args"/"parameters"/"input" for "arguments", arguments as a JSON string, an OpenAI-style
    {"function": {...}} wrapper, arguments flattened next to "name", and no arguments at all ({}).
    """
    opened = _OPEN_RE.search(text)
    if opened is None:
        return ToolCallParse(text, None, None)
    content = text[: opened.start()].strip()
    closed = _CLOSE_RE.search(text, opened.end())
    limit = closed.start() if closed else len(text)
    start = text.find("{", opened.end(), limit)
    if start < 0:
        return ToolCallParse(content, None, _error("there is no JSON object inside <tool_call>"))
    obj, problem = _load_first(_object_texts(text, start, limit if closed else None))
    call = problem or _to_call(obj)
    if isinstance(call, str):
        return ToolCallParse(content, None, _error(call))
    return ToolCallParse(content, call, None)


def _error(reason: str) -> str:
    return f"Your tool call could not be read: {reason}. {_FORMAT_HINT}"


def _object_texts(text: str, start: int, close: int | None) -> list[str]:
    """Texts to try as the call's object: the balanced one from `start`, then, if the close tag
    comes first, the text up to it with the closing brackets the model forgot."""
    end, _ = _scan_object(text, start)
    found = [text[start:end]] if end is not None else []
    if close is not None and (end is None or end > close):
        cut, pending = _scan_object(text[:close], start)
        if cut is None and pending:
            found.append(text[start:close].rstrip().rstrip("`").rstrip() + "".join(reversed(pending)))
    return found


def _load_first(texts: list[str]) -> tuple[Any, str | None]:
    """(the first text that loads, None), or (None, why the first one did not)."""
    if not texts:
        return None, "the JSON object is incomplete (unbalanced braces or quotes)"
    problem = None
    for obj_text in texts:
        try:
            return _load(obj_text), None
        except ValueError as exc:
            problem = problem or f"the JSON is invalid ({exc})"
    return None, problem


def _scan_object(text: str, start: int) -> tuple[int | None, list[str]]:
    """Scan the object opening at text[start]: (index past its end, []) if balanced, else
    (None, closers still pending) -- pending is [] when inside a string or brackets mismatch."""
    stack: list[str] = []
    quote: str | None = None
    i = start
    while i < len(text):
        ch = text[i]
        if quote is not None:
            if ch == "\\":
                i += 1  # skip the escaped character
            elif ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]":
            if stack.pop() != ch:
                return None, []
            if not stack:
                return i + 1, []
        i += 1
    return None, [] if quote is not None else stack


def _load(obj_text: str) -> Any:
    """JSON, else a Python literal (single quotes, True/None, trailing commas), else ValueError."""
    try:
        return json.loads(obj_text)
    except Exception as exc:  # RecursionError too, for absurd nesting
        json_error = exc
    for candidate in (obj_text, _pythonize(obj_text)):
        try:
            return ast.literal_eval(candidate)
        except Exception:
            pass
    raise ValueError(str(json_error).split(":")[0] if isinstance(json_error, ValueError) else "too deeply nested")


def _pythonize(obj_text: str) -> str:
    """Rewrite JSON's true/false/null outside strings as Python's True/False/None."""
    out, pos, quote = [], 0, None
    for m in _JSON_WORDS.finditer(obj_text):
        token = m.group()
        if token in ('"', "'"):
            quote = token if quote is None else (None if token == quote else quote)
        elif token in _PY_WORDS and quote is None:
            out.append(obj_text[pos: m.start()] + _PY_WORDS[token])
            pos = m.end()
    return "".join(out) + obj_text[pos:]


def _to_call(obj: Any) -> ToolCall | str:
    """A ToolCall from the parsed object, or the reason it is not one."""
    if not isinstance(obj, dict):
        return f'the call must be a JSON object with "name" and "arguments", not a {type(obj).__name__}'
    if "name" not in obj and isinstance(obj.get("function"), dict):
        obj = obj["function"]
    name = obj.get("name", obj.get("tool"))
    if name is None:
        return 'the JSON object has no "name"'
    if not isinstance(name, str) or not name.strip():
        return '"name" must be the tool name, as a string'
    key = next((k for k in _ARG_KEYS if k in obj), None)
    args = obj[key] if key else {k: v for k, v in obj.items() if k not in _META_KEYS}  # flattened
    key = key or "arguments"
    if isinstance(args, str):
        try:
            args = _load(args) if args.strip() else {}
        except ValueError:
            return f'"{key}" is a string that does not hold a JSON object'
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return f'"{key}" must be a JSON object of named values, not a {type(args).__name__}'
    if not all(isinstance(k, str) for k in args):
        return "argument names must be strings"
    return ToolCall(name.strip(), args)


def resolve_call(call: ToolCall, tools: Mapping[str, Tool]) -> tuple[Tool, BaseModel] | str:
    """The tool and validated arguments for a call, or a message for the model saying what is wrong.

    A name that matches no key exactly but exactly one key ignoring case and "-"/"_" is accepted.
    """
    found = tools.get(call.name)
    if found is None:
        loose = [t for key, t in tools.items() if _loose(key) == _loose(call.name)]
        found = loose[0] if len(loose) == 1 else None
    if found is None:
        if not tools:
            return f"Unknown tool '{call.name}': no tools are available, answer without a tool call."
        return f"Unknown tool '{call.name}'. Available tools: {', '.join(tools)}."
    try:
        return found, found.validate(call.arguments)
    except ToolArgumentError as exc:
        return f"Invalid arguments for {exc}. Call it as {found.signature_text()}."


def _loose(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def tools_by_name(tools: Sequence[Tool]) -> dict[str, Tool]:
    """{name: tool}; ValueError on a duplicate name."""
    table: dict[str, Tool] = {}
    for t in tools:
        if t.name in table:
            raise ValueError(f"two tools are named '{t.name}'")
        table[t.name] = t
    return table
