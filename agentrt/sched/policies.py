"""Which cached KV block to evict: the four policies a run can switch between.

| policy      | evicts first                                                                |
|-------------|-----------------------------------------------------------------------------|
| `lru`       | the least recently used leaf (vLLM / SGLang prefix caching)                 |
| `continuum` | LRU, but a program paused on a tool keeps its blocks for a TTL (its pin):    |
|             | as in Continuum's public code, a fixed 2 s pin when the tool's running mean  |
|             | is at most 2 s, none for slower tools and none on a program's last step      |
| `continuum-ttl` | the same, with the TTL chosen by the paper's rule (`TTLPinner`)         |
| `kvflow`    | the leaf whose readers are the most steps from running again                 |
| `agentrt`   | the leaf whose readers are expected to need it latest, in seconds: the rest  |
|             | of a tool pause as the predictor expects it, plus the turns still to go      |

Blocks remember their (program, agent) readers; a shared prefix is ranked by its most urgent
reader. Only leaves are offered, so eviction is leaf-first. Ties go to the least recently used.
Ranks are computed per set of readers, not per block (agentrt.sched.ranking).
"""
from __future__ import annotations

import math

from agentrt.engine.block_pool import Block
from agentrt.engine.eviction import EvictionPolicy, LRUPolicy
from agentrt.sched.events import ToolStarted
from agentrt.sched.program_table import INF, ProgramTable
from agentrt.sched.ranking import RankedPolicy

POLICIES = ("lru", "continuum", "continuum-ttl", "kvflow", "agentrt")
PREFILL_SECONDS_PER_TOKEN = 1 / 600      # smollm2-135M, fp32, 2 CPU threads (`agentrt bench engine`, prefill)
HOST_COPY_BYTES_PER_SECOND = 10e9        # a host <-> device block copy (CPU memcpy; PCIe is of the same order)
PROGRAM_ORDERED = ("continuum", "continuum-ttl", "agentrt")        # admit by program arrival, not request arrival
PREFETCHING = ("kvflow", "agentrt")               # bring the next agents' prefixes back ahead of need
BATCH_CAPPED = ("agentrt",)                       # run as many programs at once as step costs make worth it


class ContinuumPolicy(RankedPolicy):
    """LRU among unpinned leaves; a pinned leaf goes only when nothing else is left. Pins come
    from `TTLPinner` (Continuum's rule) and end at their TTL, when the program's next turn
    starts, or when it ends."""

    def rank(self, readers: tuple, now: float, memo: dict) -> float:
        return 1.0 if any(self._pinned(pid, now, memo) for pid, _ in readers) else 0.0

    def expiry(self, now: float) -> float:
        pins = [e.pin_until for e in list(self.table.entries.values()) if e.pin_until and e.pin_until > now]
        return min(pins, default=math.inf)

    def _pinned(self, pid: str, now: float, memo: dict) -> bool:
        if pid not in memo:
            entry = self.table.entries.get(pid)
            memo[pid] = entry is not None and not entry.finished and (entry.pin_until or 0.0) > now
        return memo[pid]


class KVFlowPolicy(RankedPolicy):
    """Steps-to-execution: the leaf whose most urgent reader is farthest from its next turn goes
    first (finished programs' blocks before all others)."""

    def rank(self, readers: tuple, now: float, memo: dict) -> float:
        best = INF
        for reader in readers:
            if reader not in memo:
                memo[reader] = self.table.distance(*reader)
            best = min(best, memo[reader])
        return -best


class AgentrtPolicy(RankedPolicy):
    """Expected seconds until the block is read again (a paused program's remaining tool time,
    predicted, plus a turn's time per step to go); the latest-needed leaf goes first. Equal
    estimates (programs in step with each other) go by program arrival, newest first: under
    program order the engine serves the newest program last, so its blocks are needed last."""

    def rank(self, readers: tuple, now: float, memo: dict) -> tuple[float, float]:
        best, arrival = INF, -INF
        for reader in readers:
            if reader not in memo:
                entry = self.table.entries.get(reader[0])
                memo[reader] = (self.table.eta(*reader, now), entry.arrival if entry is not None else INF)
            eta, arrived = memo[reader]
            if eta < best or (eta == best and arrived < arrival):
                best, arrival = eta, arrived
        return -best, -arrival


