"""Parity of the paged-KV engine with transformers on the same weights (tiny-random-llama).

Every generated step's full-vocab logits (SamplingParams(return_logits=True)) are compared with
one unpadded transformers forward over prompt + generated tokens, for: a single prompt, a batch
of prompts of different lengths, prompts served from the prefix cache, chunked prefill,
preemption and resume, odd block sizes, rope scaling, and a randomized mixed workload.

Measured max |Δlogit| on this machine: ~8.5e-6 over ~90 requests (logits of magnitude ~5), so
TINY_ATOL = 1e-4 leaves >10x margin while any real attention/rope/KV bug moves logits by O(0.1-1).
"""
from __future__ import annotations

import random

import pytest
import torch
from transformers import GenerationConfig

from agentrt.engine import SamplingParams
from agentrt.engine.loader import load_model
from agentrt.engine.tiny import tiny_config, tiny_reference_model

TINY_ATOL = 1e-4


def greedy(max_tokens: int = 12, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, ignore_eos=True, return_logits=True, **kw)


def assert_parity(ref, outputs, logit_error, atol: float = TINY_ATOL) -> float:
    worst = 0.0
    for out in outputs:
        err = logit_error(ref, out)
        assert err < atol, f"{out.request_id}: max |Δlogit| {err:.3g} >= {atol}"
        worst = max(worst, err)
    return worst


def spy_schedule(engine):
    """Record every scheduled batch as [(request_id, num_new_tokens, num_computed_before)]."""
    record = []
    original = engine.scheduler.schedule

    def schedule():
        batch = original()
        record.append([(r.request_id, n, r.num_computed_tokens) for r, n in zip(batch.requests, batch.num_new_tokens)])
        return batch

    engine.scheduler.schedule = schedule
    return record


# ------------------------------------------------------------------------------------------ basics
def test_reference_has_the_engine_weights(tiny_loaded, tiny_ref):
    ref_state = tiny_ref.state_dict()
    for name, tensor in tiny_loaded.state_dict.items():
        assert torch.equal(ref_state[name], tensor), name


def test_single_prompt(make_engine, tiny_ref, rand_prompts, logit_error):
    engine = make_engine()
    [prompt] = rand_prompts([23])
    [out] = engine.generate([prompt], greedy(16))
    assert len(out.token_ids) == 16 and out.finish_reason == "length"
    assert_parity(tiny_ref, [out], logit_error)
    # the logits really are the ones the tokens were chosen from
    assert out.token_ids == [int(l.argmax()) for l in out.logits]


def test_batched_prompts_of_different_lengths(make_engine, tiny_ref, rand_prompts, logit_error):
    engine = make_engine()
    lengths = [1, 2, 5, 15, 16, 17, 33, 64, 100]          # 1: a one-token prefill rides the decode path
    prompts = rand_prompts(lengths, seed=1)
    outs = engine.generate(prompts, greedy(12))
    assert [o.prompt_token_ids for o in outs] == prompts
    assert_parity(tiny_ref, outs, logit_error)


def test_batched_greedy_equals_transformers_generate(make_engine, tiny_ref, rand_prompts):
    engine = make_engine()
    prompts = rand_prompts([3, 9, 30, 47], seed=2)
    outs = engine.generate(prompts, SamplingParams(max_tokens=20, ignore_eos=True))
    gen_config = GenerationConfig(do_sample=False, max_new_tokens=20, eos_token_id=None, pad_token_id=0)
    ref = tiny_ref
    saved = ref.generation_config
    ref.generation_config = GenerationConfig(eos_token_id=None, pad_token_id=0)   # never stop early
    try:
        for prompt, out in zip(prompts, outs):
            expected = ref.generate(torch.tensor([prompt]), generation_config=gen_config)[0, len(prompt):].tolist()
            assert out.token_ids == expected
    finally:
        ref.generation_config = saved


# ------------------------------------------------------------------------------------------ prefix cache
def test_prefix_cache_hit_keeps_parity(make_engine, tiny_ref, rand_prompts, logit_error):
    engine = make_engine()                                  # block_size 16
    [prompt] = rand_prompts([40], seed=3)
    [first] = engine.generate([prompt], greedy(10))
    assert first.num_cached_tokens == 0
    [second] = engine.generate([prompt], greedy(10))
    assert second.num_cached_tokens == 32                   # two full blocks; the rest recomputed
    assert second.token_ids == first.token_ids
    assert_parity(tiny_ref, [first, second], logit_error)
    assert engine.stats()["prefix_hit_rate"] > 0


def test_prefix_cache_shared_prefix_different_suffix(make_engine, tiny_ref, rand_prompts, logit_error):
    engine = make_engine()
    base, other = rand_prompts([50, 20], seed=4)
    [a] = engine.generate([base], greedy(8))
    prompt_b = base[:35] + other                            # shares blocks 0 and 1 (32 tokens)
    [b] = engine.generate([prompt_b], greedy(8))
    assert b.num_cached_tokens == 32
    assert_parity(tiny_ref, [a, b], logit_error)


