"""`agentrt bench cluster`: the router policies side by side on the SWE-agent workload, over N
engine replicas: simulated (N in-process replicas on one virtual clock, agentrt.cluster.sim) or
real (Ray actors behind the OpenAI endpoint, agentrt.bench.cluster_real).

Method: the same seeded episodes (agentrt.bench.swe) for every router; a fresh set of replicas
(empty caches, same engine policy) per router; routers interleaved across runs. Per router: mean,
p50 and p95 JCT (arrival to the end of the last turn), throughput (output tokens per second over
the run's makespan), prefix-cache hit rate (cached / prompt tokens), prefill tokens (prompt tokens
computed, not read from a cache: new context plus recomputed context), and
the load balance: each replica's compute (the simulated runner's busy seconds; for real replicas
the prompt tokens computed plus the tokens generated), max over mean.
Targets (issue 16, 64 replicas under load): program mean JCT >= 1.3x prefix and >= 2x round-robin,
throughput within 5% of the best router, no replica above 1.5x the mean load.
"""
from __future__ import annotations

import asyncio
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentrt.bench.swe import SweProgram, SweShape, swe_programs
from agentrt.cluster.router import POLICIES, Router, RouterConfig, token_blocks
from agentrt.engine.params import SamplingParams
from agentrt.runtime.events import quantile
from agentrt.server.programs import ProgramIds

AGENT = "engineer"
Log = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class ProgramTime:
    program_id: str
    arrival_s: float
    jct_s: float
    turns: int


@dataclass(slots=True)
class ClusterRun:
    """One run of one router: per-program times and per-replica figures."""
    router: str
    run: int
    programs: list[ProgramTime]
    makespan_s: float
    output_tokens: int
    prompt_tokens: int
    cached_tokens: int
    replica_load: dict[str, float]          # replica -> compute (busy seconds, or tokens computed)
    replica_requests: dict[str, int]
    moves: int = 0
    failovers: int = 0
    errors: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        jcts = sorted(p.jct_s for p in self.programs)
        loads = list(self.replica_load.values())
        mean_load = statistics.fmean(loads) if loads else 0.0
        return {"mean_jct_s": statistics.fmean(jcts) if jcts else 0.0, "p50_jct_s": quantile(jcts, 0.5),
                "p95_jct_s": quantile(jcts, 0.95), "programs": len(jcts), "makespan_s": self.makespan_s,
                "output_tokens_per_s": self.output_tokens / self.makespan_s if self.makespan_s else 0.0,
                "hit_rate": self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0,
                "prefill_tokens": self.prompt_tokens - self.cached_tokens,
                "max_over_mean_load": max(loads) / mean_load if mean_load else 0.0,
                "moves": self.moves, "failovers": self.failovers, "errors": len(self.errors)}


def parse_routers(spec: str) -> list[str]:
    names = list(dict.fromkeys(n.strip() for n in spec.split(",") if n.strip()))
    bad = [n for n in names if n not in POLICIES]
    if bad or not names:
        raise ValueError(f"unknown router {', '.join(bad) or repr(spec)}; choose from {', '.join(POLICIES)}")
    return names


def medians(runs: Sequence[ClusterRun]) -> dict[str, float]:
    per = [r.figures() for r in runs]
    return {k: statistics.median(f[k] for f in per) for k in per[0]}


def targets(table: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Issue 16's targets on the median figures of each router (those present)."""
    out = []
    prog = table.get("program")
    if prog is None:
        return out
    for other, bound in (("prefix", 1.3), ("round-robin", 2.0)):
        if other in table and prog["mean_jct_s"]:
            ratio = table[other]["mean_jct_s"] / prog["mean_jct_s"]
            out.append({"target": f"program mean JCT >= {bound}x {other}", "ratio": ratio, "met": ratio >= bound})
    best = max(f["output_tokens_per_s"] for f in table.values())
    share = prog["output_tokens_per_s"] / best if best else 0.0
    out.append({"target": "program throughput within 5% of the best", "ratio": share, "met": share >= 0.95})
    out.append({"target": "program: no replica above 1.5x the mean load", "ratio": prog["max_over_mean_load"],
                "met": prog["max_over_mean_load"] <= 1.5})
    return out


# ------------------------------------------------------------------------------------------ episodes as tokens
@dataclass(frozen=True, slots=True)
class TokenEpisode:
    """An episode with token ids: the shared system prompt and issue, each tool result."""
    program: SweProgram
    opening: tuple[int, ...]                 # system prompt + issue
    results: tuple[tuple[int, ...], ...]     # per turn: the tool's output


def token_episodes(shape: SweShape, vocab: int = 256) -> list[TokenEpisode]:
    """`shape`'s episodes with synthetic token ids (one id per word of the text version): every
    program shares the system prompt's ids and has its own issue and tool outputs."""
    system = _ids(random.Random(1234), round(shape.system_tokens * shape.scale), vocab)
    out = []
    for p in swe_programs(shape):
        rng = random.Random(f"{shape.seed}-{p.program_id}")
        opening = system + _ids(rng, len(p.task.split()), vocab)
        out.append(TokenEpisode(p, tuple(opening), tuple(tuple(_ids(rng, t.result_tokens, vocab)) for t in p.turns)))
    return out


def _ids(rng: random.Random, n: int, vocab: int) -> list[int]:
    return [rng.randrange(vocab) for _ in range(max(1, n))]
