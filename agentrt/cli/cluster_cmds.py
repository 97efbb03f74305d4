"""`agentrt serve --replicas N` (the Ray front), `agentrt status`, `agentrt bench cluster`."""
from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from agentrt.cli.common import JsonOpt, app, bench_app, emit_json, err, fail, out, user_errors


class RouterName(str, enum.Enum):
    round_robin = "round-robin"
    least_loaded = "least-loaded"
    prefix = "prefix"
    program = "program"


def serve_replicas(*, model: str, name: str, replicas: int, router: str, engine_config: dict[str, Any],
                   policy: str | None, host: str, port: int, api_key: str | None, max_pending: int,
                   body_limit: int, max_tokens: int, idle_timeout: float, grace: float, log_level: str,
                   ray_address: str | None) -> None:
    """Start N replica actors on Ray (a local cluster unless `ray_address`) and serve the front."""
    from agentrt.cluster.ray_replicas import ReplicaSet, ReplicaSpec, require_ray
    try:
        ray = require_ray()
    except RuntimeError as exc:
        fail(f"--replicas: {exc}")
    import asyncio

    from agentrt.cluster.app import create_cluster_app
    from agentrt.cluster.front import ClusterFront
    from agentrt.cluster.router import Router
    from agentrt.server.run import make_server
    ray.init(address=ray_address, include_dashboard=False, log_to_driver=False,
             **({} if ray_address else {"num_cpus": max(replicas, 1)}))
    spec = ReplicaSpec(model, engine_config, policy, name, max_pending, max_tokens, idle_timeout)
    with err.status(f"starting {replicas} replicas of {model} on Ray ..."):
        replica_set = ReplicaSet(replicas, spec)
        asyncio.run(replica_set.wait_ready())
    front = ClusterFront(replica_set, Router(router, replica_set.names))
    app_ = create_cluster_app(front, model_name=name, api_key=api_key, max_body_bytes=body_limit,
                              on_close=replica_set.shutdown)
    server = make_server(app_, host, port, grace=grace, log_level=log_level, access_log=log_level == "debug")
    err.print(f"agentrt serve: {name} on http://{host}:{port}/v1, {replicas} replicas on Ray "
              f"(router {router}, policy {policy or 'none'}); `agentrt status --url http://{host}:{port}` shows them")
    server.run()
    if not server.started:
        raise typer.Exit(1)


STATUS_EPILOG = """Examples:

  agentrt status                                  # the server on http://127.0.0.1:8000

  agentrt status --url http://10.0.0.5:8000 --api-key secret --json"""


