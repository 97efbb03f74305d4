"""Scheduler: continuous batching under a per-step token budget and a sequence limit, decodes and
prefill chunks sharing a step, preemption (newest first, resumed at the head of the queue), abort,
and the context limit."""
from __future__ import annotations

import random

import pytest

from agentrt.engine import SamplingParams
from agentrt.engine.request import RequestStatus


def greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=n, ignore_eos=True, **kw)


class Spy:
    """Wraps engine.scheduler.schedule; records every batch and the running/waiting queues around it."""

    def __init__(self, engine):
        self.engine = engine
        self.batches = []
        sched = engine.scheduler
        original = sched.schedule

        def schedule():
            running_before = [r.request_id for r in sched.running]
            batch = original()
            self.batches.append({
                "items": [(r.request_id, n, r.num_computed_tokens, len(r.output_token_ids))
                          for r, n in zip(batch.requests, batch.num_new_tokens)],
                "total": batch.total_tokens,
                "preempted": batch.num_preempted,
                "running_before": running_before,
                "running_after": [r.request_id for r in sched.running],
                "waiting_after": [r.request_id for r in sched.waiting],
            })
            return batch

        sched.schedule = schedule


def test_step_respects_token_budget_and_max_num_seqs(make_engine, drain):
    engine = make_engine(max_num_batched_tokens=24, max_num_seqs=3, block_size=8)
    spy = Spy(engine)
    rng = random.Random(0)
    wanted = {}
    for i in range(8):
        prompt = [rng.randrange(256) for _ in range(rng.randint(5, 40))]
        n = rng.randint(1, 10)
        wanted[engine.add_request(prompt, greedy(n))] = n
    done = drain(engine)
    assert {rid: len(o.token_ids) for rid, o in done.items()} == wanted
    assert all(o.finish_reason == "length" for o in done.values())
    for b in spy.batches:
        assert b["total"] <= 24
        assert len(b["items"]) <= 3 and len(b["running_after"]) <= 3
        sizes = [n for _, n, _, _ in b["items"]]
        assert all(n >= 1 for n in sizes)
        # decodes (one token) come before prefill chunks in the packed batch
        assert sizes == sorted(sizes, key=lambda n: n != 1)
    assert max(b["total"] for b in spy.batches) == 24            # the budget was the binding limit
    assert max(len(b["items"]) for b in spy.batches) == 3        # and so was max_num_seqs


def test_requests_are_admitted_in_arrival_order(make_engine, drain):
    engine = make_engine(max_num_seqs=2)
    spy = Spy(engine)
    rids = [engine.add_request([i + 1] * 5, greedy(3)) for i in range(6)]
    drain(engine)
    first_seen = []
    for b in spy.batches:
        for rid, *_ in b["items"]:
            if rid not in first_seen:
                first_seen.append(rid)
    assert first_seen == rids


def test_decodes_and_a_prefill_chunk_share_a_step(make_engine, tiny_ref, logit_error, drain):
    engine = make_engine(max_num_batched_tokens=32)
    spy = Spy(engine)
    a = engine.add_request(list(range(10, 20)), SamplingParams(max_tokens=12, ignore_eos=True, return_logits=True))
    engine.step()                                   # a: whole prompt, first token
    b = engine.add_request(list(range(100, 200)), SamplingParams(max_tokens=3, ignore_eos=True, return_logits=True))
    done = drain(engine)
    mixed = spy.batches[1]["items"]
    assert [(rid, n) for rid, n, _, _ in mixed] == [(a, 1), (b, 31)]     # decode first, chunk fills the budget
    # a long prefill does not stall the running decode: a gets a token in every step of b's prefill
    prefill_steps = [bt for bt in spy.batches if any(rid == b and n > 1 for rid, n, _, _ in bt["items"])]
    assert len(prefill_steps) == 4                                         # 31 + 31 + 31 + 7
    assert all(any(rid == a and n == 1 for rid, n, _, _ in bt["items"]) for bt in prefill_steps)
    for out in done.values():
        assert logit_error(tiny_ref, out) < 1e-4


