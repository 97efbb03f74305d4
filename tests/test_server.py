"""`agentrt serve` through real HTTP on loopback: uvicorn on a free 127.0.0.1 port, the official
`openai` client (sync, async, streaming), raw httpx for errors, raw sockets for disconnects.

Two servers per module: the tiny model (real compute, random text) and a scripted runner whose
"model" writes a chosen text (tool calls, bash blocks) on the same byte tokenizer.
"""
from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import openai
import pytest

from agentrt.engine import AsyncLLMEngine, EngineConfig, LLMEngine
from agentrt.server import ServerThread, create_app
from server_helpers import ScriptRunner, assert_pool_clean, wait_idle

MODEL = "tiny-random-llama"
KEY = "sk-test"
MSG = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def tiny(tiny_loaded):
    engine = AsyncLLMEngine(LLMEngine(tiny_loaded, EngineConfig(device="cpu", dtype="float32", kv_cache_tokens=4096,
                                                                max_model_len=1024)))
    app = create_app(engine, model_name=MODEL, policy="agentrt", api_key=KEY, max_body_bytes=64 << 10)
    with ServerThread(app) as url:
        yield url, engine, app
    engine.engine.pool.check_invariants()


@pytest.fixture(scope="module")
def scripted(tiny_loaded):
    holder = {}

    def runner(layout):
        holder["runner"] = ScriptRunner(layout, step_seconds=0.002)
        return holder["runner"]
    engine = AsyncLLMEngine(LLMEngine(tiny_loaded, EngineConfig(device="cpu", kv_cache_tokens=4096), runner=runner))
    app = create_app(engine, model_name=MODEL, policy="continuum-ttl", max_pending=3, idle_timeout=0.5)
    with ServerThread(app) as url:
        yield url, engine, app, holder["runner"]


@pytest.fixture
def client(tiny):
    return openai.OpenAI(base_url=tiny[0] + "/v1", api_key=KEY, max_retries=0, timeout=30)


def error_of(resp: httpx.Response) -> dict:
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


# ------------------------------------------------------------------------------------------ basics
def test_models_and_health(tiny, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    r = httpx.get(tiny[0] + "/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_chat_usage_is_exact_and_the_second_turn_hits_the_cache(tiny, client):
    engine = tiny[1]
    r = client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=7, temperature=0,
                                       extra_body={"ignore_eos": True})
    expected_prompt = len(engine.engine.apply_chat_template(MSG))
    assert r.object == "chat.completion" and r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == expected_prompt and r.usage.completion_tokens == 7
    assert r.usage.total_tokens == expected_prompt + 7
    again = client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=7, temperature=0,
                                           extra_body={"ignore_eos": True})
    assert again.choices[0].message.content == r.choices[0].message.content       # greedy: same text
    assert again.usage.prompt_tokens_details.cached_tokens >= 16                  # a full block reused


def test_streaming_equals_non_streaming_and_ends_with_usage(tiny, client):
    kw = dict(model=MODEL, messages=MSG, max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    full = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_completions_with_stop_strings_and_echo(tiny, client):
    r = client.completions.create(model=MODEL, prompt="abc", max_tokens=6, temperature=0, echo=True,
                                  extra_body={"ignore_eos": True})
    assert r.choices[0].text.startswith("abc") and r.usage.prompt_tokens == 3
    streamed = list(client.completions.create(model=MODEL, prompt="abc", max_tokens=6, temperature=0, stream=True,
                                              extra_body={"ignore_eos": True}))
    assert "abc" + "".join(c.choices[0].text for c in streamed if c.choices) == r.choices[0].text


def test_stop_strings_cut_the_text_also_while_streaming(scripted):
    url, engine, app, runner = scripted
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    runner.script = b"Hello there. General Kenobi."
    r = client.chat.completions.create(model=MODEL, messages=MSG, stop=["there", "Gen"])
    assert r.choices[0].message.content == "Hello " and r.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(model=MODEL, messages=MSG, stop=[". Gen"], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello there"
    r = client.completions.create(model=MODEL, prompt="abc", stop="Kenobi")
    assert r.choices[0].text == "Hello there. General " and r.choices[0].finish_reason == "stop"
    assert_pool_clean(engine)


def test_async_client_concurrent_requests(tiny):
    async def main():
        client = openai.AsyncOpenAI(base_url=tiny[0] + "/v1", api_key=KEY, max_retries=0)
        outs = await asyncio.gather(*(client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"q{i}"}], max_tokens=5, seed=i,
            extra_body={"ignore_eos": True, "program_id": f"async-{i}"}) for i in range(6)))
        await client.close()
        return outs
    outs = asyncio.run(main())
    assert [o.usage.completion_tokens for o in outs] == [5] * 6
    assert_pool_clean(tiny[1])


