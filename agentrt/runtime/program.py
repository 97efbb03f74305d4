"""One running program: walks its compiled step graph, turning agent turns into engine requests
and tool steps into tool calls, and keeps its typed state."""
from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections import Counter
from collections.abc import Collection, Mapping
from typing import Any

from pydantic import BaseModel

from agentrt.graph.compile import CompiledWorkflow
from agentrt.graph.state import apply_update
from agentrt.graph.steps import END, Branch, FanOut, FunctionStep, LLMStep, Step, ToolStep
from agentrt.runtime.conversation import Conversation
from agentrt.runtime.errors import ProgramError
from agentrt.runtime.events import Event, ProgramResult
from agentrt.runtime.position import Lane, Position
from agentrt.runtime.toolcalls import ToolCaller
from agentrt.runtime.turns import AgentTurns
from agentrt.sched.events import ProgramEnded, ProgramStarted, StepEnded, StepStarted


_CURRENT: contextvars.ContextVar["Program"] = contextvars.ContextVar("agentrt_program")
_STEP: contextvars.ContextVar[tuple[str, str, int]] = contextvars.ContextVar("agentrt_step")   # (lane, step, visit)


def current_program() -> "Program":
    """The program whose step is running: tools use it to keep per-program resources
    (`current_program().resources`, `.defer(cleanup)`). Raises outside a program."""
    try:
        return _CURRENT.get()
    except LookupError:
        raise RuntimeError("current_program() called outside a running agentrt program") from None


class View:
    """What routers, prompt callables and Python steps see inside a fan-out branch: the branch's
    names (its item first) over the state's fields."""
    __slots__ = ("_lane",)

    def __init__(self, lane: Lane):
        self._lane = lane

    def __getattr__(self, name: str) -> Any:
        lane = object.__getattribute__(self, "_lane")
        return lane.locals[name] if name in lane.locals else getattr(lane.state, name)


