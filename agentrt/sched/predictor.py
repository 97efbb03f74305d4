"""Tool-pause predictor and Continuum's pin-TTL rule.

Per tool, the pause a program spends waiting on a tool call is modelled by a weighted empirical
distribution: the last `window` observed durations (weight 1 each) plus a prior worth
`prior_weight` pseudo-observations, spread over a few log-normal quantile points. The prior is
centred on the tool's hint (the DSL's expected duration) when one is set, else on a global
default; as real observations arrive they outweigh it.

All durations and costs are in seconds.
"""
from __future__ import annotations

import json
import math
import threading
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from statistics import NormalDist
from typing import NamedTuple

# Standard-normal quantiles at probabilities 0.1, 0.3, 0.5, 0.7, 0.9: the prior's support
# points are median * exp(sigma * z), so the middle point is the median itself.
_PRIOR_Z = tuple(NormalDist().inv_cdf((i + 0.5) / 5) for i in range(5))


class PinDecision(NamedTuple):
    """Outcome of the TTL rule for one pause.

    ttl            seconds to keep the program's blocks pinned (0.0: do not pin)
    p_return       P(tool done within ttl) * p_continue: chance the pinned cache is reused
    expected_gain  p_return * cache_loss_cost - ttl, in seconds (0.0 when not pinning)
    """

    ttl: float
    p_return: float
    expected_gain: float


@dataclass(slots=True, frozen=True)
class _Dist:
    """A discrete distribution: sorted distinct values and their cumulative weights."""

    values: tuple[float, ...]
    cum: tuple[float, ...]

    @property
    def total(self) -> float:
        return self.cum[-1] if self.cum else 0.0

    def cdf(self, t: float) -> float:
        i = bisect_right(self.values, t)
        return self.cum[i - 1] / self.total if i else 0.0


@dataclass(slots=True)
class _ToolStats:
    obs: deque[float]
    hint: float | None = None
    dist: _Dist | None = field(default=None, repr=False)  # cache, dropped on every change


def _check_duration(seconds: float, what: str) -> float:
    seconds = float(seconds)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {seconds!r}")
    return seconds


def _lognormal_points(median: float, sigma: float) -> list[float]:
    return [median * math.exp(sigma * z) for z in _PRIOR_Z]


def _build_dist(weighted: Iterable[tuple[float, float]]) -> _Dist:
    merged: dict[float, float] = {}
    for value, weight in weighted:
        if weight > 0:
            merged[value] = merged.get(value, 0.0) + weight
    values = tuple(sorted(merged))
    return _Dist(values, tuple(accumulate(merged[v] for v in values)))


