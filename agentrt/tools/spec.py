"""Tools: plain sync or async Python functions with typed arguments, run with timeout and retries.

    @tool(expected_duration=1.0, retries=2)
    async def search(query: str, k: int = 5) -> list[str]:
        '''Search the web.'''

    result = await search.run({"query": "paged attention"})   # a ToolResult, never raises

A Tool deliberately has no __call__: call the plain function as `search.fn(...)`, or
`await search.run({...})` for validation, timeout and retries.
"""
from __future__ import annotations

import asyncio
import dataclasses
import inspect
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Mapping, NamedTuple

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, PydanticUserError, ValidationError, create_model
from pydantic.fields import FieldInfo

from agentrt.clock import MONOTONIC, Clock
from agentrt.tools.context import CallInfo, reset_call, set_call

BACKOFF_CAP = 30.0  # longest wait between two attempts, seconds
_NAME_RE = re.compile(r"[A-Za-z_][\w.-]*")
_HEADER_RE = re.compile(r"[A-Z][A-Za-z]*( [A-Za-z]+)?:")  # "Args:", "Returns:", "Raises:" ...
_ARGS_RE = re.compile(r"(Args|Arguments|Parameters|Params):")
_ARG_LINE_RE = re.compile(r"\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)")
OnAttempt = Callable[[int, "BaseException | None", float], None]


class ToolError(Exception):
    """Base class of the errors a tool call can end in."""


class ToolArgumentError(ToolError):
    """The arguments do not fit the tool's signature (never retried)."""

    def __init__(self, tool: str, problems: list[str]):
        super().__init__(f"tool '{tool}': " + "; ".join(problems))
        self.tool, self.problems = tool, problems


class ToolTimeoutError(ToolError):
    """One attempt ran past the tool's timeout."""

    def __init__(self, tool: str, timeout: float):
        super().__init__(f"{tool} timed out after {float(timeout)} s")
        self.tool, self.timeout = tool, timeout


class ToolResult(NamedTuple):
    """Outcome of `Tool.run`: a value, or a one-line error (and the exception behind it)."""

    value: Any
    error: str | None
    attempts: int  # 0 when the arguments were rejected before any attempt
    duration: float  # wall seconds over all attempts and backoff waits
    exception: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class ToolParam(NamedTuple):
    """One parameter of a tool, as the model sees it."""

    name: str
    type_label: str  # compact, e.g. "int", "list[str]", "str | None"
    required: bool
    default: Any  # None when required (or built by a default factory)
    description: str
    field: str  # attribute on args_model (differs from name only when name clashes with pydantic)
    positional_only: bool


def type_label(annotation: Any) -> str:
    """Compact, Python-like text for a type annotation."""
    if annotation is type(None):
        return "None"
    if getattr(annotation, "__metadata__", None) is not None:  # Annotated[T, ...] -> T
        return type_label(annotation.__origin__)
    if isinstance(annotation, type) and not hasattr(annotation, "__origin__"):
        return annotation.__name__
    return re.sub(r"\b(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_])", "", repr(annotation))


def _parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """(first paragraph, {argument: text}) of a Google-style docstring."""
    lines = inspect.cleandoc(doc or "").splitlines()
    summary: list[str] = []
    for line in lines:
        if not line.strip() or _HEADER_RE.fullmatch(line.strip()):
            break
        summary.append(line.strip())
    docs: dict[str, str] = {}
    start = next((i for i, ln in enumerate(lines) if _ARGS_RE.fullmatch(ln.strip())), None)
    if start is None:
        return " ".join(summary), docs
    base, item, current = _indent(lines[start]), None, None
    for line in lines[start + 1:]:
        if not line.strip():
            continue
        if _indent(line) <= base:
            break
        item = _indent(line) if item is None else item
        match = _ARG_LINE_RE.fullmatch(line.strip())
        if _indent(line) == item and match:
            current = match.group(1)
            docs[current] = match.group(2).strip()
        elif current is not None:
            docs[current] = f"{docs[current]} {line.strip()}".strip()
    return " ".join(summary), docs


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _field_name(name: str, index: int) -> str:
    clashes = name.startswith(("_", "model_")) or hasattr(BaseModel, name)
    return f"arg{index}__" if clashes else name


