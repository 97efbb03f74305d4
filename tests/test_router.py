"""The cluster router's policies (agentrt.cluster.router): pure, no Ray, no engine."""
from __future__ import annotations

import pytest

from agentrt.cluster.router import NoReplicaError, Router, RouterConfig, text_blocks, token_blocks

SYSTEM = list(range(64))                          # a shared system prompt: 4 blocks of 16


def prompt(program: int, turn: int = 0) -> list[int]:
    """A program's prompt at a turn: the shared system prompt, then its own growing context."""
    return SYSTEM + [1000 + program] * 16 * (1 + turn)


def send(router: Router, pid: str | None, ids: list[int]):
    return router.route(pid, token_blocks(ids), len(ids))


def test_block_hashes_share_exactly_the_common_prefix():
    a, b = token_blocks(prompt(1)), token_blocks(prompt(2))
    assert a[:4] == b[:4] and a[4] != b[4]
    assert token_blocks(prompt(1, 2))[:len(a)] == a            # a growing context extends its chain
    assert len(token_blocks(list(range(31)))) == 1              # only full blocks
    assert text_blocks("x" * 128)[:2] == text_blocks("x" * 200)[:2] and text_blocks("y" * 128) != text_blocks("x" * 128)


def test_round_robin_cycles_over_live_replicas_only():
    r = Router("round-robin", ["a", "b", "c"])
    assert [send(r, None, [1]).replica for _ in range(4)] == ["a", "b", "c", "a"]
    r.mark_dead("b")
    assert [send(r, None, [1]).replica for _ in range(3)] == ["c", "a", "c"]


def test_least_loaded_counts_requests_in_flight():
    r = Router("least-loaded", ["a", "b"])
    d1 = send(r, None, [1])
    assert send(r, None, [1]).replica != d1.replica
    r.done(d1)
    assert send(r, None, [1]).replica == d1.replica
    assert [load.inflight for load in r.loads()] == [1, 1]


def test_prefix_routes_to_the_longest_match_then_smallest_tree():
    r = Router("prefix", ["a", "b"])
    first = send(r, "p1", prompt(1))
    assert first.reason == "smallest-tree"
    again = send(r, "p1", prompt(1, 1))                # its own context: affinity by prefix
    assert again.replica == first.replica and again.reason == "prefix" and again.matched_blocks == 5
    unrelated = send(r, None, [7] * 64)               # no match: the replica with the smaller tree
    assert unrelated.reason == "smallest-tree" and unrelated.replica != first.replica


def test_prefix_herds_programs_onto_the_shared_system_prompt_until_imbalanced():
    """SGLang's rule: a shared system prompt is a match above the threshold, so new programs pile
    onto its replica until busiest - idlest > balance_abs_threshold (and > rel x idlest)."""
    r = Router("prefix", ["a", "b"], RouterConfig(balance_abs_threshold=3))
    decisions = [send(r, f"p{i}", prompt(i)) for i in range(5)]
    assert [d.replica for d in decisions[:4]] == ["a"] * 4 and decisions[1].reason == "prefix"
    assert decisions[4].replica == "b" and decisions[4].reason == "imbalanced"   # 4 - 0 > 3


def test_program_policy_spreads_new_programs_and_keeps_their_turns_home():
    r = Router("program", ["a", "b", "c"])
    firsts = {f"p{i}": send(r, f"p{i}", prompt(i)) for i in range(6)}
    assert sorted(load.programs for load in r.loads()) == [2, 2, 2]
    for pid, d in firsts.items():
        r.done(d, pid)                                 # every program now paused on a tool
    for turn in (1, 2):
        for i in range(6):
            d = send(r, f"p{i}", prompt(i, turn))
            assert d.replica == firsts[f"p{i}"].replica and d.reason == "affinity"
            r.done(d, f"p{i}")


def test_program_load_counts_paused_programs_which_request_load_cannot_see():
    prog, req = Router("program", ["a", "b"]), Router("least-loaded", ["a", "b"])
    for router in (prog, req):
        for i in range(4):                             # 4 programs start and pause on a's side
            d = router.route(f"p{i}", token_blocks(prompt(i)), 80) if router is prog else router.route(f"p{i}", (), 80)
            router.done(d, f"p{i}")
    assert sorted(load.programs for load in prog.loads()) == [2, 2]
    assert [load.inflight for load in req.loads()] == [0, 0]      # request-level: nothing is running


