"""`agentrt bench workflows` / `agentrt bench replay` on the tiny model, and the figures they compute."""
from __future__ import annotations

import asyncio
import json

import pytest
from typer.testing import CliRunner

from agentrt.bench.metrics import (ProgramRecord, RunRecord, Target, belady_ratio, belady_recomputes,
                                   evaluate_targets, jct_ratio, median_figures, quantile, run_figures)
from agentrt.bench.traces import MOONCAKE_FILE, TRACELAB_FILE, workloads_dir
from agentrt.cli import app

TINY = ["--model", "tiny-random-llama", "--threads", "1", "--runs", "1"]
POLICIES = ("lru", "continuum", "continuum-ttl", "kvflow", "agentrt")
REPORT_KEYS = {"benchmark", "model", "workload", "describe", "machine", "settings", "working_set_tokens",
               "kv_device_tokens", "tier_fraction_of_working_set", "longest_request_tokens", "warmup_s",
               "policies", "vs_lru_mean_jct", "targets", "notes"}
FIGURE_KEYS = {"mean_jct_s", "p50_jct_s", "p95_jct_s", "programs_per_s", "output_tokens_per_s", "recomputed_tokens",
               "prefix_hit_rate", "belady_ratio", "belady_recomputed_tokens", "peak_blocks", "peak_fraction",
               "evicted_blocks", "preemptions", "failed", "working_set_tokens"}


def workload_file(name: str):
    folder = workloads_dir()
    if folder is None or not (folder / name).is_file():
        pytest.skip(reason="the shared workloads folder (../shared/workloads or $AGENTRT_WORKLOADS) is absent "
                           "here, so there is no trace file to replay")
    return folder / name


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str):
    return runner.invoke(app, ["bench", *args], catch_exceptions=False)


def check_report(report: dict, policies=POLICIES) -> None:
    assert REPORT_KEYS <= set(report)
    assert list(report["policies"]) == list(policies)
    for name, entry in report["policies"].items():
        assert FIGURE_KEYS <= set(entry["median"]), name
        assert len(entry["runs"]) == report["settings"]["runs"]
        m = entry["median"]
        assert m["failed"] == 0 and m["mean_jct_s"] > 0 and 0 <= m["prefix_hit_rate"] <= 1
        assert 0 < m["peak_blocks"] <= report["kv_device_tokens"] // report["settings"]["block_size"]
    assert set(report["vs_lru_mean_jct"]) == set(policies) - {"lru"}


# ------------------------------------------------------------------------------------------ the CLI
def test_workflows_research_team_table_and_json(runner, tmp_path):
    saved = tmp_path / "bench.json"
    result = invoke(runner, "workflows", *TINY, "--programs", "4", "--speedup", "10", "--save", str(saved))
    assert result.exit_code == 0, result.stderr
    for name in POLICIES:
        assert name in result.stdout
    assert "working set" in result.stdout and "agentrt vs lru:" in result.stdout and "target:" in result.stdout
    report = json.loads(saved.read_text())
    check_report(report)
    assert report["workload"] == "research_team" and report["benchmark"] == "workflows"
    assert report["settings"]["programs"] == 4
    # the default tier is 40% of the measured working set (whole blocks, at least the longest request)
    assert report["working_set_tokens"] > report["kv_device_tokens"] > report["longest_request_tokens"]
    assert [t["baseline"] for t in report["targets"]] == ["lru", "continuum", "kvflow", "belady"]