def _build_args(fn: Callable[..., Any], name: str, arg_docs: dict[str, str]) -> tuple[type[BaseModel], tuple[ToolParam, ...]]:
    """The arguments model (extra="forbid") and the parameter list of `fn`'s signature."""
    try:
        sig = inspect.signature(fn, eval_str=True)
    except Exception as exc:
        raise TypeError(f"tool '{name}': cannot read the signature of {name}(): {exc}; "
                        "define the types it uses at module level") from exc
    fields: dict[str, Any] = {}
    for i, p in enumerate(sig.parameters.values()):
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            star = "*" if p.kind is p.VAR_POSITIONAL else "**"
            raise TypeError(f"tool '{name}': {name}() takes {star}{p.name}; a tool needs a fixed set of "
                            "named parameters, so replace it with explicit typed parameters")
        if p.annotation is p.empty:
            raise TypeError(f"tool '{name}': parameter '{p.name}' of {name}() has no type annotation; "
                            f"annotate it, e.g. `{p.name}: str`")
        annotation, extra = p.annotation, {"alias": p.name}
        if isinstance(p.default, FieldInfo):  # `k: int = Field(5, ge=1)`: merge, keep its settings
            annotation = Annotated[annotation, p.default]
        elif p.default is not p.empty:
            extra["default"] = p.default
        if p.name in arg_docs and not (isinstance(p.default, FieldInfo) and p.default.description):
            extra["description"] = arg_docs[p.name]
        fields[_field_name(p.name, i)] = (annotation, Field(**extra))
    try:
        model = create_model(f"{name}_args", __config__=ConfigDict(extra="forbid"), **fields)
        model.model_json_schema()  # surface unsupported types now, not on the first call
    except (PydanticUserError, TypeError, ValueError) as exc:
        raise TypeError(f"tool '{name}': unsupported argument type: {exc}") from exc
    return model, tuple(_param(model, key, p) for key, p in zip(fields, sig.parameters.values()))


def _param(model: type[BaseModel], key: str, p: inspect.Parameter) -> ToolParam:
    info = model.model_fields[key]
    required = info.is_required()
    default = None if required or info.default_factory is not None else info.default
    return ToolParam(p.name, type_label(p.annotation), required, default, info.description or "",
                     key, p.kind is p.POSITIONAL_ONLY)


