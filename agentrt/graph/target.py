"""Find the workflow a command names: `path/to/file.py[:attr]` or `package.module:attr`."""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from agentrt.graph import CompiledWorkflow, Workflow, WorkflowError


class TargetError(ValueError):
    """The target cannot be loaded; the message says why and what would work."""


def load_workflow(target: str) -> CompiledWorkflow:
    """Import the target and compile its workflow (WorkflowError if it is invalid)."""
    source, attr = _split(target)
    module = _import_file(source) if _is_file(source) else _import_module(source)
    obj = _pick(module, source, attr)
    if isinstance(obj, type):                       # e.g. the state model: calling it builds no workflow
        raise TargetError(f"{target} is a class ({obj.__name__}), not a Workflow (or a function returning one)")
    if callable(obj) and not isinstance(obj, (Workflow, CompiledWorkflow)):
        try:
            obj = obj()                             # a factory: build_workflow() -> Workflow
        except WorkflowError:
            raise
        except Exception as exc:                    # e.g. it needs arguments: no traceback, say why
            raise TargetError(f"calling {target}() failed: {type(exc).__name__}: {exc} "
                              f"(a workflow factory is called with no arguments)") from exc
    if isinstance(obj, Workflow):
        return obj.compile()
    if isinstance(obj, CompiledWorkflow):
        return obj
    raise TargetError(f"{target} is a {type(obj).__name__}, not a Workflow (or a function returning one)")


def _split(target: str) -> tuple[str, str | None]:
    if ":" in target and not (len(target) > 1 and target[1] == ":" and target.count(":") == 1):
        source, attr = target.rsplit(":", 1)
        if not attr.isidentifier():
            raise TargetError(f"{attr!r} in {target!r} is not a Python name; use FILE.py[:attr] or module:attr")
        return source, attr
    return target, None


def _is_file(source: str) -> bool:
    return source.endswith(".py") or "/" in source or "\\" in source or Path(source).exists()


def _import_file(source: str) -> ModuleType:
    path = Path(source)
    if not path.is_file():
        raise TargetError(f"no such file: {source}")
    name = f"agentrt_target_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(path.resolve().parent))   # like `python file.py`: siblings import
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise TargetError(f"cannot import {source}: {type(exc).__name__}: {exc}") from exc
    finally:
        sys.path.remove(str(path.resolve().parent))
    return module


def _import_module(source: str) -> ModuleType:
    try:
        return importlib.import_module(source)
    except ModuleNotFoundError as exc:
        raise TargetError(f"no such file or module: {source} ({exc})") from exc
    except Exception as exc:
        raise TargetError(f"cannot import {source}: {type(exc).__name__}: {exc}") from exc


def _pick(module: ModuleType, source: str, attr: str | None):
    found = [k for k, v in vars(module).items() if isinstance(v, (Workflow, CompiledWorkflow))]
    if attr is not None:
        if not hasattr(module, attr):
            raise TargetError(f"{source} has no attribute {attr!r} (workflows in it: {', '.join(found) or 'none'})")
        return getattr(module, attr)
    if "workflow" in found:
        return module.workflow
    if len(found) == 1:
        return getattr(module, found[0])
    if not found:
        raise TargetError(f"{source} defines no Workflow; name one with {source}:ATTR")
    raise TargetError(f"{source} defines several workflows ({', '.join(found)}); pick one with {source}:NAME")
