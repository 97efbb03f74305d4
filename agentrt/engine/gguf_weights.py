"""A GGUF's tensors as they are stored (quantized blocks kept), and the engine's Llama over them.

`read_gguf` maps llama.cpp tensor names to Hugging Face ones and keeps each tensor portable:
float tensors as float32, Q4_1 as (q, d, m), Q8_0 as (q, d); any other quantized type is
dequantized by `gguf` to float32. llama.cpp's converter permutes the rows of attn_q / attn_k
(per head, interleaving the two rotary halves); transformers reverses that, and so does this,
on whole rows of blocks (a block spans inputs, so a row permutation moves blocks unchanged).

`build_q4_model` makes the engine's `LlamaModel` without ever materializing dense linears:
Q4_1 linears become `Int4Linear` (q/k/v and gate/up fused by stacking rows: exact, since groups
run along the inputs), the Q8_0 embedding stays Q8_0 (rows dequantized on lookup) and the tied
head runs as int8 per row (`Int8Linear`). Packing happens here, at load, for this CPU.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from agentrt.engine.quant import (Int4Linear, Int8Linear, Q8Embedding, dequant_q4_1, dequant_q8_0, requantize_rows,
                                  unpack_q4_1, unpack_q8_0)


@dataclass(slots=True)
class Q4:
    q: Tensor
    d: Tensor
    m: Tensor


@dataclass(slots=True)
class Q8:
    q: Tensor
    d: Tensor


Stored = Tensor | Q4 | Q8

_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def hf_name(gguf_name: str) -> str | None:
    stem, _, kind = gguf_name.rpartition(".")
    if stem in _TOP_NAMES:
        return f"{_TOP_NAMES[stem]}.{kind}"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{kind}"
    return None


def unpermute_rows(n_rows: int, n_head: int) -> Tensor:
    """Row order that undoes llama.cpp's q/k permutation (transformers' reverse_permute)."""
    dim = n_rows // n_head // 2
    return torch.arange(n_rows).view(n_head, dim, 2).transpose(1, 2).reshape(-1)


class GGUFTensors(Mapping):
    """The GGUF's tensors by Hugging Face name, each unpacked when asked for (never all at once:
    the file stays memory-mapped and a load holds one layer's unpacked blocks at a time)."""

    def __init__(self, path: str | Path, n_head: int, n_kv_head: int):
        import gguf

        reader = gguf.GGUFReader(str(path))
        arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
        if arch != "llama":
            raise ValueError(f"{path}: architecture {arch!r}; the q4 path reads llama GGUFs")
        self._tensors = {n: t for t in reader.tensors if (n := hf_name(t.name)) is not None}
        self._heads = n_head, n_kv_head

    def __getitem__(self, name: str) -> Stored:
        import gguf
        from gguf.quants import dequantize

        t = self._tensors[name]
        data = t.data
        if name.endswith(("q_proj.weight", "k_proj.weight")):     # rows of whole blocks, in HF order
            data = data[unpermute_rows(data.shape[0], self._heads[0] if "q_proj" in name else self._heads[1]).numpy()]
        kind = t.tensor_type
        if kind == gguf.GGMLQuantizationType.Q4_1:
            return Q4(*unpack_q4_1(data))
        if kind == gguf.GGMLQuantizationType.Q8_0:
            return Q8(*unpack_q8_0(data))
        return torch.from_numpy(np.array(dequantize(data, kind), dtype=np.float32))

    def __iter__(self):
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


def read_gguf(path: str | Path, n_head: int, n_kv_head: int) -> GGUFTensors:
    """Every tensor of the GGUF under its Hugging Face name, quantized blocks kept."""
    return GGUFTensors(path, n_head, n_kv_head)


def dequantize_all(stored: Mapping[str, Stored]) -> dict[str, Tensor]:
    """The float32 state dict the stored tensors stand for (the reference the q4 path is held to)."""
    def one(v: Stored) -> Tensor:
        if isinstance(v, Q4):
            return dequant_q4_1(v.q, v.d, v.m)
        if isinstance(v, Q8):
            return dequant_q8_0(v.q, v.d)
        return v
    return {k: one(v) for k, v in stored.items()}


