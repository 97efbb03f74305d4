"""bf16 on CPU is offered because it is faster at the same closeness to the reference:
agentrt in bf16 must deviate from transformers fp32 no more than transformers in bf16 does."""
import pytest
import torch

from agentrt.engine import EngineConfig, LLMEngine, SamplingParams
from agentrt.engine.loader import load_model

pytestmark = pytest.mark.slow

QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea.",
             "Explain photosynthesis briefly.", "List three prime numbers."]


def _reference(loaded, dtype):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(loaded.config).to(dtype)
    model.load_state_dict(loaded.state_dict, strict=False)
    model.tie_weights()
    return model.eval()


def test_bf16_deviation_matches_transformers_bf16():
    loaded = load_model("smollm2-135m")
    engine = LLMEngine(loaded, EngineConfig(dtype="bfloat16"))
    assert engine.kv_cache_dtype() == torch.bfloat16
    prompts = [engine.apply_chat_template([{"role": "user", "content": q}]) for q in QUESTIONS]
    outs = engine.generate(prompts, SamplingParams(max_tokens=16, ignore_eos=True, return_logits=True))
    ref32, ref16 = _reference(loaded, torch.float32), _reference(loaded, torch.bfloat16)
    ours_err, hf16_err, ours_agree = [], [], []
    for prompt, out in zip(prompts, outs):
        ids = torch.tensor([prompt + out.token_ids])
        rows = slice(len(prompt) - 1, len(prompt) - 1 + len(out.token_ids))
        with torch.no_grad():
            l32 = ref32(ids).logits[0, rows].float()
            l16 = ref16(ids).logits[0, rows].float()
        ours = torch.stack(out.logits)
        ours_err.append((ours - l32).abs().mean().item())
        hf16_err.append((l16 - l32).abs().mean().item())
        ours_agree.append((ours.argmax(-1) == l32.argmax(-1)).float().mean().item())
    mean = lambda xs: sum(xs) / len(xs)
    assert mean(ours_err) <= 1.5 * mean(hf16_err), (ours_err, hf16_err)
    assert mean(ours_agree) >= 0.9, ours_agree
    assert "Paris" in outs[0].text
