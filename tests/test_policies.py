"""The KV eviction policies (lru, continuum, kvflow, agentrt) deciding on constructed cases.

A `BlockPool` is filled with cached-free leaves whose `readers` name (program, agent) keys; a
ProgramTable (entries set by hand, or fed events) says where each program stands; then
`pool.allocate` forces evictions and the tests check WHICH blocks went, and in what order.
Also: leaf-first eviction under every policy (random forests), block accounting on the tiny
engine under every policy (with a program cancelled mid-pause), make_policy/Runtime errors,
and program-order scheduling."""
from __future__ import annotations

import asyncio
import random

import pytest
from pydantic import BaseModel

from agentrt import Agent, Runtime, Workflow, tool
from agentrt.engine import SamplingParams
from agentrt.engine.block_pool import BlockPool, NoFreeBlocks, chain_hash
from agentrt.engine.eviction import LRUPolicy
from agentrt.engine.request import Request, RequestMeta
from agentrt.engine.scheduler import Scheduler, SchedulerConfig
from agentrt.sched.policies import (POLICIES, AgentrtPolicy, ContinuumPolicy, FixedPinner, KVFlowPolicy,
                                    TTLPinner, make_policy)
from agentrt.sched.predictor import ToolPausePredictor
from agentrt.sched.program_table import ProgramEntry, ProgramTable
from runtime_helpers import P, ScriptedEngine, arun, sched_event


# ------------------------------------------------------------------------------------------ helpers
class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def now(self) -> float:
        return self.t


def entry(pid: str, steps: dict[str, int], *, turns: float = 1.0, paused: str | None = None,
          since: float | None = None, pin: float | None = None, ctx: int = 0,
          finished: bool = False) -> ProgramEntry:
    return ProgramEntry(pid, 0.0, dict(steps), turns, paused_tool=paused, paused_since=since, pin_until=pin,
                        context_tokens=ctx, finished=finished)


class Case:
    """A pool under policy `name`, its table, and a way to make cached-free leaves."""

    def __init__(self, name: str, num_blocks: int, predictor: ToolPausePredictor | None = None):
        self.clock = FakeClock()
        self.table = ProgramTable(predictor, clock=self.clock)
        self.policy, self.sinks = make_policy(name, self.table)
        self.pool = BlockPool(num_blocks, block_size=2, policy=self.policy)
        self._tokens = 0

    def leaf(self, readers=(), access: int = 0, parent=None):
        """A cached-free block read by `readers` ((program, agent) keys) last at `access`."""
        self.pool.clock = access
        [block] = self.pool.allocate(1)
        self._tokens += 1
        self.pool.cache_full_block(block, parent, (self._tokens, self._tokens))
        block.readers = {r: access for r in readers}
        self.pool.free([block])
        return block

    def set(self, *entries: ProgramEntry) -> None:
        for e in entries:
            self.table.entries[e.program_id] = e

    def emit(self, pid: str, kind: str, /, **data) -> None:
        """As the front door does: the table first, then the policy's own parts."""
        for part in (self.table, *self.sinks):
            part.publish(sched_event(pid, kind, 0.0, **data))

    def evict_order(self, n: int | None = None) -> list:
        """Evict one block at a time (no free block is left) and return the victims in order."""
        assert len(self.pool.free_queue) == 0
        n = self.pool.num_free if n is None else n
        out = []
        for _ in range(n):
            [victim] = self.pool.allocate(1)
            out.append(victim)
            self.pool.check_invariants()
        return out


def ids(blocks) -> list[int]:
    return [b.block_id for b in blocks]


def trained(**durations: list[float]) -> ToolPausePredictor:
    p = ToolPausePredictor()
    for tool_name, values in durations.items():
        p.observe_many(tool_name, values)
    return p


# ------------------------------------------------------------------------------------------ lru
def test_lru_evicts_a_paused_programs_blocks_oldest_first():
    c = Case("lru", 4)
    assert isinstance(c.policy, LRUPolicy) and c.sinks == []
    c.set(entry("A", {"writer": 1}, paused="search", since=c.clock.t, turns=2),
          entry("B", {"planner": 0}))
    a1, a2 = c.leaf([("A", "writer")], 1), c.leaf([("A", "writer")], 2)
    b1, b2 = c.leaf([("B", "planner")], 3), c.leaf([("B", "planner")], 4)
    # A resumes after its tool (writer one step away), yet LRU takes its blocks first
    assert ids(c.evict_order()) == ids([a1, a2, b1, b2])


