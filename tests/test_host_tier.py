"""The host KV tier: HostTier bookkeeping, swap-out / load / prefetch through the pool (with a
simulated KV to check every copy lands where the cache says), and the engine end to end: loaded
blocks give the same logits as never-evicted ones and count as cached."""
from __future__ import annotations

import os
import random
import statistics
import threading
import time

import pytest
import torch

from agentrt.engine import EngineConfig, LLMEngine, SamplingParams
from agentrt.engine.block_pool import BlockPool, chain_hash
from agentrt.engine.host_tier import HostTier
from agentrt.engine.prefetch import finish_prefetch, plan_prefetch
from agentrt.engine.eviction import LRUPolicy
from agentrt.engine.runner import ModelRunner, block_runs, load, swap_out


def chain(blocks):
    hashes, parent = [], None
    for toks in blocks:
        parent = chain_hash(parent, toks)
        hashes.append(parent)
    return hashes


# ------------------------------------------------------------------------------------------ HostTier
def test_host_put_lookup_checks_tokens_and_parent():
    host = HostTier(4)
    ha, hb = chain([(1, 2), (3, 4)])
    a = host.put(0, ha, None, (1, 2), {}, clock=1)
    b = host.put(1, hb, ha, (3, 4), {}, clock=1)
    assert a.pins == b.pins == 1 and a.slot != b.slot
    assert host.put(2, ha, None, (1, 2), {}, clock=2) is None               # already here: nothing to copy
    assert host.lookup(hb, ha, (3, 4)) is b
    assert host.lookup(hb, ha, (3, 9)) is None and host.lookup(hb, None, (3, 4)) is None
    assert host.match([ha, hb], [(1, 2), (3, 4)], None, limit=5) == [a, b]
    assert host.match([ha, hb], [(1, 2), (3, 4)], None, limit=1) == [a]
    moves = host.take_moves()                                             # unpins
    assert moves.out_slots == [a.slot, b.slot] and a.pins == b.pins == 0
    host.check_invariants(expected_pins=0)


def test_host_evicts_least_recently_used_leaf_and_never_a_pinned_entry():
    host = HostTier(3)
    ha, hb = chain([(1, 1), (2, 2)])
    [hc] = chain([(3, 3)])
    a = host.put(3, ha, None, (1, 1), {}, clock=1)
    host.put(4, hb, ha, (2, 2), {}, clock=2)                                # a has a child: not a leaf
    host.put(5, hc, None, (3, 3), {}, clock=3)
    host.take_moves()
    [hd] = chain([(4, 4)])
    host.put(6, hd, None, (4, 4), {}, clock=4)                               # full: b (oldest leaf) goes
    assert hb not in host.entries and host.stats_evicted == 1
    host.pin(a, clock=5)                                                  # a became a leaf, but is pinned
    [he] = chain([(5, 5)])
    host.put(7, he, None, (5, 5), {}, clock=6)                               # so c goes
    assert set(host.entries) == {ha, hd, he}
    assert host.put(8, chain([(6, 6)])[0], None, (6, 6), {}, clock=7) is None   # every entry pinned
    host.check_invariants(expected_pins=3)
    host.take_moves()
    host.unpin(a)
    assert host.clear() == 3 and not host.entries and len(host.free_slots) == 3
    host.check_invariants(expected_pins=0)


# ------------------------------------------------------------------------------------------ pool + moves
def test_copies_go_one_per_run_of_consecutive_blocks():
    assert list(block_runs([3, 4, 5, 9, 10, 2], [0, 1, 7, 8, 9, 3])) == [(3, 0, 2), (5, 7, 1), (9, 8, 2), (2, 3, 1)]
    assert list(block_runs([], [])) == []
    dev = torch.arange(2 * 2 * 6 * 3, dtype=torch.float32).view(2, 2, 6, 3, 1, 1)
    host = torch.zeros(4, 2, 2, 3, 1, 1)
    swap_out(dev, host, [4, 5, 0], [1, 2, 3])
    assert torch.equal(host[1:], dev[:, :, [4, 5, 0]].movedim(2, 0))
    back = torch.zeros_like(dev)
    load(back, host, [1, 2, 3], [3, 1, 2])
    assert torch.equal(back[:, :, 1:4], dev[:, :, [0, 4, 5]])


