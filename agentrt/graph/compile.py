"""Compile a Workflow: check every reference, template and loop, and build the Agent Step Graph
(a networkx.DiGraph whose nodes are steps plus END)."""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
from pydantic import BaseModel, ValidationError

from agentrt.graph.state import Reducer, accepts_text, is_list_type, reducers_of, template_fields
from agentrt.graph.steps import END, Agent, Branch, FanOut, FunctionStep, LLMStep, Step, ToolStep
from agentrt.graph.workflow import Workflow, WorkflowError
from agentrt.tools import Tool


@dataclass(slots=True, eq=False)
class CompiledWorkflow:
    """A checked workflow: what the runtime walks and the scheduler analyses."""
    name: str
    state: type[BaseModel]
    output: str | None
    on_tool_error: str
    description: str
    agents: dict[str, Agent]
    tools: dict[str, Tool]
    steps: dict[str, Step]
    edges: dict[str, str]
    branches: dict[str, Branch]
    fan_outs: dict[str, FanOut]
    entry: str
    graph: nx.DiGraph
    reducers: dict[str, Reducer]
    body_of: dict[str, str] = field(default_factory=dict)      # step -> fan-out source it runs under
    loop_edges: frozenset = frozenset()                        # (source, target) back edges

    def initial_state(self, inputs: Mapping[str, Any] | BaseModel | None = None) -> BaseModel:
        """The state a program starts from; raises ValueError naming the bad field."""
        if isinstance(inputs, self.state):
            return inputs
        unknown = [k for k in dict(inputs or {}) if k not in self.state.model_fields]
        if unknown:
            hint = difflib.get_close_matches(unknown[0], self.state.model_fields, n=1)
            raise ValueError(f"input has no field {unknown[0]!r} in {self.state.__name__}"
                             f"{f' (did you mean {hint[0]!r}?)' if hint else ''}; "
                             f"fields: {', '.join(self.state.model_fields)}")
        try:
            return self.state.model_validate(dict(inputs or {}))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "input"
            raise ValueError(f"input does not match {self.state.__name__}: {where}: {err['msg']}"
                             f" (fields: {', '.join(self.state.model_fields)})") from None

    def fan_out_of(self, step: str) -> FanOut | None:
        source = self.body_of.get(step)
        return self.fan_outs[source] if source else None

    def next_step(self, step: str) -> str:
        """Where a plain step goes (END when nothing follows, the join at a branch's end)."""
        if step in self.edges:
            return self.edges[step]
        fan = self.fan_out_of(step)
        return fan.join if fan else END

    @property
    def analysis(self):
        from agentrt.graph.analysis import GraphAnalysis
        return GraphAnalysis(self)


def compile_workflow(wf: Workflow) -> CompiledWorkflow:
    problems = list(wf.problems)
    check = _Checker(wf, problems)
    check.references()
    body_of = check.fan_outs()
    if not problems:
        check.templates_and_outputs(body_of)
    if problems:                        # the graph needs every name to resolve
        raise WorkflowError(wf.name, problems)
    graph = _build_graph(wf, body_of)
    loops = check.loops(graph)
    check.reachable(graph)
    if problems:
        raise WorkflowError(wf.name, problems)
    return CompiledWorkflow(
        wf.name, wf.state, wf.output, wf.on_tool_error, wf.description, dict(wf.agents),
        dict(wf.tools), dict(wf.steps), dict(wf.edges), dict(wf.branches), dict(wf.fan_outs),
        wf.entry, graph, reducers_of(wf.state), body_of, loops)


def _build_graph(wf: Workflow, body_of: dict[str, str]) -> nx.DiGraph:
    g = nx.DiGraph(name=wf.name)
    for name, step in wf.steps.items():
        g.add_node(name, kind=step.kind, agent=getattr(step, "agent", None),
                   tool=getattr(step, "tool", None), fan_out=body_of.get(name))
    g.add_node(END, kind="end", agent=None, tool=None, fan_out=None)
    for name in wf.steps:
        if name in wf.edges:
            g.add_edge(name, wf.edges[name], kind="edge")
        elif name in wf.branches:
            for target in wf.branches[name].targets:
                g.add_edge(name, target, kind="branch")
        elif name in wf.fan_outs:
            g.add_edge(name, wf.fan_outs[name].to, kind="fan_out", over=wf.fan_outs[name].over)
        elif name in body_of:
            g.add_edge(name, wf.fan_outs[body_of[name]].join, kind="join")
        else:
            g.add_edge(name, END, kind="end")
    return g