# ------------------------------------------------------------------------------------------ continuum
def pinned_case(pin_tool: str = "search", **predictor_data):
    pred = trained(**(predictor_data or {"search": [0.5] * 20}))
    c = Case("continuum-ttl", 4, pred)
    assert isinstance(c.policy, ContinuumPolicy) and len(c.sinks) == 1 and isinstance(c.sinks[0], TTLPinner)
    c.set(entry("A", {"writer": 1}, turns=2, ctx=3000), entry("B", {"planner": 0}, turns=1))
    blocks = [c.leaf([("A", "writer")], 1), c.leaf([("A", "writer")], 2),
              c.leaf([("B", "planner")], 3), c.leaf([("B", "planner")], 4)]
    c.emit("A", "tool_start", tool=pin_tool)
    return c, blocks


def test_continuum_pins_a_paused_program_for_the_predicted_time():
    c, (a1, a2, b1, b2) = pinned_case()
    cost = 3000 / 600 + 0.5                    # recompute of the context + requeue
    ttl = c.table.predictor.pin_time("search", cost, p_continue=1.0)
    assert 0 < ttl < 5
    e = c.table.entries["A"]
    assert e.paused_tool == "search" and e.pin_until == pytest.approx(c.clock.t + ttl)
    assert c.table.entries["B"].pin_until is None
    # the unpinned (newer) blocks go first; the pinned ones only when nothing else is left
    assert ids(c.evict_order()) == ids([b1, b2, a1, a2])


@pytest.mark.parametrize("release", ["ttl_expires", "program_end", "next_llm_start"])
def test_continuum_pin_ends(release):
    c, (a1, a2, b1, b2) = pinned_case()
    pin_until = c.table.entries["A"].pin_until
    assert pin_until is not None
    c.clock.t = pin_until - 1e-6
    assert ids(c.evict_order(1)) == ids([b1])                  # still pinned just before the TTL
    if release == "ttl_expires":
        c.clock.t = pin_until + 1e-6
    elif release == "program_end":
        c.emit("A", "program_end", status="cancelled")
    else:
        c.emit("A", "tool_end", tool="search", duration=0.4, error=None)
        assert c.table.entries["A"].pin_until is not None        # the tool ending does not unpin...
        c.emit("A", "llm_start", request_id="A/write/1")
        assert c.table.entries["A"].pin_until is None            # ...the program's next turn does
    assert ids(c.evict_order()) == ids([a1, a2, b2])             # plain LRU again


def test_continuum_a_block_shared_with_a_pinned_program_is_pinned():
    c, (a1, a2, b1, b2) = pinned_case()
    shared = b1
    shared.readers[("A", "writer")] = 1
    assert ids(c.evict_order()) == ids([b2, a1, a2, shared])   # pinned ones by recency


def code_case(**predictor_data):
    c = Case("continuum", 4, trained(**predictor_data))
    assert isinstance(c.policy, ContinuumPolicy) and [type(x) for x in c.sinks] == [FixedPinner]
    c.set(entry("A", {"writer": 1}, turns=2, ctx=3000), entry("B", {"planner": 0}, turns=1),
          entry("Z", {}, turns=0.0, ctx=3000))
    return c


def test_continuum_as_in_its_code_pins_fast_tools_for_a_fixed_two_seconds():
    c = code_case(bash=[0.1, 0.5, 1.9], search=[1.0, 15.0])     # running means 0.83 s and 8 s
    c.emit("A", "tool_start", tool="bash")
    assert c.table.entries["A"].pin_until == pytest.approx(c.clock.t + 2.0)
    c.emit("B", "tool_start", tool="search")                    # slower than 2 s on average: no pin
    assert c.table.entries["B"].pin_until is None
    c.emit("Z", "tool_start", tool="bash")                      # after the program's last turn: no pin
    assert c.table.entries["Z"].pin_until is None


