"""Shared fixtures for the engine tests.

* `tiny_loaded`   the `tiny-random-llama` LoadedModel (built once per session)
* `tiny_ref`      its transformers reference (LlamaForCausalLM with the same weights)
* `make_engine`   factory for LLMEngine on the tiny model (EngineConfig fields, and optionally
                  `runner=` / `clock=` parts); every engine it made is checked for leaked KV
                  blocks when the test ends
* `check_blocks`  the block-accounting check, to call inline after a workload
* `ref_logits`    reference logits at the positions the engine sampled from
* `logit_error`   max |engine - reference| logit of one RequestOutput (recorded for the summary)
* `drain`         step an engine to completion with a step bound (a stuck scheduler fails fast)
* `rand_prompts`  deterministic random byte prompts of given lengths

An autouse guard fails any test that runs over AGENTRT_TEST_TIMEOUT seconds (60; 3x for slow
tests), so an engine that stops making progress cannot hang the suite.

The engine is tiny and the CPU is small (and often shared): torch runs single-threaded in the
tests, which is many times faster than two threads fighting over two busy cores. Set
AGENTRT_TEST_THREADS to override.
"""
from __future__ import annotations

import os
import signal
import threading

import pytest
import torch

if not torch.cuda.is_available():          # the Triton kernels' tests run in its interpreter: set it before
    os.environ.setdefault("TRITON_INTERPRET", "1")      # any test module imports triton
TEST_THREADS = int(os.environ.get("AGENTRT_TEST_THREADS", "1"))
torch.set_num_threads(TEST_THREADS)

from agentrt.engine import EngineConfig, LLMEngine  # noqa: E402
from agentrt.engine.loader import load_model  # noqa: E402
from agentrt.engine.tiny import tiny_config, tiny_reference_model  # noqa: E402

TINY_VOCAB = 259          # 256 bytes + <|endoftext|>, <|im_start|>, <|im_end|>
TINY_EOS = 258            # <|im_end|>


# ------------------------------------------------------------------------------------------ helpers
def assert_no_leaked_blocks(engine: LLMEngine) -> None:
    """After a workload has drained: the pool is consistent, no request holds a block, and every
    block is either free or cached-free."""
    pool = engine.pool
    pool.check_invariants()
    assert not engine.has_unfinished(), "workload has not drained"
    assert pool.num_in_use == 0, f"{pool.num_in_use} blocks still held after the workload"
    assert all(b.ref_count == 0 for b in pool.blocks), [b for b in pool.blocks if b.ref_count]
    assert len(pool.free_queue) + pool.num_cached_free == pool.num_blocks
    assert not engine.scheduler.running and not engine.scheduler.waiting


def reference_logits(model, prompt: list[int], generated: list[int]) -> torch.Tensor:
    """Logits the reference assigns to each generated position: rows len(prompt)-1 ... of one
    unpadded forward over prompt + generated (the last generated token is not needed)."""
    ids = torch.tensor([list(prompt) + list(generated)])
    with torch.inference_mode():
        out = model(ids).logits[0].float()
    n = len(prompt)
    return out[n - 1: n - 1 + len(generated)]


PARITY_ERRORS: dict[str, list[float]] = {}     # model -> measured max |Δlogit| per request, for the summary


def max_logit_error(model, output) -> float:
    """max |engine logit - reference logit| over every generated step of one RequestOutput."""
    assert output.logits is not None and len(output.logits) == len(output.token_ids) > 0
    engine_logits = torch.stack(output.logits).float()
    ref = reference_logits(model, output.prompt_token_ids, output.token_ids)
    assert engine_logits.shape == ref.shape
    err = (engine_logits - ref).abs().max().item()
    vocab = model.config.vocab_size
    name = {TINY_VOCAB: "tiny-random-llama", 49152: "smollm2-135m"}.get(vocab, f"vocab {vocab}")
    PARITY_ERRORS.setdefault(name, []).append(err)
    return err


def pytest_terminal_summary(terminalreporter):
    for name, errs in sorted(PARITY_ERRORS.items()):
        terminalreporter.write_line(f"parity vs transformers, {name}: max |Δlogit| {max(errs):.2e} "
                                    f"over {len(errs)} requests")


def run_steps(engine, max_steps: int = 1000) -> dict:
    """Step until nothing is unfinished, collecting finished outputs by request id. Fails instead
    of spinning forever when the engine stops making progress (a scheduler that admits nothing)."""
    done = {}
    for _ in range(max_steps):
        if not engine.has_unfinished():
            return done
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    raise AssertionError(f"engine still has unfinished requests after {max_steps} steps "
                         f"(no progress?): {engine.stats()}")


# ------------------------------------------------------------------------------------------ hang guard
TEST_TIMEOUT_S = int(os.environ.get("AGENTRT_TEST_TIMEOUT", "60"))


class EngineHangTimeout(Exception):
    pass


@pytest.fixture(autouse=True)
def _hang_guard(request):
    """A scheduler bug shows up as generate() looping forever: turn that into a failure.
    Also restores the torch thread count, which code under test (the CLI's bench) may change."""
    if torch.get_num_threads() != TEST_THREADS:
        torch.set_num_threads(TEST_THREADS)
    if not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return
    limit = TEST_TIMEOUT_S * (3 if request.node.get_closest_marker("slow") else 1)

    def on_alarm(signum, frame):
        raise EngineHangTimeout(f"test ran over {limit} s (engine hang?)")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(limit)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def tiny_loaded():
    return load_model("tiny-random-llama")


@pytest.fixture(scope="session")
def tiny_ref():
    return tiny_reference_model(tiny_config())


@pytest.fixture
def make_engine(tiny_loaded):
    """make_engine(**EngineConfig fields) -> LLMEngine on tiny-random-llama (float32, CPU).
    At teardown, after aborting whatever is still unfinished, no engine made may leak a block."""
    engines: list[LLMEngine] = []

    def make(loaded=None, *, runner=None, clock=None, **config) -> LLMEngine:
        config.setdefault("device", "cpu")
        config.setdefault("dtype", "float32")
        parts = {k: v for k, v in (("runner", runner), ("clock", clock)) if v is not None}
        engine = LLMEngine(loaded if loaded is not None else tiny_loaded, EngineConfig(**config), **parts)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        for rid in list(engine.requests):       # whatever a (failed) test left running
            engine.abort(rid)
        assert_no_leaked_blocks(engine)


@pytest.fixture
def check_blocks():
    return assert_no_leaked_blocks


@pytest.fixture
def ref_logits():
    return reference_logits


@pytest.fixture
def logit_error():
    return max_logit_error


@pytest.fixture
def drain():
    return run_steps


@pytest.fixture
def rand_prompts():
    """rand_prompts(lengths, seed=0) -> deterministic lists of byte token ids (no special tokens)."""
    def make(lengths, seed: int = 0) -> list[list[int]]:
        g = torch.Generator().manual_seed(seed)
        return [torch.randint(0, 256, (n,), generator=g).tolist() for n in lengths]
    return make
