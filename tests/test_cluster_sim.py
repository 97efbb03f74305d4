"""The simulated scale-out (agentrt.cluster.sim + agentrt.bench.cluster_sim): replicas on one
virtual clock step side by side, and the routers differ as they should on SWE-agent episodes."""
from __future__ import annotations

import asyncio

import pytest

from agentrt.bench.cluster_bench import medians, targets, token_episodes
from agentrt.bench.cluster_sim import sim_run
from agentrt.bench.swe import SweShape
from agentrt.clock import VirtualClock, run_virtual
from agentrt.cluster.sim import sim_model, sim_replicas
from agentrt.engine.params import SamplingParams
from agentrt.engine.sim import load_profile
from agentrt.server.programs import ProgramIds

PROFILE = load_profile("h100x4-llama3-70b")


@pytest.fixture(scope="module")
def loaded():
    return sim_model()


def _elapsed(n_replicas: int, requests: int, loaded) -> float:
    clock = VirtualClock()
    reps = sim_replicas(n_replicas, PROFILE, clock, loaded, kv_tokens=65536)

    async def main():
        params = SamplingParams(max_tokens=64, ignore_eos=True)
        await asyncio.gather(*(reps[i % n_replicas].generate([i % 200] * 4000, params, ProgramIds(f"p{i}"))
                               for i in range(requests)))
        for r in reps:
            await r.engine.close()
        return clock.now()
    return run_virtual(main(), clock)


def test_replicas_on_one_virtual_clock_compute_side_by_side(loaded):
    one = _elapsed(1, 1, loaded)
    assert one > 0.3                                          # 4000 prefill tokens + 63 decode steps of a 70B
    assert _elapsed(4, 4, loaded) == pytest.approx(one, rel=0.02)      # four at once on four: the time of one
    assert _elapsed(1, 4, loaded) > 1.5 * one                 # four on one share its steps


def test_program_routing_keeps_context_that_round_robin_recomputes(loaded):
    shape = SweShape(programs=8, rate=2.0, seed=3, scale=0.1, min_turns=6, max_turns=8)
    episodes = token_episodes(shape)
    runs = {name: sim_run(episodes, name, 4, PROFILE, 1, loaded=loaded, kv_tokens=32768)
            for name in ("program", "round-robin")}
    prog, rr = runs["program"], runs["round-robin"]
    assert len(prog.programs) == len(rr.programs) == 8 and not prog.errors
    assert sum(prog.replica_requests.values()) == sum(len(e.program.turns) for e in episodes)
    fp, fr = prog.figures(), rr.figures()
    assert fp["hit_rate"] > fr["hit_rate"] + 0.2              # affinity: every turn reads its cached context
    assert fp["prefill_tokens"] * 2 < fr["prefill_tokens"]    # prompt tokens computed, not read from cache
    assert fp["mean_jct_s"] < fr["mean_jct_s"]
    table = {name: medians([run]) for name, run in runs.items()}
    assert {t["target"] for t in targets(table)} >= {"program mean JCT >= 2.0x round-robin",
                                                     "program: no replica above 1.5x the mean load"}


def test_a_host_tier_per_replica_turns_evictions_into_loads(loaded):
    """`--kv-host-tokens`: each simulated replica gets a host tier, so a context evicted from a
    small device tier comes back from host memory instead of being computed again."""
    shape = SweShape(programs=8, rate=4.0, seed=5, scale=0.1, min_turns=6, max_turns=8)
    episodes = token_episodes(shape)
    runs = {host: sim_run(episodes, "program", 2, PROFILE, 1, loaded=loaded, kv_tokens=1536, host_tokens=host)
            for host in (0, 65536)}
    without, with_host = runs[0].figures(), runs[65536].figures()
    assert without["programs"] == with_host["programs"] == 8
    assert with_host["prefill_tokens"] < without["prefill_tokens"] - 256     # contexts came back, not recomputed
    assert with_host["hit_rate"] > without["hit_rate"]


def test_bench_cluster_cli_passes_the_host_tier_and_prints_targets():
    import json

    from typer.testing import CliRunner

    from agentrt.cli import app
    result = CliRunner().invoke(app, ["bench", "cluster", "--sim", "h100x4-llama3-70b", "--replicas", "2",
                                      "--programs", "3", "--scale", "0.05", "--min-turns", "2", "--max-turns", "3",
                                      "--kv-device-tokens", "2048", "--kv-host-tokens", "8192", "--routers",
                                      "program,round-robin", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    obj = json.loads(result.stdout)
    assert obj["settings"]["kv_host_tokens"] == 8192 and set(obj["routers"]) == {"program", "round-robin"}
    assert any(t["target"].startswith("program mean JCT >= 2.0x round-robin") for t in obj["targets"])