def test_continuum_as_in_its_code_pins_a_tool_it_has_not_timed_yet():
    c = code_case()
    c.emit("A", "tool_start", tool="new_tool")
    assert c.table.entries["A"].pin_until == pytest.approx(c.clock.t + 2.0)
    c.table.predictor.observe_many("new_tool", [3.0, 2.5])
    c.emit("B", "tool_start", tool="new_tool")
    assert c.table.entries["B"].pin_until is None


def test_ttl_pinner_does_not_pin_when_the_rule_says_no():
    # a tool far slower than the cache is worth
    c, _ = pinned_case(search=[100.0] * 20)
    assert c.table.entries["A"].pin_until is None
    # nothing left to run after the tool: p(continue) = 0
    c, _ = pinned_case()
    c.set(entry("C", {}, turns=0.0, ctx=3000))
    c.emit("C", "tool_start", tool="search")
    assert c.table.entries["C"].pin_until is None
    # unknown or finished programs, and other events, pin nothing
    c.emit("ghost", "tool_start", tool="search")
    assert "ghost" not in c.table.entries
    c.set(entry("D", {"w": 1}, turns=2, ctx=3000, finished=True))
    c.emit("D", "tool_start", tool="search")
    assert c.table.entries["D"].pin_until is None
    c.set(entry("E", {"w": 1}, turns=2, ctx=3000))
    c.emit("E", "step_start", step="x")
    c.emit("E", "tool_end", tool="search", duration=1.0, error=None)
    assert c.table.entries["E"].pin_until is None


def test_ttl_pinner_cost_grows_with_the_context():
    """A bigger context costs more to recompute, so the same tool earns a longer (or any) pin."""
    pred = trained(search=[0.5] * 10 + [3.0] * 10)
    table = ProgramTable(pred, clock=FakeClock(0.0))
    pinner = TTLPinner(table)
    table.entries["small"] = entry("small", {"w": 1}, turns=1, ctx=60)
    table.entries["big"] = entry("big", {"w": 1}, turns=1, ctx=6000)
    for pid in ("small", "big"):
        pinner.publish(sched_event(pid, "tool_start", tool="search"))
    small, big = table.entries["small"].pin_until or 0.0, table.entries["big"].pin_until or 0.0
    assert big >= 3.0 and big > small


# ------------------------------------------------------------------------------------------ kvflow
def test_kvflow_keeps_the_next_agents_prefix_and_evicts_far_and_finished_first():
    c = Case("kvflow", 7)
    assert isinstance(c.policy, KVFlowPolicy)
    c.set(entry("A", {"writer": 1, "reviewer": 2}), entry("B", {"reviewer": 3}),
          entry("C", {}, finished=True))
    # recency would evict near first: it is the oldest
    near = c.leaf([("A", "writer")], 1)
    mid = c.leaf([("A", "reviewer")], 2)
    far = c.leaf([("B", "reviewer")], 3)
    done = c.leaf([("C", "writer")], 4)
    orphan = c.leaf([], 5)                            # no reader known
    stranger = c.leaf([("Z", "writer")], 6)           # a program the table does not know
    never = c.leaf([("A", "planner")], 7)             # A will not run its planner again
    assert ids(c.evict_order()) == ids([done, orphan, stranger, never, far, mid, near])


def test_kvflow_a_shared_prefix_inherits_its_most_urgent_reader():
    c = Case("kvflow", 3)
    c.set(entry("A", {"writer": 1, "reviewer": 2}), entry("B", {"reviewer": 3}))
    shared = c.leaf([("B", "reviewer"), ("A", "writer")], 1)
    only_b = c.leaf([("B", "reviewer")], 2)
    a_far = c.leaf([("A", "reviewer")], 3)
    assert ids(c.evict_order()) == ids([only_b, a_far, shared])


