"""A compiled workflow's identity: a JSON description of everything that decides how its
programs run (state fields, agents, steps, edges, branches, fan-outs, tools), a fingerprint of
it, and the changes between two descriptions in words. A durable run stores the description, so
resuming under a changed workflow is refused with what changed."""
from __future__ import annotations

import hashlib
import json
from typing import Any

from agentrt.graph.compile import CompiledWorkflow


def _code(obj: Any) -> str | None:
    """A callable by its qualified name (its body cannot be compared across processes, and a
    workflow file's module name differs from one import to the next)."""
    if obj is None:
        return None
    if isinstance(obj, str):
        return obj
    return getattr(obj, "__qualname__", type(obj).__name__)


def _params(params) -> Any:
    if params is None or callable(params):
        return _code(params)
    return params.model_dump(mode="json")


def _step(step) -> dict[str, Any]:
    d = {"kind": step.kind, "output": step.output}
    if step.kind == "llm":
        d.update(agent=step.agent, prompt=_code(step.prompt), parse=_code(step.parse),
                 params=_params(step.params))
    elif step.kind == "tool":
        d.update(tool=step.tool, args={k: _code(v) if callable(v) else v for k, v in step.args.items()},
                 on_error=step.on_error)
    else:
        d.update(fn=_code(step.fn))
    return d


def describe(wf: CompiledWorkflow) -> dict[str, Any]:
    return {
        "name": wf.name,
        "state": {name: str(f.annotation) for name, f in wf.state.model_fields.items()},
        "agents": {a.name: {"system": a.system, "params": a.params.model_dump(mode="json"),
                            "tools": [t.name for t in a.tools], "max_turns": a.max_turns}
                   for a in wf.agents.values()},
        "tools": sorted(wf.tools),
        "steps": {name: _step(step) for name, step in wf.steps.items()},
        "entry": wf.entry,
        "edges": dict(sorted(wf.edges.items())),
        "branches": {s: {"targets": list(b.targets), "max_loops": b.max_loops, "exit": b.exit,
                         "router": _code(b.router)} for s, b in sorted(wf.branches.items())},
        "fan_outs": {s: {"over": f.over, "to": f.to, "join": f.join, "item": f.item}
                     for s, f in sorted(wf.fan_outs.items())},
    }


def fingerprint(description: dict[str, Any]) -> str:
    text = json.dumps(description, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs, one line per thing: 'step 'review' was removed', 'step 'write': prompt changed', ..."""
    out: list[str] = []
    for section in ("steps", "agents", "state", "edges", "branches", "fan_outs"):
        a, b = old.get(section, {}), new.get(section, {})
        noun = section.rstrip("s") if section != "state" else "state field"
        for key in sorted(set(a) - set(b)):
            out.append(f"{noun} {key!r} was removed")
        for key in sorted(set(b) - set(a)):
            out.append(f"{noun} {key!r} is new")
        for key in sorted(set(a) & set(b)):
            if a[key] != b[key]:
                parts = sorted(k for k in set(a[key]) | set(b[key]) if a[key].get(k) != b[key].get(k)) \
                    if isinstance(a[key], dict) and isinstance(b[key], dict) else []
                out.append(f"{noun} {key!r}: {', '.join(parts) + ' changed' if parts else f'{a[key]!r} -> {b[key]!r}'}")
    for key in ("name", "entry", "tools"):
        if old.get(key) != new.get(key):
            out.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return out
