"""Batched sampling: greedy, temperature, top-k, top-p, per-request seeds.

Random rows sample by the exponential race (argmax of p / E with E ~ Exp(1)), which equals
multinomial sampling and lets a seeded request draw its noise from its own generator.
"""
from __future__ import annotations

import torch
from torch import Tensor

from agentrt.engine.params import SamplingParams


class Sampler:
    def __init__(self) -> None:
        self.generators: dict[str, torch.Generator] = {}   # request id -> its seeded generator

    def forget(self, request_id: str) -> None:
        self.generators.pop(request_id, None)

    def sample(self, logits: Tensor, params: list[SamplingParams], request_ids: list[str]) -> Tensor:
        """logits: [rows, vocab] float32. Returns token ids [rows]."""
        greedy = logits.argmax(dim=-1)
        random_rows = [i for i, p in enumerate(params) if not p.greedy]
        if not random_rows:
            return greedy
        rows = torch.tensor(random_rows, device=logits.device)
        probs = self._probs(logits[rows], [params[i] for i in random_rows])
        noise = torch.empty_like(probs)
        for j, i in enumerate(random_rows):
            noise[j].exponential_(generator=self._generator(request_ids[i], params[i].seed, probs.device))
        greedy[rows] = (probs / noise).argmax(dim=-1)
        return greedy

    def _generator(self, request_id: str, seed: int | None, device: torch.device) -> torch.Generator | None:
        if seed is None:
            return None
        gen = self.generators.get(request_id)
        if gen is None:
            gen = self.generators[request_id] = torch.Generator(device=device).manual_seed(seed)
        return gen

    @staticmethod
    def _probs(logits: Tensor, params: list[SamplingParams]) -> Tensor:
        dev = logits.device
        temps = torch.tensor([p.temperature for p in params], dtype=logits.dtype, device=dev).unsqueeze(1)
        logits = logits / temps
        top_k = [p.top_k for p in params]
        if any(top_k):
            k = torch.tensor([k if k else logits.shape[1] for k in top_k], device=dev).clamp(max=logits.shape[1])
            kth = logits.sort(dim=-1, descending=True).values.gather(1, (k - 1).unsqueeze(1))
            logits = logits.masked_fill(logits < kth, float("-inf"))
        top_p = [p.top_p for p in params]
        if any(p < 1.0 for p in top_p):
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            sorted_probs = sorted_logits.softmax(dim=-1)
            before = sorted_probs.cumsum(dim=-1) - sorted_probs          # mass strictly above each token
            drop = before > torch.tensor(top_p, dtype=logits.dtype, device=dev).unsqueeze(1)
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
            logits = torch.empty_like(logits).scatter_(1, order, sorted_logits)
        return logits.softmax(dim=-1)
