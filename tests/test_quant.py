"""The q4 path: GGUF blocks unpacked exactly, packed int4/int8 linears, and the engine over a
tiny llama written as a real GGUF (Q4_1 linears, Q8_0 embedding, q/k permuted as llama.cpp does)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from agentrt.engine import EngineConfig, LLMEngine, SamplingParams
from agentrt.engine.gguf_weights import Q4, build_q4_model, dequantize_all, read_gguf, unpermute_rows
from agentrt.engine.loader import LoadedModel
from agentrt.engine.quant import (DENSE_FROM_ROWS, Int4Linear, Int8Linear, dequant_q4_1, dequant_q8_0, pack_nibbles,
                                  q4_supported, requantize_rows, unpack_q4_1, unpack_q8_0)

gguf = pytest.importorskip("gguf")
pytestmark = pytest.mark.skipif(not q4_supported(), reason="torch has no CPU int4 kernels")
Q4_1, Q8_0 = gguf.GGMLQuantizationType.Q4_1, gguf.GGMLQuantizationType.Q8_0


def llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf does to q/k rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_unpack_matches_gguf_dequantize():
    w = np.random.default_rng(0).normal(size=(48, 96)).astype(np.float32)
    raw4, raw8 = gguf.quants.quantize(w, Q4_1), gguf.quants.quantize(w, Q8_0)
    q, d, m = unpack_q4_1(raw4)
    assert q.shape == (48, 96) and int(q.max()) <= 15 and d.shape == (48, 3)
    assert torch.equal(dequant_q4_1(q, d, m), torch.from_numpy(gguf.quants.dequantize(raw4, Q4_1)))
    q8, d8 = unpack_q8_0(raw8)
    assert torch.equal(dequant_q8_0(q8, d8), torch.from_numpy(gguf.quants.dequantize(raw8, Q8_0)))


def test_unpermute_undoes_llamacpp_permutation():
    w = np.arange(64 * 3, dtype=np.float32).reshape(64, 3)
    back = torch.from_numpy(llamacpp_permute(w, 4))[unpermute_rows(64, 4)]
    assert torch.equal(back, torch.from_numpy(w))


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-4), (torch.bfloat16, 0.15)])
def test_int4_linear_computes_the_q4_1_weight(dtype, atol):
    w = np.random.default_rng(1).normal(size=(128, 96)).astype(np.float32)
    q, d, m = unpack_q4_1(gguf.quants.quantize(w, Q4_1))
    x = torch.randn(5, 96)
    want = x @ dequant_q4_1(q, d, m).t()
    got = Int4Linear(q, d, m, dtype)(x.to(dtype)).float()
    assert (got - want).abs().max().item() < atol * want.abs().max().item()


def test_pack_nibbles_keeps_every_weight():
    q = torch.randint(0, 16, (6, 64), dtype=torch.uint8)
    nib = pack_nibbles(q)
    assert nib.shape == (6, 2, 16) and nib.dtype == torch.uint8
    assert torch.equal(torch.cat([nib & 0x0F, nib >> 4], dim=-1).view(6, 64), q)


def test_int4_linear_long_inputs_take_the_dense_path_with_the_kernels_weight():
    """A prefill-sized call dequantizes once and runs an sgemm; its weight is the kernel's (same
    scale and zero, rounded to the activation dtype), so both paths agree to the output's rounding."""
    w = np.random.default_rng(3).normal(size=(96, 64)).astype(np.float32)
    q, d, m = unpack_q4_1(gguf.quants.quantize(w, Q4_1))
    layer = Int4Linear(q, d, m, torch.bfloat16)
    x = torch.randn(DENSE_FROM_ROWS, 64).to(torch.bfloat16)
    kernel = torch.ops.aten._weight_int4pack_mm_for_cpu(x, layer.packed, 32, layer.scale_zeros)
    assert (layer(x).float() - kernel.float()).abs().max() <= 0.01 * kernel.float().abs().max()
    exact = dequant_q4_1(q, d, m)
    assert (layer.dense_weight() - exact).abs().max() < 0.01 * exact.abs().max()
    layer.packed.zero_()                                     # the kernel's copy gone: only the dense path still works
    assert (layer(x).float() - kernel.float()).abs().max() <= 0.01 * kernel.float().abs().max()
    short = layer(x[:DENSE_FROM_ROWS - 1]).float()
    assert (short - kernel[:DENSE_FROM_ROWS - 1].float()).abs().max() > 0.1 * kernel.float().abs().max()


