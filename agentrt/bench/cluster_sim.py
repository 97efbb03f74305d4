"""The simulated scale-out: N replicas of a step-time profile on one virtual clock (agentrt.cluster.sim),
behind each router policy, running the same SWE-agent episodes (see agentrt.bench.cluster_bench)."""
from __future__ import annotations

import asyncio
import time

from agentrt.bench.cluster_bench import AGENT, ClusterRun, Log, ProgramTime, TokenEpisode
from agentrt.clock import VirtualClock, run_virtual
from agentrt.cluster.replica import Replica
from agentrt.cluster.router import Router, RouterConfig, token_blocks
from agentrt.cluster.sim import busy_seconds, sim_model, sim_replicas
from agentrt.engine.params import SamplingParams
from agentrt.engine.sim import StepProfile
from agentrt.server.programs import ProgramIds


class _Blocks:
    """A growing context's chained block hashes, extended as the context grows (append-only)."""
    __slots__ = ("size", "hashes", "_tail")

    def __init__(self, size: int):
        self.size, self.hashes, self._tail = size, [], 0

    def of(self, context: list[int]) -> list[int]:
        full = len(context) // self.size * self.size
        if full > self._tail:
            parent = self.hashes[-1] if self.hashes else 0
            for i in range(self._tail, full, self.size):
                parent = hash((parent, tuple(context[i:i + self.size])))
                self.hashes.append(parent)
            self._tail = full
        return self.hashes


async def run_episode(ep: TokenEpisode, router: Router, replicas: dict[str, Replica], clock, t0: float,
                      block_size: int) -> ProgramTime:
    """One program's turns through the router, its tool pauses slept on the loop's clock."""
    p = ep.program
    await asyncio.sleep(max(0.0, t0 + p.arrival_s - clock.now()))
    start, context, blocks, served = clock.now(), list(ep.opening), _Blocks(block_size), set()
    for k, turn in enumerate(p.turns):
        last = k == len(p.turns) - 1
        d = router.route(p.program_id, blocks.of(context), len(context))
        if d.moved_from is not None and router.policy == "program":
            replicas[d.moved_from].end_program(p.program_id)       # it knows the program moved
        served.add(d.replica)
        params = SamplingParams(max_tokens=turn.output_tokens, ignore_eos=True)
        try:
            out = await replicas[d.replica].generate(context, params, ProgramIds(p.program_id, AGENT, last),
                                                     tool=None if last else turn.tool)
        finally:
            router.done(d, p.program_id, ended=last)
        context += out.token_ids
        if last:
            break
        await asyncio.sleep(turn.tool_seconds)
        context += ep.results[k]
    for name in served - {d.replica}:
        replicas[name].end_program(p.program_id)                  # the front tells every replica it used
    return ProgramTime(p.program_id, p.arrival_s, clock.now() - start, len(p.turns))


def sim_run(episodes: list[TokenEpisode], router_policy: str, n: int, profile: StepProfile, run: int, *,
            policy: str = "agentrt", config: RouterConfig | None = None, loaded=None, **replica_options) -> ClusterRun:
    """One run of one router over `n` fresh simulated replicas."""
    clock = VirtualClock()
    reps = {r.name: r for r in sim_replicas(n, profile, clock, loaded or sim_model(), policy=policy, **replica_options)}
    router = Router(router_policy, list(reps), config)
    block_size = next(iter(reps.values())).engine.engine.config.block_size

    async def main():
        t0 = clock.now()
        times = await asyncio.gather(*(run_episode(ep, router, reps, clock, t0, block_size) for ep in episodes))
        makespan = clock.now() - t0
        for r in reps.values():
            await r.engine.close()
        return list(times), makespan
    times, makespan = run_virtual(main(), clock)
    stats = [r.stats() for r in reps.values()]
    return ClusterRun(router_policy, run, times, makespan, sum(s["output_tokens"] for s in stats),
                      sum(s["prompt_tokens"] for s in stats), sum(s["cached_tokens"] for s in stats),
                      {r.name: busy_seconds(r) for r in reps.values()}, {s["replica"]: s["requests"] for s in stats},
                      router.moves, router.failovers)


def sim_bench(episodes: list[TokenEpisode], routers: list[str], n: int, profile: StepProfile, runs: int,
              log: Log, **options) -> dict[str, list[ClusterRun]]:
    """Every router, `runs` times, interleaved (run k starts k-1 routers later in the list)."""
    loaded = sim_model()
    results: dict[str, list[ClusterRun]] = {r: [] for r in routers}
    for k in range(1, runs + 1):
        shift = (k - 1) % len(routers)
        for name in routers[shift:] + routers[:shift]:
            t = time.perf_counter()
            rec = sim_run(episodes, name, n, profile, k, loaded=loaded, **options)
            results[name].append(rec)
            f = rec.figures()
            log(f"  run {k}/{runs} {name:<12} {n} replicas: mean JCT {f['mean_jct_s']:.1f} s, "
                f"makespan {f['makespan_s']:.0f} s, hit {f['hit_rate']:.1%}, load max/mean "
                f"{f['max_over_mean_load']:.2f} ({time.perf_counter() - t:.0f} s of CPU)")
    return results
