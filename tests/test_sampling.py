"""Sampling: greedy, temperature, top-k, top-p, seeds (on the Sampler directly and through the
engine), stop strings, stop token ids, max_tokens, ignore_eos, and the detokenized text."""
from __future__ import annotations

import pytest
import torch

from agentrt.engine import SamplingParams
from agentrt.engine.loader import load_model
from agentrt.engine.sampler import Sampler

TINY_EOS = 258


def sample_many(logits_row: torch.Tensor, params: SamplingParams, n: int, seed: int = 0) -> torch.Tensor:
    """n independent draws from one row of logits (n rows in one batch, global RNG seeded)."""
    logits = logits_row.unsqueeze(0).repeat(n, 1)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Sampler().sample(logits, [params] * n, [f"r{i}" for i in range(n)])


def frequencies(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.bincount(tokens, minlength=vocab).float() / len(tokens)


# ------------------------------------------------------------------------------------------ Sampler
def test_greedy_is_argmax():
    logits = torch.randn(16, 300, generator=torch.Generator().manual_seed(0))
    tokens = Sampler().sample(logits, [SamplingParams()] * 16, [str(i) for i in range(16)])
    assert torch.equal(tokens, logits.argmax(-1))


LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
N = 40_000
TOL = 0.012          # ~5 standard deviations of a frequency estimate at N draws


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_temperature_sampling_follows_softmax(temperature):
    tokens = sample_many(LOGITS, SamplingParams(temperature=temperature), N)
    expected = torch.softmax(LOGITS / temperature, -1)
    assert (frequencies(tokens, 6) - expected).abs().max() < TOL


def test_top_k_renormalizes_over_the_k_best():
    tokens = sample_many(LOGITS, SamplingParams(temperature=1.0, top_k=3), N)
    expected = torch.zeros(6)
    expected[:3] = torch.softmax(LOGITS[:3], -1)
    freq = frequencies(tokens, 6)
    assert freq[3:].sum() == 0
    assert (freq - expected).abs().max() < TOL


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.softmax(LOGITS, -1)            # ~[.56, .21, .13, .08, .03, .004]
    top_p = float(probs[:2].sum()) + 0.01         # the nucleus needs the third token to pass top_p
    tokens = sample_many(LOGITS, SamplingParams(temperature=1.0, top_p=top_p), N)
    expected = torch.zeros(6)
    expected[:3] = probs[:3] / probs[:3].sum()
    freq = frequencies(tokens, 6)
    assert freq[3:].sum() == 0
    assert (freq - expected).abs().max() < TOL


def test_top_k_and_top_p_together():
    tokens = sample_many(LOGITS, SamplingParams(temperature=1.0, top_k=4, top_p=0.7), N)
    probs4 = torch.softmax(LOGITS[:4], -1)       # top-k first, then the nucleus of what is left
    keep = int((torch.cumsum(probs4, 0) - probs4 <= 0.7).sum())
    expected = torch.zeros(6)
    expected[:keep] = probs4[:keep] / probs4[:keep].sum()
    assert (frequencies(tokens, 6) - expected).abs().max() < TOL


def test_mixed_batch_rows_use_their_own_params():
    logits = torch.stack([LOGITS] * 4)
    params = [SamplingParams(), SamplingParams(temperature=1.0, top_k=1),
              SamplingParams(temperature=1.0, seed=3), SamplingParams(temperature=1.0, top_p=1e-6)]
    for seed in range(20):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            tokens = Sampler().sample(logits, params, ["a", "b", "c", "d"])
        assert tokens[0] == tokens[1] == tokens[3] == 0


def test_seeded_rows_are_reproducible_and_independent_of_the_batch():
    row = torch.zeros(1000)                      # uniform: every draw is pure noise
    p = SamplingParams(temperature=1.0, seed=42)
    alone = [Sampler().sample(row[None], [p], ["x"]).item() for _ in range(1)]
    s = Sampler()
    seq_alone = [s.sample(row[None], [p], ["x"]).item() for _ in range(5)]
    s2 = Sampler()
    other = SamplingParams(temperature=1.0)
    seq_batched = [s2.sample(torch.stack([row, row]), [other, p], ["y", "x"])[1].item() for _ in range(5)]
    assert seq_alone == seq_batched
    assert seq_alone[0] == alone[0]
    assert len(set(seq_alone)) > 1               # the generator advances between steps
    s.forget("x")                                # a forgotten request starts over
    assert s.sample(row[None], [p], ["x"]).item() == seq_alone[0]


# ------------------------------------------------------------------------------------------ engine
def sampled(**kw) -> SamplingParams:
    return SamplingParams(**{"max_tokens": 24, "ignore_eos": True, **kw})


def test_engine_greedy_is_argmax_of_its_logits(make_engine):
    engine = make_engine()
    outs = engine.generate([[1, 2, 3], [100] * 20], sampled(return_logits=True))
    for o in outs:
        assert o.token_ids == [int(l.argmax()) for l in o.logits]


def test_same_seed_same_tokens_different_seed_different_tokens(make_engine):
    engine = make_engine()
    prompt = list(b"Once upon a time")
    a = engine.generate([prompt], sampled(temperature=1.0, seed=1))[0].token_ids
    b = engine.generate([prompt], sampled(temperature=1.0, seed=1))[0].token_ids
    c = engine.generate([prompt], sampled(temperature=1.0, seed=2))[0].token_ids
    assert a == b
    assert a != c
    # seeded output does not depend on what else is in the batch
    outs = engine.generate([prompt, [5, 6, 7], prompt], sampled(temperature=1.0, seed=1))
    assert outs[0].token_ids == a and outs[2].token_ids == a
    # and is not just greedy
    assert a != engine.generate([prompt], sampled())[0].token_ids


def test_unseeded_sampling_varies(make_engine):
    engine = make_engine()
    outs = engine.generate([[1, 2, 3]] * 4, sampled(temperature=1.0))
    assert len({tuple(o.token_ids) for o in outs}) > 1


@pytest.mark.parametrize("params", [dict(temperature=1.0, top_k=1), dict(temperature=1.5, top_p=1e-6),
                                    dict(temperature=1e-4, seed=3)],
                         ids=["top_k=1", "top_p-tiny", "temperature-tiny"])
def test_degenerate_random_sampling_equals_greedy(make_engine, params):
    engine = make_engine()
    prompts = [list(b"abc"), [200] * 30, list(range(50))]
    greedy = [o.token_ids for o in engine.generate(prompts, sampled())]
    other = [o.token_ids for o in engine.generate(prompts, sampled(**params))]
    assert other == greedy


def test_max_tokens_finishes_with_length(make_engine):
    engine = make_engine()
    for n in (1, 7):
        [o] = engine.generate([[1, 2, 3]], SamplingParams(max_tokens=n, ignore_eos=True))
        assert len(o.token_ids) == n and o.finish_reason == "length" and o.finished


def test_stop_token_ids(make_engine):
    engine = make_engine()
    prompt = list(b"Stop tokens: ")
    full = engine.generate([prompt], sampled(max_tokens=20))[0].token_ids
    target = full[5]
    k = full.index(target)
    [o] = engine.generate([prompt], sampled(max_tokens=20, stop_token_ids=[target]))
    assert o.token_ids == full[:k + 1]
    assert o.finish_reason == "stop"


def eos_engine(make_engine, eos: int):
    """The tiny model with `eos` as its end-of-sequence id (same weights, same outputs)."""
    return make_engine(load_model("tiny-random-llama", eos_token_id=eos))


def test_eos_stops_and_ignore_eos_keeps_going(make_engine):
    prompt = list(b"The end is near")
    full = make_engine().generate([prompt], sampled(max_tokens=20))[0].token_ids
    eos = full[4]                                # make a token the model emits greedily the EOS
    k = full.index(eos)
    engine = eos_engine(make_engine, eos)
    assert eos in engine.eos_token_ids and TINY_EOS in engine.eos_token_ids
    [stopped] = engine.generate([prompt], SamplingParams(max_tokens=20))
    assert stopped.token_ids == full[:k + 1] and stopped.finish_reason == "stop"
    [kept] = engine.generate([prompt], SamplingParams(max_tokens=20, ignore_eos=True))
    assert kept.token_ids == full and kept.finish_reason == "length"
    assert kept.token_ids.count(eos) >= 1


def test_eos_258_stops_unless_ignore_eos(make_engine, rand_prompts):
    """The tiny model's own EOS (<|im_end|>, 258): find prompts whose greedy output contains it."""
    engine = make_engine()
    prompts = rand_prompts([8] * 32, seed=0)
    outs = engine.generate(prompts, SamplingParams(max_tokens=32, ignore_eos=True))
    cases = [(p, o.token_ids) for p, o in zip(prompts, outs) if TINY_EOS in o.token_ids[:-1]]
    assert len(cases) >= 2, "expected the random model to emit EOS somewhere"
    for prompt, full in cases[:3]:
        k = full.index(TINY_EOS)
        [stopped] = engine.generate([prompt], SamplingParams(max_tokens=32))
        assert stopped.token_ids == full[:k + 1] and stopped.finish_reason == "stop"
        assert "<|im_end|>" not in stopped.text
        [kept] = engine.generate([prompt], SamplingParams(max_tokens=32, ignore_eos=True))
        assert kept.token_ids == full and kept.finish_reason == "length"


def test_default_eos_258_is_the_tokenizer_eos(make_engine):
    engine = make_engine()
    assert engine.eos_token_ids == {TINY_EOS}
    assert engine.tokenizer.convert_ids_to_tokens(TINY_EOS) == "<|im_end|>"


# ------------------------------------------------------------------------------------------ text
def full_text(engine, out) -> str:
    return engine.tokenizer.decode(out.token_ids, skip_special_tokens=True)


@pytest.mark.parametrize("stream_text", [False, True])
def test_finished_text_is_the_decoded_output(make_engine, rand_prompts, stream_text):
    """A request that ends by length or EOS returns the text of all its tokens, even when the last
    bytes do not form a complete UTF-8 character (the byte-level tiny model often ends that way)."""
    engine = make_engine()
    engine.stream_text = stream_text
    outs = engine.generate(rand_prompts([12] * 12, seed=0), SamplingParams(max_tokens=16, ignore_eos=True))
    mismatched = [(full_text(engine, o), o.text) for o in outs if full_text(engine, o) != o.text]
    assert not mismatched, mismatched


def test_text_of_ascii_output(make_engine):
    engine = make_engine()
    [o] = engine.generate(["Hello world"], SamplingParams(max_tokens=16, ignore_eos=True))
    assert o.text == full_text(engine, o)


def stop_candidate(text: str) -> tuple[str, int] | None:
    """A printable ASCII character of `text`, not at its start, and its first index."""
    for i, ch in enumerate(text):
        if i >= 2 and ch.isascii() and ch.isprintable() and ch != " ":
            return ch, text.index(ch)
    return None


def test_stop_string_cuts_text_and_finishes_with_stop(make_engine, rand_prompts):
    engine = make_engine()
    engine.stream_text = True                    # the engine's own incremental text, no stop string
    checked = 0
    for prompt in rand_prompts([10] * 10, seed=4):
        [full] = engine.generate([prompt], SamplingParams(max_tokens=24, ignore_eos=True))
        cand = stop_candidate(full.text)
        if cand is None:
            continue
        stop, idx = cand
        [cut] = engine.generate([prompt], SamplingParams(max_tokens=24, ignore_eos=True, stop=[stop, "never-seen"]))
        assert cut.finish_reason == "stop"
        assert cut.text == full.text[:idx]
        assert stop not in cut.text
        assert len(cut.token_ids) < 24 and cut.token_ids == full.token_ids[:len(cut.token_ids)]
        checked += 1
    assert checked >= 3


def test_multi_token_stop_string_across_token_boundaries(make_engine, rand_prompts):
    # byte-level tokens: a two-character ASCII stop string always spans two generated tokens
    engine = make_engine()
    engine.stream_text = True
    checked = 0
    for prompt in rand_prompts([8] * 16, seed=5):
        [full] = engine.generate([prompt], SamplingParams(max_tokens=24, ignore_eos=True))
        text = full.text
        found = [i for i in range(1, len(text) - 1)
                 if text[i:i + 2].isascii() and text[i:i + 2].isprintable() and text.index(text[i:i + 2]) == i]
        if not found:
            continue
        i = found[0]
        [cut] = engine.generate([prompt], SamplingParams(max_tokens=24, ignore_eos=True, stop=[text[i:i + 2]]))
        assert cut.finish_reason == "stop" and cut.text == text[:i]
        checked += 1
    assert checked >= 2


def test_stop_string_not_hit_finishes_by_length(make_engine):
    engine = make_engine()
    [o] = engine.generate([[1, 2, 3]], SamplingParams(max_tokens=10, ignore_eos=True, stop=["\x00never\x00"]))
    assert o.finish_reason == "length" and len(o.token_ids) == 10
