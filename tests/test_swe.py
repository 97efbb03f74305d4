"""The SWE-agent-shaped workload: its episodes (seeded, trace-drawn tool calls, growing contexts),
workflows/swe_agent.py running them turn for turn, per-turn sampling params in the DSL, the
`lru+host` bench policy, and `bench workflows -w swe_agent` on the simulated backend."""
from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agentrt import Agent, Runtime, SamplingParams, Workflow
from agentrt.bench.swe import SweShape, summary, swe_programs, tool_calls
from agentrt.bench.workflow_bench import engine_setup, parse_policies
from agentrt.cli import app
from runtime_helpers import P

ROOT = Path(__file__).resolve().parents[1]


def swe_module():
    spec = importlib.util.spec_from_file_location("swe_agent_test", ROOT / "workflows" / "swe_agent.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # pydantic resolves the state's annotations there
    spec.loader.exec_module(module)
    return module


def test_episodes_are_seeded_and_shaped_like_coding_agents():
    shape = SweShape(programs=40, rate=0.5, seed=3)
    a, b = swe_programs(shape), swe_programs(shape)
    assert a == b and swe_programs(SweShape(programs=40, rate=0.5, seed=4)) != a
    assert all(20 <= len(p.turns) <= 60 for p in a)
    arrivals = [p.arrival_s for p in a]
    assert arrivals == sorted(arrivals) and arrivals[0] == 0 and 40 < arrivals[-1] < 160   # ~80 s at 0.5/s
    facts = summary(a)
    assert facts["calls_under_1s"] > 0.5                        # most calls are quick ...
    assert facts["tool_time_in_calls_over_1s"] > 0.8            # ... most tool time is in slow ones
    assert 10_000 < facts["mean_context_tokens"] < 50_000       # full-scale contexts
    names = {name for name, _ in tool_calls()[0]}
    assert {t.tool for p in a for t in p.turns} <= names
    small = swe_programs(SweShape(programs=40, seed=3, scale=0.125))
    assert summary(small)["mean_context_tokens"] < facts["mean_context_tokens"] / 6
    with pytest.raises(ValueError, match="turns"):
        SweShape(min_turns=30, max_turns=20)


def test_the_workflow_runs_the_episode_turn_for_turn(make_engine):
    module = swe_module()
    shape = SweShape(programs=2, scale=0.01, time_scale=200.0, min_turns=4, max_turns=6)
    episodes = swe_programs(shape)
    wf = module.build(shape=shape)
    engine = make_engine(kv_cache_tokens=8192, max_model_len=8192)

    async def main():
        async with Runtime(engine, policy="agentrt") as rt:
            return await asyncio.gather(*(rt.run(wf, module.episode_input(shape, i)) for i in range(2)))
    results = asyncio.run(main())
    for ep, r in zip(episodes, results):
        assert r.status == "done", r.error
        assert r.llm_calls == len(ep.turns) and r.tool_calls == len(ep.turns)
        assert r.tokens_out == sum(t.output_tokens for t in ep.turns)   # each turn's own reply length
        assert len(r.state.observations) == len(ep.turns)
        assert r.cached_tokens > 0.5 * r.tokens_in                      # the growing context is reused


def test_per_turn_params_must_be_sampling_params(make_engine):
    from pydantic import BaseModel

    class S(BaseModel):
        n: int = 3
        out: str = ""
    ok = Workflow("ok", S, output="out")
    ok.llm("a", Agent("a", params=P(2)), "hi", output="out", params=lambda s: SamplingParams(max_tokens=s.n,
                                                                                             ignore_eos=True))
    bad = Workflow("bad", S, output="out")
    bad.llm("a", Agent("a", params=P(2)), "hi", output="out", params=lambda s: {"max_tokens": 2})
    engine = make_engine(kv_cache_tokens=1024)

    async def main():
        async with Runtime(engine) as rt:
            return await rt.run(ok, {}), await rt.run(bad, {})
    good, wrong = asyncio.run(main())
    assert good.status == "done" and good.tokens_out == 3
    assert wrong.status == "failed" and "params returned dict, not SamplingParams" in wrong.error


def test_lru_host_is_lru_with_the_host_tier_and_plain_lru_has_none():
    assert parse_policies("lru,lru+host,continuum-ttl") == ["lru", "lru+host", "continuum-ttl"]
    assert engine_setup("lru", 4096) == ("lru", 0)
    assert engine_setup("lru+host", 4096) == ("lru", 4096)
    assert engine_setup("agentrt", 4096) == ("agentrt", 4096)
    assert engine_setup("agentrt+ckpt", 0) == ("agentrt", 0)
    with pytest.raises(ValueError, match="needs a host tier"):
        engine_setup("lru+host", 0)


def test_bench_swe_agent_on_the_simulated_backend():
    result = CliRunner().invoke(app, ["bench", "workflows", "-w", "swe_agent", "--model", "tiny-random-llama",
                                      "--sim", "h100-llama3-8b", "--programs", "3", "--scale", "0.01",
                                      "--turns", "3-4", "--runs", "1", "--policies", "lru,lru+host,agentrt",
                                      "--kv-host-tokens", "4096", "--threads", "1", "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["workload"] == "swe_agent" and report["settings"]["turns"] == "3-4"
    assert list(report["policies"]) == ["lru", "lru+host", "agentrt"]
    assert report["policies"]["lru"]["median"]["host_loaded_blocks"] == 0
    assert {t["baseline"] for t in report["targets"]} >= {"lru", "continuum", "kvflow", "belady"}   # section 3's
    assert all(e["median"]["failed"] == 0 for e in report["policies"].values())
    bad = CliRunner().invoke(app, ["bench", "workflows", "-w", "swe_agent", "--turns", "9-3",
                                   "--model", "tiny-random-llama"])
    assert bad.exit_code == 2 and "LO <= HI" in bad.output + (bad.stderr or "")


@pytest.mark.parametrize("model", ["tiny-random-llama", "smollm2-135m"])
def test_conversations_tokenize_incrementally_and_exactly(model):
    """Long contexts are tokenized once: each prompt reuses the previous one's ids up to its last
    special token, and must equal tokenizing the whole rendering."""
    import random as rnd

    from agentrt.engine.loader import load_model
    from agentrt.runtime.conversation import Conversation
    tok = load_model(model, dense=False).tokenizer
    rng = rnd.Random(0)
    pieces = "alpha beta  gamma\n delta épsilon 12 3.5 <tag> `code` \t tab <|im_end|>".split(" ")
    conv = Conversation.start("system words " * 20)
    for turn in range(12):
        conv.add_user(" ".join(rng.choice(pieces) for _ in range(rng.randint(1, 120))))
        fork = conv.fork()
        full = tok.encode(tok.apply_chat_template(conv.messages, tokenize=False, add_generation_prompt=True),
                          add_special_tokens=False)
        assert conv.prompt_ids(tok) == full == fork.prompt_ids(tok), turn
        conv.add_assistant(" ".join(rng.choice(pieces) for _ in range(rng.randint(1, 40))) + rng.choice(["", "\n"]))
    assert conv._head[1], "nothing was reused"


def test_bench_agent_pipeline_shares_every_agents_fixed_prompt_across_programs():
    result = CliRunner().invoke(app, ["bench", "workflows", "-w", "agent_pipeline", "--model", "tiny-random-llama",
                                      "--sim", "h100-llama3-8b", "--programs", "4", "--scale", "0.05", "--rounds", "4",
                                      "--runs", "1", "--policies", "lru,kvflow", "--output-tokens", "8",
                                      "--kv-device-tokens", "8192", "--threads", "1", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    m = report["policies"]["kvflow"]["median"]
    assert m["failed"] == 0 and m["llm_calls"] == 4 * 4
    assert m["prefix_hit_rate"] > 0.5              # the agents' prompts are computed once for all four programs
    assert {t["baseline"] for t in report["targets"]} >= {"lru", "kvflow", "belady"}


def test_pipelines_of_several_kinds_have_agents_prompts_of_their_own():
    def run(kinds: str) -> dict:
        result = CliRunner().invoke(app, ["bench", "workflows", "-w", "agent_pipeline", "--model", "tiny-random-llama",
                                          "--sim", "h100-llama3-8b", "--programs", "4", "--scale", "0.05", "--rounds",
                                          "3", "--runs", "1", "--policies", "kvflow", "--output-tokens", "8",
                                          "--pipelines", kinds, "--kv-device-tokens", "8192", "--threads", "1",
                                          "--no-warmup", "--json"], catch_exceptions=False)
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)
    one, two = run("1"), run("2")
    m1, m2 = one["policies"]["kvflow"]["median"], two["policies"]["kvflow"]["median"]
    assert m1["llm_calls"] == m2["llm_calls"] == 4 * 3 and "2 kinds of pipeline" in two["describe"]
    assert m2["working_set_tokens"] > m1["working_set_tokens"]       # a second set of agents' prompts
    assert m2["prefix_hit_rate"] < m1["prefix_hit_rate"]


def test_bench_rate_sweep_reports_every_rate_and_plots(tmp_path):
    png = tmp_path / "sweep.png"
    args = ["bench", "workflows", "-w", "swe_agent", "--model", "tiny-random-llama", "--sim", "h100-llama3-8b",
            "--programs", "3", "--scale", "0.01", "--turns", "2-3", "--rates", "2,0.5", "--runs", "1",
            "--policies", "lru,agentrt", "--threads", "1", "--kv-device-tokens", "4096", "--plot", str(png), "--json"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    sweep = json.loads(result.stdout)["sweep"]
    assert [r["settings"]["rate"] for r in sweep] == [0.5, 2.0]
    assert all(set(r["policies"]) == {"lru", "agentrt"} for r in sweep)
    assert png.stat().st_size > 10_000 and (tmp_path / "sweep-timeline-2.png").is_file()
    bad = CliRunner().invoke(app, ["bench", "workflows", "-w", "swe_agent", "--model", "tiny-random-llama",
                                   "--rates", "0,1"])
    assert bad.exit_code == 2 and "must be > 0" in bad.output + (bad.stderr or "")


def test_a_simulated_sweep_in_two_processes_gives_the_same_figures():
    args = ["bench", "workflows", "-w", "swe_agent", "--model", "tiny-random-llama", "--sim", "h100-llama3-8b",
            "--programs", "3", "--scale", "0.01", "--turns", "2-3", "--rates", "0.5,2", "--runs", "1",
            "--policies", "lru,agentrt", "--threads", "1", "--kv-device-tokens", "4096", "--json"]
    sweeps = []
    for jobs in ("1", "2"):
        result = CliRunner().invoke(app, [*args, "--jobs", jobs], catch_exceptions=False)
        assert result.exit_code == 0, result.stderr
        sweeps.append(json.loads(result.stdout)["sweep"])
    figures = [[{p: e["median"]["mean_jct_s"] for p, e in r["policies"].items()} for r in sweep] for sweep in sweeps]
    assert figures[0] == figures[1] and [r["settings"]["rate"] for r in sweeps[1]] == [0.5, 2.0]
    real = CliRunner().invoke(app, ["bench", "workflows", "-w", "swe_agent", "--model", "tiny-random-llama",
                                    "--rates", "0.5,2", "--jobs", "2"])
    assert real.exit_code == 2 and "needs the machine to itself" in real.output + (real.stderr or "")


def test_fidelity_runs_a_real_report_again_on_the_simulator(tmp_path):
    saved = tmp_path / "real.json"
    real = CliRunner().invoke(app, ["bench", "workflows", "-w", "swe_agent", "--model", "tiny-random-llama",
                                    "--programs", "3", "--scale", "0.01", "--turns", "2-3", "--speedup", "20",
                                    "--runs", "1", "--policies", "lru,agentrt", "--threads", "1",
                                    "--kv-device-tokens", "2048", "--no-warmup", "--save", str(saved)],
                              catch_exceptions=False)
    assert real.exit_code == 0, real.stderr
    result = CliRunner().invoke(app, ["bench", "fidelity", str(saved), "--sim", "h100-llama3-8b", "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    fid = json.loads(result.stdout)
    rows = {r["policy"]: r for r in fid["rows"]}
    report = json.loads(saved.read_text())
    assert set(rows) == {"lru", "agentrt"}
    for p, row in rows.items():
        assert row["real"] == report["policies"][p]["median"]["mean_jct_s"] and row["sim"] > 0
        assert row["error"] == pytest.approx((row["sim"] - row["real"]) / row["real"])
    assert sorted(fid["real_ranking"]) == sorted(fid["sim_ranking"]) == ["agentrt", "lru"]
    assert fid["met"] == (fid["max_abs_error"] <= 0.10 and fid["same_ranking"])
    # the real run kept every step; the fidelity check set the profile against each kind of them
    logs = report["step_logs"]
    assert [len(runs[0]) for runs in logs.values()] == [report["policies"][p]["median"]["steps"] for p in logs]
    assert {k["kind"] for k in fid["steps"]} <= {"decode", "prefill", "mixed"} and fid["steps"]
    assert sum(k["steps"] for k in fid["steps"]) == sum(len(runs[0]) for runs in logs.values())
    assert sum(k["share_of_time"] for k in fid["steps"]) == pytest.approx(1.0, abs=0.01)
    # a profile fitted to those steps, written where asked, and read back by the simulator
    fitted = tmp_path / "fitted.json"
    cal = CliRunner().invoke(app, ["bench", "calibrate", "--model", "tiny-random-llama", "--threads", "1",
                                   "--from-report", str(saved), "--out", str(fitted), "--json"], catch_exceptions=False)
    assert cal.exit_code == 0, cal.stderr
    profile = json.loads(fitted.read_text())
    assert profile["decode_padded"] and "fitted to the" in profile["source"] and profile["base_s"] >= 0
    assert profile["fit"]["steps"] == sum(len(runs[0]) for runs in logs.values())
    stripped = tmp_path / "nosteps.json"
    stripped.write_text(json.dumps({k: v for k, v in report.items() if k not in ("step_logs", "step_fields")}))
    bad = CliRunner().invoke(app, ["bench", "calibrate", "--model", "tiny-random-llama", "--from-report",
                                   str(stripped), "--out", str(tmp_path / "x.json")])
    assert bad.exit_code == 2 and "kept no steps" in bad.output + (bad.stderr or "")
    bad = CliRunner().invoke(app, ["bench", "fidelity", str(tmp_path / "none.json")])
    assert bad.exit_code == 2 and "no such report" in bad.output + (bad.stderr or "")


@pytest.mark.slow
def test_sigterm_to_a_parallel_sweep_stops_its_workers_too():
    import os
    import signal
    import subprocess
    import time
    cmd = [sys.executable, "-m", "agentrt.cli", "bench", "workflows", "-w", "swe_agent", "--model", "tiny-random-llama",
           "--sim", "h100-llama3-8b", "--programs", "400", "--scale", "0.01", "--turns", "20-30", "--rates", "0.5,1",
           "--runs", "1", "--policies", "lru", "--threads", "1", "--kv-device-tokens", "4096", "--jobs", "2"]
    parent = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)

    def workers() -> list[int]:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(parent.pid)], capture_output=True, text=True).stdout
        return [int(x) for x in out.split()]
    try:
        deadline = time.monotonic() + 90
        while len(workers()) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        children = workers()
        assert len(children) >= 2, "the sweep never started its workers"
        time.sleep(2.0)
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=30) != 0
        deadline = time.monotonic() + 15
        while any(os.path.exists(f"/proc/{c}") and "Z" not in _state(c) for c in children) \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [c for c in children if os.path.exists(f"/proc/{c}") and "Z" not in _state(c)]
    finally:
        if parent.poll() is None:
            parent.kill()


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
