"""What importing agentrt loads: the DSL and the tools without torch, the engine names on first use.

Each check runs in a fresh interpreter: this one has torch loaded by other tests already."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers")


def fresh_python(code: str) -> dict:
    """Run `code` in a new interpreter; it prints one JSON object as its last line."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def heavy_modules_after(statement: str) -> list[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    return fresh_python(code)


@pytest.mark.parametrize("statement", [
    "import agentrt",
    "import agentrt.graph",
    "import agentrt.tools",
    "import agentrt.engine.params",
    "from agentrt import Workflow, Agent, tool, END, append, WorkflowError",
    "from agentrt.graph import Workflow, Agent, CompiledWorkflow",
    "from agentrt.engine import SamplingParams",
])
def test_the_dsl_and_the_tools_import_no_torch(statement):
    assert heavy_modules_after(statement) == []


def test_a_workflow_compiles_without_torch():
    statement = ("from pydantic import BaseModel\n"
                 "from agentrt import Agent, Workflow\n"
                 "class S(BaseModel):\n    q: str = ''\n    a: str = ''\n"
                 "Workflow('w', S).llm('ask', Agent('x', params={'max_tokens': 4}), '{q}', output='a').compile()")
    assert heavy_modules_after(statement) == []


def test_the_engine_is_imported_on_first_use():
    assert "torch" in heavy_modules_after("from agentrt import LLMEngine")
    assert "torch" in heavy_modules_after("import agentrt.engine as e; e.AsyncLLMEngine")


def test_every_exported_name_resolves_to_its_definition():
    import agentrt
    import agentrt.engine
    from agentrt.engine.async_engine import AsyncLLMEngine
    from agentrt.engine.llm_engine import LLMEngine
    from agentrt.engine.loader import MODEL_ALIASES
    from agentrt.graph.workflow import Workflow
    from agentrt.runtime.runtime import Runtime, run
    from agentrt.tools.spec import tool

    assert agentrt.LLMEngine is LLMEngine and agentrt.engine.LLMEngine is LLMEngine
    assert agentrt.AsyncLLMEngine is AsyncLLMEngine and agentrt.engine.MODEL_ALIASES is MODEL_ALIASES
    assert (agentrt.Workflow, agentrt.Runtime, agentrt.run, agentrt.tool) == (Workflow, Runtime, run, tool)
    for package in (agentrt, agentrt.engine):
        for name in package.__all__:
            assert getattr(package, name) is not None, f"{package.__name__}.{name}"
            assert name in dir(package)


def test_star_import_and_unknown_names():
    names = fresh_python("import json\nfrom agentrt import *\nfrom agentrt.engine import *\n"
                         "print(json.dumps(sorted(k for k in dir() if not k.startswith('_'))))")
    assert {"Runtime", "Workflow", "LLMEngine", "EngineConfig", "RequestMeta", "MODEL_ALIASES"} <= set(names)
    import agentrt
    import agentrt.engine
    with pytest.raises(AttributeError, match="has no attribute 'LLMEngin'"):
        agentrt.engine.LLMEngin
    with pytest.raises(AttributeError, match="has no attribute 'nothing_here'"):
        agentrt.nothing_here


def test_subpackages_are_attributes_without_importing_them_first():
    found = fresh_python("import json, agentrt\n"
                         "print(json.dumps([agentrt.runtime.__name__, agentrt.engine.llm_engine.__name__]))")
    assert found == ["agentrt.runtime", "agentrt.engine.llm_engine"]