class SimKV:
    """A one-number-per-block KV: 'computing' a block writes its hash's id; copies move the numbers."""

    def __init__(self, pool: BlockPool):
        self.pool, self.ids = pool, {}
        self.dev = torch.full((1, 1, pool.num_blocks, 1, 1, 1), -1.0, dtype=torch.float64)
        self.host = torch.full((pool.host.num_slots, 1, 1, 1, 1, 1), -1.0, dtype=torch.float64)

    def value(self, h: int) -> float:
        return self.ids.setdefault(h, float(len(self.ids)))

    def compute(self, blocks, hashes) -> None:
        for block, h in zip(blocks, hashes):
            self.dev[0, 0, block.block_id] = self.value(h)

    def run_moves(self) -> None:
        m = self.pool.take_moves()
        swap_out(self.dev, self.host, m.out_blocks, m.out_slots)
        load(self.dev, self.host, m.in_blocks, m.in_slots)

    def prefetch_copy(self, plan) -> None:
        load(self.dev, self.host, [b.block_id for b in plan.blocks], [e.slot for e in plan.entries])

    def check(self) -> None:
        self.pool.check_invariants()
        for h, block in self.pool.cached.items():
            assert self.dev[0, 0, block.block_id].item() == self.value(h), block
        for h, entry in self.pool.host.entries.items():
            assert self.host[entry.slot].item() == self.value(h), entry


def test_swap_out_then_load_back_moves_the_kv():
    pool = BlockPool(2, 2, host=HostTier(4))
    kv = SimKV(pool)
    toks = [(1, 1), (2, 2)]
    hashes = chain(toks)
    a, b = pool.allocate(2)
    kv.compute([a, b], hashes)
    pool.cache_full_block(a, None, toks[0])
    pool.cache_full_block(b, a, toks[1])
    pool.free([a, b])
    pool.tick()
    held = pool.allocate(2)                                               # evicts b, then a: both swapped out
    assert pool.stats_swapped_out_blocks == 2 and pool.stats_dropped_blocks == 0
    kv.run_moves()                                                        # copies run before the compute ...
    kv.dev.fill_(99.0)                                                    # ... that overwrites the blocks
    pool.free(held)
    kv.check()
    loaded = pool.load_from_host(hashes, toks, None)
    assert len(loaded) == 2 and pool.stats_loaded_blocks == 2 and loaded[1].parent is loaded[0]
    assert pool.match_prefix(hashes, toks) == loaded and pool.stats_recomputed_blocks == 0
    kv.run_moves()
    pool.free(loaded)
    kv.check()


def test_swap_filter_decides_per_victim():
    pool = BlockPool(2, 2, host=HostTier(4))
    pool.set_policy(LRUPolicy(), swap_filter=lambda block: block.token_ids == (1, 1))
    for toks in [(1, 1), (2, 2)]:
        [b] = pool.allocate(1)
        pool.cache_full_block(b, None, toks)
        pool.free([b])
    pool.allocate(2)
    assert pool.stats_swapped_out_blocks == 1 and pool.stats_dropped_blocks == 1
    assert [e.token_ids for e in pool.host.entries.values()] == [(1, 1)]


def test_a_pending_load_is_cancelled_when_its_block_is_evicted_in_the_same_batch():
    pool = BlockPool(1, 2, host=HostTier(2))
    [h] = chain([(1, 1)])
    [b] = pool.allocate(1)
    pool.cache_full_block(b, None, (1, 1))
    pool.free([b])
    pool.free(pool.allocate(1))                                           # swapped out
    pool.take_moves()
    [loaded] = pool.load_from_host([h], [(1, 1)], None)
    pool.free([loaded])                                                   # the request is released ...
    pool.allocate(1)                                                      # ... and its block taken again
    moves = pool.take_moves()
    assert moves.in_blocks == [] and moves.out_blocks == []               # no load, no second swap-out
    pool.check_invariants()


