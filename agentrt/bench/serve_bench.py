"""`agentrt bench serve`: concurrent multi-turn agent sessions with tool pauses, through HTTP.

Each session is a program: a shared system prompt, then `turns` rounds of (a chat request with a
fixed output length, a tool pause of a seeded random length, the tool's result appended). Peers,
on the same sessions in the same run, interleaved, a fresh engine per run on one loaded model:

* `in-process`: the same engine called directly (AsyncLLMEngine.stream; no HTTP) under agentrt
* `http/<policy>`: `agentrt serve` on loopback (uvicorn in a thread), streamed with httpx
* `llama.cpp`: llama-cpp-python's OpenAI-compatible server on the same GGUF, when installed

Figures (medians over runs): output tokens/s, TTFT and ITL p50/p99 (client side, per streamed
chunk), mean session JCT, prefix-cache hit rate (from `usage`), and the server's throughput
over the in-process engine's.
"""
from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

WORDS = ("cache block agent tool result plan code test file search paged attention token prefix graph "
         "program step memory latency batch queue server model").split()


@dataclass
class Session:
    sid: str
    user: str
    pauses: list[float]
    results: list[str]


@dataclass
class RunFigures:
    wall_s: float
    output_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    jct: list[float] = field(default_factory=list)
    errors: int = 0

    def summary(self) -> dict[str, float]:
        def q(xs, p):
            if not xs:
                return float("nan")
            xs = sorted(xs)
            return xs[min(len(xs) - 1, int(p * len(xs)))]
        return {"tok_per_s": self.output_tokens / self.wall_s, "ttft_p50_ms": 1e3 * q(self.ttft, 0.5),
                "ttft_p99_ms": 1e3 * q(self.ttft, 0.99), "itl_p50_ms": 1e3 * q(self.itl, 0.5),
                "itl_p99_ms": 1e3 * q(self.itl, 0.99), "mean_jct_s": statistics.fmean(self.jct) if self.jct else 0.0,
                "hit_rate": self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0,
                "wall_s": self.wall_s, "errors": self.errors}


def make_sessions(n: int, turns: int, *, pause_s: tuple[float, float], seed: int = 0) -> list[Session]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))
        out.append(Session(f"s{i}", f"Task {i}: {words(40)}. Work step by step with the tools.",
                           [rng.uniform(*pause_s) for _ in range(turns - 1)],
                           [f"Result of bash:\n{words(30)}" for _ in range(turns - 1)]))
    return out


SYSTEM = ("You are a coding agent. You solve tasks in a repository with a bash tool. " * 6).strip()


