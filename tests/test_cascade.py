"""Cascade decode attention: decodes that share leading blocks read them once, and the merged
result equals attention over the whole context."""
import pytest
import torch

import agentrt.engine.attention as attention
from agentrt.engine import SamplingParams
from agentrt.engine.runner import MIN_SHARED_BLOCKS


@pytest.fixture
def cascade_calls(monkeypatch):
    calls = []
    original = attention.cascade_decode

    def spy(q, k_own, v_own, cache, meta):
        calls.append((q.shape[0], meta.decode_shared.numel()))
        return original(q, k_own, v_own, cache, meta)

    monkeypatch.setattr(attention, "cascade_decode", spy)
    return calls


@pytest.mark.parametrize("block_size", [16, 5])
def test_shared_system_prompt_decodes_use_cascade_and_match_reference(make_engine, tiny_ref, logit_error,
                                                                      cascade_calls, block_size):
    engine = make_engine(block_size=block_size, kv_cache_tokens=4096, max_num_batched_tokens=512)
    system = [i % 250 for i in range(200)]
    prompts = [system + [(i * 31 + j) % 250 for j in range(5 + 9 * i)] for i in range(6)]
    outs = engine.generate(prompts, SamplingParams(max_tokens=10, ignore_eos=True, return_logits=True))
    assert cascade_calls, "decodes sharing a 200-token prefix never took the cascade path"
    assert max(shared for _, shared in cascade_calls) >= 200 // block_size
    for out in outs:
        assert logit_error(tiny_ref, out) < 1e-4


def test_unrelated_prompts_do_not_use_cascade(make_engine, cascade_calls):
    engine = make_engine()
    prompts = [[(i * 37 + j) % 250 for j in range(100)] for i in range(4)]
    engine.generate(prompts, SamplingParams(max_tokens=4, ignore_eos=True))
    assert cascade_calls == []


def test_short_shared_prefix_stays_on_plain_path(make_engine, cascade_calls):
    engine = make_engine(block_size=16)
    shared = [7] * (16 * (MIN_SHARED_BLOCKS - 1))
    prompts = [shared + [(i * 37 + j) % 250 for j in range(20)] for i in range(3)]
    engine.generate(prompts, SamplingParams(max_tokens=4, ignore_eos=True))
    assert cascade_calls == []


def test_cascade_merge_equals_full_attention():
    torch.manual_seed(0)
    b, kvh, g, d, bs = 4, 2, 3, 16, 4
    cache = torch.randn(2, 12, bs, kvh, d)
    shared = torch.tensor([0, 1, 2])
    own = torch.tensor([[3, 4], [5, 6], [7, 8], [9, 10]])
    context = torch.tensor([13, 16, 15, 14])                         # tokens incl. the 12 shared ones
    q = torch.randn(b, kvh, g, d)
    keys = torch.arange(3 * bs, 5 * bs)
    mask = torch.zeros(b, 1, 1, keys.numel()).masked_fill((keys >= context[:, None])[:, None, None, :], float("-inf"))
    meta = attention.AttentionMetadata(torch.empty(0, dtype=torch.long), b, own, mask, shared, [], None)
    k_own, v_own = attention.gather_kv(cache, own)
    got = attention.cascade_decode(q, k_own, v_own, cache, meta)
    full = torch.cat([shared.expand(b, -1), own], dim=1)
    k_all, v_all = attention.gather_kv(cache, full)
    valid = torch.arange(5 * bs)[None, :] < context[:, None]
    want = torch.nn.functional.scaled_dot_product_attention(q, k_all, v_all, attn_mask=valid[:, None, None, :])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