def test_kvflow_a_shared_system_prompt_parent_outlives_its_children():
    c = Case("kvflow", 4)
    c.set(entry("A", {"writer": 1}), entry("B", {"writer": 4}))
    system = c.leaf([("A", "writer"), ("B", "writer")], 1)
    c.pool.clock = 1
    # children hang off the system prompt: make them while the parent is cached
    child_a = c.leaf([("A", "writer")], 2, parent=system)
    child_b = c.leaf([("B", "writer")], 3, parent=system)
    other = c.leaf([("B", "writer")], 4)
    # the parent is no leaf until both children are gone; then it ranks by A (distance 1)
    assert ids(c.evict_order()) == ids([child_b, other, child_a, system])


def test_kvflow_ranks_move_as_programs_advance():
    """Ranks are computed at eviction time: after the table changes, the order changes."""
    c = Case("kvflow", 4)
    c.set(entry("A", {"writer": 1}), entry("B", {"writer": 3}))
    a1, a2 = c.leaf([("A", "writer")], 1), c.leaf([("A", "writer")], 2)
    b1, b2 = c.leaf([("B", "writer")], 3), c.leaf([("B", "writer")], 4)
    assert ids(c.evict_order(1)) == ids([b1])
    c.set(entry("A", {"writer": 5}), entry("B", {"writer": 0}))
    assert ids(c.evict_order()) == ids([a1, a2, b2])


# ------------------------------------------------------------------------------------------ agentrt
def test_agentrt_keeps_the_short_waits_blocks_over_the_long_waits():
    pred = trained(fast=[0.1] * 20, slow=[30.0] * 20)
    for name in ("agentrt", "kvflow"):
        c = Case(name, 6, pred)
        now = c.clock.t
        c.table.step_seconds = 1.0
        c.set(entry("P", {"writer": 1}, paused="fast", since=now),      # back in ~0.1 s
              entry("Q", {"writer": 1}, paused="slow", since=now),      # back in ~30 s
              entry("R", {"writer": 3}))                                # running, 2 turns away
        p1, p2 = c.leaf([("P", "writer")], 1), c.leaf([("P", "writer")], 2)
        r1, r2 = c.leaf([("R", "writer")], 3), c.leaf([("R", "writer")], 4)
        q1, q2 = c.leaf([("Q", "writer")], 5), c.leaf([("Q", "writer")], 6)
        order = ids(c.evict_order())
        if name == "agentrt":
            assert isinstance(c.policy, AgentrtPolicy)
            assert c.table.eta("Q", "writer", now) > c.table.eta("R", "writer", now) > c.table.eta("P", "writer", now)
            assert order == ids([q1, q2, r1, r2, p1, p2])
        else:                                        # steps only: P and Q tie, recency decides
            assert order == ids([r1, r2, p1, p2, q1, q2])


def test_agentrt_an_overdue_short_tool_loses_its_edge():
    """As a 'fast' call runs far past its usual time, its expected rest grows ('as long again')
    until it is expected later than a program two turns away."""
    pred = trained(fast=[0.1] * 20)
    c = Case("agentrt", 4, pred)
    c.table.step_seconds = 1.0
    c.set(entry("P", {"writer": 1}, paused="fast", since=c.clock.t), entry("R", {"writer": 3}))
    p1, p2 = c.leaf([("P", "writer")], 1), c.leaf([("P", "writer")], 2)
    r1, r2 = c.leaf([("R", "writer")], 3), c.leaf([("R", "writer")], 4)
    assert ids(c.evict_order(1)) == ids([r1])
    c.clock.t += 60.0                               # 60 s into a ~0.1 s tool
    assert ids(c.evict_order()) == ids([p1, p2, r2])


# ------------------------------------------------------------------------------------------ ties
@pytest.mark.parametrize("name", POLICIES)
def test_ties_go_to_the_least_recently_used(name):
    c = Case(name, 5, trained(search=[1.0] * 5))
    c.set(entry("A", {"writer": 2}, paused="search", since=c.clock.t, turns=2, ctx=10))
    c.emit("A", "tool_start", tool="search")              # (continuum: pin them all alike)
    blocks = [c.leaf([("A", "writer")], t) for t in (7, 3, 9, 1, 5)]
    by_access = sorted(blocks, key=lambda b: b.last_access)
    assert ids(c.evict_order()) == ids(by_access)


