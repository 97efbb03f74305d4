"""`WorkflowScheduler`: the one front door to workflow-aware scheduling.

A front builds one beside its engine, installs its `engine_policy` through the engine's own API,
and `publish`es its programs' typed events (`agentrt.sched.events`). Behind the door: the program
table, the policy's eviction ranking, swap filter, TTL pins, next-agent prefetch, queue order and
program admission, chosen together by the policy's name.

>>> door = WorkflowScheduler("agentrt", kv=engine.kv_spec, prefetch=engine.prefetch_evicting)
>>> engine.install_policy(door.engine_policy)
>>> door.publish(ProgramStarted("p1", arrival=clock.now(), at=clock.now(), graph=compiled.analysis))
"""
from __future__ import annotations

from agentrt.clock import MONOTONIC, Clock
from agentrt.engine.policy import EnginePolicy, KVSpec
from agentrt.sched.admission import AdmissionGate
from agentrt.sched.batch_cap import StepCost
from agentrt.sched.events import ProgramEvent
from agentrt.sched.meter import MeteredConsumer, MeteredEviction, MeteredObserver, PolicyMeter, metered_filter
from agentrt.sched.policies import BATCH_CAPPED, PREFETCHING, PROGRAM_ORDERED, block_costs, make_policy, worth_swapping
from agentrt.sched.predictor import ToolPausePredictor
from agentrt.sched.prefetch import NextAgentPrefetcher, Prefetch
from agentrt.sched.program_table import ProgramTable


class WorkflowScheduler:
    """`policy`: lru, continuum, kvflow or agentrt (see agentrt.sched.policies). `order` overrides
    the policy's queue order (request, program, las). `admission` starts a program only when the
    device tier can hold it beside the running ones; `max_programs` (implies admission) also caps
    how many run at once. `batch_cap` (agentrt's default) runs as many programs at once as the
    device's measured step costs make worth it (agentrt.sched.batch_cap); `max_programs` replaces
    it. `prefetch` is the engine's host-tier prefetch (None: no prefetch).
    `meter` times every part's decisions (benchmarks print policy time per step)."""

    def __init__(self, policy: str = "agentrt", *, kv: KVSpec, prefetch: Prefetch | None = None,
                 clock: Clock = MONOTONIC, order: str | None = None, admission: bool = False,
                 max_programs: int | None = None, batch_cap: bool | None = None,
                 predictor: ToolPausePredictor | None = None, meter: PolicyMeter | None = None):
        self.name, self.clock = policy, clock
        self.table = ProgramTable(predictor, clock)
        eviction, consumers = make_policy(policy, self.table)
        swap = worth_swapping(self.table, **block_costs(kv.block_bytes, kv.block_size)) if policy == "agentrt" else None
        if meter is not None:
            eviction = MeteredEviction(eviction, meter)
            swap = metered_filter(swap, meter) if swap is not None else None
        if batch_cap is None:
            batch_cap = policy in BATCH_CAPPED and max_programs is None
        self.step_cost = StepCost() if batch_cap else None
        observer = self.step_cost
        if meter is not None and observer is not None:
            observer = MeteredObserver(observer, meter)
        self.engine_policy = EnginePolicy(eviction, swap, order or ("program" if policy in PROGRAM_ORDERED else "request"),
                                          observer)
        self.prefetcher = None
        if policy in PREFETCHING and prefetch is not None:
            self.prefetcher = NextAgentPrefetcher(prefetch, timed=policy == "agentrt", predictor=self.table.predictor)
            consumers.append(self.prefetcher)
        self.admission = None
        if admission or max_programs is not None or batch_cap:
            by_memory = admission or max_programs is not None
            self.admission = AdmissionGate(kv.capacity_tokens if by_memory else None, max_programs=max_programs,
                                           cap=self.step_cost.cap if batch_cap else None)
            consumers.append(self.admission)
        self._consumers = (self.table, *consumers)
        if meter is not None:
            self._consumers = tuple(MeteredConsumer(c, meter) for c in self._consumers)

    def publish(self, event: ProgramEvent) -> None:
        """Hand an event to the table and every policy part, in that order. They are part of the
        scheduler: one that raises is a bug, and the error reaches the front."""
        for consumer in self._consumers:
            consumer.publish(event)

    async def admit(self, program_id: str, workflow: str) -> None:
        """Wait until the program may start (at once without admission)."""
        if self.admission is not None:
            await self.admission.acquire(program_id, workflow)

    def release(self, program_id: str) -> None:
        if self.admission is not None:
            self.admission.release(program_id)

    def pinned_until(self, program_id: str) -> float | None:
        """When a TTL pin on the program's blocks ends (None: not pinned)."""
        entry = self.table.entries.get(program_id)
        return entry.pin_until if entry is not None else None
