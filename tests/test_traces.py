"""Trace parsers (agentrt.bench.traces): TraceLab sessions and Mooncake requests as synthetic-token
programs whose prefix sharing is exactly the one the trace describes.

The real files are read from ../shared/workloads (or $AGENTRT_WORKLOADS); those tests skip when the
folder is absent. The rest run on small files written to tmp_path.
"""
from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from agentrt.bench.traces import (MOONCAKE_FILE, TRACELAB_FILE, Trace, load_mooncake, load_trace,
                                  load_tracelab, workloads_dir)

HEADER = "session_id,arrival_time,round_idx,prefix_len,input_len,output_len,tool_wait_after_ms\n"


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


def data_file(name: str) -> Path:
    folder = workloads_dir()
    if folder is None:
        pytest.skip("shared workloads folder absent: ../shared/workloads next to the repo root "
                    "(or $AGENTRT_WORKLOADS) holds the trace files")
    return folder / name


@pytest.fixture(scope="module")
def tracelab() -> Trace:
    return load_tracelab(data_file(TRACELAB_FILE))


@pytest.fixture(scope="module")
def mooncake_rows() -> list[dict]:
    return [json.loads(line) for line in data_file(MOONCAKE_FILE).read_text().splitlines() if line.strip()]


def assert_cumulative(trace: Trace) -> None:
    """Round i+1's prompt starts with round i's prompt + its synthetic output, for every round."""
    for prog in trace.programs:
        for r in prog.rounds:
            assert r.output_tokens is not None and len(r.output_tokens) == r.output_len >= 1
            assert len(r.prompt_tokens) >= 1
        for a, b in zip(prog.rounds, prog.rounds[1:]):
            context = a.prompt_tokens + a.output_tokens
            assert len(b.prompt_tokens) > len(context)
            assert b.prompt_tokens[:len(context)] == context, prog.program_id


def assert_block_sharing(trace: Trace, hash_ids: list[list[int]], bs: int) -> None:
    """Every pair's common token prefix = min(common leading hash ids * bs, both lengths)."""
    prompts = [p.rounds[0].prompt_tokens for p in trace.programs]
    for i, j in itertools.combinations(range(len(prompts)), 2):
        k = common_prefix(hash_ids[i], hash_ids[j])
        expect = min(k * bs, len(prompts[i]), len(prompts[j]))
        assert common_prefix(prompts[i], prompts[j]) == expect, (i, j, k)
        if k == 0:
            assert prompts[i][0] != prompts[j][0]


# ----------------------------------------------------------------------------------------- TraceLab
def test_tracelab_counts_and_timing(tracelab: Trace) -> None:
    with open(data_file(TRACELAB_FILE)) as f:
        rows = list(csv.DictReader(f))
    assert len(tracelab.programs) == 48 and tracelab.num_requests() == 303 == len(rows)
    assert tracelab.notes == ()                       # the data is exactly cumulative
    assert tracelab.total_prompt_tokens() == sum(int(r["prefix_len"]) + int(r["input_len"]) for r in rows)
    assert tracelab.total_output_tokens() == sum(int(r["output_len"]) for r in rows)
    by_key = {(r["session_id"], int(r["round_idx"])): r for r in rows}
    arrivals = [p.rounds[0].arrival_s for p in tracelab.programs]
    assert arrivals == sorted(arrivals)
    for prog in tracelab.programs:
        for i, r in enumerate(prog.rounds):
            row = by_key[(prog.program_id, i)]
            assert len(r.prompt_tokens) == int(row["prefix_len"]) + int(row["input_len"])
            assert r.output_len == int(row["output_len"])
            assert r.pause_after_s == pytest.approx(int(row["tool_wait_after_ms"]) / 1000)
            assert r.arrival_s == (int(row["arrival_time"]) / 1000 if i == 0 else None)
        assert prog.rounds[-1].pause_after_s == 0.0


def test_tracelab_prefix_is_cumulative(tracelab: Trace) -> None:
    assert_cumulative(tracelab)


def test_tracelab_sessions_share_nothing(tracelab: Trace) -> None:
    firsts = [p.rounds[0].prompt_tokens for p in tracelab.programs]
    assert len({f[0] for f in firsts}) == len(firsts)
    assert len({tuple(f[:16]) for f in firsts}) == len(firsts)
    assert all(common_prefix(a, b) == 0 for a, b in itertools.combinations(firsts, 2))


def test_tracelab_scale(tracelab: Trace) -> None:
    small = load_tracelab(data_file(TRACELAB_FILE), scale=0.125)
    assert small.num_requests() == 303 and small.notes == ()
    assert_cumulative(small)
    assert small.total_prompt_tokens() / tracelab.total_prompt_tokens() == pytest.approx(0.125, abs=0.002)
    assert small.total_output_tokens() / tracelab.total_output_tokens() == pytest.approx(0.125, abs=0.002)
    assert len({p.rounds[0].prompt_tokens[0] for p in small.programs}) == 48


