"""The systems the engine benchmark compares, behind one interface.

A peer turns token-id prompts into exactly `max_new` greedy tokens each (end-of-sequence
ignored), so every case is written once and timed the same way for all of them:

- `agentrt`: the embedded engine, one continuous batch per call.
- `transformers`: `generate` on the same weights, one left-padded batch, greedy, KV cache on.
- `llama.cpp`: `llama_cpp.Llama` on the same GGUF; it serves one sequence at a time, so a
  batch of B is B sequential generations (it keeps its native reuse of the previous call's
  KV prefix).
"""
from __future__ import annotations

import importlib.metadata
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

from agentrt.engine import LLMEngine, SamplingParams

LLAMA_CPP_N_CTX = 4096


class Peer(ABC):
    name: str
    detail: str

    @abstractmethod
    def generate(self, prompts: list[list[int]], max_new: int) -> list[list[int]]:
        """Generate exactly `max_new` tokens for every prompt; returns the new token ids."""

    def reset(self) -> None:
        """Forget cached KV between measured runs (each run starts cold)."""

    def run_info(self) -> dict[str, Any]:
        """Facts about the last call worth reporting (e.g. prefix-cache hits)."""
        return {}


@dataclass(slots=True, frozen=True)
class Absent:
    """A peer that could not be set up for this model, and why."""
    name: str
    reason: str


class AgentrtPeer(Peer):
    name = "agentrt"

    def __init__(self, model: str, dtype: str, threads: int, weights: str = "auto"):
        opts = {"weights": weights} if weights != "auto" else {"dtype": dtype}
        self.engine = LLMEngine.from_pretrained(model, num_threads=threads, **opts)
        self.weights = self.engine.weights
        self.detail = (f"agentrt engine, weights {self.weights}, activations {str(self.engine.dtype).removeprefix('torch.')}, "
                       f"continuous batching, prefix cache on")
        self._cached_tokens = 0

    def generate(self, prompts: list[list[int]], max_new: int) -> list[list[int]]:
        params = SamplingParams(max_tokens=max_new, ignore_eos=True, temperature=0.0)
        outs = self.engine.generate(prompts, params)
        self._cached_tokens = sum(o.num_cached_tokens for o in outs)
        return [o.token_ids for o in outs]

    def reset(self) -> None:
        self.engine.reset_prefix_cache()

    def run_info(self) -> dict[str, Any]:
        return {"cached_prompt_tokens": self._cached_tokens}

    @property
    def vocab_size(self) -> int:
        return self.engine.model_config.vocab_size

    @property
    def special_ids(self) -> set[int]:
        return set(self.engine.tokenizer.all_special_ids)


class TransformersPeer(Peer):
    def __init__(self, model: str, dtype: str, name: str = "transformers"):
        self.name = name
        torch_dtype = getattr(torch, dtype)
        self.model = _transformers_model(model, torch_dtype)
        self.pad_id = 0
        version = importlib.metadata.version("transformers")
        self.detail = (f"transformers {version} generate, {dtype}, sdpa, greedy, use_cache=True, "
                       f"one left-padded batch")

    def generate(self, prompts: list[list[int]], max_new: int) -> list[list[int]]:
        ids, mask = left_pad(prompts, self.pad_id)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new, min_new_tokens=max_new,
                do_sample=False, num_beams=1, use_cache=True, pad_token_id=self.pad_id)
        return out[:, ids.shape[1]:].tolist()


class LlamaCppPeer(Peer):
    name = "llama.cpp"

    def __init__(self, gguf: str, threads: int):
        import llama_cpp

        self.llm = llama_cpp.Llama(model_path=gguf, n_ctx=LLAMA_CPP_N_CTX, n_threads=threads,
                                   n_threads_batch=threads, n_batch=512, logits_all=False, verbose=False)
        self.detail = (f"llama-cpp-python {importlib.metadata.version('llama_cpp_python')}, "
                       f"GGUF as shipped (Q4_1), batch B = B sequential calls")

    def generate(self, prompts: list[list[int]], max_new: int) -> list[list[int]]:
        return [self._one(p, max_new) for p in prompts]

    def _one(self, prompt: list[int], max_new: int) -> list[int]:
        # Llama.generate never stops on EOS by itself (create_completion does): ignore_eos
        out: list[int] = []
        for token in self.llm.generate(prompt, temp=0.0, repeat_penalty=1.0):
            out.append(token)
            if len(out) == max_new:
                break
        return out

    def reset(self) -> None:
        self.llm.reset()


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids, mask


def _transformers_model(model: str, dtype: torch.dtype):
    """transformers' own model class with exactly the weights agentrt runs."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if model == "tiny-random-llama":
        from agentrt.engine.tiny import tiny_config, tiny_reference_model
        return tiny_reference_model(tiny_config()).to(dtype)
    if model == "smollm2-135m":
        from agentrt.engine.loader import smollm2_dense_dir
        model = str(smollm2_dense_dir())       # the GGUF dequantized once (converted on first need)
    return AutoModelForCausalLM.from_pretrained(model, dtype=dtype).eval()


def build_peers(model: str, dtype: str, threads: int, tf_dtypes: list[str] | None = None, weights: str = "auto",
                transformers: bool = True) -> tuple[list[Peer], list[Absent]]:
    """agentrt first (it converts and caches the weights the others read), then the peers.
    transformers runs at each of `tf_dtypes` (default: agentrt's dtype), unless `transformers` is
    False; with several, the peers are named transformers-<dtype> and targets take the best of them."""
    torch.set_num_threads(threads)
    peers: list[Peer] = [AgentrtPeer(model, dtype, threads, weights)]
    absent: list[Absent] = []
    tf_dtypes = (tf_dtypes or [dtype]) if transformers else []
    for tf_dtype in tf_dtypes:
        name = "transformers" if len(tf_dtypes) == 1 else f"transformers-{tf_dtype}"
        try:
            peers.append(TransformersPeer(model, tf_dtype, name))
        except Exception as e:  # noqa: BLE001 - reported, never faked
            absent.append(Absent(name, f"could not load: {e}"))
    gguf, why = _gguf_for(model)
    if gguf is None:
        absent.append(Absent("llama.cpp", why))
    else:
        try:
            peers.append(LlamaCppPeer(gguf, threads))
        except ImportError as e:
            absent.append(Absent("llama.cpp", f"llama_cpp is not importable ({e}); pip install llama-cpp-python"))
        except Exception as e:  # noqa: BLE001
            absent.append(Absent("llama.cpp", f"could not load {gguf}: {e}"))
    return peers, absent


def _gguf_for(model: str) -> tuple[str | None, str]:
    if model != "smollm2-135m":
        return None, f"not applicable: no GGUF for {model}"
    from agentrt.engine.loader import smollm2_gguf_path
    return str(smollm2_gguf_path()), ""
