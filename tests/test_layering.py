"""The architecture as the folder layout shows it: data flows graph -> runtime -> sched -> engine,
fronts on top. Checked on the import statements of every module (also those inside functions)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "agentrt"

# what each layer must never import (directly or from inside a function)
FORBIDDEN = {
    "engine": ("agentrt.sched", "agentrt.runtime", "agentrt.graph", "agentrt.bench", "agentrt.cli",
               "agentrt.tools"),
    "sched": ("agentrt.runtime", "agentrt.bench", "agentrt.cli"),
    "graph": ("agentrt.runtime", "agentrt.sched", "agentrt.engine.llm_engine", "agentrt.engine.async_engine",
              "agentrt.bench", "agentrt.cli"),
    "runtime": ("agentrt.bench", "agentrt.cli"),
    "tools": ("agentrt.runtime", "agentrt.sched", "agentrt.bench", "agentrt.cli"),
}


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_layer_imports_what_sits_above_it(layer):
    bad = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for name in imports_of(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[layer]):
                bad.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    assert not bad, "\n".join(bad)


def test_bench_reads_no_private_engine_or_runtime_state():
    """Benchmarks read what observers publish and the engine's public stats, nothing else."""
    bad = []
    for path in sorted((PACKAGE / "bench").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for needle in (".pool.", ".scheduler.schedule", "access_log =", ".sinks", "._consumers", "rt.programs"):
            if needle in text:
                bad.append(f"{path.name}: {needle}")
    assert not bad, bad