def test_tracelab_limit_speedup_and_determinism(tracelab: Trace) -> None:
    path = data_file(TRACELAB_FILE)
    few = load_tracelab(path, limit=5, speedup=2.0)
    assert [p.program_id for p in few.programs] == [p.program_id for p in tracelab.programs[:5]]
    for fast, slow in zip(few.programs, tracelab.programs):
        assert [r.prompt_tokens for r in fast.rounds] == [r.prompt_tokens for r in slow.rounds]
        assert fast.rounds[0].arrival_s == pytest.approx(slow.rounds[0].arrival_s / 2)
        assert [r.pause_after_s * 2 for r in fast.rounds] == pytest.approx([r.pause_after_s for r in slow.rounds])
    assert load_tracelab(path) == tracelab
    other = load_tracelab(path, seed=1)
    assert other.programs[0].rounds[0].prompt_tokens != tracelab.programs[0].rounds[0].prompt_tokens
    assert load_trace(path, limit=3).programs == tracelab.programs[:3]
    tiny = load_tracelab(path, vocab=50)                  # 48 sessions in 50 ids: first ids still distinct
    assert max(t for p in tiny.programs for t in p.rounds[0].prompt_tokens) < 50
    assert len({p.rounds[0].prompt_tokens[0] for p in tiny.programs}) == 48