class _Checker:
    def __init__(self, wf: Workflow, problems: list[str]):
        self.wf, self.problems = wf, problems
        self.fields = wf.state.model_fields
        self.reducers = reducers_of(wf.state)

    def _step_ref(self, name: str, where: str) -> bool:
        if name == END or name in self.wf.steps:
            return True
        hint = difflib.get_close_matches(name, self.wf.steps, n=1)
        fix = f"did you mean {hint[0]!r}?" if hint else f"declare it (steps: {', '.join(self.wf.steps)})"
        self.problems.append(f"{where} refers to unknown step {name!r}; {fix}")
        return False

    def _field_hint(self, name: str, among: list[str] | None = None) -> str:
        among = list(self.fields) if among is None else among
        hint = difflib.get_close_matches(name, among, n=1)
        return f"did you mean {hint[0]!r}?" if hint else f"use one of: {', '.join(among) or 'none'}"

    def references(self) -> None:
        wf = self.wf
        if not wf.steps:
            self.problems.append("it has no steps; add one with llm(), tool() or python()")
            return
        self._step_ref(wf.entry, "start()")
        for source, target in wf.edges.items():
            self._step_ref(source, f"edge {source!r} -> {target!r}")
            self._step_ref(target, f"edge {source!r} -> {target!r}")
        for b in wf.branches.values():
            self._step_ref(b.source, f"branch after {b.source!r}")
            for t in b.targets:
                self._step_ref(t, f"branch after {b.source!r}")
            if b.exit is not None and self._step_ref(b.exit, f"branch after {b.source!r} (exit)") \
                    and b.exit not in b.targets:
                self.problems.append(f"branch after {b.source!r}: exit {b.exit!r} must be one of its targets")
        for name, step in wf.steps.items():
            if isinstance(step, LLMStep) and step.agent not in wf.agents:
                self.problems.append(f"step {name!r} uses unknown agent {step.agent!r}; pass the Agent "
                                     f"object or add it with add_agent() (agents: {', '.join(wf.agents) or 'none'})")
            if isinstance(step, ToolStep) and step.tool not in wf.tools:
                self.problems.append(f"step {name!r} calls unknown tool {step.tool!r}; pass the function "
                                     f"or add it with add_tool() (tools: {', '.join(wf.tools) or 'none'})")
        if wf.output is not None and wf.output not in self.fields:
            self.problems.append(f"output {wf.output!r} is not a field of {wf.state.__name__}; "
                                 f"{self._field_hint(wf.output)}")

    def fan_outs(self) -> dict[str, str]:
        body_of: dict[str, str] = {}
        for fan in self.wf.fan_outs.values():
            where = f"fan-out after {fan.source!r}"
            if not (self._step_ref(fan.to, where) and self._step_ref(fan.join, where)):
                continue
            if fan.over not in self.fields:
                lists = [f for f, info in self.fields.items() if is_list_type(info.annotation)]
                self.problems.append(f"{where} is over {fan.over!r}, which is not a field of "
                                     f"{self.wf.state.__name__}; {self._field_hint(fan.over, lists)}")
            elif not is_list_type(self.fields[fan.over].annotation):
                self.problems.append(f"{where} is over {fan.over!r}, a {_type_name(self.fields[fan.over].annotation)}"
                                     f", not a list; declare it as list[...] or fan out over another field")
            if fan.item in self.fields:
                self.problems.append(f"{where}: item name {fan.item!r} shadows a state field; pick another item=")
            for step in self._body(fan):
                if step in body_of:
                    self.problems.append(f"step {step!r} is inside two fan-outs; nested fan-out is not supported")
                body_of[step] = fan.source
        return body_of

    def _body(self, fan: FanOut) -> list[str]:
        """Steps reachable from `to` without passing through `join`."""
        seen, todo = [], [fan.to]
        while todo:
            name = todo.pop()
            if name in seen or name in (fan.join, END) or name not in self.wf.steps:
                continue
            if name == fan.source:
                self.problems.append(f"fan-out after {fan.source!r} loops back to its own source; "
                                     f"branches must end at the join {fan.join!r}")
                continue
            seen.append(name)
            todo.extend(self._successors(name))
        return seen

    def _successors(self, name: str) -> list[str]:
        wf = self.wf
        if name in wf.edges:
            return [wf.edges[name]]
        if name in wf.branches:
            return list(wf.branches[name].targets)
        if name in wf.fan_outs:
            return [wf.fan_outs[name].to, wf.fan_outs[name].join]
        return []

    def templates_and_outputs(self, body_of: dict[str, str]) -> None:
        locals_in: dict[str, set[str]] = {}
        for step, source in body_of.items():
            fan = self.wf.fan_outs[source]
            names = locals_in.setdefault(source, {fan.item})
            out = self.wf.steps[step].output
            if out and out not in self.fields:
                names.add(out)
        for name, step in self.wf.steps.items():
            scope = set(self.fields) | locals_in.get(body_of.get(name), set())
            for text, what in _templates(step):
                try:
                    missing = [f for f in template_fields(text) if f not in scope]
                except ValueError as exc:
                    self.problems.append(f"step {name!r}: {what}: {exc}")
                    continue
                for f in dict.fromkeys(missing):
                    self.problems.append(f"step {name!r}: {what} uses {{{f}}}, which is not a field of "
                                         f"{self.wf.state.__name__}{' or a branch name' if name in body_of else ''}"
                                         f" (fields: {', '.join(sorted(scope))})")
            self._output(name, step, body_of)

    def _output(self, name: str, step: Step, body_of: dict[str, str]) -> None:
        out, in_body = step.output, name in body_of
        if out is None:
            return
        if out not in self.fields:
            if not in_body:
                self.problems.append(f"step {name!r} writes {out!r}, which is not a field of "
                                     f"{self.wf.state.__name__}; add the field or change output=")
            elif not (self._read_later_in_branch(name, out, body_of) or self._named_outside(name, out, body_of)):
                self.problems.append(self._unread_branch_local(name, out))
            return
        reducer = self.reducers.get(out)
        if in_body and reducer is None:
            self.problems.append(f"step {name!r} runs in a fan-out and writes {out!r}, which has no reducer, "
                                 f"so branches would overwrite each other; declare it Annotated[list[...], "
                                 f"append] or write to a branch-local name")
        if isinstance(step, LLMStep) and step.parse is None \
                and not accepts_text(self.fields[out].annotation, reducer):
            self.problems.append(f"step {name!r} writes the model's text (str) into {out!r} "
                                 f"({_type_name(self.fields[out].annotation)}); give parse= to convert it")

    def _unread_branch_local(self, name: str, local: str) -> str:
        state = self.wf.state.__name__
        hint = difflib.get_close_matches(local, self.fields, n=1)
        fix = f"did you mean {hint[0]!r}?" if hint else f"add the field to {state} or change output="
        return (f"step {name!r} runs in a fan-out and writes {local!r}, which is not a field of {state} and "
                f"which no later step of its branch reads, so it would be dropped at the join; {fix} "
                f"(a name that is not a state field is branch-local: it must be read by a later step of "
                f"the same branch)")

    def _read_later_in_branch(self, name: str, local: str, body_of: dict[str, str]) -> bool:
        """Whether a step or router that runs after `name` in its fan-out branch may read `local`."""
        later = self._later_in_branch(name, body_of)
        if any(s in self.wf.branches for s in (name, *later)):     # a router is code: it may
            return True
        return any(_may_read(self.wf.steps[s], local) for s in later)

    def _named_outside(self, name: str, local: str, body_of: dict[str, str]) -> bool:
        """Whether a template outside `name`'s branch names `local`: that template is reported
        already (the name is out of scope there), one problem for one mistake."""
        return any(_names_in_templates(step, local) for s, step in self.wf.steps.items()
                   if body_of.get(s) != body_of[name])

    def _later_in_branch(self, name: str, body_of: dict[str, str]) -> list[str]:
        """The steps of `name`'s fan-out branch that can run after it (itself too, in a loop)."""
        source, seen, todo = body_of[name], [], self._successors(name)
        while todo:
            step = todo.pop()
            if step not in seen and body_of.get(step) == source:
                seen.append(step)
                todo.extend(self._successors(step))
        return seen

    def loops(self, graph: nx.DiGraph) -> frozenset:
        # The branch edges that close a loop count its rounds. A branch inside a loop, or an inner
        # loop's way out, leads back to its source only by going round another loop: not one.
        closing = _closing_edges(graph, [self.wf.entry, *self.wf.steps], self.wf.branches)
        cut = graph.copy()
        cut.remove_edges_from(closing)
        loops, unbounded = set(), set()
        for b in self.wf.branches.values():
            back = [t for t in b.targets if t != END and
                    ((b.source, t) in closing or nx.has_path(cut, t, b.source))]
            if not back:
                continue
            if b.max_loops is None:
                self.problems.append(f"branch after {b.source!r} loops back to {back[0]!r} with no bound; "
                                     f"pass max_loops=N (and exit= if it has several other targets)")
                unbounded.update((b.source, t) for t in back)     # reported here, not as an edge() loop
                continue
            forward = [t for t in b.targets if t not in back]
            if not forward:
                self.problems.append(f"branch after {b.source!r}: every target ({', '.join(back)}) loops "
                                     f"back; add a way out of the loop (END or a later step) to take once "
                                     f"max_loops is reached")
            elif b.exit is None and len(forward) != 1:
                self.problems.append(f"branch after {b.source!r} loops; say where it goes once max_loops is "
                                     f"reached with exit= (one of {', '.join(forward) or 'its targets'})")
            elif b.exit is not None and b.exit in back:
                self.problems.append(f"branch after {b.source!r}: exit {b.exit!r} loops back too; pick a "
                                     f"target that leaves the loop")
            loops.update((b.source, t) for t in back)
        acyclic = graph.copy()
        acyclic.remove_edges_from(loops | unbounded)
        try:
            cycle = nx.find_cycle(acyclic)
            path = " -> ".join([u for u, _ in cycle] + [cycle[0][0]])
            self.problems.append(f"steps {path} form a loop with no bound; close it with "
                                 f"branch(..., max_loops=N) instead of edge()")
        except nx.NetworkXNoCycle:
            pass
        return frozenset(loops)

    def reachable(self, graph: nx.DiGraph) -> None:
        seen = nx.descendants(graph, self.wf.entry) | {self.wf.entry}
        for name in self.wf.steps:
            if name not in seen:
                self.problems.append(f"step {name!r} is unreachable from the start {self.wf.entry!r}; "
                                     f"connect it with edge()/branch()/fan_out() or remove it")