@dataclass(slots=True, eq=False)
class Tool:
    """A typed Python function an agent can call. Build it with `@tool`; run it with `await run()`."""

    name: str
    fn: Callable[..., Any]
    description: str
    args_model: type[BaseModel]
    expected_duration: float | None = None  # seconds; a scheduling hint
    timeout: float | None = 30.0  # per attempt; None = no timeout
    retries: int = 0  # extra attempts after the first failure
    backoff: float = 0.5  # first retry waits this long, then it doubles (capped at BACKOFF_CAP)
    is_async: bool = False
    params: tuple[ToolParam, ...] = field(default=(), repr=False)
    idempotent: bool = True  # safe to make again when a crash left it in flight (durable runs)

    @classmethod
    def from_function(cls, fn: Callable[..., Any], *, name: str | None = None, description: str | None = None,
                      expected_duration: float | None = None, timeout: float | None = 30.0,
                      retries: int = 0, backoff: float = 0.5, idempotent: bool = True) -> Tool:
        """A Tool for `fn`; raises TypeError for an unusable signature, ValueError for bad settings."""
        if not callable(fn):
            raise TypeError(f"tool(): expected a function, got {type(fn).__name__}")
        name = name if name is not None else getattr(fn, "__name__", "")
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"tool name {name!r} is not an identifier-like name; pass tool(name=...)")
        for what, value in (("expected_duration", expected_duration), ("timeout", timeout)):
            if value is not None and not value > 0:
                raise ValueError(f"tool '{name}': {what} must be positive or None, got {value!r}")
        if retries < 0 or backoff < 0:
            raise ValueError(f"tool '{name}': retries and backoff must be >= 0")
        summary, arg_docs = _parse_docstring(inspect.getdoc(fn))
        model, params = _build_args(fn, name, arg_docs)
        is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))
        return cls(name, fn, summary if description is None else description, model, expected_duration,
                   timeout, int(retries), float(backoff), is_async, params, bool(idempotent))

    @classmethod
    def from_schema(cls, schema: Mapping[str, Any], fn: Callable[..., Any], *,
                    expected_duration: float | None = None, timeout: float | None = 30.0, retries: int = 0,
                    backoff: float = 0.5, idempotent: bool = True) -> Tool:
        """A Tool from a schema as `schema()` gives it ({"name", "description", "parameters"}),
        run by `fn(**arguments)` (e.g. a remote call): its arguments are validated against the
        schema on this side, as a local tool's are."""
        from agentrt.tools.schema_model import model_from_schema
        name = str(schema.get("name", ""))
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"tool name {name!r} is not an identifier-like name")
        model, rows = model_from_schema(dict(schema.get("parameters") or {"type": "object"}), name)
        params = tuple(ToolParam(n, label, req, default, doc, key, False) for n, label, req, default, doc, key in rows)
        is_async = inspect.iscoroutinefunction(fn)
        return cls(name, fn, str(schema.get("description", "")), model, expected_duration, timeout, int(retries),
                   float(backoff), is_async, params, bool(idempotent))

    def signature_text(self) -> str:
        """e.g. "search(query: str, k: int = 5)"."""
        parts = [f"{p.name}: {p.type_label}" + ("" if p.required else f" = {_short(p.default, 24)}")
                 for p in self.params]
        return f"{self.name}({', '.join(parts)})"

    def schema(self) -> dict[str, Any]:
        """{"name", "description", "parameters": JSON schema of the arguments (titles dropped)}."""
        parameters = _strip_titles(self.args_model.model_json_schema())
        return {"name": self.name, "description": self.description, "parameters": parameters}

    def validate(self, arguments: Mapping[str, Any]) -> BaseModel:
        """The validated arguments; raises ToolArgumentError naming each bad/missing/extra argument."""
        if not isinstance(arguments, Mapping):
            raise ToolArgumentError(self.name, [f"arguments must be an object of named values, "
                                                f"got {type(arguments).__name__}"])
        try:
            return self.args_model.model_validate(dict(arguments))
        except ValidationError as exc:
            raise ToolArgumentError(self.name, [self._problem(e) for e in exc.errors()]) from None

    def retry_delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        return min(self.backoff * 2 ** (attempt - 1), BACKOFF_CAP)

    async def run(self, arguments: Mapping[str, Any] | BaseModel, *, on_attempt: OnAttempt | None = None,
                  clock: Clock = MONOTONIC, call: CallInfo | None = None) -> ToolResult:
        """Validate, then call the tool with a per-attempt timeout and retries; never raises a tool error.

        Rejected arguments give an error result with attempts=0 (the tool never ran). An already
        validated `args_model` instance is used as is. Every exception from the tool (timeouts
        included) is retried up to `retries` times. Cancellation propagates at once, never retried.
        `on_attempt(attempt, exception_or_None, attempt_seconds)` is called after each attempt.
        Durations are read on `clock` (the runtime's). `call` (a durable run's idempotency key)
        is what the tool sees as `current_call()`, with the attempt number filled in.
        A timed-out *sync* tool's thread cannot be killed: it is abandoned and keeps a worker of
        the default executor until the function returns.
        """
        start = clock.now()
        if isinstance(arguments, self.args_model):
            model = arguments
        else:
            try:
                model = self.validate(arguments)
            except ToolArgumentError as exc:
                return ToolResult(None, str(exc), 0, clock.now() - start, exc)
        args = [getattr(model, p.field) for p in self.params if p.positional_only]
        kwargs = {p.name: getattr(model, p.field) for p in self.params if not p.positional_only}
        attempt = 0
        while True:
            attempt += 1
            began = clock.now()
            token = set_call((call or CallInfo(None))._replace(attempt=attempt))
            try:
                value = await self._attempt(args, kwargs)
            except Exception as exc:  # CancelledError is a BaseException: it passes through
                error: Exception = exc
            else:
                if on_attempt is not None:
                    on_attempt(attempt, None, clock.now() - began)
                return ToolResult(value, None, attempt, clock.now() - start)
            finally:
                reset_call(token)
            if on_attempt is not None:
                on_attempt(attempt, error, clock.now() - began)
            if attempt > self.retries:
                return ToolResult(None, self._describe(error, attempt), attempt, clock.now() - start, error)
            await asyncio.sleep(self.retry_delay(attempt))

    async def _attempt(self, args: list[Any], kwargs: dict[str, Any]) -> Any:
        if self.timeout is None:
            return await self._invoke(args, kwargs)
        try:
            async with asyncio.timeout(self.timeout) as deadline:
                return await self._invoke(args, kwargs)
        except TimeoutError:
            if deadline.expired():  # ours, not a TimeoutError the tool raised itself
                raise ToolTimeoutError(self.name, self.timeout) from None
            raise

    async def _invoke(self, args: list[Any], kwargs: dict[str, Any]) -> Any:
        if self.is_async:
            return await self.fn(*args, **kwargs)
        value = await asyncio.to_thread(self.fn, *args, **kwargs)
        return await value if inspect.isawaitable(value) else value

    def _problem(self, err: Any) -> str:
        loc = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in err["loc"]).lstrip(".")
        top = {p.name: p for p in self.params}.get(err["loc"][0] if err["loc"] else "")
        if err["type"] == "missing" and len(err["loc"]) == 1 and top is not None:
            return f"missing required argument '{loc}' ({top.type_label})"
        if err["type"] == "extra_forbidden" and len(err["loc"]) == 1:
            accepted = ", ".join(p.name for p in self.params) or "none"
            return f"unexpected argument '{loc}' (accepted: {accepted})"
        return f"argument '{loc}': {err['msg']} (got {_short(err.get('input'), 40)})"

    def _describe(self, exc: BaseException, attempts: int) -> str:
        if isinstance(exc, ToolTimeoutError):
            text = str(exc)
        else:
            detail = " ".join(str(exc).split())
            text = f"{self.name} raised {type(exc).__name__}" + (f": {detail}" if detail else "")
        text = text if len(text) <= 300 else text[:297] + "..."
        return text + (f" ({attempts} attempts)" if attempts > 1 else "")


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None, description: str | None = None,
         expected_duration: float | None = None, timeout: float | None = 30.0, retries: int = 0,
         backoff: float = 0.5, idempotent: bool = True) -> Any:
    """Make a Tool of a function: `@tool` or `@tool(expected_duration=2.0, retries=2)`.
    `idempotent=False` says that making the call twice is harmful: a durable run that stopped
    while such a call was in flight fails the program on resume instead of making it again."""
    def wrap(f: Callable[..., Any]) -> Tool:
        return Tool.from_function(f, name=name, description=description, expected_duration=expected_duration,
                                  timeout=timeout, retries=retries, backoff=backoff, idempotent=idempotent)
    return wrap if fn is None else wrap(fn)


def format_observation(value: Any, max_chars: int | None = None) -> str:
    """A tool's return value as prompt text: str as is, None -> "(no output)", models/containers as
    compact JSON, anything else via str(); cut to `max_chars` if given."""
    if value is None:
        text = "(no output)"
    elif isinstance(value, str):
        text = value
    elif isinstance(value, (BaseModel, dict, list, tuple, set, frozenset)) or dataclasses.is_dataclass(value):
        text = pydantic_core.to_json(value, fallback=str).decode()
    else:
        text = str(value)
    if max_chars is not None and len(text) > max_chars:
        text = f"{text[:max_chars]}... (truncated, {len(text)} chars in all)"
    return text


def _strip_titles(node: Any, *, names: bool = False) -> Any:
    """Drop pydantic's auto "title" keys; `names` marks a dict keyed by property names (kept)."""
    if isinstance(node, list):
        return [_strip_titles(v) for v in node]
    if not isinstance(node, dict):
        return node
    if names:
        return {k: _strip_titles(v) for k, v in node.items()}
    return {k: _strip_titles(v, names=k in ("properties", "$defs")) for k, v in node.items()
            if not (k == "title" and isinstance(v, str))}


def _short(value: Any, limit: int) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