@pytest.mark.parametrize("name", ["continuum", "kvflow", "agentrt"])
def test_full_ties_go_in_the_order_blocks_became_evictable(name):
    c = Case(name, 4)
    c.set(entry("A", {"writer": 1}))
    blocks = [c.leaf([("A", "writer")], 5) for _ in range(4)]
    held = blocks[1]
    c.pool.touch([held])                    # reused: no longer evictable ...
    c.pool.free([held])                     # ... and evictable again, now the last to have become so
    assert ids(c.evict_order()) == ids([blocks[0], blocks[2], blocks[3], held])


@pytest.mark.parametrize("name", ["continuum", "kvflow", "agentrt"])
def test_without_program_information_a_ranked_policy_evicts_exactly_as_lru(name):
    """A Mooncake replay gives the policies no readers: every rank ties, and the victims must be
    lru's, access times and the order blocks became evictable included."""
    rng = random.Random(7)
    pools = [Case("lru", 24).pool, Case(name, 24).pool]
    contents: list[tuple[int, int]] = []
    for step in range(400):
        for pool in pools:
            pool.clock = step // 3                          # several uses per clock tick
        if contents and rng.random() < 0.4:                 # a prefix hit: reuse a cached block
            toks = rng.choice(contents)
            hits = [pool.match_prefix([chain_hash(None, toks)], [toks]) for pool in pools]
            assert [ids(h) for h in hits] == [ids(hits[0])] * 2, step
            for pool, hit in zip(pools, hits):
                pool.touch(hit)
                pool.free(hit)
            continue
        n = rng.randint(1, 3)
        toks_list = [(step, j) for j in range(n)]
        got = []
        for pool in pools:
            blocks = pool.allocate(n)                        # evicts when nothing is free
            for block, toks in zip(blocks, toks_list):
                pool.cache_full_block(block, None, toks)
            pool.free(blocks)
            got.append(ids(blocks))
        assert got[0] == got[1], step                        # the same victims, in the same order
        contents = [t for t in contents if chain_hash(None, t) in pools[0].cached] + toks_list


# ------------------------------------------------------------------------------------------ leaf-first
def random_table_state(c: Case, rng: random.Random, pids, agents) -> None:
    now = c.clock.t
    for pid in pids:
        steps = {a: rng.randint(0, 4) for a in agents if rng.random() < 0.7}
        paused = rng.choice([None, "search", "slow"])
        c.set(entry(pid, steps, turns=rng.choice([0, 1, 3]), paused=paused,
                    since=now - rng.uniform(0, 5) if paused else None,
                    pin=now + rng.uniform(-2, 5) if rng.random() < 0.4 else None,
                    ctx=rng.randint(0, 5000), finished=rng.random() < 0.15))


@pytest.mark.parametrize("name", ["continuum", "kvflow", "agentrt"])
def test_bucketed_ranking_evicts_exactly_as_ranking_every_leaf(name):
    """Ranks are computed per reader set: the victims must be those of sorting every leaf by
    (rank of its readers, last access, when it became a leaf), as programs move between pops."""
    rng = random.Random(7)
    c = Case(name, 60, trained(search=[0.5, 2.0, 9.0]))
    programs = [f"P{i}" for i in range(6)]
    c.set(*(entry(p, {"a": rng.randint(0, 4), "b": rng.randint(1, 6)}, turns=3, ctx=500,
                  paused="search" if i % 2 else None, since=c.clock.t - i) for i, p in enumerate(programs)))
    added = {}
    for k in range(60):
        readers = {(rng.choice(programs), rng.choice("ab")) for _ in range(rng.randint(0, 3))}
        block = c.leaf(sorted(readers), rng.randint(0, 20))
        added[block.block_id] = k
    for _ in range(60):
        if rng.random() < 0.3:                       # a program moves: every rank may change
            p = rng.choice(programs)
            c.set(entry(p, {"a": rng.randint(0, 4)}, turns=2, ctx=500))
            c.clock.t += 0.01
        leaves = list(c.policy.blocks())
        memo: dict = {}
        expect = min(leaves, key=lambda b: (c.policy.rank(tuple(sorted(b.readers)), c.clock.t, memo),
                                            b.last_access, added[b.block_id]))
        [victim] = c.pool.allocate(1)
        assert victim is expect


