"""A front of your own (no DSL): tell the scheduler's door what your programs do, with typed events.

* `WorkflowScheduler(policy, kv=engine.kv_spec)` is the door; `engine.install_policy(door.engine_policy)`
  sets its eviction, swap filter and queue order in one call.
* Each session turns, pauses on a tool, and turns again with its context grown by the tool result.
  `ToolStarted` is when continuum pins the session's blocks (for the TTL its predictor picks);
  `ToolEnded` teaches the predictor the pause; `RequestMeta` names whose blocks a request reads.

Run: python examples/custom_front.py [--model tiny-random-llama] [--policy continuum]
"""
import argparse
import asyncio
import random

from agentrt.engine import AsyncLLMEngine, RequestMeta, SamplingParams
from agentrt.sched import WorkflowScheduler
from agentrt.sched.events import LLMCallEnded, LLMCallStarted, ProgramEnded, ProgramStarted, ToolEnded, ToolStarted

SYSTEM = list(range(10, 138))                      # a 128-token system prompt every session shares


async def session(engine: AsyncLLMEngine, door: WorkflowScheduler, sid: str, rng: random.Random) -> str:
    now, params = engine.clock.now, SamplingParams(max_tokens=16, ignore_eos=True)
    arrival = now()
    door.publish(ProgramStarted(sid, arrival, arrival))
    context, cached, pins = SYSTEM + [rng.randrange(140, 250) for _ in range(64)], 0, []
    for turn in range(3):
        rid = f"{sid}/{turn}"
        door.publish(LLMCallStarted(sid, rid, "coder", None, len(context), now()))
        out = await engine.generate(context, params, meta=RequestMeta(sid, "coder", None, arrival), request_id=rid)
        door.publish(LLMCallEnded(sid, rid, "coder", None, len(context), len(out.token_ids),
                                  out.num_cached_tokens, now()))
        cached += out.num_cached_tokens
        context = context + out.token_ids
        if turn == 2:
            break
        began = now()
        door.publish(ToolStarted(sid, "bash", None, began))
        if door.pinned_until(sid):
            pins.append(door.pinned_until(sid) - began)
        await asyncio.sleep(rng.uniform(0.05, 0.3))        # the tool runs
        door.publish(ToolEnded(sid, "bash", None, now(), now() - began))
        context = context + [rng.randrange(140, 250) for _ in range(48)]   # its result joins the context
    door.publish(ProgramEnded(sid, "done", now()))
    return (f"{sid}: 3 turns, {cached} prompt tokens from the cache"
            + (f", pinned for {', '.join(f'{p:.2f} s' for p in pins)}" if pins else ", never pinned"))


async def main(model: str, policy: str, sessions: int) -> None:
    engine = AsyncLLMEngine.from_pretrained(model, kv_cache_tokens=2048)
    door = WorkflowScheduler(policy, kv=engine.kv_spec, clock=engine.clock,
                             prefetch=lambda ids: engine.prefetch(ids, evict=True))
    engine.install_policy(door.engine_policy)
    rng = random.Random(0)
    try:
        for line in await asyncio.gather(*(session(engine, door, f"s{i}", rng) for i in range(sessions))):
            print(line)
    finally:
        await engine.close()
    print(f"{policy}: predictor learned {len(door.table.predictor.samples('bash'))} bash pauses")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--policy", default="continuum", choices=["lru", "continuum", "kvflow", "agentrt"])
    ap.add_argument("--sessions", type=int, default=4)
    args = ap.parse_args()
    asyncio.run(main(args.model, args.policy, args.sessions))
