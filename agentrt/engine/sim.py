"""The simulated backend: a Runner that computes no tensors. Each batch advances a virtual clock
by a step-time model and returns a token per sampling row; the engine's scheduler, block pool,
tiers and every policy above it run as they do on the real model.

Step time = a + b * prefill tokens + c * decode sequences + d * context tokens prefill tokens read
+ e * context tokens decode sequences read (the prefix each scheduled token attends to; a CPU reads
a decode's context far slower than a prefill's, so the two have their own terms), from a
`StepProfile`: a data file under agentrt/engine/profiles/ naming its source (a calibration of this machine's engine, or a
published fit). Host-tier copies take block bytes over the profile's link bandwidth.

>>> profile = load_profile("cpu")
>>> clock = VirtualClock()
>>> engine = LLMEngine(loaded, config, runner=sim_runner(profile, clock), clock=clock)
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from agentrt.clock import VirtualClock
from agentrt.engine.backend import RunnerLayout, StepOutput

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
CASCADE_MIN_BLOCKS = 4          # the CPU runner's MIN_SHARED_BLOCKS: fewer shared blocks take no cascade


@dataclass(frozen=True, slots=True)
class StepProfile:
    name: str
    source: str                        # where the figures come from (a calibration, a paper, a simulator)
    base_s: float                      # a: per step
    prefill_token_s: float             # b: per prefill token
    decode_seq_s: float                # c: per decode sequence
    context_token_s: float = 0.0       # d: per context token a prefill token's attention reads
    decode_context_token_s: float | None = None   # e: per context token a decode sequence reads (None: d)
    # the engine pads a decode batch to its longest context (the torch CPU path gathers every row's
    # blocks into one dense tensor): e is paid on decode sequences x the longest, not on their sum
    decode_padded: bool = False
    # what the torch CPU path pads and shares, where a profile fits them (0: not modelled): per query-key
    # pair of the padded batch that prefill chunks after earlier context run as (rows x longest x keys),
    # and per token of a prefix every decode of the step shares (read once: the cascade), for each decode
    context_padded_s: float = 0.0
    decode_shared_token_s: float = 0.0
    host_bytes_per_s: float = 10e9     # host <-> device copies
    # swap-outs copy on their own stream beside compute (SGLang HiCache's write-back, vLLM's offload
    # connector): a step waits only for what the previous moves' write-back has not finished. False:
    # every copy is on the clock, as on the CPU engine, which copies before the step's compute
    overlap_swap_out: bool = False
    block_bytes: int = 0               # one KV block over all layers (0: from kv_bytes_per_token)
    kv_bytes_per_token: int = 0        # the simulated model's KV per token (0: the loaded model's)
    kv_capacity_tokens: int | None = None   # device tier (None: the engine config's)
    max_model_len: int | None = None   # the simulated model's context (None: the loaded model's)
    fit: dict[str, Any] | None = None  # calibration details: points, residuals

    @property
    def decode_context_s(self) -> float:
        return self.context_token_s if self.decode_context_token_s is None else self.decode_context_token_s

    @property
    def models_padding(self) -> bool:
        """Whether step times need the padded prefill batch and the shared decode prefix (`padding_shape`)."""
        return bool(self.context_padded_s or self.decode_shared_token_s)

    def step_seconds(self, prefill_tokens: int, decode_seqs: int, context_tokens: int,
                     decode_context_tokens: int = 0, decode_longest: int = 0, context_padded: int = 0,
                     decode_shared: int = 0) -> float:
        if self.decode_padded:                     # rows padded to the longest; a shared prefix costs its own rate
            shared = decode_shared if self.decode_shared_token_s else 0
            read = decode_seqs * (decode_longest - shared)
        else:
            shared, read = 0, decode_context_tokens
        return (self.base_s + self.prefill_token_s * prefill_tokens + self.decode_seq_s * decode_seqs
                + self.context_token_s * context_tokens + self.decode_context_s * read
                + self.context_padded_s * context_padded + self.decode_shared_token_s * decode_seqs * shared)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        return path


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.json"))


def load_profile(name_or_path: str | Path) -> StepProfile:
    """A profile by name (a file in agentrt/engine/profiles/) or by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILE_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise ValueError(f"no step profile {str(name_or_path)!r}; choose from {', '.join(profile_names())} or give a "
                         f"path (`agentrt bench calibrate` writes one for this machine)")
    data = json.loads(path.read_text(encoding="utf-8"))
    known = {f.name for f in fields(StepProfile)}
    return StepProfile(**{k: v for k, v in data.items() if k in known})


