"""agentrt: a runtime for multi-agent LLM programs on an embedded paged-KV engine.

>>> from agentrt import Agent, Workflow, END, append, tool, Runtime, run

The names are imported on first use (PEP 562), so `import agentrt.graph` or `agentrt --help`
does not load torch; only the engine and the runtime do.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentrt.engine import AsyncLLMEngine, EngineConfig, LLMEngine, RequestMeta, RequestOutput, SamplingParams
    from agentrt.graph import END, Agent, Workflow, WorkflowError, append
    from agentrt.runtime import ProgramResult, Runtime, run
    from agentrt.tools import tool

__version__ = "0.1.0"

# exported name -> the module that defines it
_EXPORTS = {
    "AsyncLLMEngine": "agentrt.engine",
    "EngineConfig": "agentrt.engine",
    "LLMEngine": "agentrt.engine",
    "RequestMeta": "agentrt.engine",
    "RequestOutput": "agentrt.engine",
    "SamplingParams": "agentrt.engine",
    "END": "agentrt.graph",
    "Agent": "agentrt.graph",
    "Workflow": "agentrt.graph",
    "WorkflowError": "agentrt.graph",
    "append": "agentrt.graph",
    "ProgramResult": "agentrt.runtime",
    "Runtime": "agentrt.runtime",
    "run": "agentrt.runtime",
    "tool": "agentrt.tools",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def lazy_exports(package: str, exports: dict[str, str]):
    """A package's PEP 562 `__getattr__` and `__dir__`: `exports` (name -> module) are imported on
    first use, and its submodules are reachable as attributes without importing them first."""
    namespace = vars(importlib.import_module(package))

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            namespace[name] = value              # later look-ups skip this function
            return value
        return _submodule(package, name)

    def __dir__() -> list[str]:
        return sorted({*namespace, *namespace.get("__all__", ())})

    return __getattr__, __dir__


def _submodule(package: str, name: str) -> Any:
    missing = AttributeError(f"module {package!r} has no attribute {name!r}")
    if name.startswith("__"):                    # e.g. __wrapped__, asked by inspect and doctest
        raise missing
    try:
        return importlib.import_module(f"{package}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{package}.{name}":
            raise                                # the submodule exists but one of its imports is missing
    raise missing


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
