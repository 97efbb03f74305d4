"""What the workflow-aware scheduler's own decisions cost: wall seconds spent in its eviction
ranking, swap filter and event consumers (program table, pinner, prefetcher, admission), per
part. A `WorkflowScheduler(meter=PolicyMeter())` wraps its parts at construction; without a
meter nothing is wrapped, so nothing is paid."""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator

from agentrt.engine.eviction import EvictionPolicy
from agentrt.engine.observe import EngineObserver


class PolicyMeter:
    __slots__ = ("seconds", "calls")

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def add(self, part: str, seconds: float) -> None:
        self.seconds[part] += seconds
        self.calls[part] += 1

    @property
    def total_s(self) -> float:
        return sum(self.seconds.values())


class MeteredEviction(EvictionPolicy):
    """An eviction policy whose add / remove / pop are timed (as "eviction")."""

    def __init__(self, inner: EvictionPolicy, meter: PolicyMeter):
        self.inner, self.meter = inner, meter

    def add(self, block) -> None:
        began = time.perf_counter()
        self.inner.add(block)
        self.meter.add("eviction", time.perf_counter() - began)

    def remove(self, block) -> None:
        began = time.perf_counter()
        self.inner.remove(block)
        self.meter.add("eviction", time.perf_counter() - began)

    def pop(self):
        began = time.perf_counter()
        try:
            return self.inner.pop()
        finally:
            self.meter.add("eviction", time.perf_counter() - began)

    def blocks(self) -> Iterator:
        return self.inner.blocks()

    def __len__(self) -> int:
        return len(self.inner)


def metered_filter(decide: Callable, meter: PolicyMeter) -> Callable:
    def timed(block) -> bool:
        began = time.perf_counter()
        try:
            return decide(block)
        finally:
            meter.add("swap filter", time.perf_counter() - began)
    return timed


class MeteredConsumer:
    """An event consumer whose `publish` is timed under its class name."""

    def __init__(self, inner, meter: PolicyMeter):
        self.inner, self.meter, self.part = inner, meter, type(inner).__name__

    def publish(self, event) -> None:
        began = time.perf_counter()
        try:
            self.inner.publish(event)
        finally:
            self.meter.add(self.part, time.perf_counter() - began)


class MeteredObserver(EngineObserver):
    """A policy's step observer (agentrt's step costs) whose `on_computed` is timed under its class
    name; it watches nothing else."""

    def __init__(self, inner: EngineObserver, meter: PolicyMeter):
        self.inner, self.meter, self.part = inner, meter, type(inner).__name__

    def on_computed(self, batch, seconds: float) -> None:
        began = time.perf_counter()
        try:
            self.inner.on_computed(batch, seconds)
        finally:
            self.meter.add(self.part, time.perf_counter() - began)
