"""Run many programs at once on one engine.

>>> async with Runtime("smollm2-135m", trace="run.jsonl") as rt:
...     results = await rt.run_many(workflow, [{"topic": "bees"}, {"topic": "solar power"}])
>>> results[0].output, results[0].hit_rate
"""
from __future__ import annotations

import asyncio
import itertools
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agentrt.clock import MONOTONIC, Clock
from agentrt.engine.async_engine import AsyncLLMEngine
from agentrt.engine.llm_engine import LLMEngine
from agentrt.engine.policy import ORDERS
from agentrt.graph.compile import CompiledWorkflow
from agentrt.graph.steps import END
from agentrt.graph.workflow import Workflow
from agentrt.runtime.checkpoint import CheckpointStore, default_path
from agentrt.runtime.durable import RunJournal, check_unchanged, finished_result, resume_workflows as _resume_workflows
from agentrt.runtime.events import Event, EventSink, ProgramResult, TraceWriter
from agentrt.runtime.position import Position
from agentrt.runtime.program import Program
from agentrt.sched.front import WorkflowScheduler
from agentrt.sched.policies import POLICIES

Inputs = Mapping[str, Any] | BaseModel | None


class Runtime:
    """Programs run as asyncio tasks on one AsyncLLMEngine; tools run beside the engine.

    `engine` is a model alias or path (loaded with `engine_config`), an LLMEngine, or an
    AsyncLLMEngine. `trace` is a JSONL path; `on_event` callables receive every Event.
    `policy` (lru, continuum, kvflow, agentrt) puts a workflow-aware scheduler in front of the
    engine (`self.scheduler`, an `agentrt.sched.WorkflowScheduler`; its program table is
    `self.table`): the programs' typed events feed it, and it installs its eviction, swap filter
    and order through the engine's API. The default "auto" is agentrt on an agentrt engine and
    nothing on other engines (test doubles, which have no KV cache); None leaves the engine's own
    (LRU, request order). `order` sets how the engine queues requests and shares each step's
    token budget: "request" (FCFS), "program" (FCFS by program arrival) or "las" (least attained
    service by program); None: the policy's own (program for continuum and agentrt, request
    otherwise). `admission` (off by default) starts a program only when the device tier can hold
    it beside the running ones, oldest first; `max_programs` (which implies admission) also caps
    how many programs run at once. Or give a `scheduler` built beforehand (e.g. with a predictor
    trained on past tool latencies) instead of those four. `checkpoint` (a SQLite path, a
    CheckpointStore, or True for the default path under the user's data dir) makes the run
    durable: every program is saved at every step boundary and its tool calls are journaled, so
    `resume(run_id)` continues it after a crash without redoing a finished step or tool call
    (`run_id`: a new one unless given; `run_meta`: stored with the run, e.g. how to load its
    workflow). `events` ("mqtt://host:port") publishes every event to an MQTT broker, off the
    hot path (agentrt.tools.mqtt.stream). Everything reads one clock: the engine's (monotonic unless it
    was built on another). One failing program never stops the others; `cancel()` stops one and
    frees its KV blocks. `replicas=N` runs N engines of the model as Ray actors (`pip install
    'agentrt[ray]'`), each with its own KV tiers and `policy`, programs routed by `router`
    (program: a program's turns stay on its replica; prefix, least-loaded, round-robin).
    """

    def __init__(self, engine: str | LLMEngine | AsyncLLMEngine = "smollm2-135m", *,
                 trace: str | Path | None = None, on_event: Iterable[EventSink] = (),
                 policy: str | None = "auto", order: str | None = None, admission: bool = False,
                 max_programs: int | None = None, scheduler: WorkflowScheduler | None = None,
                 checkpoint: str | Path | CheckpointStore | bool | None = None, run_id: str | None = None,
                 run_meta: Mapping[str, Any] | None = None, events: str | None = None,
                 replicas: int | None = None, router: str = "program", **engine_config: Any):
        if replicas is not None:        # N engines as Ray actors; the policy is each replica's
            engine, policy = _replica_engine(engine, replicas, router, policy, engine_config), None
            engine_config = {}
        if engine_config and not isinstance(engine, str):
            raise TypeError("engine_config applies only when the engine is given as a model name")
        if scheduler is not None and (policy not in ("auto", scheduler.name) or order or admission or max_programs):
            raise ValueError("give either a scheduler or policy/order/admission/max_programs, not both")
        if policy not in (None, "auto", *POLICIES):
            raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
        if order is not None and order not in ORDERS:
            raise ValueError(f"unknown order {order!r}; choose from {', '.join(ORDERS)}")
        # The runtime closes only the engine it made: a given async engine (or any object with its
        # generate/tokenizer/close interface, e.g. a test double) stays open.
        self._own_engine = isinstance(engine, (str, LLMEngine)) or replicas is not None
        if isinstance(engine, str):
            engine = AsyncLLMEngine.from_pretrained(engine, **engine_config)
        elif isinstance(engine, LLMEngine):
            engine = AsyncLLMEngine(engine)
        self.engine: AsyncLLMEngine = engine
        self.clock: Clock = getattr(engine, "clock", MONOTONIC)
        self.t0 = self.clock.now()
        self.sinks: list[EventSink] = list(on_event)
        self._trace = TraceWriter(trace) if trace is not None else None
        if self._trace is not None:
            self.sinks.append(self._trace)
        self._events = None
        if events is not None:          # never blocks a program: a bounded buffer, drops counted
            from agentrt.tools.mqtt.stream import EventStream
            self._events = EventStream(events, run_id=lambda: self.run_id)
            self.sinks.append(self._events)
        self.programs: dict[str, Program] = {}            # running or pending
        self._ids = itertools.count()
        self.journal, self._own_store = _journal(checkpoint, run_id, run_meta)
        self.scheduler = self._scheduler(scheduler, policy, order, admission, max_programs)

    def _scheduler(self, given: WorkflowScheduler | None, policy: str | None, order: str | None, admission: bool,
                   max_programs: int | None) -> WorkflowScheduler | None:
        """The front door to workflow-aware scheduling, its policy installed in the engine."""
        has_kv = isinstance(self.engine, AsyncLLMEngine)
        if policy == "auto":
            policy = None if given is not None or not has_kv else "agentrt"
        needs_kv = next((what for what, asked in (("a KV policy", policy is not None), ("a scheduling order", order),
                                                  ("program admission", admission or max_programs is not None))
                         if asked), None)
        if needs_kv and not has_kv:
            raise TypeError(f"{needs_kv} needs an agentrt engine (LLMEngine or AsyncLLMEngine)")
        door = given
        if door is None and needs_kv:       # without a policy, order or admission alone run behind lru's door
            door = WorkflowScheduler(policy or "lru", kv=self.engine.kv_spec, prefetch=self._prefetch,
                                     clock=self.clock, order=order, admission=admission, max_programs=max_programs)
        if door is not None:
            self.engine.install_policy(door.engine_policy)
        return door

    @property
    def table(self):
        """The scheduler's program table (None without a scheduler)."""
        return self.scheduler.table if self.scheduler is not None else None

    @property
    def admission(self):
        return self.scheduler.admission if self.scheduler is not None else None

    def _prefetch(self, prompt_ids: list[int]) -> None:
        self.engine.prefetch(prompt_ids, evict=True)

    def program_ended(self, program_id: str) -> None:
        """Called by a program as it ends: the engine forgets what it kept for it."""
        end = getattr(self.engine, "end_program", None)
        if end is not None:
            end(program_id)

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def add_sink(self, sink: EventSink) -> None:
        """Receive every Event from now on (like `on_event` at construction)."""
        self.sinks.append(sink)

    def emit(self, event: Event) -> None:
        """Hand a user-facing event to every sink. A sink that raises is a user's observer, not
        part of the runtime: it is dropped, loudly, and the programs go on."""
        for sink in list(self.sinks):
            try:
                sink(event)
            except Exception as exc:
                self.sinks.remove(sink)
                print(f"agentrt: event sink {sink!r} raised {type(exc).__name__}: {exc}; removed it",
                      file=sys.stderr)

    # ------------------------------------------------------------------ programs
    def submit(self, workflow: Workflow | CompiledWorkflow, inputs: Inputs = None, *,
               program_id: str | None = None) -> Program:
        """Start one program now; bad inputs raise ValueError here, before anything runs."""
        compiled = workflow.compile() if isinstance(workflow, Workflow) else workflow
        state = _initial_state(compiled, inputs)
        program = Program(self, compiled, self._new_id(compiled, program_id), state)
        if self.journal is not None:
            self.journal.program_started(program, state.model_dump(mode="json"))
        return self._start(program)

    @property
    def run_id(self) -> str | None:
        """The durable run's id (None without checkpoint=)."""
        return self.journal.run_id if self.journal is not None else None

    async def resume(self, run_id: str, workflow: Workflow | CompiledWorkflow | Iterable | None = None
                     ) -> list[ProgramResult]:
        """Continue a durable run: every unfinished program (running when the process stopped,
        or cancelled) from its last finished step; finished ones (done, failed) are reported as
        they ended, not rerun. `workflow` (one, or several by name) defaults to the run's stored
        `target`. Refused, naming what changed, when a program's workflow differs from the one
        it started with."""
        if self.journal is None:
            raise ValueError("resume needs a checkpoint: Runtime(checkpoint=...)")
        if self.programs or (self.journal.run_id != run_id and self.journal.in_use):
            raise ValueError(f"this runtime already runs {self.journal.run_id}; resume {run_id} in a new Runtime")
        store = self.journal.store
        records = store.programs(run_id)
        if not records:
            raise ValueError(f"no run {run_id!r} in {store.path} (`agentrt runs list` shows the runs there)")
        self.journal = RunJournal.resuming(store, run_id)
        workflows = _resume_workflows(workflow, store.run_meta(run_id) or {})
        for rec in records:
            check_unchanged(rec, workflows.get(rec.workflow), self.journal)
        pending = [None if rec.finished else self.restore(workflows[rec.workflow], rec.snapshot,
                                                          program_id=rec.program_id) for rec in records]
        results = []
        for rec, program in zip(records, pending):
            results.append(finished_result(rec, workflows.get(rec.workflow)) if program is None
                           else await program.result())
        return results

    def restore(self, workflow: Workflow | CompiledWorkflow, snapshot: Mapping[str, Any], *,
                program_id: str | None = None) -> Program:
        """Start a program from a `Program.snapshot()`: it runs on from the step after the last
        one the snapshot saw finish, with that state, those loop counts and conversations."""
        compiled = workflow.compile() if isinstance(workflow, Workflow) else workflow
        if snapshot.get("workflow") != compiled.name:
            raise ValueError(f"snapshot is of workflow {snapshot.get('workflow')!r}, not {compiled.name!r}")
        position = Position.from_dict(snapshot["position"])
        known = {*compiled.steps, END, *(f.join for f in compiled.fan_outs.values())}
        missing = [n for n in position.frontier() if n not in known]
        if missing:
            raise ValueError(f"snapshot stands at step {missing[0]!r}, which workflow {compiled.name!r} does not have")
        state = compiled.state.model_validate(snapshot["state"])
        pid = self._new_id(compiled, program_id or snapshot.get("program_id"))
        return self._start(Program(self, compiled, pid, state, position, snapshot.get("counts")))

    def _new_id(self, compiled: CompiledWorkflow, program_id: str | None) -> str:
        pid = program_id or f"{compiled.name}-{next(self._ids)}"
        if pid in self.programs:
            raise ValueError(f"program id {pid!r} is already running")
        return pid

    def _start(self, program: Program) -> Program:
        self.programs[program.id] = program
        program.task = asyncio.get_running_loop().create_task(self._run(program), name=program.id)
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
        if self._events is not None:
            await asyncio.to_thread(self._events.close)
        if self.journal is not None and self._own_store:
            self.journal.store.close()

    async def __aenter__(self) -> "Runtime":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


def _replica_engine(model, replicas: int, router: str, policy: str | None, engine_config: dict):
    """`replicas` engines of `model` as Ray actors behind a router (agentrt.cluster.engine)."""
    if not isinstance(model, str):
        raise TypeError("replicas= starts its own engines: give the model by name, e.g. "
                        "Runtime('smollm2-135m', replicas=4)")
    if policy not in (None, "auto", *POLICIES):
        raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    from agentrt.cluster.engine import ClusterEngine      # Ray: only when asked for
    return ClusterEngine.start(model, replicas, router=router, policy="agentrt" if policy == "auto" else policy,
                               **engine_config)


def _journal(checkpoint, run_id: str | None, run_meta) -> tuple[RunJournal | None, bool]:
    """The durable run's journal (None without a checkpoint), and whether the runtime opened its store."""
    if checkpoint is None or checkpoint is False:
        if run_id is not None:
            raise ValueError("run_id names a durable run: give checkpoint= too")
        return None, False
    own = not isinstance(checkpoint, CheckpointStore)
    store = CheckpointStore(default_path() if checkpoint is True else checkpoint) if own else checkpoint
    return RunJournal(store, run_id, dict(run_meta or {})), own


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