@pytest.mark.parametrize("name", POLICIES)
def test_eviction_is_leaf_first_on_random_forests(name):
    pids, agents = ["A", "B", "C", "D"], ["planner", "writer", "reviewer"]
    for seed in range(25):
        rng = random.Random(seed)
        n = rng.randint(4, 24)
        c = Case(name, n, trained(search=[0.3] * 5, slow=[20.0] * 5))
        random_table_state(c, rng, pids, agents)
        blocks = []
        for i in range(n):                             # allocate all, held; random parents
            c.pool.clock = rng.randint(0, 50)
            [b] = c.pool.allocate(1)
            parent = rng.choice([None, None, *blocks]) if blocks else None
            c.pool.cache_full_block(b, parent, (seed, i))
            b.readers = {(rng.choice(pids), rng.choice(agents)): 0 for _ in range(rng.randint(0, 3))}
            blocks.append(b)
        parent_of = {b.block_id: b.parent for b in blocks}
        held: set[int] = set()                         # held sets are closed under "parent of"
        for b in rng.sample(blocks, rng.randint(0, n // 3)):
            while b is not None and b.block_id not in held:
                held.add(b.block_id)
                b = b.parent
        for b in rng.sample(blocks, n):
            if b.block_id not in held:
                c.pool.free([b])
        c.pool.check_invariants()
        evicted: set[int] = set()
        for _ in range(n - len(held)):
            c.clock.t += rng.uniform(0, 2)             # pins expire, tools run long
            if rng.random() < 0.3:
                random_table_state(c, rng, pids, agents)
            [victim] = c.pool.allocate(1)
            vid = victim.block_id
            assert vid not in held, (seed, vid)
            children = [b.block_id for b in blocks if parent_of[b.block_id] is victim]
            assert all(ch in evicted for ch in children), (seed, vid, children, evicted)
            evicted.add(vid)
            c.pool.check_invariants()
        assert evicted == {b.block_id for b in blocks} - held
        with pytest.raises(NoFreeBlocks):
            c.pool.allocate(1)


# ------------------------------------------------------------------------------------------ on the engine
class Doc(BaseModel):
    topic: str = "bees"
    plan: str = ""
    facts: str = ""
    draft: str = ""


@tool(expected_duration=0.05)
async def fetch_facts(query: str) -> str:
    """Sleep a little (a long time for 'cancel-me'), then answer."""
    await asyncio.sleep(5.0 if query == "cancel-me" else 0.03)
    return f"facts about {query}"


def doc_workflow():
    system = "You are a careful assistant who writes short, well organised notes. " * 2
    wf = Workflow("doc", Doc, output="draft")
    wf.llm("plan", Agent("planner", system=system, params=P(4)), "Plan a note on {topic}.", output="plan")
    wf.tool("lookup", fetch_facts, {"query": "{topic}"}, output="facts")
    wf.llm("write", Agent("writer", system=system, params=P(4)), "Write {topic}: {plan} {facts}",
           output="draft")
    wf.sequence("plan", "lookup", "write")
    return wf


@pytest.mark.parametrize("name", POLICIES)
def test_block_accounting_under_every_policy_with_a_cancel_mid_pause(name, make_engine):
    engine = make_engine(kv_cache_tokens=512, block_size=16)   # 32 blocks: evictions needed
    wf = doc_workflow()
    topics = ["bees", "ants", "cancel-me", "wasps", "moths", "flies"]
    pins: list[float] = []

    async def main():
        async with Runtime(engine, policy=name) as rt:
            paused = asyncio.Event()

            def watch(event):
                if event.event == "tool_start":
                    if event.program == "doc-cancel":
                        paused.set()
                    if rt.table.entries[event.program].pin_until is not None:
                        pins.append(rt.table.entries[event.program].pin_until)
            rt.sinks.append(watch)
            programs = [rt.submit(wf, {"topic": t}, program_id="doc-cancel" if t == "cancel-me" else None)
                        for t in topics]
            await asyncio.wait_for(paused.wait(), 20)
            await asyncio.sleep(0.02)                            # it sleeps in its tool now
            assert rt.table.entries["doc-cancel"].paused_tool == "fetch_facts"
            assert rt.cancel("doc-cancel")
            results = await asyncio.gather(*(p.result() for p in programs))
            engine.pool.check_invariants()
            return results, rt.table

    results, table = arun(main())
    status = {r.program_id: r.status for r in results}
    assert status.pop("doc-cancel") == "cancelled"
    assert set(status.values()) == {"done"}, [r.error for r in results]
    assert all(e.finished for e in table.entries.values()) and len(table.entries) == len(topics)
    pool = engine.pool
    pool.check_invariants()
    assert pool.num_in_use == 0 and not engine.has_unfinished()
    assert pool.stats_evicted_blocks > 0                         # the policy was asked to choose
    assert type(pool.policy).__name__.lower().startswith(name.split("-")[0])
    if name.startswith("continuum"):
        assert pins, f"{name}'s pinner pinned no paused program"


# ------------------------------------------------------------------------------------------ errors
def test_make_policy_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match="unknown policy 'fifo'; choose one of lru, continuum, continuum-ttl, kvflow, agentrt"):
        make_policy("fifo", ProgramTable())


def test_make_policy_shares_the_tables_clock():
    clock = FakeClock(5.0)
    table = ProgramTable(clock=clock)
    for name in ("continuum", "continuum-ttl", "kvflow", "agentrt"):
        policy, _ = make_policy(name, table)
        assert policy.table is table and policy.clock is clock


def test_runtime_rejects_an_unknown_policy(make_engine):
    with pytest.raises(ValueError, match="choose one of"):
        Runtime(make_engine(kv_cache_tokens=256), policy="nope")


def test_runtime_policy_needs_an_agentrt_engine():
    with pytest.raises(TypeError, match="agentrt engine"):
        Runtime(ScriptedEngine(["hi"]), policy="kvflow")
    rt = Runtime(ScriptedEngine(["hi"]))                           # no policy: fine, no table
    assert rt.table is None


def test_runtime_policy_installs_table_policy_and_order_through_the_engine(make_engine):
    engine = make_engine(kv_cache_tokens=256)
    rt = Runtime(engine, policy="continuum")
    assert isinstance(engine.pool.policy, ContinuumPolicy) and engine.pool.policy.table is rt.table
    assert engine.scheduler.config.order == "program" and rt.scheduler.engine_policy.eviction is engine.pool.policy
    assert rt.sinks == []              # the scheduler is no droppable sink: it hears typed events directly
    arun(rt.close())


# ------------------------------------------------------------------------------------------ program order
def req(rid: str, program_arrival: float | None, arrival: float = 0.0, n: int = 8) -> Request:
    return Request(rid, list(range(1, n + 1)), SamplingParams(max_tokens=2),
                   RequestMeta(rid.split("/")[0], "agent", "step", program_arrival), arrival_time=arrival)


def scheduler(order: str, max_num_seqs: int = 1) -> Scheduler:
    return Scheduler(SchedulerConfig(max_num_seqs=max_num_seqs, order=order), BlockPool(64, 4))


def test_program_order_admits_an_older_programs_turn_before_newer_programs():
    s = scheduler("program")
    for r in (req("B/1", 2.0, arrival=10.0), req("C/1", 3.0, arrival=11.0), req("A/2", 1.0, arrival=12.0)):
        s.add(r)
    assert [r.request_id for r in s.waiting] == ["A/2", "B/1", "C/1"]
    s.add(req("A/3", 1.0, arrival=13.0))                            # same program: FCFS among its own
    s.add(req("D/1", None, arrival=2.5))                            # no hint: its own arrival counts
    assert [r.request_id for r in s.waiting] == ["A/2", "A/3", "B/1", "D/1", "C/1"]
    batch = s.schedule()
    assert [r.request_id for r in batch.requests] == ["A/2"]


def test_request_order_keeps_fcfs():
    s = scheduler("request")
    for r in (req("B/1", 2.0, arrival=10.0), req("C/1", 3.0, arrival=11.0), req("A/2", 1.0, arrival=12.0)):
        s.add(r)
    assert [r.request_id for r in s.waiting] == ["B/1", "C/1", "A/2"]
    batch = s.schedule()
    assert [r.request_id for r in batch.requests] == ["B/1"]


def test_program_order_does_not_overtake_a_preempted_request():
    s = scheduler("program")
    pre = req("C/1", 3.0)
    pre.num_preemptions = 1
    s.waiting.appendleft(pre)                                        # as _preempt puts it back
    s.add(req("B/1", 2.0))
    s.add(req("A/2", 1.0))
    assert [r.request_id for r in s.waiting] == ["C/1", "A/2", "B/1"]


@pytest.mark.parametrize("order", ["program", "request"])
def test_program_order_gives_older_programs_the_step_budget_first(order):
    """Running prefills share the token budget: under program order the older program's chunk is
    served first (and the newest program's request is the one preempted)."""
    s = Scheduler(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=40, order=order), BlockPool(64, 4))
    young = req("Y/1", 5.0, arrival=1.0, n=30)
    s.add(young)
    s.schedule()                                   # Y is running (its prefill uncommitted: it asks again)
    old = req("O/1", 1.0, arrival=2.0, n=60)
    old.prompt_token_ids = list(range(100, 160))   # no prefix shared with Y (which would make it wait)
    s.add(old)
    s.schedule()                                   # O is admitted with the budget left
    assert [r.request_id for r in s.running] == (["O/1", "Y/1"] if order == "program" else ["Y/1", "O/1"])
    assert s.running[-1].meta.program_id == ("Y" if order == "program" else "O")   # the one preempted first


