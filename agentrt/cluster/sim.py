"""Many simulated replicas in one process, on one virtual clock, behind the same router code.

Each replica is a full engine (scheduler, block pool, policy, program tracker) whose runner is
the simulated backend (agentrt.engine.sim). One runner alone advances the shared clock by its
step time; N of them must step side by side instead. So each replica reads a `PacedClock`: its
runner's step time is held as the replica's own lead on the shared clock (what its `now()` reads
during the step), and the replica's step loop then sleeps that long on the virtual-time loop,
where the other replicas, the programs and their tool pauses run meanwhile.

>>> clock = VirtualClock()
>>> replicas = sim_replicas(64, load_profile("h100x4-llama3-70b"), clock)
>>> run_virtual(main(replicas), clock)
"""
from __future__ import annotations

from agentrt.clock import VirtualClock
from agentrt.engine.async_engine import AsyncLLMEngine
from agentrt.engine.config import EngineConfig
from agentrt.engine.llm_engine import LLMEngine
from agentrt.engine.loader import LoadedModel, load_model
from agentrt.engine.sim import StepProfile, sim_runner
from agentrt.cluster.replica import Replica

SIM_VOCAB_MODEL = "tiny-random-llama"     # tokenizer and vocabulary only: the simulated runner computes nothing
SIM_TOKEN = 65                            # what a simulated replica generates


class PacedClock:
    """A replica's clock: the shared clock plus the step time its runner has spent and not yet
    waited for (`take` hands that lead to the step loop, which sleeps it)."""
    __slots__ = ("shared", "lead")

    def __init__(self, shared: VirtualClock):
        self.shared, self.lead = shared, 0.0

    def now(self) -> float:
        return self.shared.now() + self.lead

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError(f"a clock does not go back: advance({seconds})")
        self.lead += seconds
        return self.now()

    def take(self) -> float:
        lead, self.lead = self.lead, 0.0
        return lead


def sim_model(max_positions: int = 1 << 20) -> LoadedModel:
    """The vocabulary and tokenizer simulated replicas use (tiny-random-llama's, with room for
    long contexts)."""
    return load_model(SIM_VOCAB_MODEL, max_position_embeddings=max_positions, num_hidden_layers=1)


def sim_replica(name: str, profile: StepProfile, shared: VirtualClock, loaded: LoadedModel, *,
                policy: str | None = "agentrt", kv_tokens: int | None = None, host_tokens: int = 0,
                max_num_seqs: int = 256, max_batched_tokens: int = 8192, block_size: int = 16) -> Replica:
    """One simulated replica on `shared` time; its device tier is the profile's unless `kv_tokens`."""
    kv = kv_tokens or profile.kv_capacity_tokens or 16384
    cfg = EngineConfig(block_size=block_size, kv_cache_tokens=kv, host_kv_tokens=host_tokens,
                       max_num_seqs=max_num_seqs, max_num_batched_tokens=max_batched_tokens,
                       max_model_len=min(kv, getattr(profile, "max_model_len", None) or loaded.config.max_position_embeddings))
    clock = PacedClock(shared)
    runner = sim_runner(profile, clock, token=SIM_TOKEN, block_bytes=profile.block_bytes or 1024 * block_size)
    engine = LLMEngine(loaded, cfg, runner=runner, clock=clock)
    aengine = AsyncLLMEngine(engine, inline=True, pace=clock.take)
    engine.stream_text = False
    return Replica(name, aengine, policy=policy)


def sim_replicas(n: int, profile: StepProfile, shared: VirtualClock, loaded: LoadedModel | None = None,
                 **options) -> list[Replica]:
    loaded = loaded or sim_model()
    return [sim_replica(f"r{i}", profile, shared, loaded, **options) for i in range(n)]


def busy_seconds(replica: Replica) -> float:
    """Virtual seconds the replica's runner spent computing."""
    return float(getattr(replica.engine.engine.runner, "busy_s", 0.0))
