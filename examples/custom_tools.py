"""Custom tools: Python functions as tools, called by the graph and by the model itself.

* `@tool` makes a tool of a typed function, sync or async; its signature and docstring are what
  the model sees. `expected_duration` is a scheduling hint, `timeout` bounds each attempt and
  `retries` runs a failing call again (after an exponential `backoff`).
* graph-driven: `workflow.tool(...)` places a call in the graph; its arguments are state templates.
* model-driven: an Agent with `tools=[...]` may reply <tool_call>{...}</tool_call>; the runtime runs
  the tool and feeds the result back, up to `max_turns` replies (SmolLM2-135M seldom calls tools).
* `Runtime(...).run_many` runs programs at once on one engine; `trace=` writes events as JSON lines.
Run: python examples/custom_tools.py [--model tiny-random-llama] [--trace run.jsonl]
"""
import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from pydantic import BaseModel

from agentrt import Agent, Runtime, SamplingParams, Workflow, tool

CITIES = {"paris": ("Capital of France: the Louvre, the Eiffel Tower, cafes on the Seine.", "light rain, 12 C"),
          "kyoto": ("Old capital of Japan: temples, gardens, the Gion district, a bamboo grove.", "sunny, 24 C"),
          "lima": ("Capital of Peru: cliffs over the Pacific, a colonial center, ceviche.", "overcast, 19 C")}
attempts: dict[str, int] = {}


@tool(expected_duration=0.001, timeout=1.0)
def city_facts(city: str) -> str:
    """Short facts about a city (sights, food), given its name, e.g. "Paris"."""
    return CITIES.get(city.strip().lower(), (f"no facts about {city}",))[0]


@tool(expected_duration=0.2, timeout=2.0, retries=2, backoff=0.05)
async def weather(city: str) -> str:
    """Today's weather in a city."""
    await asyncio.sleep(0.2)                     # a slow remote service that fails the first
    attempts[city] = attempts.get(city, 0) + 1   # time for each city: the retry saves the call
    if attempts[city] == 1:
        raise ConnectionError("weather service busy")
    return CITIES.get(city.strip().lower(), ("", "unknown"))[1]


class Trip(BaseModel):
    city: str
    weather: str = ""                            # written by the graph-driven tool step
    plan: str = ""                               # written by the guide


guide = Agent("guide", "You are a travel guide. You answer in three short sentences.", tools=[city_facts],
              max_turns=3, params=SamplingParams(max_tokens=80, temperature=0.7, top_p=0.9, seed=0))
workflow = Workflow("trip", Trip, output="plan")
workflow.tool("forecast", weather, {"city": "{city}"}, output="weather")            # graph-driven
workflow.llm("plan", guide, "Plan an afternoon in {city}. Today's weather: {weather}. "
                            "Look up the city's facts first.", output="plan")        # model-driven
workflow.edge("forecast", "plan")


async def run_all(model: str, trace: Path) -> list:
    async with Runtime(model, trace=trace) as rt:               # the runtime loads the model
        return await rt.run_many(workflow, [{"city": c} for c in ("Paris", "Kyoto", "Lima")])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Tools, graph-driven and model-driven.")
    parser.add_argument("--model", default="smollm2-135m", help="model alias or local HF directory")
    parser.add_argument("--trace", type=Path, default=Path(tempfile.gettempdir()) / "agentrt_custom_tools.jsonl")
    args = parser.parse_args()
    results = asyncio.run(run_all(args.model, args.trace))
    events = [json.loads(line) for line in args.trace.read_text().splitlines()]
    for r in results:                            # a per-program summary, from results and the trace
        mine = [e for e in events if e["program"] == r.program_id]
        by_agent = sum(e["event"] == "tool_start" and e["step"] == "plan" for e in mine)
        print(f"{r.program_id}: {r.status} in {r.jct:.2f} s · {r.llm_calls} LLM calls · {r.tool_calls} tool calls "
              f"({by_agent} by the agent, {sum(e['event'] == 'tool_retry' for e in mine)} retries) · "
              f"prefix hit rate {r.hit_rate:.0%}")
        print(f"  {r.state.city} ({r.state.weather}): {(r.output or r.error or '').strip()[:300]}")
    print(f"\ntrace: {len(events)} events in {args.trace}")
    raise SystemExit(0 if all(r.status == "done" for r in results) else 1)
