"""`agentrt run` and `agentrt graph` on small workflows written to tmp_path, on the tiny model.

Every LLM turn has a fixed length (ignore_eos), so counts do not depend on the random model's
text. The engine's weights are loaded once per process (the loader caches them), so each run
costs little.
"""
from __future__ import annotations

import json
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agentrt.cli import app

TINY = ["--model", "tiny-random-llama"]
RESEARCH_TEAM = Path(__file__).resolve().parent.parent / "workflows" / "research_team.py"

HEADER = """
from pydantic import BaseModel
from agentrt import Agent, SamplingParams, Workflow

class Notes(BaseModel):
    topic: str = "bees"
    count: int = 0
    draft: str = ""
    summary: str = ""

FIXED = SamplingParams(max_tokens=4, ignore_eos=True)
writer = Agent("writer", "You write.", params=FIXED)
editor = Agent("editor", "You edit.", params=FIXED)

def pair(name="pair"):
    wf = Workflow(name, Notes, output="summary")
    wf.llm("write", writer, "Write about {topic}", output="draft")
    wf.llm("edit", editor, "Edit: {draft}", output="summary")
    wf.edge("write", "edit")
    return wf
"""

PAIR = HEADER + """
workflow = pair()
other = pair("other")
NUMBER = 3

def build():
    return pair("built")

def needs_args(name):
    return pair(name)
"""

TWO = HEADER + """
alpha = pair("alpha")
beta = pair("beta")
"""

INVALID = HEADER + """
workflow = Workflow("broken", Notes, output="verdict")
workflow.llm("write", writer, "Write about {topic}", output="draft")
workflow.llm("edit", editor, "Edit: {draft}", output="summary")
workflow.edge("write", "edti")
"""

FAILING = HEADER + """
def boom(state):
    raise RuntimeError("kaboom")

workflow = pair("failing")
workflow.python("boom", boom)
workflow.edge("edit", "boom")
"""


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