def _cat(parts: list[Stored]) -> Stored:
    if all(isinstance(p, Q4) for p in parts):
        return Q4(*(torch.cat([getattr(p, f) for p in parts]) for f in ("q", "d", "m")))
    return torch.cat([dequantize_all({"w": p})["w"] for p in parts])


def packed_linear(weight: Stored, dtype: torch.dtype, bias: Tensor | None = None) -> nn.Module:
    """Int4Linear for a Q4_1 weight; a dense nn.Linear at `dtype` for anything else."""
    if isinstance(weight, Q4):
        return Int4Linear(weight.q, weight.d, weight.m, dtype, bias)
    w = dequantize_all({"w": weight})["w"]
    layer = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    layer.weight = nn.Parameter(w.to(dtype), requires_grad=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias.to(dtype), requires_grad=False)
    return layer


def build_q4_model(stored: Mapping[str, Stored], config, max_positions: int, dtype: torch.dtype):
    """The engine's LlamaModel with packed int4 linears, a Q8_0 embedding and an int8 head."""
    from agentrt.engine.model import LlamaModel, RMSNorm, rope_tables

    def take(name: str) -> Stored:
        if name not in stored:
            raise KeyError(f"weight {name!r} missing from the GGUF")
        return stored[name]

    def norm(name: str) -> RMSNorm:
        layer = RMSNorm(config.hidden_size, config.rms_norm_eps)
        layer.weight = nn.Parameter(take(name).to(dtype), requires_grad=False)
        return layer

    with torch.device("meta"):
        model = LlamaModel(config, max_positions=1)
    embed = take("model.embed_tokens.weight")
    model.embed_tokens = (Q8Embedding(embed.q, embed.d, dtype) if isinstance(embed, Q8)
                          else nn.Embedding.from_pretrained(dequantize_all({"w": embed})["w"].to(dtype)))
    head = stored.get("lm_head.weight", embed)
    model.head = Int8Linear(*requantize_rows(head.q, head.d), dtype) if isinstance(head, Q8) else packed_linear(head, dtype)
    model.lm_head = None
    model.norm = norm("model.norm.weight")
    for i, layer in enumerate(model.layers):
        p, a = f"model.layers.{i}.", f"model.layers.{i}.self_attn."
        bias = [stored.get(a + f"{x}_proj.bias") for x in "qkv"]
        qkv_bias = torch.cat(bias) if all(b is not None for b in bias) else None
        layer.qkv_proj = packed_linear(_cat([take(a + f"{x}_proj.weight") for x in "qkv"]), dtype, qkv_bias)
        layer.o_proj = packed_linear(take(a + "o_proj.weight"), dtype)
        layer.gate_up_proj = packed_linear(_cat([take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")]), dtype)
        layer.down_proj = packed_linear(take(p + "mlp.down_proj.weight"), dtype)
        layer.input_layernorm = norm(p + "input_layernorm.weight")
        layer.post_attention_layernorm = norm(p + "post_attention_layernorm.weight")
    cos, sin = rope_tables(config, max_positions)
    model.rope_cos, model.rope_sin = cos, sin
    return model.eval()


def load_q4_model(loaded, max_positions: int, dtype: torch.dtype, device: torch.device):
    """`build_q4_model` over the GGUF behind `loaded` (CPU only: the kernels are torch's CPU ones)."""
    if device.type != "cpu":
        raise ValueError(f"weights='q4' runs on CPU (torch's CPU int4 kernels), not on {device.type}")
    if loaded.gguf is None:
        raise ValueError(f"weights='q4' needs a GGUF model; {loaded.name} has none (use bf16 or fp32)")
    cfg = loaded.config
    stored = read_gguf(loaded.gguf, cfg.num_attention_heads, cfg.num_key_value_heads)
    return build_q4_model(stored, cfg, max_positions, dtype)