@pytest.mark.parametrize("order", ["program", "request"])
def test_program_order_on_the_engine(order, make_engine, drain):
    engine = make_engine(kv_cache_tokens=256, schedule_order=order, max_num_seqs=1)
    params = SamplingParams(max_tokens=2, ignore_eos=True)
    for rid, arrival in (("B/1", 2.0), ("C/1", 3.0), ("A/2", 1.0)):
        engine.add_request(list(range(10, 30)), params, request_id=rid,
                           meta=RequestMeta(rid[0], "agent", "step", arrival))
    done = drain(engine)
    first = sorted(done, key=lambda rid: done[rid].metrics["arrival_time"] + done[rid].metrics["ttft_s"])
    assert first == (["A/2", "B/1", "C/1"] if order == "program" else ["B/1", "C/1", "A/2"])


# ------------------------------------------------------------------------------------------ least attained service
def test_las_queues_the_least_served_program_first_and_follows_service_as_it_grows():
    s = scheduler("las")
    s.service.update({"OLD": 500, "NEW": 20, "NEWER": 20})   # OLD has had the engine for 500 tokens
    s.add(req("OLD/2", 1.0))
    s.add(req("NEW/1", 5.0))
    s.add(req("NEWER/1", 9.0))                    # a tie on service: arrival decides
    assert [r.request_id for r in s.waiting] == ["NEW/1", "NEWER/1", "OLD/2"]
    s.service["NEW"] = 900                        # NEW ran elsewhere meanwhile: the order follows
    batch = s.schedule()
    assert [r.request_id for r in batch.requests] == ["NEWER/1"]
    assert [r.request_id for r in s.waiting] == ["OLD/2", "NEW/1"]


def test_las_counts_every_computed_token_into_the_programs_service_until_it_ends():
    s = Scheduler(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=64, order="las"), BlockPool(64, 4))
    a, b = req("P/1", 1.0, n=12), req("P/2", 1.0, n=8)
    b.prompt_token_ids = list(range(50, 58))
    s.add(a)
    s.add(b)
    s.commit(s.schedule())
    assert s.service == {"P": 12 + 8}
    s.end_program("P")
    assert s.service == {}


def test_runtime_order_overrides_the_policys(make_engine):
    engine = make_engine(kv_cache_tokens=256)
    rt = Runtime(engine, policy="agentrt", order="las")
    assert engine.scheduler.config.order == "las" and rt.table is not None
    default = Runtime(make_engine(kv_cache_tokens=256), policy="agentrt")
    assert default.engine.engine.scheduler.config.order == "program"
    with pytest.raises(ValueError, match="unknown order 'sjf'; choose from request, program, las"):
        Runtime(make_engine(kv_cache_tokens=256), order="sjf")
    arun(rt.close())
    arun(default.close())