# ------------------------------------------------------------------------------------------ errors
def test_openai_shaped_errors(tiny):
    url, h = tiny[0], {"Authorization": f"Bearer {KEY}"}
    post = lambda body, **kw: httpx.post(url + "/v1/chat/completions", json=body, headers=kw.get("headers", h))
    e = error_of(r := post({"model": MODEL}))
    assert r.status_code == 400 and e["param"] == "messages" and e["type"] == "invalid_request_error"
    e = error_of(r := post({"model": MODEL, "messages": MSG, "temperature": 9}))
    assert r.status_code == 400 and e["param"] == "temperature"
    e = error_of(r := post({"model": MODEL, "messages": MSG, "n": 2}))
    assert r.status_code == 400 and "n=1" in e["message"]
    e = error_of(r := post({"model": MODEL, "messages": [{"role": "user", "content": "x" * 1100}]}))
    assert r.status_code == 400 and e["code"] == "context_length_exceeded"
    e = error_of(r := post({"model": MODEL, "messages": MSG, "max_tokens": 5000}))
    assert r.status_code == 400 and e["code"] == "context_length_exceeded"
    e = error_of(r := post({"model": "gpt-9", "messages": MSG}))
    assert r.status_code == 404 and e["code"] == "model_not_found" and e["param"] == "model"
    e = error_of(r := post({"model": MODEL, "messages": MSG}, headers={}))
    assert r.status_code == 401 and e["type"] == "authentication_error"
    e = error_of(r := post({"model": MODEL, "messages": MSG}, headers={"Authorization": "Bearer nope"}))
    assert r.status_code == 401 and e["code"] == "invalid_api_key"
    e = error_of(r := post({"model": MODEL, "messages": [{"role": "user", "content": "x" * 70_000}]}))
    assert r.status_code == 413 and e["code"] == "request_too_large"
    r = httpx.post(url + "/v1/chat/completions", content=b"{not json", headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON" in error_of(r)["message"]
    e = error_of(r := post({"model": MODEL, "messages": MSG, "program_id": "g", "program_graph": {"edges": 3}}))
    assert r.status_code == 400 and e["param"] == "program_graph"
    e = error_of(r := httpx.post(url + "/v1/programs/nobody/end", headers=h))
    assert r.status_code == 404 and e["code"] == "program_not_found"
    assert httpx.get(url + "/v1/nowhere", headers=h).status_code == 404
    metrics = httpx.get(url + "/metrics").text
    for status in ("400", "401", "404", "413"):
        assert f'agentrt:request_errors_total{{status="{status}"}}' in metrics
    assert_pool_clean(tiny[1])


def test_bounded_queue_answers_429_with_retry_after(scripted):
    url, engine, app, runner = scripted
    runner.script = b"x" * 300                                   # ~0.6 s per request
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)

    async def flood():
        c = httpx.AsyncClient(timeout=30)
        body = {"model": MODEL, "messages": MSG, "max_tokens": 300}
        rs = await asyncio.gather(*(c.post(url + "/v1/chat/completions", json=body) for _ in range(8)))
        await c.aclose()
        return rs
    rs = asyncio.run(flood())
    codes = sorted(r.status_code for r in rs)
    assert codes.count(200) >= 3 and 429 in codes and set(codes) <= {200, 429}, codes
    limited = next(r for r in rs if r.status_code == 429)
    assert int(limited.headers["Retry-After"]) >= 1 and error_of(limited)["type"] == "rate_limit_error"
    assert client.models.list().data[0].id == MODEL
    assert_pool_clean(engine)


# ------------------------------------------------------------------------------------------ tools
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]