def test_budget_smaller_than_the_number_of_running_requests(make_engine, drain):
    engine = make_engine(max_num_batched_tokens=16)
    spy = Spy(engine)
    rids = [engine.add_request([i], greedy(5)) for i in range(20)]
    done = drain(engine)
    assert set(done) == set(rids) and all(len(o.token_ids) == 5 for o in done.values())
    assert all(b["total"] <= 16 for b in spy.batches)


def test_preemption_takes_the_newest_and_resumes_it_first(make_engine, tiny_ref, logit_error, drain, check_blocks):
    engine = make_engine(kv_cache_tokens=96, max_num_batched_tokens=64)   # 6 blocks of 16
    spy = Spy(engine)
    rids = [engine.add_request([7 + i] * 20, greedy(30, return_logits=True)) for i in range(4)]
    done = drain(engine)
    events = [b for b in spy.batches if b["preempted"]]
    assert events, "the pool is too small for the batch: something must be preempted"
    for b in events:
        gone = [rid for rid in b["running_before"] if rid not in b["running_after"]]
        assert len(gone) == b["preempted"]
        # the newest running requests yield, and wait at the head of the queue
        assert gone == b["running_before"][len(b["running_before"]) - len(gone):]
        assert b["waiting_after"][:len(gone)] == gone[::-1]
        # no admission in a step that preempted
        assert all(rid in b["running_before"] for rid, *_ in b["items"])
    assert sum(o.metrics["num_preemptions"] for o in done.values()) == sum(b["preempted"] for b in events)
    assert all(len(done[r].token_ids) == 30 for r in rids)
    for out in done.values():
        assert logit_error(tiny_ref, out) < 1e-4
    check_blocks(engine)


def test_cached_blocks_do_not_block_admission(make_engine, drain):
    """A finished request leaves a chain of cached blocks; all of them are reusable (evict a leaf,
    its parent becomes a leaf). A new request needing more blocks than free + current leaves must
    still be admitted instead of waiting forever."""
    engine = make_engine(kv_cache_tokens=96)                               # 6 blocks of 16
    engine.generate([[1] * 80], greedy(1))                                 # leaves a 5-block cached chain
    assert engine.pool.num_cached_free == 5
    rid = engine.add_request([2] * 80, greedy(1))
    done = drain(engine, max_steps=20)
    assert done[rid].finish_reason == "length"


# ------------------------------------------------------------------------------------------ abort
def test_abort_frees_all_blocks_of_a_request(make_engine, drain, rand_prompts, check_blocks):
    engine = make_engine(max_num_batched_tokens=16, block_size=4, enable_prefix_caching=False)
    long_a, long_b, short = rand_prompts([60, 60, 6], seed=3)
    alone = make_engine().generate([short], greedy(20))[0]

    waiting = engine.add_request(long_a, greedy(5))
    keep = engine.add_request(short, greedy(20))
    prefilling = engine.add_request(long_b, greedy(5))
    engine.step()                                        # budget 16: only `waiting` runs (chunk of 16)
    held = {r: len(engine.requests[r].block_table) for r in (waiting, keep, prefilling)}
    assert held[waiting] == 4 and held[prefilling] == 0
    assert engine.abort(prefilling)                      # never scheduled: still waiting
    assert engine.pool.num_in_use == 4
    assert engine.abort(waiting)                         # mid-prefill (16 of 60 tokens)
    assert engine.pool.num_in_use == 0
    engine.step(); engine.step()                         # keep: prefill, then decoding
    assert engine.requests[keep].output_token_ids
    assert engine.pool.num_in_use == len(engine.requests[keep].block_table) > 0
    decoding = engine.add_request(long_a, greedy(50))
    for _ in range(6):
        engine.step()
    assert engine.requests[decoding].output_token_ids     # mid-decode
    assert engine.abort(decoding)
    assert engine.pool.num_in_use == len(engine.requests[keep].block_table)
    assert not engine.abort(decoding) and not engine.abort("no-such-request")
    done = drain(engine)
    assert done[keep].token_ids == alone.token_ids       # the survivor is unaffected
    assert not engine.abort(keep)                        # finished requests cannot be aborted
    check_blocks(engine)