class TTLPinner:
    """Applies Continuum's rule when a program pauses on a tool (`ToolStarted`): pin its blocks
    for the τ that maximizes P(tool done by τ) * p(continue) * cost(losing the cache) - τ."""

    def __init__(self, table: ProgramTable, *, prefill_seconds_per_token: float = PREFILL_SECONDS_PER_TOKEN,
                 requeue_seconds: float = 0.5):
        self.table = table
        self.prefill_seconds_per_token = prefill_seconds_per_token
        self.requeue_seconds = requeue_seconds

    def publish(self, event) -> None:
        if type(event) is not ToolStarted:
            return
        entry = self.table.entries.get(event.program_id)
        if entry is None or entry.finished:
            return
        cost = entry.context_tokens * self.prefill_seconds_per_token + self.requeue_seconds
        p_continue = min(1.0, entry.remaining_turns)
        ttl = self.table.predictor.pin_time(event.tool, cost, p_continue=p_continue)
        if ttl > 0 and math.isfinite(ttl):
            self.table.pin(event.program_id, self.table.clock.now() + ttl)


class FixedPinner:
    """Continuum's public code (its vLLM scheduler): when a program pauses on a tool whose running
    mean duration is at most `pin_seconds` (or not yet known), pin its blocks for `pin_seconds`;
    slower tools get no pin, nor does a pause after the program's last turn."""

    def __init__(self, table: ProgramTable, *, pin_seconds: float = 2.0):
        self.table, self.pin_seconds = table, pin_seconds

    def publish(self, event) -> None:
        if type(event) is not ToolStarted:
            return
        entry = self.table.entries.get(event.program_id)
        if entry is None or entry.finished or not entry.steps_to_execution:
            return                                 # no turn left: nothing would read the blocks
        seen = self.table.predictor.samples(event.tool)
        if not seen or sum(seen) / len(seen) <= self.pin_seconds:
            self.table.pin(event.program_id, self.table.clock.now() + self.pin_seconds)


def worth_swapping(table: ProgramTable, *, copy_seconds: float = 0.0, recompute_seconds: float = 1.0):
    """agentrt's swap filter, cost-aware: copy a victim to the host tier only if a live program
    will read it (host space is not free) and the round trip (out now, back later: twice
    `copy_seconds`) costs less than computing its tokens again (`recompute_seconds`); other
    victims are dropped."""
    cheaper = 2 * copy_seconds < recompute_seconds

    def decide(block: Block) -> bool:
        return cheaper and any(table.distance(pid, agent) != INF for pid, agent in block.readers)
    return decide


def block_costs(block_bytes: int, block_size: int) -> dict[str, float]:
    """`worth_swapping`'s costs for one block: its copy at host-copy speed, its recompute."""
    return {"copy_seconds": block_bytes / HOST_COPY_BYTES_PER_SECOND,
            "recompute_seconds": block_size * PREFILL_SECONDS_PER_TOKEN}


def make_policy(name: str, table: ProgramTable) -> tuple[EvictionPolicy, list]:
    """The eviction policy for `name`, and the event consumers it needs beside the program table."""
    if name == "lru":
        return LRUPolicy(), []
    if name == "continuum":
        return ContinuumPolicy(table, table.clock), [FixedPinner(table)]
    if name == "continuum-ttl":
        return ContinuumPolicy(table, table.clock), [TTLPinner(table)]
    if name == "kvflow":
        return KVFlowPolicy(table, table.clock), []
    if name == "agentrt":
        return AgentrtPolicy(table, table.clock), []
    raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