def cli(runner: CliRunner, *args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def write(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


@pytest.fixture
def pair_file(tmp_path) -> Path:
    return write(tmp_path, "pair.py", PAIR)


def run_json(runner, *args) -> dict:
    result = cli(runner, "run", *args, *TINY, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)          # stdout is exactly one JSON object, nothing else


# ---------------------------------------------------------------------------------------- run
def test_run_prints_table_and_summary(runner, pair_file):
    result = cli(runner, "run", pair_file, *TINY)
    assert result.exit_code == 0, result.stderr
    assert "pair-0" in result.stdout and "done" in result.stdout
    assert "1/1 done, 0 failed" in result.stdout and "prefix hit rate" in result.stdout
    assert "running 1 × pair on tiny-random-llama" in result.stderr        # progress goes to stderr
    assert "[1/1] pair-0 done in" in result.stderr


def test_run_copies(runner, pair_file):
    result = cli(runner, "run", pair_file, *TINY, "-n", "3")
    assert result.exit_code == 0, result.stderr
    for pid in ("pair-0", "pair-1", "pair-2"):
        assert pid in result.stdout
    assert "3/3 done, 0 failed" in result.stdout
    assert "6 LLM calls" in result.stdout


@pytest.mark.parametrize("policy", ["lru", "agentrt"])
def test_run_under_a_chosen_policy(runner, pair_file, policy):
    result = cli(runner, "run", pair_file, *TINY, "-n", "2", "--policy", policy)
    assert result.exit_code == 0, result.stderr
    assert "2/2 done, 0 failed" in result.stdout


def test_runtime_defaults_to_the_agentrt_policy(make_engine):
    import asyncio
    from agentrt import Runtime
    from agentrt.sched.policies import AgentrtPolicy
    engine = make_engine(kv_cache_tokens=256)
    rt = Runtime(engine)
    assert isinstance(engine.pool.policy, AgentrtPolicy) and rt.table is not None
    assert engine.scheduler.config.order == "program"
    asyncio.run(rt.close())
    plain = make_engine(kv_cache_tokens=256)
    rt = Runtime(plain, policy=None)                 # the engine's own LRU, request order
    assert rt.table is None and plain.scheduler.config.order == "request"
    asyncio.run(rt.close())


def test_run_json_is_one_object_with_summary_and_programs(runner, pair_file):
    data = run_json(runner, pair_file, "--input", '{"topic": "solar power", "count": 2}')
    assert data["workflow"] == "pair" and data["model"] == "tiny-random-llama"
    summary = data["summary"]
    assert summary["programs"] == summary["done"] == 1 and summary["failed"] == 0
    assert "prefix_hit_rate" in summary and 0.0 <= summary["prefix_hit_rate"] <= 1.0
    assert summary["llm_calls"] == 2 and summary["tokens_out"] == 8          # 2 turns of exactly 4 tokens
    [program] = data["programs"]
    assert program["program_id"] == "pair-0" and program["status"] == "done" and program["error"] is None
    assert program["state"]["topic"] == "solar power" and program["state"]["count"] == 2
    assert program["output"] == program["state"]["summary"]
    assert {"jct", "steps", "tokens_in", "cached_tokens", "hit_rate"} <= set(program)


def test_run_input_file_times_copies(runner, pair_file, tmp_path):
    inputs = tmp_path / "jobs.jsonl"
    inputs.write_text('{"topic": "rivers"}\n\n{"topic": "lakes", "count": 7}\n')   # blank lines are skipped
    data = run_json(runner, pair_file, "--input-file", inputs)
    assert [p["state"]["topic"] for p in data["programs"]] == ["rivers", "lakes"]
    data = run_json(runner, pair_file, "--input-file", inputs, "-n", "2")
    assert data["summary"]["programs"] == data["summary"]["done"] == 4
    assert [p["state"]["topic"] for p in data["programs"]] == ["rivers", "rivers", "lakes", "lakes"]
    assert len({p["program_id"] for p in data["programs"]}) == 4


def test_run_trace_is_jsonl(runner, pair_file, tmp_path):
    trace = tmp_path / "run.jsonl"
    result = cli(runner, "run", pair_file, *TINY, "-n", "2", "--trace", trace)
    assert result.exit_code == 0, result.stderr
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    assert all({"t", "program", "event"} <= set(e) for e in events)
    for pid in ("pair-0", "pair-1"):
        kinds = [e["event"] for e in events if e["program"] == pid]
        assert kinds[0] == "program_start" and kinds[-1] == "program_end"
        assert kinds.count("llm_end") == 2
    ends = [e for e in events if e["event"] == "program_end"]
    assert [e["status"] for e in ends] == ["done", "done"]


def test_failed_program_exits_1(runner, tmp_path):
    path = write(tmp_path, "failing.py", FAILING)
    result = cli(runner, "run", path, *TINY)
    assert result.exit_code == 1
    assert "failing-0" in result.stdout and "failed" in result.stdout
    assert "kaboom" in result.stdout                                   # the output panel shows the error
    assert "0/1 done, 1 failed" in result.stdout
    data = json.loads(cli(runner, "run", path, *TINY, "--json").stdout)
    [program] = data["programs"]
    assert program["status"] == "failed" and "boom" in program["error"] and "kaboom" in program["error"]


# ---------------------------------------------------------------------------------------- targets
def test_target_file_attr(runner, pair_file):
    assert run_json(runner, f"{pair_file}:other")["workflow"] == "other"


def test_target_factory_function(runner, pair_file):
    data = run_json(runner, f"{pair_file}:build")
    assert data["workflow"] == "built" and data["programs"][0]["program_id"] == "built-0"


def test_target_module_attr(runner, tmp_path, monkeypatch):
    name = f"cli_run_flows_{uuid.uuid4().hex[:8]}"
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("")
    write(tmp_path / name, "flows.py", PAIR)
    write(tmp_path, f"{name}_top.py", PAIR)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert run_json(runner, f"{name}.flows:other")["workflow"] == "other"       # package.module:attr
        assert run_json(runner, f"{name}_top:build")["workflow"] == "built"         # module:factory
        result = cli(runner, "graph", f"{name}.flows:workflow", "--json")
        assert result.exit_code == 0 and json.loads(result.stdout)["workflow"] == "pair"
    finally:
        for mod in [m for m in sys.modules if m.startswith(name)]:
            del sys.modules[mod]


def test_target_with_two_workflows_needs_an_attr(runner, tmp_path):
    path = write(tmp_path, "two.py", TWO)
    result = cli(runner, "run", path, *TINY)
    assert result.exit_code == 2
    assert "several workflows (alpha, beta)" in result.stderr and f"{path}:NAME" in result.stderr
    assert run_json(runner, f"{path}:beta")["workflow"] == "beta"


# ---------------------------------------------------------------------------------------- usage errors
@pytest.mark.parametrize("args, message", [
    (["{dir}/missing.py"], "no such file: {dir}/missing.py"),
    (["{pair}:nothing"], "has no attribute 'nothing' (workflows in it: workflow, other)"),
    (["{pair}:NUMBER"], "is a int, not a Workflow"),
    (["{pair}:Notes"], "is a class (Notes), not a Workflow"),
    (["{pair}:needs_args"], "needs_args() missing 1 required positional argument"),
    (["no_such_module_xyz:flow"], "no such file or module: no_such_module_xyz"),
    (["{pair}", "--input", "{not json"], "--input is not valid JSON"),
    (["{pair}", "--input", "[1, 2]"], "--input must be a JSON object of state fields, got list"),
    (["{pair}", "--input", '{"count": "many"}'], "count: Input should be a valid integer"),
    (["{pair}", "--input", '{"colour": "red"}'], "'colour'"),
    (["{pair}", "--input-file", "{dir}/nope.jsonl"], "no such input file: {dir}/nope.jsonl"),
    (["{pair}", "--input-file", "{dir}/bad.jsonl"], "bad.jsonl:2 is not valid JSON"),
    (["{pair}", "--model", "no-such-model"], "unknown model 'no-such-model'"),
    (["{pair}", "--input", "{}", "--input-file", "{dir}/bad.jsonl"], "give --input or --input-file, not both"),
    (["{pair}", "--trace", "{dir}/no/such/dir/run.jsonl"], "cannot write the trace to {dir}/no/such/dir/run.jsonl"),
    (["{pair}", "--input-file", "{dir}/latin1.jsonl"], "cannot read {dir}/latin1.jsonl: 'utf-8' codec can't decode"),
    (["{pair}", "--input-file", "{dir}/empty.jsonl"], "{dir}/empty.jsonl has no inputs (one JSON object per line)"),
    (["{dir}/raises.py"], "cannot import {dir}/raises.py: RuntimeError: broken at import"),
    (["{pair}", "--policy", "fifo"], "unknown policy 'fifo'; choose from lru, continuum, continuum-ttl, kvflow, agentrt"),
])
def test_run_usage_errors_exit_2_with_one_line(runner, pair_file, tmp_path, args, message):
    (tmp_path / "bad.jsonl").write_text('{"topic": "ok"}\n{"topic": \n')
    (tmp_path / "latin1.jsonl").write_bytes('{"topic": "café"}\n'.encode("latin-1"))
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    (tmp_path / "raises.py").write_text('raise RuntimeError("broken at import")\n')
    fill = {"dir": str(tmp_path), "pair": str(pair_file)}
    args = [a.format(**fill) if a.startswith("{dir}") or a.startswith("{pair}") else a for a in args]
    result = cli(runner, "run", *args, *(TINY if "--model" not in args else []))
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message.format(**fill) in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_invalid_workflow_lists_every_problem(runner, tmp_path):
    path = write(tmp_path, "invalid.py", INVALID)
    for command in ("run", "graph"):
        result = cli(runner, command, path, *(TINY if command == "run" else []))
        assert result.exit_code == 2 and result.stdout == ""
        lines = result.stderr.splitlines()
        assert lines[0] == "error: workflow 'broken' is invalid:"
        assert any("unknown step 'edti'; did you mean 'edit'?" in ln for ln in lines[1:])
        assert any("output 'verdict' is not a field of Notes" in ln for ln in lines[1:])
        assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------- graph
def test_graph_prints_step_table(runner, pair_file):
    result = cli(runner, "graph", pair_file)
    assert result.exit_code == 0, result.stderr
    for word in ("pair", "write", "edit", "writer", "editor", "END", "llm"):
        assert word in result.stdout


def test_graph_json(runner, pair_file):
    result = cli(runner, "graph", pair_file, "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert [s["name"] for s in info["steps"]] == ["write", "edit"]
    assert {(e["from"], e["to"]) for e in info["edges"]} == {("write", "edit"), ("edit", "__end__")}
    assert info["steps_to_execution_from_start"] == {"writer": 0, "editor": 1}
    assert info["entry"] == "write" and info["output"] == "summary"


def test_graph_json_research_team(runner):
    info = json.loads(cli(runner, "graph", RESEARCH_TEAM, "--json").stdout)
    assert info["workflow"] == "research_team"
    assert info["steps_to_execution_from_start"] == {"planner": 0, "researcher": 3, "writer": 4, "reviewer": 5}
    kinds = {e["kind"] for e in info["edges"]}
    assert {"fan_out", "join", "branch"} <= kinds


def test_graph_png(runner, tmp_path):
    png = tmp_path / "team.png"
    result = cli(runner, "graph", RESEARCH_TEAM, "--png", png)
    assert result.exit_code == 0, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    assert f"wrote {png}" in result.stderr


@pytest.mark.parametrize("command", ["run", "graph"])
def test_help_shows_an_example(runner, command):
    result = cli(runner, command, "--help")
    assert result.exit_code == 0 and "Example" in result.stdout