@pytest.mark.parametrize("seed", range(12))
def test_random_traffic_keeps_every_cached_block_right(seed):
    """Requests over shared prefixes, released at once or held for a while, prefetches finishing
    at random later steps; after every step each cached block and host entry holds its KV."""
    rng = random.Random(seed)
    pool = BlockPool(6, 2, host=HostTier(5))
    kv, held, inflight = SimKV(pool), [], []
    for _ in range(80):
        pool.tick()
        for plan in [p for p in inflight if rng.random() < 0.5]:
            kv.prefetch_copy(plan)
            finish_prefetch(pool, plan)
            inflight.remove(plan)
        scheduled = []
        for _ in range(rng.randint(1, 3)):
            toks = [(rng.randint(0, 1), rng.randint(0, 1)) for _ in range(rng.randint(1, 4))]
            hashes = chain(toks)
            hits = pool.match_prefix(hashes, toks)
            pool.touch(hits)
            hits += pool.load_from_host(hashes[len(hits):], toks[len(hits):], hits[-1] if hits else None)
            need = len(toks) - len(hits)
            if need > pool.num_free or rng.random() < 0.2:                # cannot run now / preempted
                pool.free(hits)
                continue
            scheduled.append((hits + pool.allocate(need), toks, hashes, len(hits)))
        new_plans = []
        if rng.random() < 0.5:
            toks = [(rng.randint(0, 1), rng.randint(0, 1)) for _ in range(4)]
            busy = {h for p in inflight for h in p.hashes()}
            plan = plan_prefetch(pool, chain(toks), toks, evict=rng.random() < 0.5, busy=busy)
            if plan is not None:
                new_plans.append(plan)
        kv.run_moves()
        for plan in new_plans:                                            # a worker may copy at once
            if rng.random() < 0.5:
                kv.prefetch_copy(plan)
        inflight += new_plans
        for table, toks, hashes, n_hit in scheduled:                      # compute, then commit
            kv.compute(table[n_hit:], hashes[n_hit:])
            for j in range(n_hit, len(toks)):
                canonical = pool.cache_full_block(table[j], table[j - 1] if j else None, toks[j])
                if canonical is not table[j]:
                    pool.touch([canonical])
                    pool.free([table[j]])
                    table[j] = canonical
            held.append(table)
        for table in [t for t in held if rng.random() < 0.6]:
            pool.free(table)
            held.remove(table)
        kv.check()
    for plan in inflight:
        kv.prefetch_copy(plan)
        finish_prefetch(pool, plan)
    for table in held:
        pool.free(table)
    kv.check()
    assert pool.num_in_use == 0 and pool.prefetch_pins == 0
    assert pool.stats_swapped_out_blocks and pool.stats_loaded_blocks and pool.stats_prefetched_blocks


# ------------------------------------------------------------------------------------------ engine
GREEDY = SamplingParams(max_tokens=4, ignore_eos=True, return_logits=True)


def test_no_host_tier_by_default(make_engine):
    engine = make_engine(kv_cache_tokens=64)
    assert engine.pool.host is None and engine.runner.host_kv is None and engine.prefetcher is None
    assert EngineConfig().host_kv_tokens == 0
    engine.prefetch([1] * 40)                                             # a no-op without a host tier
    assert not engine.has_unfinished() and engine.stats()["host_blocks"] == 0
    with pytest.raises(ValueError, match="host_kv_tokens"):
        EngineConfig(host_kv_tokens=8, block_size=16)


class SlowLink:
    """The torch runner, whose prefetch copies (host -> device) wait for `release`: a slow host link."""

    def __init__(self, inner: ModelRunner, release: threading.Event):
        self.inner, self.release = inner, release

    def prefetch_copy(self, block_ids, slots) -> None:
        self.release.wait(10)
        self.inner.prefetch_copy(block_ids, slots)

    def __getattr__(self, name):                  # everything else is the torch runner's
        return getattr(self.inner, name)


