"""Remote tools and the event stream: `agentrt worker`, `agentrt events`, `agentrt bench tools`."""
from __future__ import annotations

import asyncio
import signal
import sys
from typing import Annotated

import typer

from agentrt.cli.common import JsonOpt, app, bench_app, emit_json, err, fail, out

BrokerOpt = Annotated[str, typer.Option("--broker", "-b", help="the MQTT broker: mqtt://host:port, optionally /topic-prefix")]
DEFAULT_BROKER = "mqtt://127.0.0.1:1883"


def load_tools(target: str, names: list[str] | None):
    """The `@tool` functions a module or file defines (module-level Tool objects)."""
    from agentrt.graph.target import TargetError, _import_file, _import_module, _is_file, _split
    from agentrt.tools import Tool
    try:
        source, attr = _split(target)
        module = _import_file(source) if _is_file(source) else _import_module(source)
    except TargetError as exc:
        fail(str(exc))
    if attr is not None:
        obj = getattr(module, attr, None)
        found = {t.name: t for t in (obj if isinstance(obj, (list, tuple)) else [obj]) if isinstance(t, Tool)}
    else:
        found = {v.name: v for v in vars(module).values() if isinstance(v, Tool)}
    if not found:
        fail(f"{target} defines no @tool functions at module level")
    if names:
        missing = [n for n in names if n not in found]
        if missing:
            fail(f"{target} has no tool {', '.join(missing)} (it has: {', '.join(sorted(found))})")
        found = {n: found[n] for n in names}
    return list(found.values())


@app.command(epilog="Examples: agentrt worker workflows/coding_agent.py --broker mqtt://127.0.0.1:1883 · "
                    "agentrt worker my_pkg.tools --concurrency 8 --tools search,fetch")
def worker(
    target: Annotated[str, typer.Argument(help="the tools: path/to/file.py or package.module (its @tool functions)")],
    broker: BrokerOpt = DEFAULT_BROKER,
    concurrency: Annotated[int, typer.Option(min=1, help="calls run at once")] = 4,
    tools: Annotated[str | None, typer.Option(help="serve only these tools (comma-separated)")] = None,
    group: Annotated[str, typer.Option(help="shared-subscription group: workers of a group share the calls")] = "agentrt",
    worker_id: Annotated[str | None, typer.Option("--id", help="this worker's name (default: host-pid-random)")] = None,
    heartbeat: Annotated[float, typer.Option(min=0.05, help="seconds between heartbeats of a running call")] = 0.5,
) -> None:
    """Serve a module's @tool functions to agentrt runtimes over MQTT, until SIGINT / SIGTERM.

    Advertises each tool (name, schema, expected duration) on a retained topic, takes calls from a
    shared subscription, and states at start-up which jail model-written code runs under.
    """
    from agentrt.tools.mqtt import BrokerURL, BrokerURLError, Worker
    try:
        url = BrokerURL.parse(broker)
    except BrokerURLError as exc:
        fail(str(exc))
    served = load_tools(target, [t for t in (tools or "").split(",") if t] or None)
    from agentrt.tools.sandbox import default_jail
    protection = default_jail().protection
    w = Worker(served, url, worker_id=worker_id, group=group, concurrency=concurrency, heartbeat=heartbeat,
               protection=protection)
    err.print(f"worker {w.id}: serving {', '.join(t.name for t in served)} on {url} "
              f"(group {group}, concurrency {concurrency})", highlight=False)
    err.print(f"worker {w.id}: code jail: {protection}", highlight=False)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        task = asyncio.create_task(w.serve(stop))
        connected = asyncio.create_task(w.connected.wait())
        await asyncio.wait({task, connected}, return_when=asyncio.FIRST_COMPLETED)
        if connected.done():
            err.print(f"worker {w.id}: connected; ready", highlight=False)
        await task
    asyncio.run(main())
    err.print(f"worker {w.id}: stopped ({dict(w.stats)})", highlight=False)


@app.command(epilog="Examples: agentrt events --broker mqtt://127.0.0.1:1883 · agentrt events --run RUN_ID --json")
def events(
    broker: BrokerOpt = DEFAULT_BROKER,
    run: Annotated[str | None, typer.Option(help="only this run's events (default: every run)")] = None,
    seconds: Annotated[float | None, typer.Option(help="stop after this many seconds")] = None,
    count: Annotated[int | None, typer.Option(help="stop after this many events")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print each event as one JSON line instead of a table")] = False,
) -> None:
    """Tail the programs' live events (`agentrt run --events mqtt://...`) as a table."""
    import json
    import time

    from agentrt.tools.mqtt import BrokerURL, BrokerURLError, EventTable, tail_events
    try:
        url = BrokerURL.parse(broker)
    except BrokerURLError as exc:
        fail(str(exc))
    table = EventTable()
    live = None
    if not as_json and out.is_terminal:
        from rich.live import Live
        live = Live(table.render(), console=out, refresh_per_second=4)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if seconds is not None:
            loop.call_later(seconds, stop.set)

        def on_event(event: dict) -> None:
            row = table.update(event)
            if as_json:
                sys.stdout.write(json.dumps(event) + "\n")
                sys.stdout.flush()
            elif live is not None:
                live.update(table.render())
            else:
                out.print(f"{row['run']} {row['program']} {event.get('event')} step={row['step']} "
                          f"status={row['status']} t={row['t']:.2f}", highlight=False)
            if count is not None and table.events >= count:
                stop.set()
        ready = asyncio.Event()
        loop.create_task(ready.wait()).add_done_callback(lambda _: err.print(
            f"tailing {url} ({'run ' + run if run else 'all runs'}) ...", highlight=False))
        await tail_events(url, on_event, run=run, stop=stop, ready=ready)

    started = time.monotonic()
    if live is not None:
        with live:
            asyncio.run(main())
    else:
        asyncio.run(main())
    if not as_json:
        out.print(table.render())
        err.print(f"{table.events} events in {time.monotonic() - started:.1f} s", highlight=False)


@bench_app.command("tools", epilog="Examples: agentrt bench tools · agentrt bench tools --broker mqtt://127.0.0.1:1883 "
                                   "--calls 1000 --json")
def bench_tools(
    broker: Annotated[str, typer.Option("--broker", "-b", help="a broker to use; 'local' starts a mosquitto on a "
                                                               "free loopback port")] = "local",
    calls: Annotated[int, typer.Option(min=10, help="sequential calls for the round-trip figures")] = 500,
    sleep_ms: Annotated[float, typer.Option(help="the sleeping tool's duration for the throughput figures")] = 100.0,
    throughput_calls: Annotated[int, typer.Option(min=4, help="calls per throughput run")] = 40,
    max_workers: Annotated[int, typer.Option(min=1, help="throughput from 1 to this many workers")] = 4,
    as_json: JsonOpt = False,
) -> None:
    """Remote tool calls over MQTT: round trip (p50/p99) against the same tool in-process, and
    throughput of 1..N workers on a shared subscription with a tool that sleeps."""
    from agentrt.bench.tools_bench import ToolsBenchConfig, render_tools_bench, run_tools_bench
    config = ToolsBenchConfig(broker=broker, calls=calls, sleep_s=sleep_ms / 1000, throughput_calls=throughput_calls,
                              max_workers=max_workers)
    try:
        report = run_tools_bench(config, log=lambda m: err.print(f"[dim]{m}[/]"))
    except (FileNotFoundError, ConnectionError, RuntimeError) as exc:
        fail(str(exc))
    if as_json:
        return emit_json(report)
    out.print(render_tools_bench(report))