def test_tool_calls_parsed_streamed_and_lenient(scripted):
    url, engine, app, runner = scripted
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    runner.script = b'Let me check. <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    r = client.chat.completions.create(model=MODEL, messages=MSG, tools=TOOLS)
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content == "Let me check."
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    chunks = list(client.chat.completions.create(model=MODEL, messages=MSG, tools=TOOLS, stream=True))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert content.strip() == "Let me check." and "<tool" not in content
    assert deltas[0].function.name == "get_weather" and json.loads(deltas[0].function.arguments) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    runner.script = b"<tool_call>{'name': 'get_weather', 'args': {'city': 'Rome'}}"   # lenient: quotes, no close
    r = client.chat.completions.create(model=MODEL, messages=MSG, tools=TOOLS)
    assert json.loads(r.choices[0].message.tool_calls[0].function.arguments) == {"city": "Rome"}
    runner.script = b'<tool_call>{"name": get_weather oops'                       # broken: the text comes back
    r = client.chat.completions.create(model=MODEL, messages=MSG, tools=TOOLS)
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content.startswith("<tool_call>")
    r = client.chat.completions.create(model=MODEL, messages=MSG, tools=TOOLS, tool_choice="none")
    assert r.choices[0].message.tool_calls is None                              # none: never parsed
    runner.script = b'{"city": "Oslo"}}</tool_call>'                            # a named choice opens the call
    r = client.chat.completions.create(model=MODEL, messages=MSG, tools=TOOLS,
                                       tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert json.loads(r.choices[0].message.tool_calls[0].function.arguments) == {"city": "Oslo"}
    runner.script = b'get_weather", "arguments": {"city": "Lima"}}</tool_call>'  # required: the name too
    r = client.chat.completions.create(model=MODEL, messages=MSG, tools=TOOLS, tool_choice="required")
    assert r.choices[0].message.tool_calls[0].function.name == "get_weather"
    # the call and its result go back in the next turn's messages
    runner.script = b"It is sunny."
    history = MSG + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 24 C"}]
    r = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS)
    assert r.choices[0].message.content == "It is sunny." and r.choices[0].finish_reason == "stop"
    assert_pool_clean(engine)


def test_program_ids_feed_pauses_pins_and_the_predictor(scripted):
    url, engine, app, runner = scripted
    door, tracker, h = app.state.door, app.state.tracker, {}
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    runner.script = b'<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    client.chat.completions.create(model=MODEL, messages=MSG, tools=TOOLS,
                                   extra_body={"job_id": "job-1", "agent_id": "planner"})
    info = httpx.get(url + "/v1/programs/job-1").json()
    assert info["paused_on"] == ["get_weather"] and info["requests"] == 1
    assert door.table.entries["job-1"].paused_tool == "get_weather"
    assert door.pinned_until("job-1") is None            # cold start: nothing known of the tool, no pin
    time.sleep(0.1)
    client.chat.completions.create(model=MODEL, messages=MSG, tools=TOOLS,
                                   extra_headers={"X-Program-Id": "job-1", "X-Agent-Id": "planner"})
    samples = door.table.predictor.samples("get_weather")
    assert len(samples) == 1 and samples[0] >= 0.1                      # the pause taught the predictor
    assert door.pinned_until("job-1") is not None                        # now continuum pins the second pause
    runner.script = b"```bash\nls -la /tmp\n```"                       # Continuum's rule: the bash block's command
    client.chat.completions.create(model=MODEL, messages=MSG, extra_body={"program_id": "job-1"})
    assert len(door.table.predictor.samples("get_weather")) == 2
    assert httpx.get(url + "/v1/programs/job-1").json()["paused_on"] == ["ls"]
    runner.script = b"done"
    client.chat.completions.create(model=MODEL, messages=MSG, extra_body={"program_id": "job-1", "is_last_step": True})
    assert httpx.get(url + "/v1/programs/job-1").status_code == 404 and door.table.entries["job-1"].finished
    client.chat.completions.create(model=MODEL, messages=MSG, extra_body={"program_id": "job-2"})
    assert httpx.post(url + "/v1/programs/job-2/end").json()["ended"] is True
    client.chat.completions.create(model=MODEL, messages=MSG, extra_body={"program_id": "job-3"})
    deadline = time.monotonic() + 5                                       # idle_timeout=0.5 s ends it
    while "job-3" in tracker.programs and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "job-3" not in tracker.programs and door.table.entries["job-3"].finished
    client.chat.completions.create(model=MODEL, messages=MSG)             # no ids: a plain request
    metrics = httpx.get(url + "/metrics").text
    assert "agentrt:tool_pauses_total 3.0" in metrics and "agentrt:programs_ended_total" in metrics
    assert_pool_clean(engine)


# ------------------------------------------------------------------------------------------ disconnects
def _raw_request(url: str, body: dict) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return s


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_aborts_its_request_and_frees_its_blocks(tiny, stream):
    url, engine, app = tiny
    before = app.state.metrics.disconnects._value.get()
    s = _raw_request(url, {"model": MODEL, "messages": MSG, "max_tokens": 900, "stream": stream,
                           "extra_field_ignored": 1, "ignore_eos": True})
    deadline = time.monotonic() + 10
    while engine.engine.stats()["running"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    if stream:
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
    s.close()                                       # gone, ~890 tokens before the end
    t0 = time.monotonic()
    wait_idle(engine, timeout=5)
    assert time.monotonic() - t0 < 3                # aborted, not run to its end
    assert_pool_clean(engine)
    deadline = time.monotonic() + 3
    while app.state.metrics.disconnects._value.get() == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert app.state.metrics.disconnects._value.get() == before + 1