def test_tracelab_noncumulative_rows(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"          # session 7 rounds are out of order; round 1's prefix is truncated
    path.write_text(HEADER + "7,10,1,50,20,5,0\n7,10,0,0,100,10,40\n8,5,0,30,10,3,0\n")
    trace = load_tracelab(path)
    assert [p.program_id for p in trace.programs] == ["8", "7"]
    assert len(trace.notes) == 1 and "2 round(s)" in trace.notes[0] and "7:1" in trace.notes[0]
    r0, r1 = trace.programs[1].rounds
    assert len(r1.prompt_tokens) == 70 and r1.prompt_tokens[:50] == r0.prompt_tokens[:50]
    assert r0.pause_after_s == 0.04 and r1.arrival_s is None
    assert len(trace.programs[0].rounds[0].prompt_tokens) == 40


@pytest.mark.parametrize("body, problem", [
    ("7,10,0,0,100,10\n", ":2: 6 fields"),
    ("7,10,0,0,100,10,0\n7,10,1,110,x,10,0\n", ":3: input_len must be a whole number"),
    ("7,10,0,0,100,10,0\n7,10,0,110,5,10,0\n", ":3: session 7: round_idx 0 where 1"),
    ("7,10,0,0,100,10,0\n\n7,10,2,110,5,10,0\n", ":4: session 7: round_idx 2 where 1"),
    ("7,10,0,0,-1,10,0\n", ":2: input_len must be"),
    ("7,inf,0,0,1,10,0\n", ":2: arrival_time must be"),
])
def test_tracelab_malformed(tmp_path: Path, body: str, problem: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(HEADER + body)
    with pytest.raises(ValueError, match=problem):
        load_tracelab(path)


def test_tracelab_bad_header(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("session_id,arrival_time,round_idx\n1,2,0\n")
    with pytest.raises(ValueError, match=r"bad\.csv:1: header lacks column\(s\) \['prefix_len'"):
        load_tracelab(path)


# ----------------------------------------------------------------------------------------- Mooncake
def test_mooncake_sample_facts(mooncake_rows: list[dict]) -> None:
    trace = load_mooncake(data_file(MOONCAKE_FILE))
    assert trace.num_requests() == len(trace.programs) == len(mooncake_rows) == 60 and trace.notes == ()
    for prog, row in zip(trace.programs, mooncake_rows):
        assert len(row["hash_ids"]) == math.ceil(row["input_length"] / 512)
        (r,) = prog.rounds
        assert len(r.prompt_tokens) == row["input_length"] and r.output_len == row["output_length"]
        assert r.arrival_s == row["timestamp"] / 1000 and r.pause_after_s == 0.0


@pytest.mark.parametrize("scale, block_tokens, vocab", [(1.0, 512, 49152), (0.125, 512, 49152), (1.0, 16, 49152),
                                                       (0.125, 512, 40)])   # 40 ids: siblings must be kept apart
def test_mooncake_block_sharing(mooncake_rows: list[dict], scale: float, block_tokens: int, vocab: int) -> None:
    trace = load_mooncake(data_file(MOONCAKE_FILE), scale=scale, block_tokens=block_tokens, vocab=vocab)
    bs = round(block_tokens * scale)
    assert [len(p.rounds[0].prompt_tokens) for p in trace.programs] == \
        [max(1, round(r["input_length"] * bs / block_tokens)) for r in mooncake_rows]
    assert_block_sharing(trace, [r["hash_ids"] for r in mooncake_rows], bs)


def test_mooncake_scale_limit_speedup_determinism(mooncake_rows: list[dict]) -> None:
    path = data_file(MOONCAKE_FILE)
    full, small = load_mooncake(path), load_mooncake(path, scale=0.125)
    assert small.total_prompt_tokens() / full.total_prompt_tokens() == pytest.approx(0.125, abs=0.002)
    assert small.total_output_tokens() / full.total_output_tokens() == pytest.approx(0.125, abs=0.01)
    few = load_mooncake(path, limit=10, speedup=4.0)
    assert few.programs == [p._replace(rounds=[p.rounds[0]._replace(arrival_s=p.rounds[0].arrival_s / 4)])
                            for p in full.programs[:10]]
    assert load_mooncake(path) == full and load_trace(path) == full
    assert load_mooncake(path, seed=3).programs[0] != full.programs[0]


def test_mooncake_tail_partial_and_clash(tmp_path: Path) -> None:
    rows = [
        {"timestamp": 0, "input_length": 20, "output_length": 3, "hash_ids": [1, 2]},       # 2 is partial
        {"timestamp": 1, "input_length": 45, "output_length": 3, "hash_ids": [1, 2, 3]},
        {"timestamp": 2, "input_length": 50, "output_length": 3, "hash_ids": [1, 2]},       # tail unique
        {"timestamp": 3, "input_length": 50, "output_length": 3, "hash_ids": [1, 2]},       # another tail
        {"timestamp": 4, "input_length": 16, "output_length": 3, "hash_ids": [4]},
        {"timestamp": 5, "input_length": 40, "output_length": 3, "hash_ids": [5, 2, 6]},    # 2 elsewhere
        {"timestamp": 6, "input_length": 7, "output_length": 3, "hash_ids": [1, 2, 3, 9]},  # ids unused
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    trace = load_mooncake(path, block_tokens=16, vocab=1000)
    prompts = [p.rounds[0].prompt_tokens for p in trace.programs]
    assert [len(p) for p in prompts] == [r["input_length"] for r in rows]
    assert common_prefix(prompts[0], prompts[1]) == 20 and common_prefix(prompts[2], prompts[3]) == 32
    assert prompts[5][16:32] == prompts[1][16:32]                # block 2's ids, after another path
    assert all(t < 1000 for p in prompts for t in p)
    assert trace.notes == ("3 request(s) with len(hash_ids) != ceil(input_length / 16)",)
    # the pair property holds among the requests whose hash-id paths form a tree (all but #5)
    tree = [i for i in range(len(rows)) if i != 5]
    sub = trace._replace(programs=[trace.programs[i] for i in tree])
    ids = [rows[i]["hash_ids"] + [-100 * i - j for j in range(10)] for i in tree]   # unique tails
    assert_block_sharing(sub, ids, 16)


@pytest.mark.parametrize("line, problem", [
    ('{"timestamp": 1, "input_length": 5', ":2: not JSON"),
    ('[1, 2]', ":2: expected a JSON object, got list"),
    ('{"timestamp": 1, "input_length": 5, "hash_ids": [0]}', r":2: missing key\(s\) \['output_length'\]"),
    ('{"timestamp": 1, "input_length": 5, "output_length": 1, "hash_ids": [0, "a"]}', ":2: hash_ids must be"),
    ('{"timestamp": 1, "input_length": 5.5, "output_length": 1, "hash_ids": [0]}', ":2: input_length must be"),
    ('{"timestamp": -1, "input_length": 5, "output_length": 1, "hash_ids": [0]}', ":2: timestamp must be"),
])
def test_mooncake_malformed(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [0]}\n' + line + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl" + problem):
        load_mooncake(path)


def test_bad_arguments(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [0]}\n')
    for kw in ({"scale": 0}, {"speedup": -1}, {"limit": -1}, {"seed": -1}, {"vocab": 1}, {"block_tokens": 0}):
        with pytest.raises(ValueError):
            load_mooncake(path, **kw)


def test_workloads_dir_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRT_WORKLOADS", str(tmp_path))
    assert workloads_dir() == tmp_path
    monkeypatch.setenv("AGENTRT_WORKLOADS", str(tmp_path / "absent"))
    assert workloads_dir() is None
    monkeypatch.delenv("AGENTRT_WORKLOADS")
    found = workloads_dir()
    assert found is None or found == Path(__file__).resolve().parents[1].parent / "shared" / "workloads"
