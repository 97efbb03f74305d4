"""`agentrt bench calibrate`: measure this machine's engine and fit the simulated backend's
step-time model to it (a `cpu` profile).

Method: batches of known shape run on the real engine (decode-only steps at several batch sizes
and contexts; prefill chunks of several sizes, fresh and after cached context); every step's
wall time is paired with its shape as the scheduler published it (an observer); least squares
fits step = a + b * prefill tokens + c * decode sequences + d * context tokens prefill reads +
e * context tokens decode reads, with no coefficient below zero (a negative one is dropped and
the rest refitted). The fit minimizes relative error (rows weighted by 1 / seconds): a 100 ms
decode step counts as much as a 5 s prefill, as the workloads it predicts are mostly decode steps.
The profile records every point and the fit's residuals, so how well the model fits is in the
file itself.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np

from agentrt.engine import EngineConfig, LLMEngine
from agentrt.engine.loader import LoadedModel
from agentrt.engine.observe import EngineObserver
from agentrt.engine.params import SamplingParams
from agentrt.engine.sim import StepProfile, batch_shape

TERMS = ("base_s", "prefill_token_s", "decode_seq_s", "context_token_s", "decode_context_token_s")
DECODE_CASES = [(b, c) for b in (1, 4, 16, 32) for c in (128, 768)] + [(1, 3072), (4, 3072), (16, 3072)]
PREFILL_CHUNKS = (64, 256, 1024, 2048)
CONTEXTS_BEFORE = (1024, 3072)          # prefill chunks after this much cached context


class _Shapes(EngineObserver):
    def __init__(self) -> None:
        self.last: tuple[int, int, int, int] | None = None

    def on_step(self, batch, in_use: int) -> None:
        self.last = batch_shape(batch)[:4]        # every row of a decode case has the same context


def _prompt(i: int, n: int, vocab: int) -> list[int]:
    return [1 + (i * 7919 + j * 31) % (vocab - 2) for j in range(n)]


def measure(loaded: LoadedModel, *, threads: int, dtype: str = "auto", log: Callable[[str], None] = print
            ) -> list[tuple[tuple[int, int, int, int], float]]:
    """(shape, seconds) of every measured step."""
    points: list[tuple[tuple[int, int, int, int], float]] = []
    vocab = loaded.config.vocab_size
    cases = [("decode", b, c, 0) for b, c in DECODE_CASES] + [("prefill", 1, n, 0) for n in PREFILL_CHUNKS] + \
            [("prefill-after-context", 1, n, ctx) for ctx in CONTEXTS_BEFORE for n in PREFILL_CHUNKS[:3]]
    longest = loaded.config.max_position_embeddings - 64
    for kind, batch, size, before in cases:
        if size + before > longest:
            log(f"  {kind:<22} batch {batch:>3} size {size:>5}: skipped (the model holds {longest + 64} positions)")
            continue
        kv_tokens = max(8192, 2 * batch * (size + before + 64))
        engine = LLMEngine(loaded, EngineConfig(dtype=dtype, num_threads=threads, kv_cache_tokens=kv_tokens,
                                                max_num_batched_tokens=max(2048, size), enable_prefix_caching=True))
        shapes = _Shapes()
        engine.add_observer(shapes)
        if kind == "prefill-after-context":                 # a cached prefix, then a chunk that reads it
            engine.generate([_prompt(0, before, vocab)], SamplingParams(max_tokens=1, ignore_eos=True))
            prompts = [_prompt(0, before, vocab) + _prompt(1, size, vocab)]
        else:
            prompts = [_prompt(i, size if kind != "decode" else size, vocab) for i in range(batch)]
        new = 24 if kind == "decode" else 1
        for p in prompts:
            engine.add_request(p, SamplingParams(max_tokens=new, ignore_eos=True, temperature=0.0))
        case_points = []
        while engine.has_unfinished():
            began = time.perf_counter()
            engine.step()
            case_points.append((shapes.last, time.perf_counter() - began))
        keep = case_points[2:] if kind == "decode" else case_points[-1:]   # decode: past the prefill steps
        if kind == "decode":
            keep = [pt for pt in keep if pt[0][0] == 0]
        points += keep
        log(f"  {kind:<22} batch {batch:>3} size {size:>5}{f' after {before}' if before else '':>11}: {len(keep)} steps, median "
            f"{1000 * statistics.median(s for _, s in keep):.1f} ms")
    return points


def fit(points: list[tuple[tuple[int, int, int, int], float]]) -> tuple[dict[str, float], dict]:
    """Non-negative least squares over the five terms (by dropping negative ones), in relative error."""
    x = np.array([[1.0, *shape] for shape, _ in points], dtype=float)
    y = np.array([s for _, s in points])
    values, rel = _fit_relative(x, y, TERMS)
    return values, {"points": [[*shape, round(s, 6)] for shape, s in points],
                    "median_abs_rel_error": round(float(np.median(rel)), 4), "max_abs_rel_error": round(float(rel.max()), 4)}


def _fit_relative(x: np.ndarray, y: np.ndarray, terms: tuple[str, ...]) -> tuple[dict[str, float], np.ndarray]:
    """Least squares of y on x's columns (named by `terms`) weighted by 1/y, dropping the most negative
    coefficient until none is left; the fitted values and every row's relative error."""
    w = 1.0 / y
    active = list(range(len(terms)))
    while True:
        coef, *_ = np.linalg.lstsq(x[:, active] * w[:, None], y * w, rcond=None)
        if (coef >= 0).all() or len(active) == 1:
            break
        active.pop(int(np.argmin(coef)))
    values = {name: 0.0 for name in terms}
    for i, c in zip(active, coef):
        values[terms[i]] = float(max(c, 0.0))
    pred = x @ np.array([values[t] for t in terms])
    return values, np.abs(pred - y) / y