def test_abort_with_prefix_caching_returns_blocks_to_the_cache(make_engine, drain, check_blocks):
    engine = make_engine()
    rid = engine.add_request(list(range(40)), greedy(100))
    for _ in range(5):
        engine.step()
    req = engine.requests[rid]
    table = list(req.block_table)
    assert engine.abort(rid)
    assert req.status is RequestStatus.FINISHED and req.finish_reason == "abort"
    assert req.block_table == [] and all(b.ref_count == 0 for b in table)
    assert rid not in engine.requests and req not in engine.scheduler.running
    check_blocks(engine)
    # the full blocks it computed are still reusable
    [out] = engine.generate([list(range(40))], greedy(1))
    assert out.num_cached_tokens == 32


def test_abort_is_reported_in_step_outputs_only_via_finish_reason(make_engine):
    engine = make_engine()
    rid = engine.add_request([5] * 10, greedy(10))
    engine.step()
    engine.abort(rid)
    assert engine.step() == [] and not engine.has_unfinished()


# ------------------------------------------------------------------------------------------ context limit
def test_generation_stops_at_the_context_limit(make_engine):
    engine = make_engine(kv_cache_tokens=64)                 # max_model_len = 64
    assert engine.max_model_len == 64
    [a] = engine.generate([[3] * 63], greedy(10))
    assert len(a.token_ids) == 1 and a.finish_reason == "length"
    [b] = engine.generate([[3] * 58], greedy(100))
    assert len(b.token_ids) == 6 and b.finish_reason == "length"


def test_max_model_len_caps_the_context(make_engine):
    engine = make_engine(max_model_len=40)
    assert engine.max_model_len == 40
    [a] = engine.generate([[3] * 30], greedy(100))
    assert len(a.prompt_token_ids) + len(a.token_ids) == 40
    with pytest.raises(ValueError, match="max_model_len"):
        engine.add_request([3] * 40, greedy(1))


def test_a_readers_next_prompt_reuses_its_hash_chain_exactly():
    """PrefixHashes: the chain of a reader's previous prompt serves the blocks the next prompt
    shares with it (and only those): the hashes equal a fresh computation in every case."""
    from agentrt.engine.blocks import salt_root
    from agentrt.engine.prefix_hashes import BlockTokens, PrefixHashes
    from agentrt.engine.request import Request, RequestMeta

    def request(tokens, salt=None):
        meta = RequestMeta("p", "a", "s", None, cache_salt=salt)
        return Request("r", list(tokens), SamplingParams(max_tokens=1), meta)

    def fresh(tokens, salt=None):
        req = request(tokens, salt)
        PrefixHashes(4).extend(req, None)
        return req.block_hashes

    memo, reader = PrefixHashes(4), ("p", "a")
    first = request(range(1, 23))
    memo.extend(first, reader)
    memo.remember(first, reader)
    for tokens, salt in [(list(range(1, 23)) + [7] * 9, None),       # extends the previous prompt
                         (list(range(1, 10)) + [99] * 20, None),     # differs inside block 2
                         ([5] + list(range(2, 30)), None),           # differs in block 0
                         (list(range(1, 23)), "tenant")]:            # same tokens, another salt
        req = request(tokens, salt)
        memo.extend(req, reader)
        assert req.block_hashes == fresh(tokens, salt), tokens
    assert request(range(1, 23)).cache_root is None and salt_root("tenant") != 0
    toks = BlockTokens(first, 4, 5)
    assert len(toks) == 5 and toks[1] == (5, 6, 7, 8) and toks[-1] == (17, 18, 19, 20)
    assert toks[3:] == [(13, 14, 15, 16), (17, 18, 19, 20)]
    memo.forget_program("p")
    req = request(range(1, 23))
    memo.extend(req, reader)
    assert req.block_hashes == fresh(range(1, 23))