def _closing_edges(graph: nx.DiGraph, roots: list[str], branches) -> set[tuple[str, str]]:
    """The branch edges that close a loop: a back edge that is a branch edge; for a loop closed
    by a plain edge (review -> revise -> review), the branch edges that lead to it with no other
    branch on the way."""
    back = _back_edges(graph, roots)
    closing = {(u, v) for u, v in back if u in branches}
    for u, head in back:
        if u in branches:
            continue
        seen, todo = set(), [u]
        while todo:
            node = todo.pop()
            if node in seen or node == head:
                continue
            seen.add(node)
            for pred in graph.predecessors(node):
                if not nx.has_path(graph, node, pred):
                    continue                              # enters the loop from outside
                if pred in branches:
                    closing.add((pred, node))
                else:
                    todo.append(pred)
    return closing


def _back_edges(graph: nx.DiGraph, roots: list[str]) -> set[tuple[str, str]]:
    """The edges a depth-first walk from `roots` (the entry first) finds going back to a step on
    its current path: every loop has one."""
    back: set[tuple[str, str]] = set()
    on_path: set[str] = set()
    done: set[str] = set()
    for root in roots:
        if root in done or root not in graph:
            continue
        on_path.add(root)
        stack = [(root, iter(graph.successors(root)))]
        while stack:
            node, succs = stack[-1]
            for succ in succs:
                if succ in on_path:
                    back.add((node, succ))
                elif succ not in done:
                    on_path.add(succ)
                    stack.append((succ, iter(graph.successors(succ))))
                    break
            else:
                stack.pop()
                on_path.discard(node)
                done.add(node)
    return back


def _templates(step: Step) -> list[tuple[str, str]]:
    if isinstance(step, LLMStep) and isinstance(step.prompt, str):
        return [(step.prompt, "prompt")]
    if isinstance(step, ToolStep):
        return [(v, f"argument {k!r}") for k, v in step.args.items() if isinstance(v, str)]
    return []


def _may_read(step: Step, name: str) -> bool:
    """Whether `step` may read the scope name `name`: a template of it names it, or it runs code
    over the scope (a Python step, a callable prompt or tool argument) that may."""
    if isinstance(step, FunctionStep) or (isinstance(step, LLMStep) and callable(step.prompt)):
        return True
    if isinstance(step, ToolStep) and any(callable(v) for v in step.args.values()):
        return True
    return _names_in_templates(step, name)


def _names_in_templates(step: Step, name: str) -> bool:
    for text, _ in _templates(step):
        try:
            if name in template_fields(text):
                return True
        except ValueError:              # a malformed template is reported on its own
            continue
    return False


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) if isinstance(annotation, type) else str(annotation).replace("typing.", "")