def test_program_placement_weighs_the_context_each_replica_holds_not_its_program_count():
    """One old program with a long context weighs more than two new ones: a new program goes
    where the KV its replica holds is smallest, and the load follows each program's latest turn."""
    r = Router("program", ["a", "b"])
    long_one = send(r, "old", prompt(0, 2))           # 112 tokens
    r.done(long_one, "old")
    home = long_one.replica
    other = "b" if home == "a" else "a"
    for i in (1, 2):
        d = send(r, f"p{i}", prompt(i))
        assert d.replica == other                      # 0, then 80 tokens there against 112
        r.done(d, f"p{i}")
    grown = send(r, "old", prompt(0, 20))              # its context grows to 400 tokens on its home
    r.done(grown, "old")
    loads = {x.name: x for x in r.loads()}
    assert (loads[home].programs, loads[home].context_tokens) == (1, 400)
    assert (loads[other].programs, loads[other].context_tokens) == (2, 160)
    assert send(r, "p3", prompt(3)).replica == other   # 1 program but 400 tokens against 2 with 160
    r.end_program("old")
    assert {x.name: x.context_tokens for x in r.loads()}[home] == 0


def test_program_fails_over_when_its_replica_dies_and_the_replica_rejoins_empty():
    r = Router("program", ["a", "b"])
    d = send(r, "p1", prompt(1))
    r.done(d, "p1")
    orphans = r.mark_dead(d.replica)
    assert orphans == ["p1"] and r.alive() == ["b" if d.replica == "a" else "a"]
    moved = send(r, "p1", prompt(1, 1))
    assert moved.reason == "failover" and moved.moved_from == d.replica and moved.replica != d.replica
    assert r.failovers == 1 and r.home_of("p1") == moved.replica
    r.mark_alive(d.replica)
    assert next(x for x in r.loads() if x.name == d.replica).index_blocks == 0
    r.done(moved, "p1")
    assert send(r, "p1", prompt(1, 2)).replica == moved.replica      # no move back: affinity holds


def test_program_moves_only_between_turns_and_only_on_a_large_imbalance():
    r = Router("program", ["a", "b"], RouterConfig(move_factor=1.8, move_abs=2))
    for i in range(6):                                  # b dies, all six land on a, b comes back
        if i == 0:
            r.mark_dead("b")
        d = send(r, f"p{i}", prompt(i))
        if i < 5:
            r.done(d, f"p{i}")
    r.mark_alive("b")
    assert send(r, "p5", prompt(5, 1)).reason == "affinity"       # p5 has a turn in flight: never moved
    d = send(r, "p0", prompt(0, 1))                                # 6 on a vs 0: above 1.8 x mean 3 and 2 ahead
    assert d.reason == "moved" and d.replica == "b" and d.moved_from == "a" and r.moves == 1
    r.done(d, "p0")
    assert send(r, "p1", prompt(1, 1)).reason == "affinity"       # 5 vs 1: within 1.8 x mean


def test_program_end_frees_its_slot_and_errors_are_clear():
    r = Router("program", ["a"])
    d = send(r, "p1", prompt(1))
    r.done(d, "p1", ended=True)
    assert r.loads()[0].programs == 0 and r.home_of("p1") is None
    r.mark_dead("a")
    with pytest.raises(NoReplicaError):
        send(r, "p2", prompt(2))
    with pytest.raises(ValueError, match="choose from"):
        Router("random", ["a"])
    with pytest.raises(ValueError, match="distinct"):
        Router("program", ["a", "a"])


def test_the_router_is_pure_and_the_cluster_sits_above_the_runtime():
    """router.py imports neither Ray nor any engine part (the simulator and the Ray front share
    it); agentrt.cluster, a front, imports no benchmark or CLI code; the CLI offers every policy."""
    from pathlib import Path

    from agentrt.cli.cluster_cmds import RouterName
    from agentrt.cluster.router import POLICIES
    from tests.test_layering import imports_of
    package = Path(__file__).resolve().parents[1] / "agentrt"
    assert not [m for m in imports_of(package / "cluster" / "router.py") if m.startswith(("agentrt", "ray"))]
    for path in (package / "cluster").glob("*.py"):
        assert not [m for m in imports_of(path) if m.startswith(("agentrt.bench", "agentrt.cli"))], path
    assert sorted(r.value for r in RouterName) == sorted(POLICIES)
