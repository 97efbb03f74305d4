"""The disk KV tier: blocks computed by one engine are served to a fresh one from disk (cached, not
recomputed, same logits as a device-cache hit), bad files are detected and recomputed, the
directory is bounded (LRU), keys separate models, and two processes can share the directory."""
from __future__ import annotations

import multiprocessing as mp
import os

import torch

from agentrt.engine.disk_tier import SUFFIX, DiskTier, chain_key, namespace_key
from agentrt.engine.params import SamplingParams

GREEDY = SamplingParams(max_tokens=6, ignore_eos=True, return_logits=True)
SHAPE = (2, 2, 16, 2, 16)        # the tiny model's block: layers, K/V, block size, kv heads, head dim


def files(root) -> list:
    return sorted(p for p in root.rglob(f"*{SUFFIX}") if not p.name.startswith("."))


def run_twice(make, a, cont, **disk):
    """`a` on one engine, then `a + cont` on a fresh engine (a fresh process, as far as KV goes)."""
    first = make(**disk)
    out_a = first.generate(a, GREEDY)[0]
    assert first.flush_disk(30)
    second = make(**disk)
    return out_a, second.generate(a + out_a.token_ids + cont, GREEDY)[0], second


def test_a_fresh_engine_loads_from_disk_the_logits_of_a_device_hit(make_engine, rand_prompts, tmp_path):
    a, cont = rand_prompts([70, 9], seed=1)
    _, got, warm = run_twice(make_engine, a, cont, kv_disk_dir=str(tmp_path))
    roomy = make_engine()                                     # the same prefix, hit in the device cache
    first = roomy.generate(a, GREEDY)[0]
    want = roomy.generate(a + first.token_ids + cont, GREEDY)[0]
    stats = warm.stats()
    assert stats["disk_loaded_blocks"] == 4 and stats["disk_hits"] == 4 and stats["recomputed_blocks"] == 0
    assert got.num_cached_tokens == want.num_cached_tokens == 64                  # loaded = cached
    assert got.token_ids == want.token_ids
    assert all(torch.equal(x, y) for x, y in zip(got.logits, want.logits))
    warm.flush_disk(30)
    assert len(files(tmp_path)) == 5                    # 4 of a, plus the one a + cont completed


def test_corrupt_or_truncated_files_are_discarded_and_recomputed(make_engine, rand_prompts, tmp_path):
    a, cont = rand_prompts([70, 9], seed=2)
    first = make_engine(kv_disk_dir=str(tmp_path))
    out_a = first.generate(a, GREEDY)[0]
    first.flush_disk(30)
    tier = first.pool.disk.tier
    keys = tier.keys_for(_hashes(a), _blocks(a))
    data = tier.path(keys[2]).read_bytes()
    tier.path(keys[2]).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))          # one flipped bit
    tier.path(keys[3]).write_bytes(tier.path(keys[3]).read_bytes()[:1000])      # truncated
    second = make_engine(kv_disk_dir=str(tmp_path))
    got = second.generate(a + out_a.token_ids + cont, GREEDY)[0]
    ref = make_engine().generate(a + out_a.token_ids + cont, GREEDY)[0]
    assert got.num_cached_tokens == 32 and second.stats()["disk_corrupt"] == 1   # stops at the bad block
    assert got.token_ids == ref.token_ids
    assert all(torch.allclose(x, y, atol=1e-4) for x, y in zip(got.logits, ref.logits))
    second.flush_disk(30)                                         # recomputed blocks were written again
    third = make_engine(kv_disk_dir=str(tmp_path))
    assert third.generate(a + out_a.token_ids + cont, GREEDY)[0].num_cached_tokens == 80
    assert third.stats()["disk_corrupt"] == 0