def test_prefix_cache_generated_tokens_are_cached_too(make_engine, tiny_ref, rand_prompts, logit_error):
    # the blocks a request filled while decoding are reusable by a prompt that continues it
    engine = make_engine()
    [prompt] = rand_prompts([20], seed=5)
    [a] = engine.generate([prompt], greedy(30))
    [b] = engine.generate([prompt + a.token_ids + [7, 8, 9]], greedy(6))
    assert b.num_cached_tokens == 48
    assert_parity(tiny_ref, [a, b], logit_error)


def test_prefix_cache_prompt_of_whole_blocks(make_engine, tiny_ref, rand_prompts, logit_error):
    # 32 tokens = 2 full blocks: the last token must still be computed, so only 16 come from the
    # cache and the recomputed second block is deduplicated against the cached copy
    engine = make_engine()
    [prompt] = rand_prompts([32], seed=6)
    [a] = engine.generate([prompt], greedy(4))
    cached_before = set(engine.pool.cached)
    [b] = engine.generate([prompt], greedy(4))
    assert b.num_cached_tokens == 16
    assert b.token_ids == a.token_ids
    assert_parity(tiny_ref, [a, b], logit_error)
    assert cached_before <= set(engine.pool.cached)


def test_identical_prompts_in_one_batch_share_blocks(make_engine, tiny_ref, rand_prompts, logit_error):
    engine = make_engine()
    [prompt] = rand_prompts([37], seed=7)
    outs = engine.generate([prompt] * 4, greedy(8))
    assert all(o.token_ids == outs[0].token_ids for o in outs)
    assert_parity(tiny_ref, outs, logit_error)
    # 4 requests computed the same 2 full prompt blocks in one step; only one copy stays cached
    prompt_hashes = []
    parent = None
    from agentrt.engine.block_pool import chain_hash
    for j in range(2):
        parent = chain_hash(parent, tuple(prompt[16 * j:16 * (j + 1)]))
        prompt_hashes.append(parent)
    assert all(h in engine.pool.cached for h in prompt_hashes)


def test_identical_prompts_arriving_together_wait_for_the_block_in_flight(make_engine, tiny_ref, rand_prompts,
                                                                         logit_error):
    # the first computes the shared blocks; the others are admitted a step later as cache hits
    engine = make_engine()
    [prompt] = rand_prompts([37], seed=7)
    outs = engine.generate([prompt] * 3, greedy(6))
    assert [o.num_cached_tokens for o in outs] == [0, 32, 32]
    assert_parity(tiny_ref, outs, logit_error)


def test_prefix_hits_of_different_lengths_in_one_step(make_engine, tiny_ref, rand_prompts, logit_error):
    """Several chunks extending cached context of different lengths, with different chunk lengths,
    run together in one step (one padded attention batch)."""
    engine = make_engine(block_size=8)
    base, s1, s2, s3 = rand_prompts([64, 5, 19, 11], seed=13)
    engine.generate([base], greedy(1))
    record = spy_schedule(engine)
    prompts = [base[:20] + s1, base[:45] + s2, base[:64] + s3, s3 + base[:9]]
    outs = engine.generate(prompts, greedy(8))
    assert [o.num_cached_tokens for o in outs] == [16, 40, 64, 0]
    first = record[0]
    assert len(first) == 4 and sorted(n for _, n, _ in first) == sorted([9, 24, 11, 20])
    assert_parity(tiny_ref, outs, logit_error)


def test_prefix_caching_disabled(make_engine, tiny_ref, rand_prompts, logit_error):
    engine = make_engine(enable_prefix_caching=False)
    [prompt] = rand_prompts([40], seed=3)
    a = engine.generate([prompt], greedy(6))[0]
    b = engine.generate([prompt], greedy(6))[0]
    assert a.num_cached_tokens == b.num_cached_tokens == 0
    assert not engine.pool.cached
    assert len(engine.pool.free_queue) == engine.pool.num_blocks
    assert_parity(tiny_ref, [a, b], logit_error)


# ------------------------------------------------------------------------------------------ chunked prefill
@pytest.mark.parametrize("block_size", [16, 5])
def test_chunked_prefill(make_engine, tiny_ref, rand_prompts, logit_error, block_size):
    engine = make_engine(max_num_batched_tokens=32, block_size=block_size)
    prompts = rand_prompts([50, 3, 70, 129], seed=8)
    record = spy_schedule(engine)
    outs = engine.generate(prompts, greedy(10))
    assert_parity(tiny_ref, outs, logit_error)
    assert all(sum(n for _, n, _ in batch) <= 32 for batch in record)
    # the long prompts were split over several steps, and some chunks resumed mid-block
    steps_per_prefill = {}
    for batch in record:
        for rid, n, before in batch:
            if n > 1:
                steps_per_prefill[rid] = steps_per_prefill.get(rid, 0) + 1
    assert max(steps_per_prefill.values()) >= 4                 # 129 tokens / 32 per step
    assert any(n > 1 and before % block_size for batch in record for _, n, before in batch)


