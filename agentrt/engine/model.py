"""Llama-family decoder (Llama, SmolLM2, Qwen2, Mistral without sliding window) over paged KV.

Weights load from a Hugging Face state dict; q/k/v and gate/up are fused into one matmul each.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agentrt.engine.attention import AttentionMetadata, paged_attention
from agentrt.engine.quant import linear_add

STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")



def head_dim_of(config) -> int:
    """Per-head width: the config's own, else hidden size over attention heads."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Device bytes one token's K and V take over all layers."""
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim_of(config) * dtype.itemsize

def rope_tables(config, max_positions: int) -> tuple[Tensor, Tensor]:
    """cos, sin tables [max_positions, head_dim // 2], including the model's rope scaling."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = getattr(config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    head_dim = head_dim_of(config)
    if rope_type not in STATIC_ROPE_TYPES:
        raise ValueError(f"rope type {rope_type!r} is not supported (supported: {', '.join(STATIC_ROPE_TYPES)})")
    if rope_type == "default":
        theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)
        scale = 1.0
    else:
        inv_freq, scale = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu")
    freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq.float())
    return freqs.cos() * scale, freqs.sin() * scale


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: [tokens, heads, d]; cos, sin: [tokens, 1, d // 2]. Rotate-half convention (HF Llama)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)   # fused; computes in fp32


class DecoderLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = head_dim_of(config)
        qkv_out = (self.n_heads + 2 * self.n_kv) * self.head_dim
        bias = bool(getattr(config, "attention_bias", False)) or config.model_type == "qwen2"
        self.qkv_proj = nn.Linear(config.hidden_size, qkv_out, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, config.hidden_size, bias=False)
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: Tensor, meta: AttentionMetadata) -> Tensor:
        n, d, h, kvh = x.shape[0], self.head_dim, self.n_heads, self.n_kv
        qkv = self.qkv_proj(self.input_layernorm(x))
        qk = apply_rope(qkv[:, :(h + kvh) * d].view(n, h + kvh, d), cos, sin)
        v = qkv[:, (h + kvh) * d:].view(n, kvh, d)
        attn = paged_attention(qk[:, :h], qk[:, h:], v, cache, meta)
        x = linear_add(x, attn, self.o_proj)                               # residual add fused in the matmul
        gate, up = self.gate_up_proj(self.post_attention_layernorm(x)).chunk(2, dim=-1)
        return linear_add(x, F.silu(gate) * up, self.down_proj)


class LlamaModel(nn.Module):
    def __init__(self, config, max_positions: int):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.tied = bool(getattr(config, "tie_word_embeddings", False))
        self.lm_head = None if self.tied else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.head: nn.Module | None = None      # a packed head (agentrt.engine.gguf_weights) instead of a dense one
        cos, sin = rope_tables(config, max_positions)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    @property
    def head_dim(self) -> int:
        return self.layers[0].head_dim

    def forward(self, input_ids: Tensor, positions: Tensor, kv_cache: Tensor, meta: AttentionMetadata) -> Tensor:
        """Hidden states after the final norm, [tokens, hidden]. kv_cache: [layers, 2, blocks, bs, kvh, d]."""
        x = self.embed_tokens(input_ids)
        dtype = x.dtype
        cos = self.rope_cos[positions].unsqueeze(1).to(dtype)
        sin = self.rope_sin[positions].unsqueeze(1).to(dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, kv_cache[i], meta)
        return self.norm(x)

    def logits(self, hidden: Tensor) -> Tensor:
        if self.head is not None:
            return self.head(hidden).float()
        weight = self.embed_tokens.weight if self.tied else self.lm_head.weight
        return F.linear(hidden, weight).float()

    def load_hf_state_dict(self, state: dict[str, Tensor]) -> None:
        """Copy weights from a transformers Llama/Qwen2 state dict, fusing qkv and gate/up."""
        def take(name: str) -> Tensor:
            if name not in state:
                raise KeyError(f"weight {name!r} missing from the checkpoint")
            return state[name]

        with torch.no_grad():
            self.embed_tokens.weight.copy_(take("model.embed_tokens.weight"))
            self.norm.weight.copy_(take("model.norm.weight"))
            if self.lm_head is not None:
                self.lm_head.weight.copy_(take("lm_head.weight"))
            for i, layer in enumerate(self.layers):
                p = f"model.layers.{i}."
                a = p + "self_attn."
                layer.qkv_proj.weight.copy_(torch.cat([take(a + f"{x}_proj.weight") for x in "qkv"]))
                if layer.qkv_proj.bias is not None:
                    layer.qkv_proj.bias.copy_(torch.cat([take(a + f"{x}_proj.bias") for x in "qkv"]))
                layer.o_proj.weight.copy_(take(a + "o_proj.weight"))
                layer.gate_up_proj.weight.copy_(torch.cat([take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")]))
                layer.down_proj.weight.copy_(take(p + "mlp.down_proj.weight"))
                layer.input_layernorm.weight.copy_(take(p + "input_layernorm.weight"))
                layer.post_attention_layernorm.weight.copy_(take(p + "post_attention_layernorm.weight"))