def test_workflows_coding_agent_json(runner):
    from agentrt.bench.workflow_bench import Harness
    result = invoke(runner, "workflows", *TINY, "-w", "coding_agent", "--programs", "3", "--rounds", "2",
                    "--speedup", "40", "--policies", "lru,agentrt", "--rate", "20", "--json",
                    "--kv-device-bytes", "1MiB", "--max-num-seqs", "2", "--program-order", "las")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    check_report(report, ("lru", "agentrt"))
    assert report["workload"] == "coding_agent" and report["settings"]["rate"] == 20
    assert report["settings"]["max_num_seqs"] == 2 and report["settings"]["program_order"] == "las"
    per_block = Harness("tiny-random-llama").kv_bytes_per_token() * 16       # 1 MiB in whole blocks
    assert report["kv_device_tokens"] == (2**20 // per_block) * 16
    assert report["policies"]["agentrt"]["median"]["llm_calls"] == 3 * 2
    assert "run 1/1 agentrt" in result.stderr


def test_replay_tracelab_with_plot(runner, tmp_path):
    trace = workload_file(TRACELAB_FILE)
    png = tmp_path / "timeline.png"
    result = invoke(runner, "replay", str(trace), *TINY, "--limit", "4", "--scale", "0.05", "--speedup", "10",
                    "--json", "--plot", str(png))
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    check_report(report)
    assert report["settings"]["format"] == "tracelab" and report["benchmark"] == "replay"
    # the working set computed from the trace is what every run's access log touched
    assert report["policies"]["lru"]["median"]["working_set_tokens"] == report["working_set_tokens"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_replay_mooncake_table(runner):
    trace = workload_file(MOONCAKE_FILE)
    result = invoke(runner, "replay", str(trace), *TINY, "--format", "mooncake", "--limit", "10",
                    "--scale", "0.0625", "--speedup", "10", "--kv-device-tokens", "512")
    assert result.exit_code == 0, result.stderr
    for name in POLICIES:
        assert name in result.stdout
    assert "device tier 512 tok" in result.stdout and "mean JCT ≤ 1.05× lru's" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["workflows", "--policies", "lru,fifo"], "unknown policy fifo"),
    (["workflows", "--workload", "map_reduce"], "map_reduce"),
    (["replay", "trace.csv", "--format", "sharegpt"], "sharegpt"),
    (["replay", "/nonexistent/trace.csv"], "no such trace file"),
    (["replay", "x.jsonl", "--policies", ""], "unknown policy"),
    (["workflows", "--kv-device-tokens", "512", "--kv-device-bytes", "1MiB"], "not both"),
    (["workflows", "--kv-device-bytes", "12 parsecs"], "cannot read '12 parsecs' as a size"),
    (["workflows", "--kv-device-bytes", "100"], "holds no KV block"),
    (["workflows", "--program-order", "sjf"], "sjf"),
])
def test_bad_arguments_exit_2(runner, args, message):
    result = runner.invoke(app, ["bench", *args, "--model", "tiny-random-llama"])
    assert result.exit_code == 2
    assert message in result.output or message in result.stderr


def test_replay_feeds_the_program_table():
    """A TraceLab replay tells the front door about every session, with its shape's workflow as
    the graph, in a Program's typed events: the table ends with every session finished."""
    from agentrt.bench.metrics import Probe
    from agentrt.bench.replay import load, replay_workload, shape_workflow
    from agentrt.bench.workflow_bench import Harness

    wf = shape_workflow(3)
    assert list(wf.steps) == ["turn0", "wait0", "turn1", "wait1", "turn2"]
    assert wf.analysis.steps_to_execution(["wait0"]) == {"agent": 1}
    assert wf.analysis.expected_remaining_turns(["turn0"]) == 3
    trace_path = workload_file(TRACELAB_FILE)
    harness = Harness("tiny-random-llama", threads=1)
    trace = load(trace_path, "tracelab", scale=0.05, limit=2, speedup=20, vocab=harness.vocab_size)
    engine = harness.engine(2048)
    probe = Probe(engine)
    records, wall = asyncio.run(replay_workload(trace, harness.block_size).drive(engine, "agentrt", probe))
    assert [r.status for r in records] == ["done", "done"] and wall > 0
    entries = probe.scheduler.table.entries
    assert set(entries) == {p.program_id for p in trace.programs} and all(e.finished for e in entries.values())
    kinds = {item[0] for item in probe.finish()}
    assert {"llm", "tool"} <= kinds
    assert sum(r.llm_calls for r in records) == trace.num_requests()


