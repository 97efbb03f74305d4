"""LLMEngine: the synchronous front of the embedded engine.

>>> engine = LLMEngine.from_pretrained("smollm2-135m")
>>> out = engine.generate(["The capital of France is"], SamplingParams(max_tokens=8))
>>> out[0].text
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch

from agentrt.clock import MONOTONIC, Clock
from agentrt.engine.backend import Runner, RunnerLayout
from agentrt.engine.block_pool import BlockPool
from agentrt.engine.config import EngineConfig
from agentrt.engine.detokenize import update_text
from agentrt.engine.eviction import LRUPolicy
from agentrt.engine.host_tier import HostTier
from agentrt.engine.loader import LoadedModel, has_gguf, load_model
from agentrt.engine.observe import EngineObserver
from agentrt.engine.params import SamplingParams
from agentrt.engine.policy import EnginePolicy, KVSpec
from agentrt.engine.prefetch import Prefetcher
from agentrt.engine.request import Request, RequestMeta, RequestOutput
from agentrt.engine.runner import ModelRunner
from agentrt.engine.scheduler import Scheduler, SchedulerConfig

Prompt = str | Sequence[int]
RunnerFactory = Callable[[RunnerLayout], Runner]      # builds a runner for the engine's KV layout


class LLMEngine:
    """The engine, built from its parts: block pool (+ host tier), scheduler, and a runner that
    computes batches (the torch ModelRunner unless `runner` builds another), all on one `clock`
    (monotonic by default). A policy (`install_policy`) and observers (`add_observer`) plug in
    through the engine's own API."""

    def __init__(self, loaded: LoadedModel, config: EngineConfig | None = None, *,
                 runner: RunnerFactory | None = None, clock: Clock = MONOTONIC,
                 policy: EnginePolicy | None = None):
        self.config = config = config or EngineConfig()
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.clock = clock
        self.device = config.torch_device()
        self.weights = config.weight_format(self.device, loaded.gguf is not None)
        self.dtype = config.torch_dtype(self.device, self.weights)
        self.model_name = loaded.name
        self.model_config = mc = loaded.config
        self.tokenizer = loaded.tokenizer
        num_blocks = config.kv_cache_tokens // config.block_size
        model_len = min(mc.max_position_embeddings, num_blocks * config.block_size)
        self.max_model_len = min(config.max_model_len or model_len, model_len)
        host_slots = config.host_kv_tokens // config.block_size if config.enable_prefix_caching else 0
        self.pool = BlockPool(num_blocks, config.block_size, host=HostTier(host_slots) if host_slots else None,
                              disk=self._disk_link(loaded) if config.kv_disk_dir and config.enable_prefix_caching else None)
        self.scheduler = Scheduler(SchedulerConfig(config.max_num_seqs, config.max_num_batched_tokens,
                                                   self.max_model_len, config.enable_prefix_caching,
                                                   config.schedule_order), self.pool)
        if runner is None:
            self.runner: Runner = ModelRunner.build(loaded, num_blocks=num_blocks, block_size=config.block_size,
                                                    max_positions=self.max_model_len, dtype=self.dtype,
                                                    device=self.device, host_slots=host_slots,
                                                    graph_batch=config.max_num_seqs if config.cuda_graphs else 0,
                                                    weights="q4" if self.weights == "q4" else "dense")
        else:
            self.runner = runner(RunnerLayout(num_blocks, config.block_size, host_slots, self.max_model_len))
        self.model = getattr(self.runner, "model", None)
        if self.pool.disk is not None:
            self._connect_disk(self.pool.disk)
        self.prefetcher = Prefetcher(self.pool, self.runner) if host_slots else None
        self._policy_observer = None
        if policy is not None:
            self.install_policy(policy)
        self.eos_token_ids = _eos_ids(mc, self.tokenizer)
        self.requests: dict[str, Request] = {}
        self.stream_text = False              # detokenize every step (set by streaming fronts)
        self._ids = itertools.count()
        self.num_steps = 0

    @classmethod
    def from_pretrained(cls, name_or_path: str = "smollm2-135m", **config: Any) -> "LLMEngine":
        cfg = EngineConfig(**config)
        if name_or_path == "tiny-random-llama":
            return cls(load_model(name_or_path, seed=cfg.seed), cfg)
        q4 = cfg.weight_format(cfg.torch_device(), has_gguf(name_or_path)) == "q4"
        return cls(load_model(name_or_path, dense=not q4), cfg)

    # ---------------------------------------------------------------- requests
    def encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt is empty")
            return self.tokenizer.encode(prompt, add_special_tokens=False)
        ids = list(prompt)
        if not set(map(type, ids)) <= {int} and not all(isinstance(t, int) for t in ids):   # the set: C speed
            raise TypeError("a prompt is a string or a sequence of int token ids")
        return ids

    def apply_chat_template(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a conversation, ending with the assistant's turn opening."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def add_request(self, prompt: Prompt, params: SamplingParams | dict | None = None, *,
                    request_id: str | None = None, meta: RequestMeta | None = None) -> str:
        """Validate and queue a request; raises ValueError/TypeError without touching other requests."""
        ids, params = self.validate(prompt, params)
        rid = request_id if request_id is not None else f"req-{next(self._ids)}"
        if rid in self.requests:
            raise ValueError(f"request id {rid!r} is already in use")
        req = Request(rid, ids, params, meta or RequestMeta(), arrival_time=self.clock.now())
        self.requests[rid] = req
        self.scheduler.add(req)
        return rid

    def validate(self, prompt: Prompt, params: SamplingParams | dict | None = None) -> tuple[list[int], SamplingParams]:
        """Token ids and sampling params of a request, or ValueError/TypeError saying what is wrong."""
        ids = self.encode(prompt)
        if not ids:
            raise ValueError("prompt is empty")
        vocab = self.model_config.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab] if min(ids) < 0 or max(ids) >= vocab else None
        if bad:
            raise ValueError(f"token ids out of range [0, {vocab}): {bad[:5]}")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"prompt has {len(ids)} tokens but the context holds {self.max_model_len} "
                             f"(max_model_len; raise kv_cache_tokens or max_model_len, or shorten the prompt)")
        return ids, _as_params(params)

    def abort(self, request_id: str) -> bool:
        """Cancel a request and free its blocks; False if it is unknown or already finished."""
        req = self.requests.pop(request_id, None)
        if req is None or req.finished:
            return False
        self._finish(req, "abort")
        return True

    def has_unfinished(self) -> bool:
        """Requests queued or running, or prefetches not yet registered (their blocks are held)."""
        return self.scheduler.has_unfinished() or bool(self.prefetcher and self.prefetcher.pending())

    # ---------------------------------------------------------------- stepping
    def step(self) -> list[RequestOutput]:
        """Run one batch; returns the requests that got a token (finished ones are forgotten)."""
        return [RequestOutput.of(r) for r in self._step()]

    def _step(self) -> list[Request]:
        tiers = self.prefetcher
        if tiers is not None and tiers.inflight:   # wait only if its blocks might force a preemption
            tiers.register(wait=self.pool.num_free < len(self.scheduler.running))
        batch = self.scheduler.schedule()
        if tiers is not None:
            tiers.run_copies()             # swap-outs and loads before the compute; prefetches during it
        if self.pool.disk is not None and self.pool.disk.pending_in:
            self.runner.write_blocks(self.pool.disk.take_loads())     # disk hits, after the swap-outs
        if not batch.requests:
            if tiers is not None and tiers.inflight:    # nothing to compute (or their blocks are what it lacks)
                tiers.register(wait=True)
                return []
            if self.scheduler.waiting and not self.scheduler.running:   # would spin forever: say why
                req = self.scheduler.waiting[0]
                raise RuntimeError(f"cannot schedule request {req.request_id!r} ({req.num_tokens} tokens) with "
                                   f"{self.pool.num_free} of {self.pool.num_blocks} blocks free; this is a bug")
            return []
        self.num_steps += 1
        observers = self.pool.observers
        began = self.clock.now() if observers else 0.0
        tokens, logits, rows = self.runner.run(batch)
        if observers:
            seconds = self.clock.now() - began
            for observer in observers:
                observer.on_computed(batch, seconds)
        self.scheduler.commit(batch)
        if not tokens:
            return []
        now = self.clock.now()
        updated = []
        for j, token in enumerate(tokens):
            req = batch.requests[rows[j]]
            req.output_token_ids.append(token)
            if req.first_token_time is None:
                req.first_token_time = now
            if req.params.return_logits:
                req.logits.append(logits[j].clone())
            self._check_finish(req, token)
            updated.append(req)
            if req.finished:
                self.requests.pop(req.request_id, None)
        return updated

    # ---------------------------------------------------------------- host tier
    def prefetch(self, prompt: Prompt, *, evict: bool = False) -> None:
        """Ask for the host-tier blocks of `prompt`'s prefix to be brought back to the device ahead of
        need. Safe from any thread: planned at the next step, after that step's schedule (demand
        first), on free device blocks (`evict`: also on evictable cached ones); the copy runs on a
        worker thread during the step's compute. A no-op without a host tier."""
        if self.prefetcher is not None:
            self.prefetcher.ask(self.encode(prompt), evict)

    def prefetch_now(self, prompt: Prompt, *, evict: bool = False) -> int:
        """`prefetch`, planned and started at once; call it only where steps run, between steps.
        Returns the number of blocks on their way."""
        self.prefetch(prompt, evict=evict)
        return self.prefetcher.run_copies() if self.prefetcher else 0

    def sync_prefetches(self) -> int:
        """Wait for every prefetch started and register its blocks; returns how many joined the cache."""
        return self.prefetcher.register(wait=True) if self.prefetcher else 0

    def _check_finish(self, req: Request, token: int) -> None:
        p = req.params
        if (self.stream_text or p.stop) and update_text(self.tokenizer, req, p.stop):
            return self._finish(req, "stop")
        if token in p.stop_token_ids or (not p.ignore_eos and token in self.eos_token_ids):
            return self._finish(req, "stop")
        if len(req.output_token_ids) >= p.max_tokens or req.num_tokens >= self.max_model_len:
            return self._finish(req, "length")

    def _finish(self, req: Request, reason: str) -> None:
        self.scheduler.finish(req, reason)
        self.runner.forget(req.request_id)
        req.finish_time = self.clock.now()
        if req.detok_offset < len(req.output_token_ids):
            update_text(self.tokenizer, req, [], final=True)

    def generate(self, prompts: Prompt | Sequence[Prompt], params: SamplingParams | dict | None = None, *,
                 metas: Sequence[RequestMeta] | None = None) -> list[RequestOutput]:
        """Run prompts to completion as one continuous batch; outputs in prompt order."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = _as_params(params)
        encoded = [self.validate(p, params)[0] for p in prompts]     # all valid before any is queued
        rids = [self.add_request(ids, params, meta=metas[i] if metas else None) for i, ids in enumerate(encoded)]
        reqs = {rid: self.requests[rid] for rid in rids}
        try:
            while any(not r.finished for r in reqs.values()):
                self._step()
        except BaseException:
            for rid in rids:
                self.abort(rid)
            raise
        return [RequestOutput.of(reqs[rid]) for rid in rids]

    def chat(self, conversations: Sequence[list[dict[str, str]]], params: SamplingParams | dict | None = None) -> list[RequestOutput]:
        return self.generate([self.apply_chat_template(c) for c in conversations], params)

    # ---------------------------------------------------------------- disk tier
    def _disk_link(self, loaded: LoadedModel):
        from agentrt.engine.disk_link import make_disk_link
        from agentrt.engine.loader import cache_dir
        from agentrt.engine.model import head_dim_of

        c, mc = self.config, loaded.config
        root = cache_dir() / "kv" if c.kv_disk_dir == "auto" else c.kv_disk_dir
        shape = (mc.num_hidden_layers, 2, c.block_size, mc.num_key_value_heads, head_dim_of(mc))
        return make_disk_link(root, loaded, c.seed, self.dtype, self.weights, c.block_size, shape,
                              c.kv_disk_bytes, c.kv_disk_write == "all")

    def _connect_disk(self, link) -> None:
        reads = [getattr(self.runner, n, None) for n in ("read_block", "read_host_slot", "write_blocks")]
        if reads[0] is None or reads[2] is None:
            raise ValueError(f"kv_disk_dir needs a runner that can read and write blocks; "
                             f"{type(self.runner).__name__} cannot")
        link.read_block, link.read_slot = reads[0], reads[1]

    def flush_disk(self, timeout: float | None = None) -> bool:
        """Wait until every block queued for the disk tier is written; False on timeout."""
        return self.pool.disk.tier.flush(timeout) if self.pool.disk is not None else True

    # ---------------------------------------------------------------- policy and observers
    def install_policy(self, policy: EnginePolicy) -> None:
        """Set eviction, swap filter and queue order together; call it before requests run (or
        between steps, from the thread that steps)."""
        self.pool.set_policy(policy.eviction if policy.eviction is not None else LRUPolicy(), policy.swap_filter)
        self.scheduler.set_order(policy.order)
        if self._policy_observer is not None:
            self.pool.remove_observer(self._policy_observer)
        self._policy_observer = policy.observer
        if policy.observer is not None:
            self.pool.add_observer(policy.observer)

    def end_program(self, program_id: str) -> None:
        """A program ended: forget what the scheduler kept for it (its attained service)."""
        self.scheduler.end_program(program_id)

    def reset_prefix_cache(self) -> int:
        """Drop every cached block no request holds (and the host tier's); returns how many went."""
        return self.pool.reset_prefix_cache()

    def add_observer(self, observer: EngineObserver) -> None:
        """Publish what the pool and scheduler do to `observer` (see agentrt.engine.observe)."""
        self.pool.add_observer(observer)

    def remove_observer(self, observer: EngineObserver) -> None:
        self.pool.remove_observer(observer)

    @property
    def kv_spec(self) -> KVSpec:
        pool = self.pool
        return KVSpec(pool.num_blocks, pool.block_size, self.runner.block_bytes,
                      pool.host.num_slots if pool.host else 0)

    # ---------------------------------------------------------------- introspection
    def kv_cache_dtype(self) -> torch.dtype:
        return self.runner.kv_cache.dtype

    def stats(self) -> dict[str, Any]:
        pool = self.pool
        return {
            "num_blocks": pool.num_blocks, "block_size": pool.block_size,
            "blocks_in_use": pool.num_in_use, "blocks_cached_free": pool.num_cached_free,
            "blocks_free": len(pool.free_queue), "evicted_blocks": pool.stats_evicted_blocks,
            "recomputed_blocks": pool.stats_recomputed_blocks,
            "host_blocks": pool.host.num_slots if pool.host else 0, "host_blocks_used": len(pool.host or ()),
            "swapped_out_blocks": pool.stats_swapped_out_blocks, "dropped_blocks": pool.stats_dropped_blocks,
            "loaded_blocks": pool.stats_loaded_blocks, "prefetched_blocks": pool.stats_prefetched_blocks,
            "host_evicted_blocks": pool.host.stats_evicted if pool.host else 0,
            "disk_loaded_blocks": pool.disk.stats_loaded if pool.disk else 0,
            **({f"disk_{k}": v for k, v in pool.disk.tier.stats.items()} if pool.disk else {}),
            "prefix_hit_rate": pool.stats_hit_blocks / pool.stats_queried_blocks if pool.stats_queried_blocks else 0.0,
            "steps": self.num_steps, "waiting": len(self.scheduler.waiting), "running": len(self.scheduler.running),
        }


def _as_params(params: SamplingParams | dict | None) -> SamplingParams:
    if params is None:
        return SamplingParams()
    if isinstance(params, dict):
        return SamplingParams(**params)
    if not isinstance(params, SamplingParams):
        raise TypeError(f"params must be SamplingParams or a dict, not {type(params).__name__}")
    return params


def _eos_ids(model_config, tokenizer) -> frozenset[int]:
    ids = model_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)
