"""cache_salt: a request sees only prefix-cache blocks computed under its own salt, on the device
and in the host tier; salted blocks never reach the disk tier; unsalted requests keep the very
hashes they always had."""
from __future__ import annotations

import pytest
import torch

from agentrt.engine.block_pool import BlockPool
from agentrt.engine.blocks import chain_hash, salt_root
from agentrt.engine.host_tier import HostTier
from agentrt.engine.params import SamplingParams
from agentrt.engine.request import Request, RequestMeta

GREEDY = SamplingParams(max_tokens=4, ignore_eos=True, return_logits=True)
SUFFIX = ".kvb"


def salted(*salts: str | None) -> list[RequestMeta]:
    return [RequestMeta(cache_salt=s) for s in salts]


def run(engine, prompt, salt: str | None):
    return engine.generate(prompt, GREEDY, metas=salted(salt))[0]


def disk_files(root) -> list:
    return sorted(p for p in root.rglob(f"*{SUFFIX}") if not p.name.startswith("."))


# ------------------------------------------------------------------------------------------ hashes
def chain(ids: list[int], root: int | None, bs: int = 16) -> list[int]:
    hashes, parent = [], root
    for j in range(len(ids) // bs):
        parent = chain_hash(parent, tuple(ids[bs * j:bs * (j + 1)]))
        hashes.append(parent)
    return hashes


def test_unsalted_hashes_are_the_plain_chain_and_salted_ones_start_at_the_salt(make_engine, rand_prompts):
    (ids,) = rand_prompts([50], seed=10)
    engine = make_engine(kv_cache_tokens=2048)
    run(engine, ids, None)
    plain = chain(ids, None)
    assert list(engine.pool.cached) == plain                                  # bit-identical to before
    run(engine, ids, "t1")
    tenant = chain(ids, salt_root("t1"))
    assert list(engine.pool.cached) == plain + tenant and not set(plain) & set(tenant)
    assert [engine.pool.cached[h].root for h in tenant] == [salt_root("t1")] * 3
    assert Request("r", ids, GREEDY).cache_root is None
    assert Request("r", ids, GREEDY, RequestMeta(cache_salt="t1")).cache_root == salt_root("t1")
    assert salt_root("t1") == salt_root("t1") != salt_root("t2") and 0 <= salt_root("t1") < 2**60


def test_request_meta_rejects_a_non_string_or_empty_salt():
    with pytest.raises(TypeError, match="cache_salt"):
        RequestMeta(cache_salt=5)
    with pytest.raises(ValueError, match="cache_salt"):
        RequestMeta(cache_salt="")


def test_pool_compares_the_root_even_when_hashes_collide():
    pool = BlockPool(8, 2)
    root = salt_root("tenant-a")
    a, b = pool.allocate(2)
    first = pool.cache_full_block(a, None, (1, 2), root)
    pool.cache_full_block(b, a, (3, 4))                       # a child inherits its parent's root
    assert first is a and a.root == b.root == root and a.block_hash == chain_hash(root, (1, 2))
    hashes = [a.block_hash, b.block_hash]
    assert pool.match_prefix(hashes, [(1, 2), (3, 4)], root) == [a, b]
    assert pool.match_prefix(hashes, [(1, 2), (3, 4)]) == []                  # unsalted, same hashes: no hit
    assert pool.match_prefix(hashes, [(1, 2), (3, 4)], salt_root("tenant-b")) == []
    (c,) = pool.allocate(1)
    assert pool.cache_full_block(c, None, (1, 2)) is c and c.block_hash == chain_hash(None, (1, 2))
    pool.free([a, b, c])
    pool.check_invariants()


def test_host_entries_keep_the_root_and_match_only_under_it():
    host = HostTier(4)
    root = salt_root("t")
    host.put(0, 11, None, (1, 2), {}, 0, root)
    host.take_moves()
    assert host.match([11], [(1, 2)], None, 4, root)[0].root == root
    assert host.match([11], [(1, 2)], None, 4) == [] and host.lookup(11, None, (1, 2)) is None


# ------------------------------------------------------------------------------------------ engine
def test_same_prompt_different_salts_share_nothing_same_salt_shares(make_engine, rand_prompts, check_blocks):
    (prompt,) = rand_prompts([70], seed=11)
    engine = make_engine(kv_cache_tokens=2048)
    a1 = run(engine, prompt, "tenant-a")
    b1 = run(engine, prompt, "tenant-b")
    plain1 = run(engine, prompt, None)
    a2 = run(engine, prompt, "tenant-a")
    b2 = run(engine, prompt, "tenant-b")
    plain2 = run(engine, prompt, None)
    assert a1.num_cached_tokens == b1.num_cached_tokens == plain1.num_cached_tokens == 0
    assert a2.num_cached_tokens == b2.num_cached_tokens == plain2.num_cached_tokens == 64     # 4 full blocks
    assert a1.token_ids == b1.token_ids == plain1.token_ids == a2.token_ids                 # a salt changes no output
    assert all(torch.equal(x, y) for x, y in zip(a1.logits, b1.logits))              # computed alike...
    assert all(torch.equal(x, y) for x, y in zip(a2.logits, plain2.logits))          # ...and hit alike
    assert len(engine.pool.cached) == 3 * 4                                                 # one chain per salt
    check_blocks(engine)


def test_a_salted_batch_is_never_deduplicated_across_salts(make_engine, rand_prompts, check_blocks):
    """Computed in the same step, the same prompt under two salts stays two chains (no dedupe,
    no wait on the other's in-flight blocks), while the same salt twice shares one."""
    (prompt,) = rand_prompts([40], seed=12)
    engine = make_engine(kv_cache_tokens=2048)
    outs = engine.generate([prompt] * 4, GREEDY, metas=salted("x", "y", "x", None))
    assert [o.num_cached_tokens for o in outs] == [0, 0, 32, 0]
    roots = {b.root for b in engine.pool.cached.values()}
    assert roots == {salt_root("x"), salt_root("y"), None} and len(engine.pool.cached) == 3 * 2
    check_blocks(engine)


def test_host_tier_loads_back_only_to_the_same_salt(make_engine, rand_prompts, check_blocks):
    a, b = rand_prompts([40, 50], seed=13)
    engine = make_engine(kv_cache_tokens=64, host_kv_tokens=1024)        # 4 device blocks: b pushes a out
    run(engine, a, "tenant-a")
    run(engine, b, None)
    assert engine.stats()["swapped_out_blocks"] >= 2 and all(e.root is None or e.root == salt_root("tenant-a")
                                                              for e in engine.pool.host.entries.values())
    other = run(engine, a + [7] * 8, "tenant-b")
    assert other.num_cached_tokens == 0 and engine.stats()["loaded_blocks"] == 0             # nothing of a's
    run(engine, b, None)                                                                     # push again
    loaded = engine.stats()["loaded_blocks"]
    same = run(engine, a + [7] * 8, "tenant-a")
    assert same.num_cached_tokens == 32 and engine.stats()["loaded_blocks"] == loaded + 2    # a's 2 blocks, from host
    check_blocks(engine)


def test_salted_blocks_are_never_written_to_nor_read_from_disk(make_engine, rand_prompts, tmp_path):
    a, other = rand_prompts([70, 70], seed=14)
    first = make_engine(kv_disk_dir=str(tmp_path))
    run(first, a, "tenant-a")
    assert first.flush_disk(30) and disk_files(tmp_path) == []                # salted: nothing on disk
    run(first, other, None)
    assert first.flush_disk(30) and len(disk_files(tmp_path)) == 4            # unsalted: written as before
    run(first, a, None)
    first.flush_disk(30)
    second = make_engine(kv_disk_dir=str(tmp_path))                           # a fresh process, as far as KV goes
    salted_out = run(second, a, "tenant-a")
    assert salted_out.num_cached_tokens == 0 and second.stats()["disk_hits"] == 0   # never reads the disk
    plain = run(second, a, None)
    assert plain.num_cached_tokens == 64 and second.stats()["disk_hits"] == 4       # unsalted reuse unchanged


def test_evicted_mode_keeps_salted_blocks_off_disk(make_engine, rand_prompts, tmp_path):
    a, b = rand_prompts([40, 50], seed=15)
    for host in (0, 16):                                  # evicted from the device; evicted from a 1-block host
        root = tmp_path / f"host{host}"
        engine = make_engine(kv_cache_tokens=64, host_kv_tokens=host, kv_disk_dir=str(root), kv_disk_write="evicted")
        run(engine, a, "tenant-a")
        run(engine, b, "tenant-b")                        # pushes a's blocks out (and through the host)
        run(engine, a + [3] * 8, "tenant-a")
        engine.flush_disk(30)
        assert engine.stats()["evicted_blocks"] >= 2 and disk_files(root) == [], host
