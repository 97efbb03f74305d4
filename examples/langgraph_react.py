"""A LangGraph ReAct agent with a tool, on agentrt (in-process, or an `agentrt serve` URL).

`ChatAgentrt` is a LangChain chat model; inside the graph each call carries LangGraph's
thread_id (the program) and node (the agent), and `use_graph` hands agentrt the graph's nodes
and edges, so its scheduler knows where the agent is and how far its next turn is.

Run: python examples/langgraph_react.py [--model tiny-random-llama] [--base-url http://127.0.0.1:8000/v1]
"""
import argparse

from langchain_core.tools import tool
from langgraph.prebuilt import create_react_agent

from agentrt.integrations.langchain import ChatAgentrt


@tool
def get_weather(city: str) -> str:
    """Current weather in a city."""
    return {"paris": "light rain, 12 C", "kyoto": "sunny, 24 C"}.get(city.lower(), "overcast, 19 C")


def main(model: str, base_url: str | None) -> None:
    llm = ChatAgentrt(model=model, base_url=base_url, max_tokens=64, engine_config={"kv_cache_tokens": 4096})
    agent = create_react_agent(llm, [get_weather])
    llm.use_graph(agent)
    for thread, city in (("trip-1", "Paris"), ("trip-2", "Kyoto")):
        out = agent.invoke({"messages": [("user", f"What is the weather in {city}?")]},
                           {"configurable": {"thread_id": thread}, "recursion_limit": 6})
        kinds = [type(m).__name__ for m in out["messages"]]
        last = out["messages"][-1]
        print(f"{thread}: {len(kinds)} messages ({', '.join(kinds)}); "
              f"{last.usage_metadata['input_tokens']} prompt tokens in the last turn, "
              f"{last.usage_metadata['input_token_details']['cache_read']} from the prefix cache")
        llm.end_program(thread)
    if base_url is None:
        tracker = llm._backend.service.tracker
        print(f"agentrt saw {tracker.started} programs, {tracker.ended} ended, {tracker.pauses} tool pauses")
    llm.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--base-url", default=None, help="an agentrt serve URL; default: an engine in this process")
    args = ap.parse_args()
    main(args.model, args.base_url)