def slow_link(loaded, release: threading.Event):
    """A runner factory for LLMEngine(runner=...): the tiny model's torch runner behind a slow link."""
    return lambda layout: SlowLink(ModelRunner.build(loaded, num_blocks=layout.num_blocks, block_size=layout.block_size,
                                                     max_positions=layout.max_model_len, dtype=torch.float32,
                                                     device=torch.device("cpu"), host_slots=layout.host_slots), release)


def run_evict_and_return(engine, a, b):
    """Run a, then b (which pushes a's blocks out of a 4-block device tier), then a continued."""
    first = engine.generate(a, GREEDY)[0]
    engine.generate(b, GREEDY)
    return engine.generate(a + first.token_ids + [7] * 8, GREEDY)[0]


def test_loaded_blocks_give_the_logits_of_blocks_never_evicted(make_engine, rand_prompts, check_blocks):
    a, b = rand_prompts([40, 50], seed=3)
    tiered = make_engine(kv_cache_tokens=64, host_kv_tokens=1024)
    roomy = make_engine(kv_cache_tokens=2048)
    got, want = run_evict_and_return(tiered, a, b), run_evict_and_return(roomy, a, b)
    stats = tiered.stats()
    assert stats["swapped_out_blocks"] >= 3 and stats["loaded_blocks"] == 2   # a's two full blocks came back
    assert stats["recomputed_blocks"] == 0 and roomy.stats()["evicted_blocks"] == 0
    assert got.num_cached_tokens == want.num_cached_tokens == 32               # loaded = cached, not recomputed
    assert got.token_ids == want.token_ids
    assert all(torch.equal(x, y) for x, y in zip(got.logits, want.logits))
    check_blocks(tiered)
    tiered.pool.reset_prefix_cache()
    assert len(tiered.pool.host) == 0 and not tiered.pool.cached


def test_without_a_host_tier_the_same_run_recomputes(make_engine, rand_prompts):
    a, b = rand_prompts([40, 50], seed=3)
    engine = make_engine(kv_cache_tokens=64)
    out = run_evict_and_return(engine, a, b)
    assert out.num_cached_tokens == 0 and engine.stats()["recomputed_blocks"] == 2


def test_prefetch_brings_a_prefix_back_before_its_request(make_engine, rand_prompts, check_blocks):
    a, b = rand_prompts([40, 50], seed=4)
    engine = make_engine(kv_cache_tokens=64, host_kv_tokens=1024)
    roomy = make_engine(kv_cache_tokens=2048)
    first = engine.generate(a, GREEDY)[0]
    roomy.generate(a, GREEDY)
    engine.generate(b, GREEDY)
    roomy.generate(b, GREEDY)
    assert engine.prefetch_now(a) <= 1                                         # free blocks only: b's stay
    engine.sync_prefetches()
    assert engine.prefetch_now(a, evict=True) >= 1 and engine.has_unfinished()
    engine.sync_prefetches()
    assert not engine.has_unfinished()
    engine.pool.check_invariants()
    cont = a + first.token_ids + [7] * 8
    got, want = engine.generate(cont, GREEDY)[0], roomy.generate(cont, GREEDY)[0]
    stats = engine.stats()
    assert stats["prefetched_blocks"] == 2 and stats["loaded_blocks"] == 0 and got.num_cached_tokens == 32
    assert all(torch.equal(x, y) for x, y in zip(got.logits, want.logits))
    check_blocks(engine)


