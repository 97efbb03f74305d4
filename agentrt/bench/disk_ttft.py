"""Time to first token of a long shared system prompt in a fresh process: cold vs disk-warm.

    python -m agentrt.bench.disk_ttft [--tokens 2048] [--runs 3] [--weights auto] [--threads 2]

Each measurement is a new Python process (nothing in memory carries over): it loads the engine
with `kv_disk_dir`, then times one generate of 1 token for a chat whose system prompt is
`--tokens` long. Cold: an empty directory. Warm: the directory a cold process just filled.
Reports medians; model load time is excluded (it is the same in both).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time


def one(disk_dir: str, tokens: int, weights: str, threads: int) -> dict:
    from agentrt.engine import LLMEngine, SamplingParams

    opts = {} if weights == "auto" else {"weights": weights}
    engine = LLMEngine.from_pretrained("smollm2-135m", kv_disk_dir=disk_dir, num_threads=threads, **opts)
    words = "The archive holds records of tides, harvests, trade routes and the weather of each year. "
    system = words
    while len(engine.encode(system)) < tokens:
        system += words
    ids = engine.apply_chat_template([{"role": "system", "content": system},
                                      {"role": "user", "content": "Summarize the archive in one line."}])
    t0 = time.perf_counter()
    out = engine.generate(ids, SamplingParams(max_tokens=1))[0]
    ttft = time.perf_counter() - t0
    engine.flush_disk(120)
    return {"ttft_s": ttft, "prompt_tokens": len(ids), "cached_tokens": out.num_cached_tokens,
            "weights": engine.weights, "disk_loaded_blocks": engine.stats()["disk_loaded_blocks"]}


def spawn(disk_dir: str, tokens: int, weights: str, threads: int) -> dict:
    cmd = [sys.executable, "-m", "agentrt.bench.disk_ttft", "--child", disk_dir, "--tokens", str(tokens),
           "--weights", weights, "--threads", str(threads)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"measuring process failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--weights", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(one(a.child, a.tokens, a.weights, a.threads)))
        return
    cold, warm = [], []
    for _ in range(a.runs):
        with tempfile.TemporaryDirectory(prefix="agentrt-kv-") as d:
            cold.append(spawn(d, a.tokens, a.weights, a.threads))
            warm.append(spawn(d, a.tokens, a.weights, a.threads))
    c, w = statistics.median(r["ttft_s"] for r in cold), statistics.median(r["ttft_s"] for r in warm)
    from agentrt.engine.quant import cpu_capability
    print(f"CPU capability: {cpu_capability()} · weights {cold[0]['weights']} · prompt {cold[0]['prompt_tokens']} tokens "
          f"· {a.threads} threads · fresh process per run, median of {a.runs}")
    print("| run | TTFT s (runs) | cached prompt tokens | disk-loaded blocks |")
    print("|---|---|---|---|")
    for name, rs, med in (("cold (empty dir)", cold, c), ("disk-warm", warm, w)):
        runs = ", ".join(f"{r['ttft_s']:.3f}" for r in rs)
        print(f"| {name} | {med:.3f} ({runs}) | {rs[0]['cached_tokens']} | {rs[0]['disk_loaded_blocks']} |")
    print(f"disk-warm is {c / w:.1f}x faster than cold")


if __name__ == "__main__":
    main()