@app.command(epilog=STATUS_EPILOG)
def status(
    url: Annotated[str, typer.Option(help="the server's base URL")] = "http://127.0.0.1:8000",
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="AGENTRT_API_KEY", show_envvar=True,
                                                help="the server's API key")] = None,
    programs: Annotated[bool, typer.Option(help="list each replica's programs")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show a running `agentrt serve --replicas N`: each replica (alive, requests in flight,
    programs homed there, engine batch and queue, KV use, prefix hit rate, restarts) and the
    front's counters (failovers, deaths, rejoins, moves)."""
    import httpx
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.get(url.rstrip("/") + "/v1/cluster", headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        fail(f"cannot reach {url}: {exc} (is `agentrt serve` running there?)")
    if r.status_code == 404:
        fail(f"{url} serves one engine, not replicas (start it with `agentrt serve --replicas N`); "
             f"its /metrics has the engine's figures")
    if r.status_code != 200:
        fail(f"{url}/v1/cluster answered {r.status_code}: {r.text[:200]}")
    info = r.json()
    if as_json:
        emit_json(info)
        return
    out.print(_status_table(info, programs))


def _status_table(info: dict[str, Any], programs: bool) -> Table:
    t = Table(title=f"router {info['router']}: {info['requests']} requests, {info['failovers']} failovers, "
                    f"{info['replica_deaths']} deaths, {info['rejoins']} rejoins, {info['moves']} moves")
    for col in ("replica", "alive", "in flight", "programs", "routed", "running", "waiting", "KV blocks",
                "hit rate", "paused", "restarts", *(("program ids",) if programs else ())):
        t.add_column(col, justify="left" if col in ("replica", "program ids") else "right")
    for r in info["replicas"]:
        kv = f"{r['kv_blocks_in_use']}/{r['kv_blocks']}" if r.get("kv_blocks") else "-"
        hit = f"{r['prefix_hit_rate']:.1%}" if r.get("prefix_hit_rate") is not None else "-"
        t.add_row(r["name"], "yes" if r["alive"] else "DEAD", str(r["inflight"]), str(r["programs"]),
                  str(r["routed_requests"]), str(r.get("engine_running", "-")), str(r.get("engine_waiting", "-")),
                  kv, hit, str(r.get("programs_paused", "-")), str(r["restarts"]),
                  *((", ".join(r["programs_list"]),) if programs else ()))
    return t


BENCH_EPILOG = ("Examples: agentrt bench cluster --sim h100x4-llama3-70b --replicas 16 --programs 600 --rate 2 · "
                "agentrt bench cluster --model tiny-random-llama --replicas 2 --programs 6 --scale 0.01 "
                "--min-turns 8 --max-turns 12 --time-scale 20 --json")


@bench_app.command("cluster", epilog=BENCH_EPILOG)
def bench_cluster(
    routers: Annotated[str, typer.Option("--routers", "-r", help="comma-separated: program, prefix, round-robin, "
                                                                 "least-loaded")] = "program,prefix,round-robin",
    replicas: Annotated[int, typer.Option("--replicas", min=1, help="engine replicas")] = 2,
    sim: Annotated[str | None, typer.Option("--sim", metavar="PROFILE", help="simulated replicas of this step-time "
                                            "profile (h100x4-llama3-70b, ...) on one virtual clock, in-process; "
                                            "without it: real replicas of --model as Ray actors behind the endpoint")] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="real replicas: the model")] = "tiny-random-llama",
    programs: Annotated[int, typer.Option("--programs", "-n", min=1, help="SWE-agent episodes per run")] = 8,
    rate: Annotated[float, typer.Option(min=0.0, help="Poisson arrivals per second; 0: all at once")] = 0.0,
    scale: Annotated[float, typer.Option(min=0.001, help="multiply every token length")] = 1.0,
    time_scale: Annotated[float, typer.Option(min=0.001, help="divide every tool latency")] = 1.0,
    min_turns: Annotated[int, typer.Option(min=1, help="fewest turns of an episode")] = 20,
    max_turns: Annotated[int, typer.Option(min=1, help="most turns of an episode")] = 60,
    kv_tokens: Annotated[int | None, typer.Option("--kv-device-tokens", min=16, help="each replica's device tier "
                                                  "(sim default: the profile's; real default 16384)")] = None,
    host_tokens: Annotated[int, typer.Option("--kv-host-tokens", min=0, help="each replica's host tier in tokens "
                                             "(0: none; evicted blocks are then recomputed)")] = 0,
    policy: Annotated[str, typer.Option(help="each replica's KV policy (lru, continuum, kvflow, agentrt)")] = "agentrt",
    threads: Annotated[int, typer.Option(min=1, help="real replicas: torch threads each")] = 1,
    runs: Annotated[int, typer.Option(min=1, help="runs per router (medians reported)")] = 1,
    seed: Annotated[int, typer.Option(min=0, help="seed of the episodes")] = 0,
    ray_address: Annotated[str | None, typer.Option(help="real replicas: an existing Ray cluster (default: a "
                                                         "local one)")] = None,
    as_json: JsonOpt = False,
    save: Annotated[Path | None, typer.Option(help="also write the JSON object to this file")] = None,
) -> None:
    """Router policies side by side on the SWE-agent workload over N replicas: mean / p50 / p95
    JCT, throughput, prefix hit rate, prefill tokens computed, load balance (max over mean
    replica compute), program moves and failovers, with issue 16's targets below the table."""
    from agentrt.bench.cluster_bench import medians, parse_routers, targets
    from agentrt.bench.swe import SweShape, summary, swe_programs
    with user_errors():
        names = parse_routers(routers)
        shape = SweShape(programs=programs, rate=rate, seed=seed, scale=scale, time_scale=time_scale,
                         min_turns=min_turns, max_turns=max_turns)
        episodes = swe_programs(shape)
    log = err.print
    log(f"{programs} SWE-agent episodes over {replicas} {'simulated ' + sim if sim else model} replicas: "
        + ", ".join(f"{k} {v:.3g}" for k, v in summary(episodes).items()))
    with user_errors():
        results = _bench_runs(sim, names, replicas, shape, model, kv_tokens, host_tokens, policy, threads, runs,
                              ray_address, log)
    table = {name: medians(rs) for name, rs in results.items()}
    obj = {"benchmark": "cluster", "backend": f"sim:{sim}" if sim else f"ray:{model}", "replicas": replicas,
           "routers": table, "runs": {n: [r.figures() for r in rs] for n, rs in results.items()},
           "targets": targets(table), "workload": summary(episodes),
           "settings": {"programs": programs, "rate": rate, "scale": scale, "time_scale": time_scale,
                        "min_turns": min_turns, "max_turns": max_turns, "kv_device_tokens": kv_tokens,
                        "kv_host_tokens": host_tokens, "policy": policy, "threads": threads, "runs": runs,
                        "seed": seed},
           "errors": [e for rs in results.values() for r in rs for e in r.errors][:20]}
    if save is not None:
        save.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    if as_json:
        emit_json(obj)
        return
    out.print(_bench_table(obj))
    for t in obj["targets"]:
        out.print(f"  {'met ' if t['met'] else 'MISS'}  {t['target']}: {t['ratio']:.2f}")