class Program:
    """A program instance; `await program.result()` gives its ProgramResult. Its walk is kept as
    data (`position`), advanced at every step boundary; `snapshot()` saves it with the state, and
    `Runtime.restore` rebuilds a program from a snapshot."""

    def __init__(self, runtime, workflow: CompiledWorkflow, program_id: str, state: BaseModel,
                 position: Position | None = None, counts: Mapping[str, int] | None = None):
        self.rt, self.wf, self.id, self.state = runtime, workflow, program_id, state
        self.clock = runtime.clock
        self.position = position or Position(workflow.entry)
        self.conversations: dict[tuple[str, str], Conversation] = {
            key: Conversation(list(messages)) for key, messages in self.position.conversations.items()}
        self.counts = Counter(counts or {})         # steps, llm_calls, tool_calls, tokens_*
        self.submitted = self.clock.now()
        self.status = "pending"
        self.tools = ToolCaller(self)
        self.turns = AgentTurns(self)
        self.task: asyncio.Task | None = None
        self.resources: dict[str, Any] = {}        # per-program things tools keep (e.g. a sandbox)
        self._deferred: list = []
        self._cancel_requested = False              # cancel() before the task got to run()
        self._started = False                       # program_start emitted
        self._step_began: dict[tuple[str, str | None], float] = {}
        self._calls_made: Counter = Counter()       # tool calls so far in each running step (its journal ids)
        self._entered = False                       # run() entered (a cancel can now be thrown in)

    def defer(self, cleanup) -> None:
        """Call `cleanup()` when the program ends, however it ends (last deferred runs first)."""
        self._deferred.append(cleanup)

    @property
    def loop_counts(self) -> dict:
        """Times each bounded loop of the main path was taken."""
        return self.position.loop_counts

    def snapshot(self) -> dict[str, Any]:
        """The program between steps, as JSON-able data: `Runtime.restore` runs it on from there."""
        return {"program_id": self.id, "workflow": self.wf.name, "state": self.state.model_dump(mode="json"),
                "position": self.position.to_dict(), "counts": dict(self.counts)}

    def next_call_id(self) -> str:
        """The journal id of the next tool call of the running step: the same on every resume."""
        where = _STEP.get()
        index = self._calls_made[where]
        self._calls_made[where] += 1
        lane, step, visit = where
        return f"{lane}/{step}#{visit}/{index}"

    def prompts_of(self, agents: Collection[str]) -> list[list[int]]:
        """Prompt ids the agents would resend now (the scheduler's prefetch asks)."""
        return [conv.prompt_ids(self.rt.tokenizer) for (agent, _lane), conv in list(self.conversations.items())
                if agent in agents and conv.messages]

    # ------------------------------------------------------------------ lifecycle
    def emit(self, _event: str, **data: Any) -> None:
        """A user-facing event (built only when someone listens)."""
        if self.rt.sinks:
            self.rt.emit(Event(self.clock.now() - self.rt.t0, self.id, _event, data))

    def _publish(self, event) -> None:
        """A typed event for the scheduler's front door (when the runtime has one)."""
        if self.rt.scheduler is not None:
            self.rt.scheduler.publish(event)

    async def result(self) -> ProgramResult:
        return await asyncio.shield(self.task)

    def cancel(self) -> bool:
        if self.task is None or self.task.done():
            return False
        if not self._entered:
            # The task has not started yet: cancelling it now would throw into the coroutine
            # before run() is entered, so the program would end with no result and its awaiters
            # (run_many's gather among them) would get a CancelledError. run() checks this flag.
            self._cancel_requested = True
            return True
        return self.task.cancel()

    async def run(self) -> ProgramResult:
        _CURRENT.set(self)                           # this task's context: seen by its steps and tools
        self._entered = True
        door, error = self.rt.scheduler, None
        try:
            if self._cancel_requested:
                raise asyncio.CancelledError()
            if door is not None:                     # program-level admission: wait for room
                await door.admit(self.id, self.wf.name)
            self._start()
            await self._walk_main()
            self.status = "done"
        except asyncio.CancelledError:
            self.status, error = "cancelled", "cancelled"
        except ProgramError as exc:
            self.status, error = "failed", str(exc)
        except Exception as exc:                 # a bug in the runtime: fail this program only
            self.status, error = "failed", f"internal error: {type(exc).__name__}: {exc}"
        error = self._cleanup(error)
        if door is not None:
            door.release(self.id)
        if not self._started:                        # ended before it ever ran: still a start and an end
            status = self.status
            self._start()
            self.status = status
        now = self.clock.now()
        jct = now - self.submitted
        if error and self.status == "failed":
            self.emit("error", message=error)
        self._publish(ProgramEnded(self.id, self.status, now))
        self.rt.program_ended(self.id)
        c = self.counts
        output = getattr(self.state, self.wf.output) if self.wf.output else None
        result = ProgramResult(self.id, self.wf.name, self.status, self.state, output, error, jct,
                               c["steps"], c["llm_calls"], c["tool_calls"], c["tokens_in"],
                               c["tokens_out"], c["cached_tokens"])
        if self.rt.journal is not None:
            self.rt.journal.program_ended(self, result)
        self.emit("program_end", status=self.status, error=error, jct=round(jct, 6))
        return result

    def _start(self) -> None:
        self.status, self._started = "running", True
        now = self.clock.now()
        if self.rt.scheduler is not None:
            hints = {t.name: t.expected_duration for t in self.wf.tools.values() if t.expected_duration}
            self._publish(ProgramStarted(self.id, self.submitted, now, self.wf.analysis, self, hints))
        self.emit("program_start", workflow=self.wf.name, state=self.state, queued=round(now - self.submitted, 6))

    def _cleanup(self, error: str | None) -> str | None:
        while self._deferred:
            cleanup = self._deferred.pop()
            try:
                cleanup()
            except Exception as exc:                 # reported, and it fails an otherwise good program
                self.status = "failed" if self.status == "done" else self.status
                error = error or f"cleanup {cleanup!r} raised {type(exc).__name__}: {exc}"
        return error

    # ------------------------------------------------------------------ walking the graph
    async def _walk_main(self) -> None:
        pos = self.position
        while pos.node != END:
            if pos.lanes is not None:              # inside a fan-out (just entered, or restored there)
                await self._fan_out(self.wf.fan_outs[pos.node], pos.lanes)
                continue
            node = pos.node
            await self._run_step(self.wf.steps[node], None)
            pos.node = self._after(node, None)
            self._step_done(node, None)

    async def _walk_lane(self, lane: Lane, join: str) -> None:
        while lane.node != join:
            node = lane.node
            await self._run_step(self.wf.steps[node], lane)
            lane.node = self._after(node, lane)
            self._step_done(node, lane)

    def _after(self, node: str, lane: Lane | None) -> str:
        """The next node once `node` has run; a fan-out source opens its lanes (the node stays)."""
        if node in self.wf.fan_outs:
            self._open_lanes(self.wf.fan_outs[node])
            return node
        if node in self.wf.branches:
            return self._route(self.wf.branches[node], lane)
        return self.wf.next_step(node)

    def _step_done(self, node: str, lane: Lane | None) -> None:
        """A step boundary: the record takes the conversations it changed, and the step's end is told."""
        pos = self.position
        pos.steps += 1
        visit = f"{lane.key if lane else '-'}|{node}"
        pos.visits[visit] = pos.visits.get(visit, 0) + 1
        step = self.wf.steps[node]
        if isinstance(step, LLMStep):            # only its own conversation moved: others may be mid-turn
            key = (step.agent, lane.key if lane else "")
            pos.conversations[key] = list(self.conversations[key].messages)
        self.counts["steps"] += 1
        if self.rt.journal is not None:
            self.rt.journal.step_done(self)
        self.emit("step_end", step=node, duration=round(self.clock.now() - self._step_began.pop(
            (node, lane.key if lane else None)), 6), lane=lane.key if lane else None)

    def _route(self, branch: Branch, lane: Lane | None) -> str:
        try:
            target = branch.router(self.view(lane))
        except Exception as exc:
            raise ProgramError(branch.source, f"router raised {type(exc).__name__}: {exc}") from exc
        if target not in branch.targets:
            raise ProgramError(branch.source, f"router returned {target!r}; it must return one of "
                                              f"{', '.join(branch.targets)}")
        edge = (branch.source, target)
        if edge not in self.wf.loop_edges:
            return target
        counts = lane.loop_counts if lane else self.position.loop_counts
        if counts.get(edge, 0) >= branch.max_loops:
            exit_to = branch.exit or next(t for t in branch.targets if (branch.source, t) not in self.wf.loop_edges)
            self.emit("loop_limit", step=branch.source, wanted=target, exit=exit_to, max_loops=branch.max_loops)
            return exit_to
        counts[edge] = counts.get(edge, 0) + 1
        return target

    def _open_lanes(self, fan: FanOut) -> None:
        items = list(getattr(self.state, fan.over))
        self.emit("fan_out", step=fan.source, over=fan.over, items=len(items))
        self.position.lanes = [Lane(f"{fan.source}[{i}]", fan.to, {fan.item: item}) for i, item in enumerate(items)]

    async def _fan_out(self, fan: FanOut, lanes: list[Lane]) -> None:
        for lane in lanes:                         # the branch's view: the state plus its own writes
            lane.state = self._replay_deltas(lane)
        tasks = [asyncio.ensure_future(self._walk_lane(lane, fan.join)) for lane in lanes]
        try:
            await asyncio.gather(*tasks)
        except BaseException:                      # one branch failed (or we were cancelled): stop the rest
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        for lane in lanes:                         # merged in item order, so the result is deterministic
            for name, value in lane.deltas:
                self.state = apply_update(self.state, {name: value}, self.wf.reducers)
        prefix = f"{fan.source}["
        for key in [k for k in self.conversations if k[1].startswith(prefix)]:
            del self.conversations[key]
            self.position.conversations.pop(key, None)
        self.position.lanes, self.position.node = None, fan.join

    def _replay_deltas(self, lane: Lane) -> BaseModel:
        state = self.state
        for name, value in lane.deltas:
            state = apply_update(state, {name: value}, self.wf.reducers)
        return state

    # ------------------------------------------------------------------ steps
    async def _run_step(self, step: Step, lane: Lane | None) -> None:
        where = (lane.key if lane else "-", step.name)
        _STEP.set((*where, self.position.visits.get("|".join(where), 0)))
        self._calls_made.pop(_STEP.get(), None)
        now = self.clock.now()
        self._step_began[step.name, lane.key if lane else None] = now
        self._publish(StepStarted(self.id, step.name, now, dict(self.position.loop_counts)))
        self.emit("step_start", step=step.name, kind=step.kind, agent=getattr(step, "agent", None),
                  tool=getattr(step, "tool", None), lane=lane.key if lane else None)
        try:
            if isinstance(step, LLMStep):
                self._write(step.output, await self.turns.step(step, lane), lane)
            elif isinstance(step, ToolStep):
                self._write(step.output, await self.tools.step(step, self.scope(lane), self.view(lane)), lane)
            else:
                await self._python(step, lane)
        except (ProgramError, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise ProgramError(step.name, f"{type(exc).__name__}: {exc}") from exc
        self._publish(StepEnded(self.id, step.name, self.clock.now(), dict(self.position.loop_counts)))

    async def _python(self, step: FunctionStep, lane: Lane | None) -> None:
        if inspect.iscoroutinefunction(step.fn):
            update = await step.fn(self.view(lane))
        else:                  # off the event loop: a slow step must not stall the other programs
            update = await asyncio.to_thread(step.fn, self.view(lane))
            if inspect.isawaitable(update):
                update = await update
        if update is None:
            return
        if isinstance(update, self.wf.state):
            if lane is not None:
                raise ProgramError(step.name, f"runs in a fan-out and returned a whole {self.wf.state.__name__}; "
                                              f"inside a fan-out a Python step returns a dict of updates")
            # A whole new state replaces the old one as it is (validated): its reducer fields
            # already hold the merged values, so they must not be reduced into the old ones again.
            self.state = self.wf.state.model_validate(dict(update))
            return
        if not isinstance(update, Mapping):
            raise ProgramError(step.name, f"returned {type(update).__name__}; a Python step returns a dict "
                                          f"of field updates, a {self.wf.state.__name__}, or None")
        if lane is None:
            self.state = apply_update(self.state, update, self.wf.reducers)
            return
        for name, value in update.items():
            if name in self.wf.state.model_fields and name not in self.wf.reducers:
                raise ProgramError(step.name, f"runs in a fan-out and wrote {name!r}, which has no reducer; "
                                              f"branches would overwrite each other")
            self._write(name, value, lane)

    def _write(self, name: str | None, value: Any, lane: Lane | None) -> None:
        if name is None:
            return
        if lane is None:
            self.state = apply_update(self.state, {name: value}, self.wf.reducers)
        elif name not in self.wf.state.model_fields:
            lane.locals[name] = value
        else:
            lane.state = apply_update(lane.state, {name: value}, self.wf.reducers)
            lane.deltas.append((name, value))

    def view(self, lane: Lane | None) -> Any:
        return self.state if lane is None else View(lane)

    def scope(self, lane: Lane | None) -> dict[str, Any]:
        return dict(self.state) if lane is None else {**dict(lane.state), **lane.locals}