def test_chunked_prefill_with_prefix_hit(make_engine, tiny_ref, rand_prompts, logit_error):
    engine = make_engine(max_num_batched_tokens=16, block_size=8)
    [prompt] = rand_prompts([90], seed=9)
    a = engine.generate([prompt], greedy(5))[0]
    b = engine.generate([prompt[:60] + [1, 2, 3] * 10], greedy(5))[0]
    assert b.num_cached_tokens == 56
    assert_parity(tiny_ref, [a, b], logit_error)


# ------------------------------------------------------------------------------------------ preemption
@pytest.mark.parametrize("prefix_caching", [True, False])
def test_preemption_and_resume(make_engine, tiny_ref, rand_prompts, logit_error, prefix_caching):
    # 6 blocks of 16 tokens; 4 requests of 20 + 24 tokens need 12: some must be preempted
    engine = make_engine(kv_cache_tokens=96, enable_prefix_caching=prefix_caching)
    prompts = rand_prompts([20, 21, 22, 23], seed=10)
    outs = engine.generate(prompts, greedy(24))
    assert any(o.metrics["num_preemptions"] > 0 for o in outs)
    assert all(len(o.token_ids) == 24 for o in outs)
    assert_parity(tiny_ref, outs, logit_error)
    # a preempted request's first admission is what num_cached_tokens reports
    assert all(o.num_cached_tokens == 0 for o in outs)


def test_preemption_with_chunked_prefill_and_odd_blocks(make_engine, tiny_ref, rand_prompts, logit_error, drain):
    # a small pool that fills with cached blocks as requests come and go; stepped with a bound so
    # that a scheduler that stops admitting fails here instead of hanging
    engine = make_engine(kv_cache_tokens=120, block_size=6, max_num_batched_tokens=20)
    prompts = rand_prompts([33, 41, 17, 25, 9], seed=11)
    rids = [engine.add_request(p, greedy(30)) for p in prompts]
    done = drain(engine, max_steps=500)
    outs = [done[r] for r in rids]
    assert sum(o.metrics["num_preemptions"] for o in outs) > 0
    assert_parity(tiny_ref, outs, logit_error)


# ------------------------------------------------------------------------------------------ rope scaling
ROPE_CASES = {
    "llama3": {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 512},
    "theta": {"rope_type": "default", "rope_theta": 500.0},
}


@pytest.mark.parametrize("case", list(ROPE_CASES))
def test_rope_scaling_is_honored(make_engine, rand_prompts, logit_error, ref_logits, case):
    rope = ROPE_CASES[case]
    loaded = load_model("tiny-random-llama", rope_parameters=dict(rope))
    assert loaded.config.rope_parameters["rope_type"] == rope["rope_type"]
    ref = tiny_reference_model(tiny_config(rope_parameters=dict(rope)))
    engine = make_engine(loaded)
    prompts = rand_prompts([100, 7], seed=12)
    outs = engine.generate(prompts, greedy(10))
    assert_parity(ref, outs, logit_error)
    # the scaling matters at these positions: the unscaled reference is far off
    plain = tiny_reference_model(tiny_config())
    unscaled = ref_logits(plain, outs[0].prompt_token_ids, outs[0].token_ids)
    assert (torch.stack(outs[0].logits) - unscaled).abs().max() > 100 * TINY_ATOL


def test_unsupported_rope_type_is_refused(make_engine):
    loaded = load_model("tiny-random-llama", rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0,
                                                             "factor": 4.0})
    with pytest.raises(ValueError, match="dynamic"):
        make_engine(loaded)


# ------------------------------------------------------------------------------------------ mixed workload
@pytest.mark.parametrize("seed", [0, 1])
def test_randomized_continuous_batching_workload(make_engine, tiny_ref, logit_error, check_blocks, seed):
    """Requests arrive between steps with shared prefixes, into a small pool and a small budget:
    chunked prefill, prefix hits, decodes sharing steps with prefills, and preemption all mix."""
    rng = random.Random(seed)
    engine = make_engine(kv_cache_tokens=160, block_size=8, max_num_batched_tokens=24, max_num_seqs=4)
    system = [rng.randrange(256) for _ in range(20)]
    pending = []
    for i in range(10):
        head = system if rng.random() < 0.6 else []
        prompt = head + [rng.randrange(256) for _ in range(rng.randint(1, 30))]
        pending.append((prompt, greedy(rng.randint(1, 16))))
    done = {}
    for _ in range(1000):
        if not (pending or engine.has_unfinished()):
            break
        for _ in range(rng.randint(0, 2)):
            if pending:
                prompt, params = pending.pop(0)
                engine.add_request(prompt, params)
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
        engine.pool.check_invariants()
    assert len(done) == 10
    assert_parity(tiny_ref, done.values(), logit_error)
    assert any(o.num_cached_tokens > 0 for o in done.values())
    check_blocks(engine)