def _bench_runs(sim, names, replicas, shape, model, kv_tokens, host_tokens, policy, threads, runs, ray_address, log):
    if sim:
        from agentrt.bench.cluster_bench import token_episodes
        from agentrt.bench.cluster_sim import sim_bench
        from agentrt.engine.sim import load_profile
        profile = load_profile(sim)
        return sim_bench(token_episodes(shape), names, replicas, profile, runs, log, policy=policy,
                         kv_tokens=kv_tokens, host_tokens=host_tokens)
    from agentrt.bench.cluster_real import real_bench
    from agentrt.bench.swe import swe_programs
    from agentrt.cluster.ray_replicas import ReplicaSpec, require_ray
    try:
        require_ray()
    except RuntimeError as exc:
        fail(str(exc))
    spec = ReplicaSpec(model, {"num_threads": threads, "kv_cache_tokens": kv_tokens or 16384,
                              "host_kv_tokens": host_tokens}, policy)
    return real_bench(swe_programs(shape), shape, names, replicas, spec, runs, log, ray_address=ray_address)


def _bench_table(obj: dict[str, Any]) -> Table:
    t = Table(title=f"cluster: {obj['replicas']} replicas ({obj['backend']}), SWE-agent, "
                    f"{obj['settings']['programs']} programs, medians of {obj['settings']['runs']} run(s)")
    cols = (("router", None), ("mean JCT s", "mean_jct_s"), ("p50", "p50_jct_s"), ("p95", "p95_jct_s"),
            ("out tok/s", "output_tokens_per_s"), ("hit rate", "hit_rate"),
            ("prefill tok", "prefill_tokens"), ("load max/mean", "max_over_mean_load"),
            ("moves", "moves"), ("failovers", "failovers"))
    for head, _ in cols:
        t.add_column(head, justify="left" if head == "router" else "right")
    for name, f in obj["routers"].items():
        t.add_row(name, *(f"{f[k]:.1%}" if k == "hit_rate" else f"{f[k]:,.0f}" if k == "prefill_tokens"
                          else f"{f[k]:.2f}" for _, k in cols[1:]))
    return t