def test_int8_head_is_close_to_the_q8_0_weight():
    w = np.random.default_rng(2).normal(size=(300, 64)).astype(np.float32)
    q8, d8 = unpack_q8_0(gguf.quants.quantize(w, Q8_0))
    x = torch.randn(3, 64)
    want = x @ dequant_q8_0(q8, d8).t()
    got = Int8Linear(*requantize_rows(q8, d8), torch.float32)(x)
    assert (got - want).abs().max().item() < 0.02 * want.abs().max().item()


# ------------------------------------------------------------------------------------------ a tiny GGUF
@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, tiny_loaded):
    """tiny-random-llama written as llama.cpp would: Q4_1 linears, Q8_0 embedding, f32 norms."""
    cfg = tiny_loaded.config
    path = tmp_path_factory.mktemp("gguf") / "tiny.Q4_1.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for name, t in tiny_loaded.state_dict.items():
        w = t.float().numpy()
        if name == "model.embed_tokens.weight":
            writer.add_tensor("token_embd.weight", gguf.quants.quantize(w, Q8_0), raw_dtype=Q8_0)
            continue
        if name == "model.norm.weight":
            writer.add_tensor("output_norm.weight", w)
            continue
        if not name.startswith("model.layers."):
            continue
        i, rest = name.removeprefix("model.layers.").split(".", 1)
        stem = rest.removesuffix(".weight")
        if "q_proj" in stem or "k_proj" in stem:
            w = llamacpp_permute(w, cfg.num_attention_heads if "q_proj" in stem else cfg.num_key_value_heads)
        target = f"blk.{i}.{names[stem]}.weight"
        writer.add_tensor(target, w if w.ndim == 1 else gguf.quants.quantize(w, Q4_1),
                          raw_dtype=None if w.ndim == 1 else Q4_1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    loaded = LoadedModel("tiny-q4", cfg, {}, tiny_loaded.tokenizer, str(path), path)
    stored = read_gguf(path, cfg.num_attention_heads, cfg.num_key_value_heads)
    return loaded, stored


def reference(loaded, stored, dtype=torch.float32):
    from transformers import LlamaForCausalLM
    ref = LlamaForCausalLM(loaded.config)
    ref.load_state_dict(dequantize_all(stored), strict=False)
    ref.tie_weights()
    return ref.to(dtype).eval()


def test_read_gguf_keeps_blocks_and_undoes_the_permutation(tiny_gguf, tiny_loaded):
    _, stored = tiny_gguf
    q = stored["model.layers.0.self_attn.q_proj.weight"]
    assert isinstance(q, Q4)
    want = tiny_loaded.state_dict["model.layers.0.self_attn.q_proj.weight"]
    got = dequant_q4_1(q.q, q.d, q.m)
    assert (got - want).abs().max() < 0.1 * want.abs().max()     # within Q4_1's step, rows in HF order


def test_q4_engine_matches_transformers_on_the_dequantized_weights(tiny_gguf, rand_prompts):
    loaded, stored = tiny_gguf
    engine = LLMEngine(loaded, EngineConfig(device="cpu", dtype="float32", weights="q4"))
    assert engine.weights == "q4" and isinstance(engine.model.layers[0].qkv_proj, Int4Linear)
    ref = reference(loaded, stored)
    prompts = rand_prompts([7, 33, 50], seed=5)
    outs = engine.generate(prompts, SamplingParams(max_tokens=8, ignore_eos=True, return_logits=True))
    errs = []
    for p, o in zip(prompts, outs):
        with torch.no_grad():
            want = ref(torch.tensor([p + o.token_ids])).logits[0, len(p) - 1:len(p) - 1 + len(o.token_ids)]
        got = torch.stack(o.logits)
        errs.append(((got - want).abs().max() / want.abs().max()).item())
        assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.75
    assert max(errs) < 0.02, errs          # the int8 head is the only inexact step at fp32


def test_weights_option_resolves_per_model_and_device(tiny_loaded):
    cpu = torch.device("cpu")
    assert EngineConfig().weight_format(cpu, from_gguf=True) == "q4"
    assert EngineConfig().weight_format(cpu, from_gguf=False) == "fp32"
    assert EngineConfig(dtype="float32").weight_format(cpu, from_gguf=True) == "fp32"
    assert EngineConfig(weights="bf16").torch_dtype(cpu) == torch.bfloat16
    with pytest.raises(ValueError):
        EngineConfig(weights="bf16", dtype="float32")
    with pytest.raises(ValueError, match="GGUF"):
        LLMEngine(tiny_loaded, EngineConfig(device="cpu", weights="q4"))


def test_build_q4_model_materializes_no_dense_linear(tiny_gguf):
    loaded, stored = tiny_gguf
    model = build_q4_model(stored, loaded.config, 64, torch.float32)
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert all(not t.is_meta for t in list(model.parameters()) + list(model.buffers()))
