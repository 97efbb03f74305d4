"""Program graphs for fronts that see requests, not a DSL workflow (the scheduler's ProgramGraph).

* `NodeGraph`: a node graph from the client (a LangGraph graph's nodes and edges, or the
  `program_graph` field of a request): agents are the nodes that call the model, the others
  (tool nodes) run between them. A step is a node; the frontier is the node running now.
* `SessionGraph`: for programs that say nothing about their shape. Every agent seen so far is
  one step away (it may be called again) until the program ends; one more turn is expected.
  That is what a request-level front knows, and it is enough for Continuum's pins, program
  order and agentrt's next-use ranking to treat the program as live.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable, Mapping
from typing import Any

END_NODES = frozenset({"__end__", "END", "end"})
START_NODES = frozenset({"__start__", "START", "start"})


class NodeGraph:
    def __init__(self, edges: Iterable[tuple[str, str]], *, entry: str | None = None,
                 agents: Collection[str] | None = None):
        self.succ: dict[str, list[str]] = {}
        nodes: list[str] = []
        for a, b in edges:
            for n in (a, b):
                if n not in self.succ:
                    self.succ[n] = []
                    nodes.append(n)
            if b not in self.succ[a]:
                self.succ[a].append(b)
        if not nodes:
            raise ValueError("a program graph needs at least one edge")
        starts = [n for n in nodes if n in START_NODES]
        self.entry = entry or (self.succ[starts[0]][0] if starts and self.succ[starts[0]] else nodes[0])
        if self.entry not in self.succ:
            raise ValueError(f"entry {self.entry!r} is not a node of the graph")
        inner = [n for n in nodes if n not in START_NODES and n not in END_NODES]
        self.agents = frozenset(agents) if agents is not None else frozenset(n for n in inner if "tool" not in n.lower())
        unknown = self.agents - set(inner)
        if unknown:
            raise ValueError(f"agents {sorted(unknown)} are not nodes of the graph")

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> "NodeGraph":
        """From `{"edges": [[a, b], ...], "entry": "agent", "agents": ["agent"]}` (a request's
        `program_graph`); ValueError says what is wrong."""
        edges = spec.get("edges")
        if not isinstance(edges, list) or not all(isinstance(e, (list, tuple)) and len(e) == 2
                                                  and all(isinstance(x, str) for x in e) for e in edges):
            raise ValueError("program_graph.edges must be a list of [source, target] node names")
        agents = spec.get("agents")
        if agents is not None and not (isinstance(agents, list) and all(isinstance(a, str) for a in agents)):
            raise ValueError("program_graph.agents must be a list of node names")
        entry = spec.get("entry")
        if entry is not None and not isinstance(entry, str):
            raise ValueError("program_graph.entry must be a node name")
        return cls([tuple(e) for e in edges], entry=entry, agents=agents)

    def spec(self) -> dict[str, Any]:
        return {"entry": self.entry, "agents": sorted(self.agents),
                "edges": [[a, b] for a, bs in self.succ.items() for b in bs]}

    # ---------------------------------------------------------------- ProgramGraph
    def has_step(self, step: str) -> bool:
        return step in self.succ

    def agent_of(self, step: str) -> str | None:
        return step if step in self.agents else None

    def frontier_after(self, step: str) -> list[str]:
        nxt = [n for n in self.succ.get(step, ()) if n not in END_NODES]
        return nxt[:1] if nxt else []

    def _distances(self, frontier: Iterable[str]) -> dict[str, int]:
        dist = {n: 0 for n in frontier if n in self.succ}
        todo = deque(dist)
        while todo:
            node = todo.popleft()
            for s in self.succ[node]:
                if s not in dist:
                    dist[s] = dist[node] + 1
                    todo.append(s)
        return dist

    def steps_to_execution(self, frontier: Collection[str], loop_counts=None) -> dict[str, int]:
        return {n: d for n, d in self._distances(frontier).items() if n in self.agents}

    def expected_remaining_turns(self, frontier: Collection[str], state=None, loop_counts=None) -> float:
        """Agent turns still reachable, each counted once (a lower bound on a cyclic graph)."""
        return float(len(self.steps_to_execution(frontier)))

    def next_agents(self, step: str, loop_counts=None) -> tuple[str, ...]:
        seen, layer = {step}, [step]
        while layer:
            found = [n for n in layer if n in self.agents and n != step]
            if found:
                return tuple(dict.fromkeys(found))
            nxt = []
            for n in layer:
                for s in self.succ.get(n, ()):
                    if s not in seen:
                        seen.add(s)
                        nxt.append(s)
            layer = nxt
        return ()


class SessionGraph:
    entry = "session"

    def __init__(self) -> None:
        self.agents: set[str] = set()

    def saw(self, agent: str) -> None:
        self.agents.add(agent)

    def has_step(self, step: str) -> bool:
        return True

    def agent_of(self, step: str) -> str | None:
        return step if step in self.agents else None

    def frontier_after(self, step: str) -> list[str]:
        return [self.entry]

    def steps_to_execution(self, frontier: Collection[str], loop_counts=None) -> dict[str, int]:
        return {a: 0 if a in frontier else 1 for a in self.agents}

    def expected_remaining_turns(self, frontier: Collection[str], state=None, loop_counts=None) -> float:
        return 1.0

    def next_agents(self, step: str, loop_counts=None) -> tuple[str, ...]:
        return (step,) if step in self.agents else ()
