"""The official `openai` client against `agentrt serve`: sync, async, streaming and tool calls.

Starts the server in this process on a free loopback port (or uses --base-url), then talks to it
as to any OpenAI-compatible endpoint. Program fields go in `extra_body` (or X-Program-Id headers):
the server's scheduler then sees one program with two agent turns and the tool pause between.

Run: python examples/openai_client.py [--model tiny-random-llama] [--base-url http://127.0.0.1:8000/v1]
"""
import argparse
import asyncio
import json

import openai

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def demo(base_url: str, model: str) -> None:
    client = openai.OpenAI(base_url=base_url, api_key="none")
    print("models:", [m.id for m in client.models.list().data])
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    job = {"program_id": "trip-1", "agent_id": "planner"}
    r = client.chat.completions.create(model=model, messages=ask, tools=TOOLS, max_tokens=48, extra_body=job,
                                       tool_choice={"type": "function", "function": {"name": "get_weather"}})
    msg = r.choices[0].message
    if msg.tool_calls:
        call = msg.tool_calls[0]
        print(f"tool call: {call.function.name}({call.function.arguments}) finish={r.choices[0].finish_reason}")
        ask += [msg.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"sky": "sunny", "c": 24})}]
    else:
        print(f"no tool call parsed; the reply comes back as text ({len(msg.content or '')} chars)")
        ask += [{"role": "assistant", "content": msg.content or ""}, {"role": "user", "content": "sunny, 24 C"}]
    print(f"usage: {r.usage.prompt_tokens} prompt + {r.usage.completion_tokens} completion tokens")
    stream = client.chat.completions.create(model=model, messages=ask, tools=TOOLS, max_tokens=32, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_body={**job, "is_last_step": True})
    pieces, usage = [], None
    for chunk in stream:
        pieces += [c.delta.content or "" for c in chunk.choices]
        usage = chunk.usage or usage
    print(f"streamed {len(pieces)} chunks, {usage.completion_tokens} tokens, "
          f"{usage.prompt_tokens_details.cached_tokens} of {usage.prompt_tokens} prompt tokens from the cache")

    async def many() -> list:
        aclient = openai.AsyncOpenAI(base_url=base_url, api_key="none")
        outs = await asyncio.gather(*(aclient.completions.create(model=model, prompt=f"Fact {i}:", max_tokens=8)
                                      for i in range(4)))
        await aclient.close()
        return outs
    print("async completions:", [o.usage.completion_tokens for o in asyncio.run(many())], "tokens")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--base-url", default=None, help="an agentrt serve URL (default: start one here)")
    args = ap.parse_args()
    if args.base_url:
        demo(args.base_url, args.model)
    else:
        from agentrt.engine import AsyncLLMEngine
        from agentrt.server import ServerThread, create_app
        app = create_app(AsyncLLMEngine.from_pretrained(args.model, kv_cache_tokens=4096), model_name=args.model)
        with ServerThread(app) as url:
            demo(url + "/v1", args.model)
            print("programs started:", app.state.tracker.started, "ended:", app.state.tracker.ended)
