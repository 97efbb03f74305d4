"""A coding agent: a ReAct loop in which the coder writes files and runs Python in a private
temporary folder (its sandbox), then hidden tests check the solution and send failures back to
the coder, at most twice. The coder's conversation only grows, so every turn reuses the KV
cache of the turns before it.

    agentrt run workflows/coding_agent.py
    agentrt run workflows/coding_agent.py --input '{"task": "Write is_prime(n) in solution.py."}'
    agentrt run workflows/coding_agent.py:fixed_shape -n 8     # fixed lengths and tool pauses

Its sandbox tools can also run on remote workers (the sandbox then lives on the worker; workers
that share AGENTRT_SANDBOX_DIR share the files, so a call retried on another worker finds them):

    agentrt worker workflows/coding_agent.py --broker mqtt://127.0.0.1:1883     # two or more of these
    AGENTRT_BROKER=mqtt://127.0.0.1:1883 agentrt run workflows/coding_agent.py:remote
"""
from __future__ import annotations

import asyncio
import atexit
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from agentrt import END, Agent, SamplingParams, Workflow, tool
from agentrt.runtime import current_program
from agentrt.tools import current_site
from agentrt.tools.sandbox import Sandbox

TASK = ("Write a Python function fizzbuzz(n) in the file solution.py. It returns 'Fizz' when n is "
        "divisible by 3, 'Buzz' when divisible by 5, 'FizzBuzz' when divisible by both, else str(n).")
TESTS = """from solution import fizzbuzz
assert fizzbuzz(3) == 'Fizz', fizzbuzz(3)
assert fizzbuzz(10) == 'Buzz', fizzbuzz(10)
assert fizzbuzz(30) == 'FizzBuzz', fizzbuzz(30)
assert fizzbuzz(7) == '7', fizzbuzz(7)
print('all tests passed')
"""


class Coding(BaseModel):
    task: str = TASK
    tests: str = TESTS
    answer: str = ""
    report: str = ""


def sandbox() -> Sandbox:
    """This program's sandbox, made on first use and removed when the program ends."""
    try:
        program = current_program()
    except RuntimeError:                       # on a remote worker: no program here
        return _worker_sandbox()
    if "sandbox" not in program.resources:
        box = program.resources["sandbox"] = Sandbox(run_timeout=5.0)
        program.defer(box.close)
    return program.resources["sandbox"]


_WORKER_BOXES: dict[str, Sandbox] = {}
_BOXES_LOCK = threading.Lock()


def _worker_sandbox() -> Sandbox:
    """One sandbox per calling program (caller + program id), under $AGENTRT_SANDBOX_DIR when set."""
    site = current_site()
    key = re.sub(r"[^\w.-]", "_", f"{site.caller or 'local'}-{site.program or 'none'}")
    with _BOXES_LOCK:
        if key not in _WORKER_BOXES:
            base = os.environ.get("AGENTRT_SANDBOX_DIR")
            root = None
            if base:
                root = Path(base) / key
                root.mkdir(parents=True, exist_ok=True)
            box = _WORKER_BOXES[key] = Sandbox(root, run_timeout=5.0)
            atexit.register(box.close)
        return _WORKER_BOXES[key]


@tool(expected_duration=0.01)
def write_file(path: str, content: str) -> str:
    """Write a text file in your workspace."""
    return sandbox().write_file(path, content)


@tool(expected_duration=0.01)
def read_file(path: str) -> str:
    """Read a text file from your workspace."""
    return sandbox().read_file(path)


@tool(expected_duration=0.01)
def list_files() -> str:
    """List the files in your workspace."""
    return sandbox().list_files()


@tool(expected_duration=0.3, timeout=15.0)
def run_python(path: str) -> str:
    """Run a Python file from your workspace and show its output."""
    return sandbox().run_python(path)


CODE_BLOCK = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.S)


def run_tests(state: Coding) -> dict:
    """The hidden tests. A coder that answered with a code block instead of writing the file
    still gets it tested: the last block becomes solution.py."""
    return {"report": _check(sandbox(), state.tests, state.answer)}


