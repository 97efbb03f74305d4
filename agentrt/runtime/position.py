"""A program's position as data: where its walk stands, what its bounded loops have used, the
lanes of a fan-out in flight, and every agent's conversation as of the last finished step.

The walker advances this record at each step boundary (never in the middle of a step), so a
record taken between steps describes a program that can be rebuilt and run on to the same end.
It round-trips through JSON (`to_dict` / `from_dict`); values in it (branch-local names, reducer
writes) must be JSON-able, or `to_dict` says which one is not.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

LoopKey = tuple[str, str]                  # (branch source, back-edge target)


@dataclass(slots=True)
class Lane:
    """One branch of a fan-out: its next step (the join once done), its item and branch-local
    names, its reducer writes (merged at the join, in item order) and its own loop counts.
    `state` is the branch's view (the program's state plus its writes), rebuilt on restore."""
    key: str                               # "<fan-out source>[<item index>]"
    node: str
    locals: dict[str, Any]
    deltas: list[tuple[str, Any]] = field(default_factory=list)
    loop_counts: dict[LoopKey, int] = field(default_factory=dict)
    state: BaseModel | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "node": self.node, "locals": self.locals,
                "deltas": [[name, value] for name, value in self.deltas],
                "loop_counts": _loops_out(self.loop_counts)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Lane":
        return cls(d["key"], d["node"], dict(d["locals"]), [(n, v) for n, v in d["deltas"]],
                   _loops_in(d["loop_counts"]))


@dataclass(slots=True)
class Position:
    """`node`: the step to run next (END: finished); during a fan-out, its source step, with
    `lanes` set until the join."""
    node: str
    loop_counts: dict[LoopKey, int] = field(default_factory=dict)
    lanes: list[Lane] | None = None
    conversations: dict[tuple[str, str], list[dict[str, str]]] = field(default_factory=dict)
    steps: int = 0                         # steps finished
    visits: dict[str, int] = field(default_factory=dict)   # "<lane>|<step>" -> times it finished there

    def frontier(self) -> list[str]:
        """Steps to run next: the lanes' that are not done, else the node."""
        if self.lanes is None:
            return [self.node]
        return [lane.node for lane in self.lanes]

    def to_dict(self) -> dict[str, Any]:
        d = {"node": self.node, "loop_counts": _loops_out(self.loop_counts),
             "lanes": None if self.lanes is None else [lane.to_dict() for lane in self.lanes],
             "conversations": [[agent, lane, messages] for (agent, lane), messages in self.conversations.items()],
             "steps": self.steps, "visits": dict(self.visits)}
        _check_json(d)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Position":
        lanes = None if d["lanes"] is None else [Lane.from_dict(x) for x in d["lanes"]]
        conversations = {(agent, lane): [dict(m) for m in messages] for agent, lane, messages in d["conversations"]}
        return cls(d["node"], _loops_in(d["loop_counts"]), lanes, conversations, d["steps"], dict(d.get("visits", {})))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "Position":
        return cls.from_dict(json.loads(text))


def _loops_out(counts: dict[LoopKey, int]) -> list[list]:
    return [[src, dst, n] for (src, dst), n in sorted(counts.items())]


def _loops_in(items: list[list]) -> dict[LoopKey, int]:
    return {(src, dst): n for src, dst, n in items}


def _check_json(d: dict[str, Any]) -> None:
    try:
        json.dumps(d)
    except TypeError as exc:
        raise TypeError(f"a program's position must be JSON-able to be saved: {exc} (branch-local values and "
                        f"reducer writes are kept in it)") from None