def _blocks(ids, bs=16):
    return [tuple(ids[j * bs:(j + 1) * bs]) for j in range(len(ids) // bs)]


def _hashes(ids):
    from agentrt.engine.blocks import chain_hash
    out = []
    for toks in _blocks(ids):
        out.append(chain_hash(out[-1] if out else None, toks))
    return out


def test_another_model_dtype_or_block_size_never_hits(make_engine, rand_prompts, tmp_path):
    a, cont = rand_prompts([70, 9], seed=3)
    first = make_engine(kv_disk_dir=str(tmp_path))
    first.generate(a, GREEDY)
    first.flush_disk(30)
    from agentrt.engine.loader import load_model
    for other in (dict(dtype="bfloat16"), dict(block_size=8), dict(seed=1)):
        loaded = load_model("tiny-random-llama", seed=1) if "seed" in other else None
        engine = make_engine(loaded, kv_disk_dir=str(tmp_path), **other)
        out = engine.generate(a + cont, GREEDY)[0]
        assert out.num_cached_tokens == 0 and engine.stats()["disk_hits"] == 0, other


def test_evicted_mode_writes_only_blocks_leaving_memory(make_engine, rand_prompts, tmp_path):
    a, b = rand_prompts([40, 50], seed=4)
    engine = make_engine(kv_cache_tokens=64, kv_disk_dir=str(tmp_path), kv_disk_write="evicted")
    engine.generate(a, GREEDY)
    engine.flush_disk(30)
    assert files(tmp_path) == []                                      # all of a still fits on the device
    engine.generate(b, GREEDY)                                       # pushes a's blocks out
    engine.flush_disk(30)
    assert len(files(tmp_path)) >= 2
    fresh = make_engine(kv_disk_dir=str(tmp_path), kv_disk_write="evicted")
    assert fresh.generate(a + [5] * 8, GREEDY)[0].num_cached_tokens == 32


def payload(i: int) -> torch.Tensor:
    return torch.full(SHAPE, float(i))


def test_capacity_evicts_least_recently_used_files(tmp_path):
    from agentrt.engine.disk_tier import _HEAD
    one = _HEAD.size + 16 * 4 + torch.Size(SHAPE).numel() * 4            # bytes of one file
    tier = DiskTier(tmp_path, namespace_key("t"), capacity_bytes=5 * one, payload_shape=SHAPE, dtype=torch.float32)
    keys = [chain_key(tier.namespace, (i,) * 16) for i in range(8)]
    for i, k in enumerate(keys[:5]):
        tier.write(k, tier.namespace, (i,) * 16, payload(i))
        os.utime(tier.path(k), ns=(10**18 + i * 10**9,) * 2)               # written oldest first
    assert tier.read(keys[0], tier.namespace, (0,) * 16) is not None      # a hit makes 0 the newest
    for i in (5, 6):
        tier.write(keys[i], tier.namespace, (i,) * 16, payload(i))
    assert tier.used_bytes() <= 5 * one and tier.stats["evicted"] >= 2
    present = {i for i, k in enumerate(keys) if tier.path(k).is_file()}
    assert {0, 5, 6} <= present and not {1, 2} & present                  # the least recently used went
    assert torch.equal(tier.read(keys[6], tier.namespace, (6,) * 16), payload(6))


def _hammer(root: str, worker: int, rounds: int, out) -> None:
    import torch as t
    t.set_num_threads(1)
    tier = DiskTier(root, namespace_key("shared"), capacity_bytes=10**9, payload_shape=SHAPE, dtype=t.float32)
    bad = 0
    for r in range(rounds):
        for i in range(6):                                            # both processes write the same keys
            key = chain_key(tier.namespace, (i,) * 16)
            if r % 2 == worker % 2:
                path = tier.path(key)
                path.unlink(missing_ok=True)                          # force a real rewrite, races included
            tier.write(key, tier.namespace, (i,) * 16, payload(i))
            got = tier.read(key, tier.namespace, (i,) * 16)
            bad += got is not None and not t.equal(got, payload(i))
    out.put((worker, bad, tier.stats["corrupt"]))


def test_two_processes_sharing_the_directory_never_see_a_partial_file(tmp_path):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path), w, 40, out)) for w in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert all(bad == 0 and corrupt == 0 for _, bad, corrupt in results), results
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]   # no temporary file left
    tier = DiskTier(tmp_path, namespace_key("shared"), 10**9, SHAPE, torch.float32)
    assert all(torch.equal(tier.read(chain_key(tier.namespace, (i,) * 16), tier.namespace, (i,) * 16), payload(i))
               for i in range(6))