def test_a_replayed_pause_prefetches_the_next_rounds_prompt():
    """During a replayed tool pause, kvflow/agentrt's prefetcher finds the next round's prompt."""
    from agentrt.bench.replay import NextRound, shape_workflow
    from agentrt.sched.events import ProgramStarted, ToolStarted
    from agentrt.sched.prefetch import NextAgentPrefetcher

    asked = []
    prefetcher = NextAgentPrefetcher(asked.append)
    next_round = NextRound()
    prefetcher.publish(ProgramStarted("s0", 0.0, 0.0, shape_workflow(2).analysis, next_round))
    prefetcher.publish(ToolStarted("s0", "tool_wait", "wait0", 0.0))
    assert asked == []                          # nothing known to prefetch before the first pause
    next_round.ids = [5, 6, 7]
    prefetcher.publish(ToolStarted("s0", "tool_wait", "wait0", 0.0))
    assert asked == [[5, 6, 7]]


# ------------------------------------------------------------------------------------------ figures
def test_metric_computations_on_hand_made_numbers():
    assert quantile([], 0.5) == 0.0
    assert quantile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5
    assert quantile([1.0, 2.0, 3.0, 4.0, 5.0], 0.95) == pytest.approx(4.8)
    # MIN at 2 slots on a b c a b c: a, b, c compulsory; then one of a / b hits; 4 misses, 1 recompute
    assert belady_recomputes(["a", "b", "c", "a", "b", "c"], 2) == (1, 3)
    assert belady_recomputes(["a", "b", "a"], 2) == (0, 2)
    assert belady_ratio(6, 4) == 1.5 and belady_ratio(3, 0) is None

    progs = [ProgramRecord(f"p{i}", "done", 0.0, jct, 2, 100, 10, 40) for i, jct in enumerate([1.0, 2.0, 3.0, 6.0])]
    run = RunRecord("lru", 1, 8.0, progs, block_size=16, tier_blocks=50, recomputed_blocks=6, evicted_blocks=9,
                    peak_blocks=40, belady_recomputed_blocks=4, distinct_blocks=125)
    f = run_figures(run)
    assert f["mean_jct_s"] == 3.0 and f["p50_jct_s"] == 2.5 and f["programs_per_s"] == 0.5
    assert f["output_tokens_per_s"] == 5.0 and f["prefix_hit_rate"] == 0.4
    assert f["recomputed_tokens"] == 96 and f["belady_recomputed_tokens"] == 64 and f["belady_ratio"] == 1.5
    assert f["peak_fraction"] == 0.8 and f["working_set_tokens"] == 2000

    assert median_figures([{"a": 1, "b": None, "c": 1.0}, {"a": 3, "b": 2.0, "c": 2.0}, {"a": 2, "b": None, "c": 9.0}]) \
        == {"a": 2, "b": 2.0, "c": 2.0}
    medians = {"lru": {"mean_jct_s": 9.0, "belady_ratio": 3.0, "recomputed_blocks": 30},
               "continuum": {"mean_jct_s": 4.0, "belady_ratio": 2.0, "recomputed_blocks": 20},
               "kvflow": {"mean_jct_s": 5.0, "belady_ratio": None, "recomputed_blocks": 0},
               "agentrt": {"mean_jct_s": 4.0, "belady_ratio": 1.1, "recomputed_blocks": 11}}
    assert jct_ratio(medians, "agentrt", "lru") == 2.25 and jct_ratio(medians, "agentrt", "absent") is None
    results = evaluate_targets("research_team", medians)
    assert [(t["baseline"], t["ratio"], t["met"]) for t in results] == [
        ("lru", 2.25, True), ("continuum", 1.0, False), ("kvflow", 1.25, True), ("belady", 1.1, True)]
    assert Target("kvflow", "belady", 1.15).evaluate(medians) == (None, True)       # MIN and kvflow: 0 recomputes
    assert Target("agentrt", "lru", 1 / 1.05).evaluate({"lru": {"mean_jct_s": 1.0}, "agentrt": {"mean_jct_s": 1.04}})[1]
    assert evaluate_targets("mooncake", {"lru": {"mean_jct_s": 1.0}})[0]["met"] is None   # agentrt did not run


@pytest.mark.parametrize("text, size", [("1048576", 2**20), ("64MiB", 64 * 2**20), ("1.5GB", 1_500_000_000),
                                        ("500k", 500_000), ("2 gib", 2 * 2**30), ("7b", 7)])
def test_parse_size(text, size):
    from agentrt.cli.common import parse_size
    assert parse_size(text) == size