STEP_TERMS = (*TERMS, "context_padded_s", "decode_shared_token_s")


def fit_steps(rows: list[list[float]]) -> tuple[dict[str, float], dict]:
    """The seven-term model (the five, the padded prefill batch, the shared decode prefix) fitted to
    steps a real run recorded (agentrt.bench.steps rows), in relative error."""
    x = np.array([[1.0, p, d, pctx, d * (longest - shared), padded, d * shared]
                  for p, d, pctx, _, longest, _, padded, shared, _ in rows], dtype=float)
    y = np.array([r[-1] for r in rows], dtype=float)
    keep = y > 0
    values, rel = _fit_relative(x[keep], y[keep], STEP_TERMS)
    return values, {"steps": int(keep.sum()), "median_abs_rel_error": round(float(np.median(rel)), 4),
                    "max_abs_rel_error": round(float(rel.max()), 4)}


def profile_from_report(report: dict, *, name: str, block_bytes: int) -> StepProfile:
    """A profile fitted to every step a saved real-engine report recorded (`bench workflows --save`)."""
    from agentrt.bench.steps import STEP_FIELDS
    if report.get("step_fields") != list(STEP_FIELDS) or not report.get("step_logs"):
        raise ValueError("the report kept no steps of the real engine (a real-engine `bench workflows --save` "
                         "report of this version keeps them)")
    rows = [row for runs in report["step_logs"].values() for run in runs for row in run]
    values, details = fit_steps(rows)
    m = report["machine"]
    source = (f"fitted to the {len(rows)} steps of a real `bench workflows` run ({report['describe']}; "
              f"{m.get('cpu_capability')} CPU, {m.get('processor')}; {report['model']}, {m.get('dtype')}, "
              f"{m.get('threads')} threads; code {report.get('code')})")
    return StepProfile(name=name, source=source, block_bytes=block_bytes, fit=details, host_bytes_per_s=10e9,
                       decode_padded=True, **values)


def calibrate(loaded: LoadedModel, *, threads: int, dtype: str, name: str, machine: str,
              block_bytes: int, log: Callable[[str], None] = print) -> StepProfile:
    points = measure(loaded, threads=threads, dtype=dtype, log=log)
    values, details = fit(points)
    return StepProfile(name=name, source=f"agentrt bench calibrate on this machine ({machine}; {loaded.name}, "
                                         f"{dtype}, {threads} threads)", block_bytes=block_bytes, fit=details,
                       host_bytes_per_s=10e9, decode_padded=True, **values)   # the torch path pads decode rows