def test_a_demand_load_does_not_wait_for_a_prefetch_of_the_same_blocks(make_engine, rand_prompts, check_blocks,
                                                                       tiny_loaded):
    a, b = rand_prompts([40, 80], seed=3)
    release = threading.Event()
    engine = make_engine(kv_cache_tokens=96, host_kv_tokens=1024, runner=slow_link(tiny_loaded, release))   # 6 blocks
    roomy = make_engine(kv_cache_tokens=2048)
    want = run_evict_and_return(roomy, a, b)
    first = engine.generate(a, GREEDY)[0]
    engine.generate(b, GREEDY)
    assert engine.prefetch_now(a, evict=True) == 2
    rid = engine.add_request(a + first.token_ids + [7] * 8, GREEDY)
    engine.step()                                                              # the request loads its own copy
    assert engine.stats()["loaded_blocks"] == 2 and engine.prefetcher.inflight
    release.set()
    outs = {}
    while engine.has_unfinished():
        outs.update({o.request_id: o for o in engine.step() if o.finished})
    assert engine.stats()["prefetched_blocks"] == 0                            # the late copy was dropped
    got = outs[rid]
    assert got.num_cached_tokens == 32 and all(torch.equal(x, y) for x, y in zip(got.logits, want.logits))
    check_blocks(engine)


def test_a_prefetch_holds_the_whole_device_prefix_under_its_blocks(make_engine, rand_prompts, check_blocks, tiny_loaded):
    """A prefetch whose chain starts with device-cached blocks (a0, a1 here; a2 is on the host)
    holds all of them while its copy is in flight, as a request would: holding only a1 left a0
    counted reclaimable (num_free too high) though it was no evictable leaf, and a child held by
    more references than its parent; the next allocation of every 'free' block then found no
    leaf to evict (IndexError in the policy)."""
    a, b, c = rand_prompts([56, 56, 6], seed=9)
    release = threading.Event()
    engine = make_engine(kv_cache_tokens=96, host_kv_tokens=1024, runner=slow_link(tiny_loaded, release))   # 6 blocks
    roomy = make_engine(kv_cache_tokens=2048)
    first = engine.generate(a, GREEDY)[0]
    roomy.generate(a, GREEDY)
    engine.generate(b, GREEDY)                                               # a2 goes to the host; a0, a1 stay
    roomy.generate(b, GREEDY)
    assert engine.stats()["swapped_out_blocks"] == 1 and len(engine.pool.cached) == 5
    engine.prefetch(a, evict=True)                                           # planned at the next step
    rid = engine.add_request(a[:32] + c, GREEDY)                             # reads a0, a1 meanwhile
    outs = {}
    for _ in range(40):
        outs.update({o.request_id: o for o in engine.step() if o.finished})
        engine.pool.check_invariants()
        if rid in outs:
            break
    assert engine.prefetcher.inflight and engine.stats()["prefetched_blocks"] == 0
    held = engine.pool.allocate(engine.pool.num_free)                        # every block it says it can give
    engine.pool.free(held)
    engine.pool.check_invariants()
    release.set()
    engine.sync_prefetches()
    engine.pool.check_invariants()
    cont = a + first.token_ids + [7] * 8
    got, want = engine.generate(cont, GREEDY)[0], roomy.generate(cont, GREEDY)[0]
    assert engine.stats()["prefetched_blocks"] == 1 and got.num_cached_tokens == 48
    assert all(torch.equal(x, y) for x, y in zip(got.logits, want.logits))
    check_blocks(engine)


def test_prefetch_asked_from_another_thread_runs_beside_the_steps(make_engine, rand_prompts, drain, check_blocks):
    prompts = rand_prompts([40, 40, 40, 40, 40, 40], seed=5)
    engine = make_engine(kv_cache_tokens=160, host_kv_tokens=2048)
    engine.generate(prompts, GREEDY)                                           # most of them end up on the host
    asker = threading.Thread(target=lambda: [engine.prefetch(p, evict=True) for p in prompts])
    for p in rand_prompts([30, 30], seed=6):
        engine.add_request(p, GREEDY)
    asker.start()
    asker.join()
    drain(engine)
    assert engine.stats()["prefetched_blocks"] > 0
    check_blocks(engine)


