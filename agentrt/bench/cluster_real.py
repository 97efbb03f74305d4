"""The real scale-out: N Ray actor replicas of a model behind the OpenAI endpoint of the cluster
front (agentrt.cluster.app), the SWE-agent episodes driven through HTTP as a mini-swe-agent
client would (chat completions with the whole conversation, program_id, is_last_step), a fresh
set of replicas per router (see agentrt.bench.cluster_bench for the figures)."""
from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict

from agentrt.bench.cluster_bench import AGENT, ClusterRun, Log, ProgramTime
from agentrt.bench.swe import SweProgram, SweShape, system_prompt, text


async def drive_program(client, model: str, p: SweProgram, shape: SweShape, t0: float, tally: dict) -> ProgramTime:
    """One episode through the endpoint; tool pauses are real sleeps."""
    await asyncio.sleep(max(0.0, t0 + p.arrival_s - time.monotonic()))
    start, rng = time.monotonic(), random.Random(f"{shape.seed}-{p.program_id}")
    messages = [{"role": "system", "content": system_prompt(shape)}, {"role": "user", "content": p.task}]
    for k, turn in enumerate(p.turns):
        last = k == len(p.turns) - 1
        body = {"model": model, "messages": messages, "max_tokens": turn.output_tokens, "ignore_eos": True,
                "temperature": 0.0, "program_id": p.program_id, "agent_id": AGENT, "is_last_step": last}
        r = await client.post("/v1/chat/completions", json=body)
        if r.status_code != 200:
            tally["errors"].append(f"{p.program_id} turn {k}: {r.status_code} {r.text[:200]}")
            break
        answer, replica = r.json(), r.headers.get("x-agentrt-replica", "?")
        u = answer["usage"]
        cached = u.get("prompt_tokens_details", {}).get("cached_tokens", 0)
        tally["prompt"] += u["prompt_tokens"]
        tally["cached"] += cached
        tally["output"] += u["completion_tokens"]
        tally["load"][replica] += u["prompt_tokens"] - cached + u["completion_tokens"]
        tally["requests"][replica] += 1
        if last:
            break
        messages.append({"role": "assistant", "content": answer["choices"][0]["message"]["content"] or "."})
        await asyncio.sleep(turn.tool_seconds)
        messages.append({"role": "user", "content": f"[{turn.tool}] " + text(rng, turn.result_tokens)})
    return ProgramTime(p.program_id, p.arrival_s, time.monotonic() - start, len(p.turns))


def real_run(programs: list[SweProgram], shape: SweShape, router_policy: str, n: int, spec, run: int) -> ClusterRun:
    """One run of one router: fresh replicas, a front on a free port, the episodes through it."""
    import httpx

    from agentrt.cluster.app import create_cluster_app
    from agentrt.cluster.front import ClusterFront
    from agentrt.cluster.ray_replicas import ReplicaSet
    from agentrt.cluster.router import Router
    from agentrt.server.run import ServerThread
    replicas = ReplicaSet(n, spec)
    asyncio.run(replicas.wait_ready())
    front = ClusterFront(replicas, Router(router_policy, replicas.names))
    tally = {"prompt": 0, "cached": 0, "output": 0, "load": defaultdict(int), "requests": defaultdict(int),
             "errors": []}
    try:
        with ServerThread(create_cluster_app(front, model_name=spec.served_name)) as url:
            async def main():
                async with httpx.AsyncClient(base_url=url, timeout=600) as client:
                    t0 = time.monotonic()
                    times = await asyncio.gather(*(drive_program(client, spec.served_name, p, shape, t0, tally)
                                                   for p in programs))
                    return list(times), time.monotonic() - t0
            times, makespan = asyncio.run(main())
    finally:
        replicas.shutdown()
    loads = {name: float(tally["load"].get(name, 0)) for name in replicas.names}
    return ClusterRun(router_policy, run, times, makespan, tally["output"], tally["prompt"], tally["cached"], loads,
                      dict(tally["requests"]), front.router.moves, front.counters.failovers, tally["errors"])


def real_bench(programs: list[SweProgram], shape: SweShape, routers: list[str], n: int, spec, runs: int,
               log: Log, *, ray_address: str | None = None, num_cpus: int | None = None) -> dict[str, list[ClusterRun]]:
    """Every router, `runs` times, interleaved, on one local Ray cluster (or `ray_address`)."""
    from agentrt.cluster.ray_replicas import require_ray
    ray = require_ray()
    if not ray.is_initialized():
        ray.init(address=ray_address, num_cpus=None if ray_address else (num_cpus or n), include_dashboard=False,
                 log_to_driver=False)
    results: dict[str, list[ClusterRun]] = {r: [] for r in routers}
    for k in range(1, runs + 1):
        shift = (k - 1) % len(routers)
        for name in routers[shift:] + routers[:shift]:
            t = time.perf_counter()
            rec = real_run(programs, shape, name, n, spec, k)
            results[name].append(rec)
            f = rec.figures()
            log(f"  run {k}/{runs} {name:<12} {n} replicas: mean JCT {f['mean_jct_s']:.2f} s, makespan "
                f"{f['makespan_s']:.1f} s, hit {f['hit_rate']:.1%}, load max/mean {f['max_over_mean_load']:.2f}"
                f"{', %d errors' % len(rec.errors) if rec.errors else ''} ({time.perf_counter() - t:.0f} s)")
    return results
