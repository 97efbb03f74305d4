"""A durable run: what programs write to the checkpoint store at their boundaries (start, each
finished step, end), and tool calls made through the journal so a finished one is never made
again on resume (see agentrt.runtime.checkpoint)."""
from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel

from agentrt.graph.compile import CompiledWorkflow
from agentrt.graph.identity import describe, fingerprint
from agentrt.runtime.checkpoint import CheckpointStore, new_run_id
from agentrt.runtime.errors import ProgramError
from agentrt.tools import Tool, ToolResult
from agentrt.tools.context import CallInfo


class RunJournal:
    """One run in a store; `run_id` is new unless given (resume continues an existing one)."""

    def __init__(self, store: CheckpointStore, run_id: str | None = None, meta: dict[str, Any] | None = None):
        self.store = store
        self.run_id = run_id or new_run_id()
        self._meta = meta or {}
        self._created = False
        self._identity: dict[int, tuple[dict, str]] = {}       # id(compiled) -> (description, fingerprint)

    @classmethod
    def resuming(cls, store: CheckpointStore, run_id: str) -> "RunJournal":
        """The journal of a run already in the store."""
        journal = cls(store, run_id, store.run_meta(run_id))
        journal._created = True
        return journal

    @property
    def in_use(self) -> bool:
        """Whether a program of this run has been recorded yet."""
        return self._created

    def identity(self, wf: CompiledWorkflow) -> tuple[dict, str]:
        if id(wf) not in self._identity:
            d = describe(wf)
            self._identity[id(wf)] = (d, fingerprint(d))
        return self._identity[id(wf)]

    def ensure_run(self) -> None:
        if not self._created:
            self.store.create_run(self.run_id, self._meta)
            self._created = True

    # ------------------------------------------------------------------ program boundaries
    def program_started(self, program, inputs: dict[str, Any]) -> None:
        self.ensure_run()
        description, fp = self.identity(program.wf)
        self.store.add_program(self.run_id, program.id, program.wf.name, fp, description, inputs, program.snapshot())

    def step_done(self, program) -> None:
        self.store.save_step(self.run_id, program.id, program.snapshot())

    def program_ended(self, program, result) -> None:
        self.store.finish_program(self.run_id, program.id, result.status, result.error, result.to_dict(),
                                  program.snapshot())

    # ------------------------------------------------------------------ tool calls
    async def call(self, program_id: str, call_id: str, tool: Tool, step: str,
                   make: Callable[[CallInfo], Awaitable[ToolResult]]) -> tuple[ToolResult, bool]:
        """(the call's result, whether it was replayed from the journal rather than made)."""
        entry = self.store.call(self.run_id, program_id, call_id)
        key = f"{self.run_id}/{program_id}/{call_id}"
        if entry is not None and entry.status == "done":
            r = entry.result
            return ToolResult(r["value"], r["error"], r["attempts"], r["duration"]), True
        if entry is not None and not tool.idempotent:
            raise ProgramError(step, f"tool call {key} ({tool.name}) was in flight when the run stopped, and "
                                     f"{tool.name} is not idempotent: it may or may not have taken effect, so it is "
                                     f"not made again (declare it @tool(idempotent=True) if a repeat is harmless)")
        execution = self.store.call_started(self.run_id, program_id, call_id, tool.name)
        result = await make(CallInfo(key, execution))
        self.store.call_done(self.run_id, program_id, call_id, {"value": _jsonable(result.value, tool.name, step),
                                                                "error": result.error, "attempts": result.attempts,
                                                                "duration": result.duration})
        return result, False


def _jsonable(value: Any, tool: str, step: str) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    try:
        json.dumps(value)
    except TypeError:
        raise ProgramError(step, f"tool {tool} returned a {type(value).__name__}, which a durable run cannot journal; "
                                 f"return JSON data (str, numbers, lists, dicts) or a pydantic model") from None
    return value


# ---------------------------------------------------------------------- resuming
def resume_workflows(workflow, meta: dict[str, Any]) -> dict[str, CompiledWorkflow]:
    """The workflows a resume runs, by name: those given, else the run's stored `target`."""
    from agentrt.graph.workflow import Workflow
    if workflow is None:
        target = meta.get("target")
        if not target:
            raise ValueError("this run stored no workflow target: pass the workflow to resume()")
        from agentrt.graph.target import load_workflow
        workflow = load_workflow(target)
    given = [workflow] if isinstance(workflow, (Workflow, CompiledWorkflow)) else list(workflow)
    compiled = [w.compile() if isinstance(w, Workflow) else w for w in given]
    return {w.name: w for w in compiled}


def check_unchanged(record, wf: CompiledWorkflow | None, journal: RunJournal) -> None:
    """ValueError unless `wf` is the workflow the program started with (a finished program is
    only reported, so its workflow may be gone)."""
    if wf is None:
        if record.finished:
            return
        raise ValueError(f"program {record.program_id} of run {record.run_id} runs workflow {record.workflow!r}, "
                         f"which was not given to resume")
    description, fp = journal.identity(wf)
    if fp != record.fingerprint and not record.finished:
        from agentrt.graph.identity import changes
        what = changes(record.description, description) or ["its description differs"]
        raise ValueError(f"workflow {record.workflow!r} has changed since run {record.run_id} started, so its "
                         f"programs cannot resume: {'; '.join(what)}")


def finished_result(record, wf: CompiledWorkflow | None):
    """The ProgramResult a finished program ended with, from the store."""
    from agentrt.runtime.events import ProgramResult
    r = dict(record.result)
    r.pop("hit_rate", None)
    if wf is not None:
        r["state"] = wf.state.model_validate(r["state"])
        r["output"] = getattr(r["state"], wf.output) if wf.output else None
    return ProgramResult(**r)
