"""What the scheduler asks of a program's graph at its current frontier (the steps running or
about to run): how far each agent is from its next turn, how many turns remain, and which
agent a tool step hands back to."""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from functools import lru_cache

from pydantic import BaseModel

from agentrt.graph.steps import END, LLMStep

LoopCounts = Mapping[tuple[str, str], int]     # (branch source, back-edge target) -> times taken


class GraphAnalysis:
    def __init__(self, workflow):
        self.wf = workflow
        self.graph = workflow.graph
        self._expect = _Expectation(workflow, None, memo=1 << 16)   # shared by every program (no state read)

    # ------------------------------------------------------------------ positions
    @property
    def entry(self) -> str:
        return self.wf.entry

    def has_step(self, step: str) -> bool:
        return step in self.wf.steps

    def frontier_after(self, step: str) -> list[str]:
        """Where the program stands once `step` ended and nothing else runs: the step that
        follows a plain step; a branch or fan-out source itself (its routing comes next)."""
        if step in self.wf.branches or step in self.wf.fan_outs:
            return [step]
        return [self.wf.next_step(step)]

    def agent_of(self, step: str) -> str | None:
        return getattr(self.wf.steps.get(step), "agent", None)

    # ------------------------------------------------------------------ distances
    def _open_successors(self, node: str, loop_counts: LoopCounts) -> list[str]:
        out = []
        for succ in self.graph.successors(node):
            if (node, succ) in self.wf.loop_edges and \
                    loop_counts.get((node, succ), 0) >= self.wf.branches[node].max_loops:
                continue                                    # this loop is used up
            out.append(succ)
        return out

    def distances(self, frontier: Iterable[str], loop_counts: LoopCounts | None = None) -> dict[str, int]:
        """Steps from the frontier to every step it can still reach (frontier steps are 0)."""
        counts = loop_counts or {}
        dist = {n: 0 for n in frontier}
        todo = deque(dist)
        while todo:
            node = todo.popleft()
            for succ in self._open_successors(node, counts):
                if succ not in dist:
                    dist[succ] = dist[node] + 1
                    todo.append(succ)
        return dist

    def steps_to_execution(self, frontier: Iterable[str],
                           loop_counts: LoopCounts | None = None) -> dict[str, int]:
        """For every agent that can still run: steps until its next turn (0 = running now).
        Agents the program cannot reach any more are absent."""
        best: dict[str, int] = {}
        for node, d in self.distances(frontier, loop_counts).items():
            step = self.wf.steps.get(node)
            if isinstance(step, LLMStep) and d < best.get(step.agent, 1 << 30):
                best[step.agent] = d
        return best

    def next_agents(self, step: str, loop_counts: LoopCounts | None = None) -> tuple[str, ...]:
        """The agents of the nearest agent turns after `step` (e.g. who reads a tool's result)."""
        counts = loop_counts or {}
        seen, layer = {step}, [step]
        while layer:
            nxt = []
            for node in layer:
                nxt.extend(s for s in self._open_successors(node, counts) if s not in seen)
            seen.update(nxt)
            agents = sorted({self.wf.steps[n].agent for n in nxt if isinstance(self.wf.steps.get(n), LLMStep)})
            if agents:
                return tuple(agents)
            layer = nxt
        return ()

    # ------------------------------------------------------------------ remaining turns
    def expected_remaining_turns(self, frontier: Iterable[str], state: BaseModel | None = None,
                                 loop_counts: LoopCounts | None = None) -> float:
        """Expected agent turns left, counting the frontier's own: branch targets are equally
        likely unless the branch gives weights, loops run at most their remaining bound, a
        fan-out runs once per item (or `expected_items` before the list is known)."""
        counts = tuple(sorted((loop_counts or {}).items()))
        # the expectation reads the state only for fan-out sizes; without one it is the same for
        # every program at the same place, so it is remembered across calls
        expect = self._expect if state is None else _Expectation(self.wf, state)
        total, joins = 0.0, set()
        for node in frontier:
            fan = self.wf.fan_out_of(node)
            if fan is None:
                total += expect(node, END, counts)
            else:
                total += expect(node, fan.join, counts)
                joins.add(fan.join)
        return total + sum(expect(j, END, counts) for j in joins)


class _Expectation:
    """E[turns from `node` until `stop`], memoised per (node, stop, loop counts)."""

    def __init__(self, wf, state: BaseModel | None, memo: int | None = None):
        self.wf, self.state = wf, state
        self._memo = lru_cache(maxsize=memo)(self._expect)

    def __call__(self, node: str, stop: str, counts: tuple) -> float:
        return self._memo(node, stop, counts)

    def _turns(self, node: str) -> float:
        step = self.wf.steps[node]
        return self.wf.agents[step.agent].turns_estimate if isinstance(step, LLMStep) else 0.0

    def _expect(self, node: str, stop: str, counts: tuple) -> float:
        if node in (END, stop):
            return 0.0
        wf, turns = self.wf, self._turns(node)
        if node in wf.fan_outs:
            fan = wf.fan_outs[node]
            items = len(getattr(self.state, fan.over)) if self.state is not None else fan.expected_items
            return turns + items * self(fan.to, fan.join, counts) + self(fan.join, stop, counts)
        if node in wf.branches:
            return turns + self._branch(wf.branches[node], stop, counts)
        return turns + self(wf.next_step(node), stop, counts)

    def _branch(self, branch, stop: str, counts: tuple) -> float:
        taken = dict(counts)
        weights = branch.weights or {}
        total_w = sum(weights.get(t, 1.0) for t in branch.targets) or 1.0
        value = 0.0
        for target in branch.targets:
            p = weights.get(target, 1.0) / total_w
            edge = (branch.source, target)
            if edge in self.wf.loop_edges:
                if taken.get(edge, 0) >= branch.max_loops:
                    target = branch.exit or next(t for t in branch.targets if (branch.source, t) not in self.wf.loop_edges)
                else:
                    after = {**taken, edge: taken.get(edge, 0) + 1}
                    value += p * self(target, stop, tuple(sorted(after.items())))
                    continue
            value += p * self(target, stop, counts)
        return value