def batch_shape(batch) -> tuple[int, int, int, int, int]:
    """(prefill tokens, decode sequences, context tokens prefill reads, context tokens decode reads,
    the longest context a decode sequence reads) of a scheduled batch."""
    prefill = decode = context = decode_context = longest = 0
    for req, n in zip(batch.requests, batch.num_new_tokens):
        if n == 1 and req.num_computed_tokens >= req.num_prompt_tokens:
            decode += 1
            decode_context += req.num_computed_tokens + 1
            longest = max(longest, req.num_computed_tokens + 1)
        else:
            prefill += n
            context += n * req.num_computed_tokens + n * (n + 1) // 2
    return prefill, decode, context, decode_context, longest


def padding_shape(batch, block_size: int) -> tuple[int, int, int]:
    """(rows of the padded batch that prefill chunks after earlier context run as, its query-key
    pairs: rows x longest chunk x most keys; leading tokens every decode of the step shares, as the
    CPU path's cascade finds them: at least 4 whole blocks, each row's last block its own)."""
    rows = longest = keys = 0
    decodes = []
    for req, n in zip(batch.requests, batch.num_new_tokens):
        start = req.num_computed_tokens
        if n == 1 and start >= req.num_prompt_tokens:
            decodes.append(req)
        elif start > 0:
            rows += 1
            longest = max(longest, n)
            keys = max(keys, -(-(start + n) // block_size) * block_size)
    return rows, rows * longest * keys, _shared_blocks(decodes, block_size) * block_size


def _shared_blocks(decodes: list, block_size: int) -> int:
    if len(decodes) < 2:
        return 0
    own_last = min(-(-(r.num_computed_tokens + 1) // block_size) for r in decodes) - 1
    first = decodes[0].block_table
    shared = 0
    while shared < own_last and all(r.block_table[shared].block_id == first[shared].block_id for r in decodes[1:]):
        shared += 1
    return shared if shared >= CASCADE_MIN_BLOCKS else 0


class SimRunner:
    """Implements agentrt.engine.backend.Runner on a virtual clock."""
    prefetch_inline = True                 # prefetches complete where they are asked for (no thread)

    def __init__(self, layout: RunnerLayout, profile: StepProfile, clock: VirtualClock, *, token: int,
                 block_bytes: int):
        self.layout, self.profile, self.clock, self.token = layout, profile, clock, token
        self.block_bytes = profile.block_bytes or profile.kv_bytes_per_token * layout.block_size or block_bytes
        self.steps = 0
        self.busy_s = 0.0                  # virtual seconds spent computing
        self.write_back_until = 0.0        # overlap_swap_out: when the queued swap-outs are done

    def run(self, batch) -> StepOutput:
        padding = padding_shape(batch, self.layout.block_size)[1:] if self.profile.models_padding else ()
        seconds = self.profile.step_seconds(*batch_shape(batch), *padding)
        self.clock.advance(seconds)
        self.steps += 1
        self.busy_s += seconds
        rows = [i for i, (req, n) in enumerate(zip(batch.requests, batch.num_new_tokens))
                if req.num_computed_tokens + n == req.num_tokens]
        return StepOutput([self.token] * len(rows), None, rows)

    def apply_moves(self, moves) -> None:
        per_block = self.block_bytes / self.profile.host_bytes_per_s
        if not self.profile.overlap_swap_out:
            self.clock.advance((len(moves.out_blocks) + len(moves.in_blocks)) * per_block)
            return
        # the blocks these moves free or fill may be the ones still being written back: finish that first
        self.clock.advance(max(0.0, self.write_back_until - self.clock.now()))
        self.clock.advance(len(moves.in_blocks) * per_block)               # demand loads: the step needs them
        self.write_back_until = self.clock.now() + len(moves.out_blocks) * per_block

    def prefetch_copy(self, block_ids, slots) -> None:
        pass                               # overlaps compute: no time of its own on the step's clock

    def forget(self, request_id: str) -> None:
        pass


def sim_runner(profile: StepProfile, clock: VirtualClock, *, token: int, block_bytes: int):
    """A runner factory for LLMEngine(runner=...)."""
    return lambda layout: SimRunner(layout, profile, clock, token=token, block_bytes=block_bytes)