async def _session_http(client, url: str, model: str, s: Session, turns: int, out_tokens: int, fig: RunFigures):
    t0 = time.monotonic()
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": s.user}]
    for turn in range(turns):
        body = {"model": model, "messages": messages, "max_tokens": out_tokens, "temperature": 0, "stream": True,
                "ignore_eos": True, "stream_options": {"include_usage": True}, "program_id": s.sid, "agent_id": "coder",
                "is_last_step": turn == turns - 1}
        sent, last, text = time.monotonic(), None, []
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                fig.errors += 1
                await r.aread()
                return
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                now = time.monotonic()
                if chunk.get("usage"):
                    u = chunk["usage"]
                    fig.output_tokens += u["completion_tokens"]
                    fig.prompt_tokens += u["prompt_tokens"]
                    fig.cached_tokens += (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
                for c in chunk.get("choices") or []:
                    piece = (c.get("delta") or {}).get("content")
                    if piece:
                        text.append(piece)
                        if last is None:
                            fig.ttft.append(now - sent)
                        else:
                            fig.itl.append(now - last)
                        last = now
        messages.append({"role": "assistant", "content": "".join(text)})
        if turn < turns - 1:
            await asyncio.sleep(s.pauses[turn])
            messages.append({"role": "user", "content": s.results[turn]})
    fig.jct.append(time.monotonic() - t0)


async def _session_engine(engine, door, s: Session, turns: int, out_tokens: int, fig: RunFigures):
    """The same session on the engine itself, its events told to the scheduler as the server does."""
    from agentrt.engine import SamplingParams
    from agentrt.server.programs import ProgramIds
    tracker = door
    t0 = time.monotonic()
    params = SamplingParams(max_tokens=out_tokens, temperature=0, ignore_eos=True)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": s.user}]
    for turn in range(turns):
        ids = engine.engine.apply_chat_template(messages)
        pids = ProgramIds(s.sid, "coder", turn == turns - 1)
        rid = f"{s.sid}-{turn}"
        meta = tracker.begin(pids, rid, ids)
        sent, last, out = time.monotonic(), None, None
        async for out in engine.stream(ids, params, meta=meta, request_id=rid):
            now = time.monotonic()
            if last is None:
                fig.ttft.append(now - sent)
            else:
                fig.itl.append(now - last)
            last = now
        tracker.finish(pids, rid, ids, out.token_ids, out.num_cached_tokens, "bash" if turn < turns - 1 else None)
        fig.output_tokens += len(out.token_ids)
        fig.prompt_tokens += len(ids)
        fig.cached_tokens += out.num_cached_tokens
        messages.append({"role": "assistant", "content": out.text})
        if turn < turns - 1:
            await asyncio.sleep(s.pauses[turn])
            messages.append({"role": "user", "content": s.results[turn]})
    fig.jct.append(time.monotonic() - t0)


def _engine(loaded, kv_tokens: int, max_num_seqs: int, threads: int):
    from agentrt.engine import AsyncLLMEngine, EngineConfig, LLMEngine
    return AsyncLLMEngine(LLMEngine(loaded, EngineConfig(kv_cache_tokens=kv_tokens, max_num_seqs=max_num_seqs,
                                                         num_threads=threads)))


def run_http(loaded, model: str, policy: str, sessions: list[Session], turns: int, out_tokens: int,
             kv_tokens: int, max_num_seqs: int, threads: int) -> RunFigures:
    import httpx
    from agentrt.server import ServerThread, create_app
    engine = _engine(loaded, kv_tokens, max_num_seqs, threads)
    app = create_app(engine, model_name=model, policy=None if policy == "none" else policy, max_pending=4096)
    with ServerThread(app) as url:
        async def main():
            limits = httpx.Limits(max_connections=len(sessions) + 4)
            async with httpx.AsyncClient(timeout=600, limits=limits) as client:
                fig = RunFigures(0.0)
                t0 = time.monotonic()
                await asyncio.gather(*(_session_http(client, url, model, s, turns, out_tokens, fig) for s in sessions))
                fig.wall_s = time.monotonic() - t0
                return fig
        return asyncio.run(main())


def run_in_process(loaded, policy: str, sessions: list[Session], turns: int, out_tokens: int, kv_tokens: int,
                   max_num_seqs: int, threads: int) -> RunFigures:
    from agentrt.sched import WorkflowScheduler
    from agentrt.server.programs import ProgramTracker
    engine = _engine(loaded, kv_tokens, max_num_seqs, threads)
    door = WorkflowScheduler(policy, kv=engine.kv_spec, clock=engine.clock,
                             prefetch=lambda ids: engine.prefetch(ids, evict=True))
    engine.install_policy(door.engine_policy)
    tracker = ProgramTracker(door, engine.clock, end_program=engine.end_program)

    async def main():
        fig = RunFigures(0.0)
        t0 = time.monotonic()
        await asyncio.gather(*(_session_engine(engine, tracker, s, turns, out_tokens, fig) for s in sessions))
        fig.wall_s = time.monotonic() - t0
        await engine.close()
        return fig
    return asyncio.run(main())


def run_llama_cpp(gguf: str, model: str, sessions, turns, out_tokens, threads: int) -> RunFigures | None:
    """llama-cpp-python's OpenAI server on the same GGUF, as a subprocess (None when absent)."""
    import importlib.util
    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llama_cpp.server") is None:
        return None
    import subprocess
    import sys

    import httpx
    from agentrt.server.run import free_port
    port = free_port()
    import tempfile
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1",
                             "--port", str(port), "--n_threads", str(threads), "--n_ctx", "4096",
                             "--model_alias", model], stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, log, 120)

        async def main():
            async with httpx.AsyncClient(timeout=600) as client:
                fig = RunFigures(0.0)
                t0 = time.monotonic()
                await asyncio.gather(*(_session_http(client, url, model, s, turns, out_tokens, fig) for s in sessions))
                fig.wall_s = time.monotonic() - t0
                return fig
        return asyncio.run(main())
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def wait_ready(proc, url: str, log, seconds: float) -> None:
    """Until the server at `url` answers /v1/models; PeerUnavailable (with its last log line) when
    the process exits or `seconds` pass first."""
    import httpx
    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(url + "/v1/models", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
        if proc.poll() is not None or time.monotonic() > deadline:
            log.seek(0)
            tail = log.read().decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise PeerUnavailable(f"llama.cpp server did not start ({tail[0][:200]})")


class PeerUnavailable(RuntimeError):
    """A peer that is installed but could not be run; the report says why."""


def median_figures(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def bench_serve(model: str, *, sessions: int, turns: int, output_tokens: int, runs: int, policies: list[str],
                kv_tokens: int, max_num_seqs: int, threads: int, pause_s: tuple[float, float],
                progress=lambda msg: None) -> dict[str, Any]:
    import torch

    from agentrt.engine.loader import load_model
    loaded = load_model(model)
    work = make_sessions(sessions, turns, pause_s=pause_s)
    peers = ["in-process"] + [f"http/{p}" for p in policies]
    results: dict[str, list[dict[str, float]]] = {p: [] for p in peers}
    for r in range(runs):
        for peer in peers:                           # interleaved: drift hits every peer alike
            progress(f"run {r + 1}/{runs}: {peer}")
            if peer == "in-process":
                fig = run_in_process(loaded, "agentrt", work, turns, output_tokens, kv_tokens, max_num_seqs, threads)
            else:
                fig = run_http(loaded, model, peer.split("/", 1)[1], work, turns, output_tokens, kv_tokens,
                               max_num_seqs, threads)
            results[peer].append(fig.summary())
    gguf = None
    if model == "smollm2-135m":
        from agentrt.engine.loader import smollm2_gguf_path
        gguf = str(smollm2_gguf_path())
    llama, llama_status = None, "absent (pip install 'llama-cpp-python[server]')"
    try:
        llama = run_llama_cpp(gguf, model, work, turns, output_tokens, threads) if gguf else None
        llama_status = "measured" if llama is not None else llama_status
    except PeerUnavailable as exc:
        llama_status = str(exc)
    medians = {p: median_figures(rs) for p, rs in results.items()}
    if llama is not None:
        medians["llama.cpp server"] = llama.summary()
    base = medians["in-process"]["tok_per_s"]
    lru = medians.get("http/lru", {}).get("mean_jct_s")
    for p, m in medians.items():
        m["vs_in_process_tput"] = m["tok_per_s"] / base
        if lru:
            m["jct_vs_lru"] = lru / m["mean_jct_s"] if m["mean_jct_s"] else float("nan")
    return {"benchmark": "serve", "model": model, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch_threads": threads, "settings": {"sessions": sessions, "turns": turns, "output_tokens": output_tokens,
                                                   "runs": runs, "kv_device_tokens": kv_tokens,
                                                   "max_num_seqs": max_num_seqs, "pause_s": list(pause_s)},
            "medians": medians, "runs": results,
            "llama_cpp": llama_status,
            "server_overhead_tput": 1 - medians["http/agentrt"]["tok_per_s"] / base if "http/agentrt" in medians
            else None}
