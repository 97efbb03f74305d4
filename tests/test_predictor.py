"""ToolPausePredictor and Continuum's TTL rule on constructed distributions and real latencies."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from agentrt.sched import PinDecision, ToolPausePredictor, load_tracelab_tool_latencies

WORKLOADS = Path(__file__).resolve().parents[1] / ".." / "shared" / "workloads"
TRACELAB_ROUNDS = WORKLOADS / "tracelab_claude_session_rounds.jsonl"


def data_only(**durations: list[float]) -> ToolPausePredictor:
    """A predictor without a prior, fed the given durations, so that results are exact."""
    p = ToolPausePredictor(prior_weight=0)
    for tool, values in durations.items():
        p.observe_many(tool, values)
    return p


def test_constant_short_pause_is_pinned_for_its_duration():
    assert data_only(t=[0.5] * 20).pin_time("t", 2.0) == 0.5


def test_constant_long_pause_is_not_worth_pinning():
    assert data_only(t=[10.0] * 20).pin_time("t", 2.0) == 0.0


def test_bimodal_cheap_cache_pins_for_the_short_mode():
    # cost 1: tau=0.1 gains 0.5*1 - 0.1 = 0.4; tau=20 gains 1 - 20 < 0
    assert data_only(t=[0.1, 20.0] * 10).pin_time("t", 1.0) == 0.1


def test_bimodal_expensive_cache_pins_through_the_long_mode():
    # cost 100: tau=0.1 gains 50 - 0.1 = 49.9; tau=20 gains 100 - 20 = 80
    p = data_only(t=[0.1, 20.0] * 10)
    assert p.pin_time("t", 100.0) == 20.0
    d = p.pin_decision("t", 100.0)
    assert d == PinDecision(20.0, 1.0, 80.0)


def test_program_that_will_not_continue_is_never_pinned():
    p = data_only(t=[0.5] * 20)
    assert p.pin_time("t", 1000.0, p_continue=0.0) == 0.0
    # p_continue scales the benefit: 0.5 * 2 - 0.5 = 0.5 > 0, 0.2 * 2 - 0.5 < 0
    assert p.pin_time("t", 2.0, p_continue=0.5) == 0.5
    assert p.pin_time("t", 2.0, p_continue=0.2) == 0.0


def test_not_pinning_reports_zero_gain_and_explicit_candidates_are_used():
    p = data_only(t=[1.0] * 10)
    assert p.pin_decision("t", 0.5) == PinDecision(0.0, 0.0, 0.0)
    # candidates need not be support points: cdf(3) = 1, gain 10 - 3 = 7 beats cdf(0.5) = 0
    assert p.pin_decision("t", 10.0, candidates=[0.0, 0.5, 3.0]) == PinDecision(3.0, 1.0, 7.0)


def test_empirical_statistics():
    p = data_only(t=[1.0, 2.0, 3.0, 4.0])
    assert p.cdf("t", 0.5) == 0.0
    assert p.cdf("t", 2.0) == 0.5
    assert p.cdf("t", 2.5) == 0.5
    assert p.cdf("t", math.inf) == 1.0
    assert p.quantile("t", 0.0) == 1.0
    assert p.quantile("t", 0.5) == 2.0
    assert p.quantile("t", 0.51) == 3.0
    assert p.quantile("t", 1.0) == 4.0
    assert p.mean("t") == 2.5
    assert p.samples("t") == [1.0, 2.0, 3.0, 4.0]
    assert p.support("t") == (1.0, 2.0, 3.0, 4.0)


def test_window_bounds_memory():
    p = ToolPausePredictor(window=8, prior_weight=0)
    p.observe_many("t", [100.0] * 8 + [1.0] * 8)
    assert p.samples("t") == [1.0] * 8
    assert p.mean("t") == 1.0


def test_prior_at_cold_start_is_the_default_around_one_second():
    p = ToolPausePredictor()
    assert p.samples("never_seen") == []
    assert p.quantile("never_seen", 0.5) == pytest.approx(1.0)
    assert 0.0 < p.cdf("never_seen", 1.0) < 1.0
    assert len(p.support("never_seen")) == 5


def test_hint_centres_the_cold_start_prior():
    p = ToolPausePredictor()
    p.set_hint("search", 15.0)
    assert p.quantile("search", 0.5) == pytest.approx(15.0)
    assert p.quantile("other", 0.5) == pytest.approx(1.0)  # hints are per tool
    assert p.pin_time("search", 2.0) == 0.0  # a 15 s tool is not worth a 2 s cache
    assert p.pin_time("other", 2.0) > 0.0


def test_prior_dominates_with_no_data_and_fades_with_many():
    p = ToolPausePredictor(prior_weight=4)
    p.set_hint("t", 10.0)
    prior_mean = p.mean("t")
    assert p.cdf("t", 0.5) == 0.0
    p.observe("t", 0.5)  # one observation against 4 pseudo-observations
    assert p.cdf("t", 0.5) == pytest.approx(1 / 5)
    assert p.pin_time("t", 2.0) == 0.0
    p.observe_many("t", [0.5] * 95)
    assert p.cdf("t", 0.5) == pytest.approx(96 / 100)
    assert p.pin_time("t", 2.0) == 0.5
    assert p.mean("t") == pytest.approx(0.96 * 0.5 + 0.04 * prior_mean)


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_invalid_inputs_raise(bad):
    p = ToolPausePredictor()
    with pytest.raises(ValueError):
        p.observe("t", bad)
    with pytest.raises(ValueError):
        p.set_hint("t", bad)
    with pytest.raises(ValueError):
        p.pin_time("t", bad)
    with pytest.raises(ValueError):
        p.pin_time("t", 1.0, candidates=[bad])
    with pytest.raises(ValueError):
        p.quantile("t", bad)
    with pytest.raises(ValueError):
        p.pin_time("t", 1.0, p_continue=bad)


def test_other_invalid_inputs_raise():
    p = ToolPausePredictor()
    with pytest.raises(ValueError):
        p.cdf("t", math.nan)
    with pytest.raises(ValueError):
        p.set_hint("t", 0.0)
    with pytest.raises(ValueError):
        p.pin_time("t", 1.0, p_continue=1.5)
    with pytest.raises(ValueError):
        ToolPausePredictor(window=0)
    with pytest.raises(ValueError):
        ToolPausePredictor(default_median=0.0)
    with pytest.raises(ValueError):
        data_only().quantile("t", 0.5)  # no prior and no data: nothing to answer with
    assert data_only().pin_time("t", 100.0) == 0.0


@pytest.mark.skipif(not TRACELAB_ROUNDS.is_file(),
                    reason=f"TraceLab round trace not found at {WORKLOADS} (the project's ../shared/workloads)")
def test_tracelab_tool_latencies():
    lat = load_tracelab_tool_latencies(TRACELAB_ROUNDS)
    assert sum(map(len, lat.values())) == 19
    assert {"Bash", "exec_command", "WebSearch", "WebFetch", "Write"} <= set(lat)
    assert all(0 <= s < 60 for values in lat.values() for s in values)
    assert 12 <= min(lat["WebSearch"]) and max(lat["WebSearch"]) <= 20  # seconds, not ms
    p = ToolPausePredictor()
    for tool, values in lat.items():
        p.observe_many(tool, values)
    # a fast shell tool is worth pinning a 2 s context for; a 12-19 s web search is not
    assert 0.0 < p.pin_time("exec_command", 2.0) < 2.0
    assert p.pin_time("WebSearch", 2.0) == 0.0
    assert p.pin_time("WebSearch", 200.0) >= 12.0
