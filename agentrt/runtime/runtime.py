"""Run many programs at once on one engine.

>>> async with Runtime("smollm2-135m", trace="run.jsonl") as rt:
...     results = await rt.run_many(workflow, [{"topic": "bees"}, {"topic": "solar power"}])
>>> results[0].output, results[0].hit_rate
"""
from __future__ import annotations

import asyncio
import dataclasses
import itertools
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agentrt.engine.async_engine import AsyncLLMEngine
from agentrt.engine.llm_engine import LLMEngine
from agentrt.graph.compile import CompiledWorkflow
from agentrt.graph.workflow import Workflow
from agentrt.runtime.events import Event, EventSink, ProgramResult, TraceWriter
from agentrt.runtime.program import Program

Inputs = Mapping[str, Any] | BaseModel | None


ORDERS = ("request", "program", "las")


class Runtime:
    """Programs run as asyncio tasks on one AsyncLLMEngine; tools run beside the engine.

    `engine` is a model alias or path (loaded with `engine_config`), an LLMEngine, or an
    AsyncLLMEngine. `trace` is a JSONL path; `on_event` callables receive every Event.
    `policy` (lru, continuum, kvflow, agentrt) installs a workflow-aware KV eviction policy fed
    by a program table (`self.table`); the default "auto" is agentrt on an agentrt engine and
    nothing on other engines (test doubles, which have no KV cache); None leaves the engine's own
    (LRU, request order). `order` sets how the
    engine queues requests and shares each step's token budget: "request" (FCFS), "program" (FCFS
    by program arrival) or "las" (least attained service by program); None: the policy's own
    (program for continuum and agentrt, request otherwise). `admission` (off by default) starts a
    program only when the device tier can hold it beside the running ones, oldest first;
    `max_programs` (which implies admission) also caps how many programs run at once.
    One failing program never stops the others; `cancel()` stops one and frees its KV blocks.
    """

    def __init__(self, engine: str | LLMEngine | AsyncLLMEngine = "smollm2-135m", *,
                 trace: str | Path | None = None, on_event: Iterable[EventSink] = (),
                 policy: str | None = "auto", order: str | None = None, admission: bool = False,
                 max_programs: int | None = None, **engine_config: Any):
        if engine_config and not isinstance(engine, str):
            raise TypeError("engine_config applies only when the engine is given as a model name")
        # The runtime closes only the engine it made: a given async engine (or any object with its
        # generate/tokenizer/close interface, e.g. a test double) stays open.
        self._own_engine = isinstance(engine, (str, LLMEngine))
        if isinstance(engine, str):
            engine = AsyncLLMEngine.from_pretrained(engine, **engine_config)
        elif isinstance(engine, LLMEngine):
            engine = AsyncLLMEngine(engine)
        self.engine: AsyncLLMEngine = engine
        self.t0 = time.monotonic()
        self.sinks: list[EventSink] = list(on_event)
        self._trace = TraceWriter(trace) if trace is not None else None
        if self._trace is not None:
            self.sinks.append(self._trace)
        self.programs: dict[str, Program] = {}            # running or pending
        self._ids = itertools.count()
        if policy == "auto":
            policy = "agentrt" if self._agentrt_engine(None) is not None else None
        self.table = self._install_policy(policy) if policy is not None else None
        if order is not None:
            self._set_order(order)
        self.admission = None
        if admission or max_programs is not None:
            self.admission = self._install_admission(max_programs)

    def _agentrt_engine(self, needed_by: str | None) -> LLMEngine | None:
        """The LLMEngine under the async engine; without one (a test double), None when
        `needed_by` is None, else a TypeError naming what needed it."""
        engine = getattr(self.engine, "engine", None)
        if isinstance(engine, LLMEngine):
            return engine
        if needed_by is None:
            return None
        raise TypeError(f"{needed_by} needs an agentrt engine (LLMEngine or AsyncLLMEngine)")

    def _install_admission(self, max_programs: int | None):
        from agentrt.sched.admission import AdmissionGate
        pool = self._agentrt_engine("program admission").pool
        gate = AdmissionGate(pool.num_blocks * pool.block_size, max_programs=max_programs)
        self.sinks.append(gate)
        return gate

    def _install_policy(self, name: str):
        from agentrt.sched.policies import PREFETCHING, PROGRAM_ORDERED, block_costs, make_policy, worth_swapping
        from agentrt.sched.prefetch import NextAgentPrefetcher
        from agentrt.sched.program_table import ProgramTable
        pool = self._agentrt_engine("a KV policy").pool
        table = ProgramTable().attach(self)
        eviction, sinks = make_policy(name, table)
        pool.set_policy(eviction)
        if name == "agentrt":
            runner = self.engine.engine.runner
            pool.swap_filter = worth_swapping(table, **block_costs(runner.block_bytes, pool.block_size))
        if name in PREFETCHING:
            self.sinks.append(NextAgentPrefetcher(self, timed=name == "agentrt", predictor=table.predictor))
        self._set_order("program" if name in PROGRAM_ORDERED else "request")
        self.sinks.extend(sinks)
        return table

    def _set_order(self, order: str) -> None:
        if order not in ORDERS:
            raise ValueError(f"unknown order {order!r}; choose from {', '.join(ORDERS)}")
        scheduler = self._agentrt_engine("a scheduling order").scheduler
        scheduler.config = dataclasses.replace(scheduler.config, order=order)

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def emit(self, event: Event) -> None:
        for sink in list(self.sinks):
            try:
                sink(event)
            except Exception as exc:          # a broken observer must not break programs: drop it, loudly
                self.sinks.remove(sink)
                print(f"agentrt: event sink {sink!r} raised {type(exc).__name__}: {exc}; removed it",
                      file=sys.stderr)

    # ------------------------------------------------------------------ programs
    def submit(self, workflow: Workflow | CompiledWorkflow, inputs: Inputs = None, *,
               program_id: str | None = None) -> Program:
        """Start one program now; bad inputs raise ValueError here, before anything runs."""
        compiled = workflow.compile() if isinstance(workflow, Workflow) else workflow
        state = _initial_state(compiled, inputs)
        pid = program_id or f"{compiled.name}-{next(self._ids)}"
        if pid in self.programs:
            raise ValueError(f"program id {pid!r} is already running")
        program = Program(self, compiled, pid, state)
        self.programs[pid] = program
        program.task = asyncio.get_running_loop().create_task(self._run(program), name=pid)
        return program

    async def _run(self, program: Program) -> ProgramResult:
        try:
            return await program.run()
        finally:
            self.programs.pop(program.id, None)

    async def run(self, workflow: Workflow | CompiledWorkflow, inputs: Inputs = None) -> ProgramResult:
        """Run one program to its end."""
        return await self.submit(workflow, inputs).result()

    async def run_many(self, workflow: Workflow | CompiledWorkflow, inputs: Iterable[Inputs], *,
                       on_submit: Callable[[Program], None] | None = None) -> list[ProgramResult]:
        """Run a program per input, all at once; results in input order. Every input is checked
        before any program starts."""
        compiled = workflow.compile() if isinstance(workflow, Workflow) else workflow
        states = [_initial_state(compiled, x) for x in inputs]
        programs = [self.submit(compiled, s) for s in states]
        if on_submit is not None:
            for p in programs:
                on_submit(p)
        try:
            return list(await asyncio.gather(*(p.result() for p in programs)))
        except asyncio.CancelledError:
            for p in programs:
                p.cancel()
            await asyncio.gather(*(p.task for p in programs), return_exceptions=True)
            raise

    def cancel(self, program_id: str) -> bool:
        """Stop a program; its engine requests are aborted and their KV blocks freed."""
        program = self.programs.get(program_id)
        return program is not None and program.cancel()

    async def close(self) -> None:
        """Cancel what still runs, stop the engine loop, close the trace."""
        for program in list(self.programs.values()):
            program.cancel()
        await asyncio.gather(*(p.task for p in list(self.programs.values())), return_exceptions=True)
        if self._own_engine:
            await self.engine.close()          # aborts what cancelled programs left queued
        if self._trace is not None:
            self._trace.close()

    async def __aenter__(self) -> "Runtime":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


def _initial_state(compiled: CompiledWorkflow, inputs: Inputs) -> BaseModel:
    """The program's first state; ValueError (not a TypeError from dict()) for inputs that are not
    field values at all, e.g. a list or a string given as one input."""
    model = compiled.state
    if inputs is not None and not isinstance(inputs, (Mapping, BaseModel)):
        raise ValueError(f"inputs of workflow {compiled.name!r} are a mapping of {model.__name__} fields or a "
                         f"{model.__name__}, not {type(inputs).__name__} (run_many takes a list of them)")
    return compiled.initial_state(inputs)


def run(workflow: Workflow | CompiledWorkflow, inputs: Inputs | list[Inputs] = None, *,
        model: str | LLMEngine = "smollm2-135m", trace: str | Path | None = None,
        **engine_config: Any) -> ProgramResult | list[ProgramResult]:
    """Run a workflow from synchronous code: one input gives one result, a list gives a list.

    >>> result = agentrt.run(workflow, {"topic": "honeybees"})
    >>> print(result.output)
    """
    async def main():
        async with Runtime(model, trace=trace, **engine_config) as rt:
            if isinstance(inputs, list):
                return await rt.run_many(workflow, inputs)
            return await rt.run(workflow, inputs)
    return asyncio.run(main())
