"""The LangChain chat model on agentrt: a LangGraph ReAct agent with a tool, in-process and
through `agentrt serve` (real HTTP on loopback); bind_tools, streaming and async; LangGraph's
thread_id and node reach the program tracker, and the graph's nodes give steps-to-execution.

The "model" is a scripted runner on the tiny model's byte tokenizer: it calls the tool first,
then answers once the tool's result is in its prompt."""
from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("langgraph")

from langchain_core.messages import AIMessageChunk, ToolMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from langgraph.prebuilt import create_react_agent  # noqa: E402

from agentrt.engine import AsyncLLMEngine, EngineConfig, LLMEngine  # noqa: E402
from agentrt.integrations.langchain import ChatAgentrt, langgraph_program_graph  # noqa: E402
from agentrt.server import ServerThread, create_app  # noqa: E402
from server_helpers import ScriptRunner, assert_pool_clean  # noqa: E402

MODEL = "tiny-random-llama"
CALL = b'<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny, 24 C in {city}"


def scripted_engine(tiny_loaded):
    holder = {}

    def make(layout):
        holder["r"] = ScriptRunner(layout)
        holder["r"].rules = [(b"Result of get_weather", b"It is sunny in Paris."), (b"", CALL)]
        return holder["r"]
    return AsyncLLMEngine(LLMEngine(tiny_loaded, EngineConfig(device="cpu", kv_cache_tokens=4096), runner=make))


def run_agent(llm, thread: str):
    agent = create_react_agent(llm, [get_weather])
    llm.use_graph(agent)
    return agent.invoke({"messages": [("user", "Weather in Paris?")]}, {"configurable": {"thread_id": thread}})


def test_langgraph_program_graph_gives_steps_to_execution():
    llm = ChatAgentrt(model=MODEL)
    graph = langgraph_program_graph(create_react_agent(llm, [get_weather]))
    assert graph.agents == {"agent"} and graph.entry == "agent"
    assert graph.steps_to_execution(["tools"]) == {"agent": 1}
    assert graph.steps_to_execution(["agent"]) == {"agent": 0}
    assert graph.next_agents("tools") == ("agent",) and graph.agent_of("agent") == "agent"


def test_react_agent_in_process(tiny_loaded):
    engine = scripted_engine(tiny_loaded)
    llm = ChatAgentrt(model=MODEL, engine=engine, policy="kvflow")
    try:
        out = run_agent(llm, "thread-1")
        tool_msgs = [m for m in out["messages"] if isinstance(m, ToolMessage)]
        assert [m.content for m in tool_msgs] == ["sunny, 24 C in Paris"]
        assert out["messages"][-1].content == "It is sunny in Paris."
        door = llm._backend.app.state.door
        entry = door.table.entries["thread-1"]                  # thread_id is the program
        graph = llm._backend.service.tracker.programs["thread-1"].graph
        assert graph.agents == {"agent"} and graph.has_step("tools")   # the LangGraph graph went along
        assert entry.steps_to_execution == {"agent": 1}          # after its turn: via "tools", one step away
        assert door.table.predictor.samples("get_weather")       # the tool pause was measured
        assert out["messages"][1].usage_metadata["input_tokens"] > 0
        # streaming and async, straight on the model
        bound = llm.bind_tools([get_weather])
        chunks = list(bound.stream("Weather?"))
        merged = sum(chunks[1:], chunks[0])
        assert isinstance(merged, AIMessageChunk) and merged.tool_calls[0]["name"] == "get_weather"
        assert merged.tool_calls[0]["args"] == {"city": "Paris"}
        reply = asyncio.run(bound.ainvoke("Weather?"))
        assert reply.tool_calls[0]["args"] == {"city": "Paris"}

        async def astream():
            return [c async for c in llm.astream("Result of get_weather: sunny")]
        assert "".join(c.content for c in asyncio.run(astream())) == "It is sunny in Paris."
        llm.end_program("thread-1")
        assert door.table.entries["thread-1"].finished
        assert_pool_clean(engine)
    finally:
        llm.close()


def test_react_agent_through_the_server(tiny_loaded):
    engine = scripted_engine(tiny_loaded)
    app = create_app(engine, model_name=MODEL, policy="agentrt")
    with ServerThread(app) as url:
        llm = ChatAgentrt(model=MODEL, base_url=url + "/v1")
        out = run_agent(llm, "thread-2")
        assert out["messages"][-1].content == "It is sunny in Paris."
        assert app.state.tracker.programs["thread-2"].requests == 2
        assert app.state.door.table.predictor.samples("get_weather")
        chunks = list(llm.bind_tools([get_weather]).stream("Weather?"))
        assert sum(chunks[1:], chunks[0]).tool_calls[0]["name"] == "get_weather"
        llm.end_program("thread-2")
        assert "thread-2" not in app.state.tracker.programs
        assert_pool_clean(engine)