def test_workload_with_swaps_loads_prefetches_aborts_and_preemptions(make_engine, rand_prompts, tiny_ref,
                                                                    logit_error, check_blocks):
    """Agents over shared system prompts on a device tier too small for all of them: every step
    keeps the pool and host tier consistent, and every finished output matches transformers."""
    systems = rand_prompts([48, 40, 33], seed=7)
    tails = rand_prompts([5, 9, 17, 3, 12, 8, 20, 6, 11, 14], seed=8)
    engine = make_engine(kv_cache_tokens=128, host_kv_tokens=160, max_num_batched_tokens=64)
    params = SamplingParams(max_tokens=12, ignore_eos=True, return_logits=True)
    rng, outputs, aborted = random.Random(0), {}, set()
    for i, tail in enumerate(tails):
        engine.add_request(systems[i % 3] + tail, params, request_id=f"r{i}")
    for step in range(400):
        if not engine.has_unfinished():
            break
        if step % 7 == 3:
            engine.prefetch(systems[rng.randrange(3)] + tails[0], evict=step % 2 == 0)
        if step == 15:
            for rid in ("r1", "r6"):
                aborted.add(rid) if engine.abort(rid) else None
        for out in engine.step():
            if out.finished:
                outputs[out.request_id] = out
        engine.pool.check_invariants()
    assert not engine.has_unfinished()
    stats = engine.stats()
    assert stats["swapped_out_blocks"] and stats["loaded_blocks"] and stats["host_evicted_blocks"]
    assert sum(o.metrics["num_preemptions"] for o in outputs.values()) > 0
    assert set(outputs) | aborted == {f"r{i}" for i in range(10)}
    for out in outputs.values():
        assert logit_error(tiny_ref, out) < 1e-4
    check_blocks(engine)


# ------------------------------------------------------------------------------------------ overlap timing
@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("AGENTRT_TIMING"), reason="timing run: set AGENTRT_TIMING=1 on a quiet machine")
def test_prefetch_copy_overlaps_a_decode_step():
    """A decode step (8 x 256-token contexts, smollm2-135m) with a prefetch of 512 blocks started in
    it ends sooner than the step and the copy run one after the other."""
    blocks, bs = 512, 16
    engine = LLMEngine.from_pretrained("smollm2-135m", device="cpu", dtype="float32", kv_cache_tokens=(blocks + 200) * bs,
                                       host_kv_tokens=(blocks + 64) * bs, max_model_len=2048)
    g = torch.Generator().manual_seed(0)
    prefixes = [torch.randint(0, 49000, (32 * bs,), generator=g).tolist() for _ in range(blocks // 32)]
    for p in prefixes:
        engine.generate(p + [1], SamplingParams(max_tokens=1))
    for _ in range(8):
        engine.add_request(torch.randint(0, 49000, (256,), generator=g).tolist(), SamplingParams(max_tokens=10**4, ignore_eos=True))
    while any(r.num_computed_tokens < r.num_prompt_tokens for r in engine.scheduler.running + list(engine.scheduler.waiting)):
        engine.step()
    step, copy, both = [], [], []
    for _ in range(7):
        held = engine.pool.allocate(engine.pool.num_free)                  # push every cached block to the host
        engine.prefetcher.run_copies()
        engine.pool.free(held)
        t0 = time.perf_counter()
        engine.step()
        step.append(time.perf_counter() - t0)
        free = [b.block_id for b in engine.pool.blocks if b.ref_count == 0 and b.block_hash is None][:blocks]
        t0 = time.perf_counter()
        load(engine.runner.kv_cache, engine.runner.host_kv, free, [e.slot for e in engine.pool.host.entries.values()][:blocks])
        copy.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for p in prefixes:
            engine.prefetch(p)
        engine.step()
        for plan in engine.prefetcher.inflight:
            plan.done.wait()
        both.append(time.perf_counter() - t0)
        assert engine.sync_prefetches() == blocks
    step, copy, both = (statistics.median(x) * 1e3 for x in (step, copy, both))
    print(f"\ndecode step {step:.1f} ms, copy of {blocks} blocks {copy:.1f} ms, serial {step + copy:.1f} ms, "
          f"step with the prefetch beside it {both:.1f} ms")
    for rid in list(engine.requests):
        engine.abort(rid)
    assert both < step + copy