class ToolPausePredictor:
    """Online per-tool pause-duration distributions, with a prior for the cold start."""

    __slots__ = ("window", "prior_weight", "default_median", "default_sigma", "hint_sigma", "_tools", "_lock")

    def __init__(self, *, window: int = 256, prior_weight: float = 4.0, default_median: float = 1.0,
                 default_sigma: float = 1.0, hint_sigma: float = 0.5):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        for name, value in (("prior_weight", prior_weight), ("default_sigma", default_sigma),
                            ("hint_sigma", hint_sigma)):
            _check_duration(value, name)  # same check: finite and >= 0
        if not (math.isfinite(default_median) and default_median > 0):
            raise ValueError(f"default_median must be finite and > 0, got {default_median!r}")
        self.window = window
        self.prior_weight = float(prior_weight)
        self.default_median = float(default_median)
        self.default_sigma = float(default_sigma)
        self.hint_sigma = float(hint_sigma)
        self._tools: dict[str, _ToolStats] = {}
        self._lock = threading.RLock()     # the runtime observes while the engine thread ranks blocks

    # ------------------------------------------------------------------------------- learning
    def _stats(self, tool: str) -> _ToolStats:
        stats = self._tools.get(tool)
        if stats is None:
            stats = self._tools[tool] = _ToolStats(deque(maxlen=self.window))
        return stats

    def observe(self, tool: str, seconds: float) -> None:
        """Record one observed pause of `tool` (seconds, >= 0)."""
        seconds = _check_duration(seconds, "pause duration")
        with self._lock:
            stats = self._stats(tool)
            stats.obs.append(seconds)
            stats.dist = None

    def observe_many(self, tool: str, seconds: Iterable[float]) -> None:
        for s in seconds:
            self.observe(tool, s)

    def set_hint(self, tool: str, seconds: float) -> None:
        """Centre `tool`'s prior on `seconds` (its typical duration, e.g. the DSL's expected_duration)."""
        seconds = _check_duration(seconds, "hint")
        if seconds == 0:
            raise ValueError("hint must be > 0")
        with self._lock:
            stats = self._stats(tool)
            stats.hint = seconds
            stats.dist = None

    def hint(self, tool: str) -> float | None:
        stats = self._tools.get(tool)
        return stats.hint if stats is not None else None

    # ----------------------------------------------------------------------------- statistics
    def _dist(self, tool: str) -> _Dist:
        with self._lock:
            return self._build(tool)

    def _build(self, tool: str) -> _Dist:
        stats = self._tools.get(tool)
        if stats is not None and stats.dist is not None:
            return stats.dist
        if stats is not None and stats.hint is not None:
            prior = _lognormal_points(stats.hint, self.hint_sigma)
        else:
            prior = _lognormal_points(self.default_median, self.default_sigma)
        w = self.prior_weight / len(prior)
        observed = stats.obs if stats is not None else ()
        dist = _build_dist([*((p, w) for p in prior), *((o, 1.0) for o in observed)])
        if stats is not None:
            stats.dist = dist
        return dist

    def samples(self, tool: str) -> list[float]:
        """The retained real observations of `tool` (oldest first; the prior is not included)."""
        stats = self._tools.get(tool)
        return list(stats.obs) if stats is not None else []

    def support(self, tool: str) -> tuple[float, ...]:
        """Distinct durations carrying probability mass (observations and prior points), sorted."""
        return self._dist(tool).values

    def cdf(self, tool: str, t: float) -> float:
        """P(pause <= t). 0.0 when the distribution is empty (prior_weight 0, no data)."""
        if math.isnan(t):
            raise ValueError("t must not be NaN")
        return self._dist(tool).cdf(t)

    def quantile(self, tool: str, q: float) -> float:
        """Smallest duration d with P(pause <= d) >= q."""
        if not 0.0 <= q <= 1.0:  # also rejects NaN
            raise ValueError(f"q must be in [0, 1], got {q!r}")
        dist = self._dist(tool)
        if not dist.values:
            raise ValueError(f"no data and no prior for tool {tool!r}")
        target = q * dist.total
        for value, cum in zip(dist.values, dist.cum):
            if cum >= target - 1e-12 * dist.total:
                return value
        return dist.values[-1]

    def mean(self, tool: str) -> float:
        dist = self._dist(tool)
        if not dist.values:
            raise ValueError(f"no data and no prior for tool {tool!r}")
        prev, acc = 0.0, 0.0
        for value, cum in zip(dist.values, dist.cum):
            acc += value * (cum - prev)
            prev = cum
        return acc / dist.total

    def expected_remaining(self, tool: str, elapsed: float) -> float:
        """E[pause - elapsed | pause > elapsed]: how much longer a call already `elapsed` seconds
        old should take. Past every known duration the guess is `elapsed` again (an overdue call
        of a heavy-tailed tool tends to run long)."""
        dist = self._dist(tool)
        prev, mass, acc = 0.0, 0.0, 0.0
        for value, cum in zip(dist.values, dist.cum):
            if value > elapsed:
                mass += cum - prev
                acc += (value - elapsed) * (cum - prev)
            prev = cum
        return acc / mass if mass > 0 else max(elapsed, 1e-3)

    # ---------------------------------------------------------------------------- the TTL rule
    def pin_decision(self, tool: str, cache_loss_cost: float, *, candidates: Sequence[float] | None = None,
                     p_continue: float = 1.0) -> PinDecision:
        """Continuum's rule: the TTL tau maximizing P(done by tau) * p_continue * cost - tau.

        `cache_loss_cost` (seconds) is what losing the program's blocks costs: recompute or reload
        time of its context plus the expected requeue delay. The `- tau` term charges one second
        of pinned memory as one second. The objective falls between support points of the
        distribution, so the optimum is at 0 or at one of them (the default candidates). A tie or
        no positive gain means do not pin: ttl 0.0.
        """
        cost = _check_duration(cache_loss_cost, "cache_loss_cost")
        if not 0.0 <= p_continue <= 1.0:
            raise ValueError(f"p_continue must be in [0, 1], got {p_continue!r}")
        taus = self.support(tool) if candidates is None else candidates
        best = PinDecision(0.0, 0.0, 0.0)
        for tau in sorted({_check_duration(t, "candidate") for t in taus}):
            if tau == 0.0:
                continue  # tau 0 is "no pin": gain 0 by definition
            p_return = self.cdf(tool, tau) * p_continue
            gain = p_return * cost - tau
            if gain > best.expected_gain:
                best = PinDecision(tau, p_return, gain)
        return best

    def pin_time(self, tool: str, cache_loss_cost: float, *, candidates: Sequence[float] | None = None,
                 p_continue: float = 1.0) -> float:
        """The TTL (seconds) of `pin_decision`; 0.0 means do not pin."""
        return self.pin_decision(tool, cache_loss_cost, candidates=candidates, p_continue=p_continue).ttl


def load_tracelab_tool_latencies(path: str | Path) -> dict[str, list[float]]:
    """Tool wall latencies (seconds) per tool name from a TraceLab round-trace JSONL file.

    Each line is a round with `tools: [{tool_name, tool_wall_latency_ms, ...}]`; calls without a
    latency are skipped.
    """
    out: dict[str, list[float]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            for call in json.loads(line).get("tools") or ():
                ms = call.get("tool_wall_latency_ms")
                name = call.get("tool_name")
                if ms is None or name is None:
                    continue
                out.setdefault(name, []).append(_check_duration(ms, "tool_wall_latency_ms") / 1000.0)
    return out
