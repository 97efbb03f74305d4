"""The coding agent with its sandbox tools on two remote workers, one of them killed halfway.

Starts a Mosquitto on a free loopback port (or uses --broker), two `agentrt worker
workflows/coding_agent.py` processes sharing one sandbox folder, and runs N coding programs whose
tool calls go over MQTT (workflows/coding_agent.py:remote). Halfway through the run's calls, the
worker holding a call is killed with SIGKILL: the call is retried on the other worker and every
program still completes. Needs the mqtt extra and Debian's mosquitto package.

    python examples/remote_tools.py -n 4 [--model tiny-random-llama --max-tokens 16] [--no-kill]
"""
import argparse, asyncio, os, signal, subprocess, sys, tempfile, time
from collections import Counter
from pathlib import Path

from agentrt import Runtime
from agentrt.tools.mqtt import Mosquitto, RemoteTools

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "workflows"))
import coding_agent  # noqa: E402


async def main(args, url: str, shared: str) -> None:
    env = {**os.environ, "AGENTRT_SANDBOX_DIR": shared, "OMP_NUM_THREADS": "1"}
    workers = {n: subprocess.Popen([sys.executable, "-m", "agentrt.cli", "worker", str(ROOT / "workflows/coding_agent.py"),
                                    "--broker", url, "--id", n], env=env) for n in ("worker-a", "worker-b")}
    client = RemoteTools(url)
    try:
        client.wait_for_workers("check", 2, wait=60)
        workflow = coding_agent.remote(client=client)       # tools built from the workers' adverts
        coder = workflow.agents["coder"]
        coder.params = coder.params.model_copy(update={"max_tokens": args.max_tokens})
        counts, killed = Counter(), []

        def on_event(event) -> None:
            counts[event.event] += 1
            if event.event == "tool_start" and counts["tool_start"] >= args.halfway and not killed and not args.no_kill:
                asyncio.get_running_loop().call_later(0.01, kill)

        def kill() -> None:                                  # the worker busy on a call right now
            holder = next((w for w in client.in_flight().values() if w in workers), None)
            if holder and not killed:
                os.kill(workers[holder].pid, signal.SIGKILL)
                killed.append(holder)
                print(f"killed {holder} (SIGKILL) mid-call, after {counts['tool_start']} tool calls")
        started = time.monotonic()
        async with Runtime(args.model, on_event=[on_event], kv_cache_tokens=8192) as rt:
            results = await rt.run_many(workflow, [{} for _ in range(args.n)])
        for r in results:
            first = (r.output or "(none)").splitlines()[0]
            print(f"{r.program_id}: {r.status} in {r.jct:.1f} s · {r.tool_calls} tool calls · tests: {first}{r.error or ''}")
        alive = [n for n, p in workers.items() if p.poll() is None]
        print(f"{sum(r.status == 'done' for r in results)}/{len(results)} programs done in "
              f"{time.monotonic() - started:.1f} s · {counts['tool_start']} remote calls, {counts['tool_retry']} "
              f"retried · workers alive: {', '.join(alive)}")
    finally:
        client.close()
        for p in workers.values():
            if p.poll() is None:
                p.terminate()
        for p in workers.values():
            p.wait(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--broker", default=None, help="an MQTT broker (default: start a local mosquitto)")
    parser.add_argument("-n", type=int, default=4, help="programs")
    parser.add_argument("--halfway", type=int, default=6, help="kill a worker at this tool call")
    parser.add_argument("--max-tokens", type=int, default=256, help="the coder's reply length")
    parser.add_argument("--no-kill", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agentrt-shared-") as shared:
        if args.broker:
            asyncio.run(main(args, args.broker, shared))
        else:
            with Mosquitto() as broker:
                asyncio.run(main(args, broker.url, shared))
