"""`agentrt bench tools`: what a remote tool call costs, and how workers share the load.

1. Round trip: `calls` sequential calls of `echo` (returns its argument) in-process
   (`Tool.run`) and through the broker to one worker process, same run; p50 / p99 / mean.
2. Throughput: `throughput_calls` concurrent calls of `nap` (sleeps `sleep_s`) on 1..N worker
   processes of one shared-subscription group, each worker running one call at a time.

Workers are real `agentrt worker` processes (this module is their target); the broker is the
given one or a mosquitto started on a free loopback port.
"""
from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agentrt.tools import tool


@tool(expected_duration=0.001, timeout=10.0)
async def echo(x: int) -> int:
    """Return x."""
    return x


@tool(timeout=30.0)
async def nap(seconds: float) -> float:
    """Sleep, then return the seconds slept."""
    await asyncio.sleep(seconds)
    return seconds


@dataclass
class ToolsBenchConfig:
    broker: str = "local"
    calls: int = 500
    sleep_s: float = 0.1
    throughput_calls: int = 40
    max_workers: int = 4


def _pct(values: list[float], q: float) -> float:
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _summary(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {"calls": len(ms), "p50_ms": round(_pct(ms, 0.5), 3), "p99_ms": round(_pct(ms, 0.99), 3),
            "mean_ms": round(statistics.fmean(ms), 3)}


def start_worker(broker: str, worker_id: str, concurrency: int = 1) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "agentrt.cli", "worker", __name__, "--broker", broker,
                             "--id", worker_id, "--concurrency", str(concurrency)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def stop_workers(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


async def _timed(tool_, arguments: dict, n: int) -> list[float]:
    out = []
    for i in range(n):
        began = time.perf_counter()
        result = await tool_.run({**arguments, "x": i} if "x" in arguments else arguments)
        out.append(time.perf_counter() - began)
        if not result.ok:
            raise RuntimeError(f"{tool_.name} failed during the benchmark: {result.error}")
    return out


async def _burst(tool_, n: int, seconds: float) -> tuple[float, list[float]]:
    async def one() -> float:
        began = time.perf_counter()
        result = await tool_.run({"seconds": seconds})
        if not result.ok:
            raise RuntimeError(f"nap failed during the benchmark: {result.error}")
        return time.perf_counter() - began
    began = time.perf_counter()
    latencies = await asyncio.gather(*(one() for _ in range(n)))
    return time.perf_counter() - began, list(latencies)


def run_tools_bench(config: ToolsBenchConfig, log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    import torch

    from agentrt.tools.mqtt import Mosquitto, RemoteTools
    from agentrt.tools.mqtt.broker import mosquitto_version
    broker = None
    if config.broker == "local":
        broker = Mosquitto().start()
        url = broker.url
        log(f"started mosquitto {mosquitto_version()} on {url}")
    else:
        url = config.broker
    procs: list[subprocess.Popen] = []
    remote = None
    try:
        remote = RemoteTools(url)
        procs.append(start_worker(url, "bench-w0"))
        remote.wait_for_workers("echo", 1, wait=30)
        remote_echo, remote_nap = remote.tool("echo"), remote.tool("nap", retries=0)

        async def round_trips() -> dict[str, Any]:
            await _timed(echo, {"x": 0}, 20)                     # warm-up, both paths
            await _timed(remote_echo, {"x": 0}, 20)
            local = _summary(await _timed(echo, {"x": 0}, config.calls))
            far = _summary(await _timed(remote_echo, {"x": 0}, config.calls))
            return {"in_process": local, "remote": far,
                    "overhead_p50_ms": round(far["p50_ms"] - local["p50_ms"], 3),
                    "overhead_p99_ms": round(far["p99_ms"] - local["p99_ms"], 3)}
        log(f"round trip: {config.calls} sequential echo calls, in-process then remote ...")
        rtt = asyncio.run(round_trips())
        scaling = []
        for n in range(1, config.max_workers + 1):
            while len(procs) < n:
                procs.append(start_worker(url, f"bench-w{len(procs)}"))
            remote.wait_for_workers("nap", n, wait=30)
            time.sleep(0.3)                                        # subscriptions settle
            log(f"throughput: {config.throughput_calls} x nap({config.sleep_s}) on {n} worker(s) ...")
            wall, latencies = asyncio.run(_burst(remote_nap, config.throughput_calls, config.sleep_s))
            scaling.append({"workers": n, "calls": config.throughput_calls, "wall_s": round(wall, 3),
                            "calls_per_s": round(config.throughput_calls / wall, 2),
                            "ideal_calls_per_s": round(n / config.sleep_s, 2), "p50_ms": round(_pct(latencies, 0.5) * 1000, 1)})
        base = scaling[0]["calls_per_s"]
        for row in scaling:
            row["speedup"] = round(row["calls_per_s"] / base, 2)
        return {"benchmark": "tools", "broker": url, "mosquitto": mosquitto_version(),
                "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_count": os.cpu_count(),
                "sleep_s": config.sleep_s, "round_trip": rtt, "scaling": scaling}
    finally:
        if remote is not None:
            remote.close()
        stop_workers(procs)
        if broker is not None:
            broker.close()


def render_tools_bench(report: dict[str, Any]):
    from rich.console import Group
    from rich.table import Table
    rtt = report["round_trip"]
    head = (f"agentrt bench tools · mosquitto {report['mosquitto']} at {report['broker']} · cpu "
            f"{report['cpu_capability']}, {report['cpu_count']} cores")
    t1 = Table(title=f"{head}\nround trip: echo, sequential calls")
    for col in ("path", "calls", "p50 ms", "p99 ms", "mean ms"):
        t1.add_column(col, justify="left" if col == "path" else "right")
    for label, row in (("in-process Tool.run", rtt["in_process"]), ("remote, 1 worker over loopback MQTT", rtt["remote"])):
        t1.add_row(label, str(row["calls"]), f"{row['p50_ms']:.3f}", f"{row['p99_ms']:.3f}", f"{row['mean_ms']:.3f}")
    t1.add_row("overhead of the remote call", "", f"+{rtt['overhead_p50_ms']:.3f}", f"+{rtt['overhead_p99_ms']:.3f}", "")
    t2 = Table(title=f"throughput: nap({report['sleep_s']} s) calls at once, workers of one shared subscription, "
                     f"1 call at a time each")
    for col in ("workers", "calls", "wall s", "calls/s", "ideal calls/s", "speedup", "p50 ms"):
        t2.add_column(col, justify="right")
    for row in report["scaling"]:
        t2.add_row(str(row["workers"]), str(row["calls"]), f"{row['wall_s']:.3f}", f"{row['calls_per_s']:.2f}",
                   f"{row['ideal_calls_per_s']:.2f}", f"{row['speedup']:.2f}x", f"{row['p50_ms']:.1f}")
    return Group(t1, t2)