def _check(box: Sandbox, tests: str, answer: str) -> str:
    blocks = CODE_BLOCK.findall(answer)
    if blocks and box.read_file("solution.py").startswith("error:"):
        box.write_file("solution.py", blocks[-1])
    box.write_file("hidden_tests.py", tests)
    return box.run_python("hidden_tests.py")


@tool(expected_duration=0.3, timeout=15.0)
def check(tests: str, answer: str) -> str:
    """Run the hidden tests against solution.py (the `test` step, as a tool for remote workers)."""
    return _check(sandbox(), tests, answer)


def passed(state: Coding) -> str:
    return END if state.report.startswith("exit code 0") else "fix"


def build(*, fixed_shape: bool = False, rounds: int = 4, output_tokens: int = 32,
          tool_seconds: float | Callable[[], float] = 0.5, tools: dict | None = None) -> Workflow:
    """The workflow. `fixed_shape=True` is a graph-driven loop of `rounds` coder turns of exactly
    `output_tokens`, each followed by a tool pause of `tool_seconds` (a number, or a function
    drawing one per call) — the shape of a coding session without depending on the model."""
    if fixed_shape:
        return _fixed_shape(rounds, output_tokens, tool_seconds)
    tools = tools or {}
    coder = Agent("coder", "You are a Python programmer. You work in small steps: write the code to a "
                           "file, run it, read the output, fix what is wrong.",
                  tools=[tools.get(t.name, t) for t in (write_file, read_file, list_files, run_python)], max_turns=6,
                  params=SamplingParams(max_tokens=256))
    wf = Workflow("coding_agent", Coding, output="report",
                  description="coder (ReAct with file and Python tools) -> hidden tests -> fix loop")
    wf.llm("solve", coder, "{task}", output="answer")
    if "check" in tools:                       # the sandbox lives on the workers: so do the tests
        wf.tool("test", tools["check"], {"tests": "{tests}", "answer": "{answer}"}, output="report")
    else:
        wf.python("test", run_tests)
    wf.llm("fix", coder, "The tests failed:\n{report}\nFix solution.py.", output="answer")
    wf.edge("solve", "test")
    wf.branch("test", passed, to=["fix", END], max_loops=2)
    wf.edge("fix", "test")
    return wf


class Session(BaseModel):
    task: str = TASK
    observation: str = "(nothing yet)"
    answer: str = ""


def _fixed_shape(rounds: int, output_tokens: int, tool_seconds: float | Callable[[], float]) -> Workflow:
    duration = tool_seconds if callable(tool_seconds) else (lambda: float(tool_seconds))
    mean = None if callable(tool_seconds) else float(tool_seconds)

    @tool(name="run_python", expected_duration=mean)
    async def run_stub(seconds: float) -> str:
        """Run code (a fixed-time stand-in)."""
        await asyncio.sleep(seconds)
        return f"exit code 0 after {seconds:.2f} s"

    coder = Agent("coder", "You are a Python programmer.",
                  params=SamplingParams(max_tokens=output_tokens, ignore_eos=True))
    wf = Workflow("coding_agent", Session, output="answer",
                  description=f"{rounds} x (coder turn, tool pause): a fixed-shape coding session")
    wf.llm("act", coder, "Task: {task}\nLast tool output: {observation}\nNext step?", output="answer")
    wf.tool("run", run_stub, {"seconds": lambda s: duration()}, output="observation")
    wf.edge("act", "run")
    if rounds > 1:
        wf.branch("run", lambda s: "act", to=["act", END], max_loops=rounds - 1, exit=END)
    return wf


def remote(broker: str | None = None, retries: int = 2, client=None) -> Workflow:
    """The coding agent with its sandbox tools (and hidden tests) on remote workers, each call
    retried on another worker up to `retries` times. Broker: `broker`, else $AGENTRT_BROKER (or
    a RemoteTools `client` of your own)."""
    if client is None:
        from agentrt.tools.mqtt import RemoteTools
        client = RemoteTools(broker or os.environ.get("AGENTRT_BROKER", "mqtt://127.0.0.1:1883"))
        atexit.register(client.close)
    names = ("write_file", "read_file", "list_files", "run_python", "check")
    return build(tools={name: client.tool(name, retries=retries) for name in names})


workflow = build()
fixed_shape = build(fixed_shape=True)
