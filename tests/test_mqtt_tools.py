"""Remote tools over a real Mosquitto: adverts -> Tool.from_schema, calls, errors, payload limits,
duplicate deliveries, shared subscriptions, progress, the call's identity on the worker."""
from __future__ import annotations

import asyncio
import json
import time

import pytest
from pydantic import BaseModel

import mqtt_tools as mt
from mqtt_helpers import broker, fleet, remote  # noqa: F401  (fixtures)
from runtime_helpers import Recorder, ScriptedEngine, arun
from agentrt import Agent, Runtime, Workflow
from agentrt.tools import TOOL_CALL_CLOSE


def test_remote_tool_is_built_from_the_advert_and_runs_on_the_worker(fleet, remote):
    w = fleet.thread([mt.add, mt.fail])
    add = remote.tool("add")
    assert add.signature_text() == mt.add.signature_text() == "add(a: int, b: int = 1)"
    assert add.description == mt.add.description and add.expected_duration == mt.add.expected_duration
    assert add.timeout == 10.0
    result = arun(add.run({"a": 2, "b": 40}))
    assert result.ok and result.value == 42, result
    bad = arun(add.run({"a": "not a number", "c": 1}))        # rejected here: never sent
    assert bad.attempts == 0 and "argument 'a'" in bad.error and "unexpected argument 'c'" in bad.error
    assert w.worker.stats["calls"] == 1
    with pytest.raises(LookupError, match="no worker .* offers tool 'nope'"):
        remote.tool("nope", wait=0.2)


def test_a_tool_that_raises_sends_back_its_type_and_message(fleet, remote):
    w = fleet.thread([mt.fail])
    result = arun(remote.tool("fail").run({"kind": "KeyError", "message": "no such user"}))
    assert not result.ok
    assert result.error == "fail raised KeyError: 'no such user'"
    from agentrt.tools.mqtt import RemoteToolError
    exc = result.exception
    assert isinstance(exc, RemoteToolError) and type(exc).__name__ == "KeyError"
    assert exc.remote_type == "KeyError" and exc.worker == w.id and "KeyError" in exc.remote_traceback


def test_malformed_and_oversize_payloads_are_error_replies_never_crashes(broker, fleet):
    from agentrt.tools.mqtt import RemoteTools, Reply, Topics
    from agentrt.tools.mqtt.worker import properties
    w = fleet.thread([mt.add, mt.big], max_payload=4096)
    topics = Topics("agentrt")

    async def raw_garbage():
        from agentrt.tools.mqtt.broker import BrokerURL
        async with BrokerURL.parse(broker.url).client(identifier="raw") as client:
            await client.subscribe(topics.reply("raw"), qos=1)
            for payload in (b"\x00not json{", json.dumps({"id": "x"}).encode(), b"{" + b" " * 5000 + b"}"):
                await client.publish(topics.call("add"), payload, qos=1,
                                     properties=properties(b"corr-1", topics.reply("raw")))
            replies = []
            async with asyncio.timeout(5):
                async for message in client.messages:
                    replies.append(Reply.model_validate_json(message.payload))
                    if len(replies) == 3:
                        return replies
    replies = arun(raw_garbage())
    assert all(r.kind == "result" and r.ok is False and r.error_type == "ProtocolError" for r in replies)
    assert any("over the 4096-byte limit" in r.error_message for r in replies)
    assert any("malformed CallRequest" in r.error_message for r in replies)
    assert w.worker.stats["malformed"] == 3
    with RemoteTools(broker.url, max_payload=2000) as remote:
        add, big = remote.tool("add"), remote.tool("big")
        huge = arun(add.run({"a": 1, "b": 10 ** 3000}))            # arguments too large to send
        assert not huge.ok and "over the 2000-byte limit" in huge.error and w.worker.stats["calls"] == 0
        too_big = arun(big.run({"n": 10_000}))                      # a result too large to send back
        assert not too_big.ok and "over the 4096-byte limit" in too_big.error
        assert arun(add.run({"a": 1})).value == 2                   # the worker is fine


def test_a_duplicate_delivery_runs_once_and_is_answered_once(broker, fleet):
    from agentrt.tools.mqtt import CallRequest, Reply, Topics
    from agentrt.tools.mqtt.broker import BrokerURL
    from agentrt.tools.mqtt.protocol import encode
    from agentrt.tools.mqtt.worker import properties
    w = fleet.thread([mt.counted])
    topics = Topics("agentrt")
    request = CallRequest(id="call-dup-1", tool="counted", arguments={"tag": "dup"}, caller="raw",
                          deadline=time.time() + 30)

    async def deliver():
        async with BrokerURL.parse(broker.url).client(identifier="raw") as client:
            await client.subscribe(topics.reply("raw"), qos=1)
            props = properties(request.id.encode(), topics.reply("raw"))
            for _ in range(3):                                       # the same call, delivered 3 times
                await client.publish(topics.call("counted"), encode(request), qos=1, properties=props)
            results = []
            try:
                async with asyncio.timeout(1.5):
                    async for message in client.messages:
                        reply = Reply.model_validate_json(message.payload)
                        if reply.kind == "result":
                            results.append(reply)
            except TimeoutError:
                pass
            resent = request.model_copy(update={"resend": True})     # after a reconnect: answered again
            await client.publish(topics.call("counted"), encode(resent), qos=1, properties=props)
            async with asyncio.timeout(3):
                async for message in client.messages:
                    reply = Reply.model_validate_json(message.payload)
                    if reply.kind == "result":
                        return results, reply
    results, again = arun(deliver())
    assert [r.value for r in results] == [1] and again.value == 1
    assert mt.RUNS["dup"] == 1 and w.worker.stats["duplicates"] == 3 and w.worker.stats["calls"] == 1


def test_workers_of_a_group_share_the_calls(fleet, remote):
    a = fleet.thread([mt.slow], concurrency=1)
    b = fleet.thread([mt.slow], concurrency=1)
    remote.wait_for_workers("slow", 2, wait=5)
    slow = remote.tool("slow")

    async def burst():
        began = time.monotonic()
        results = await asyncio.gather(*(slow.run({"seconds": 0.2, "tag": f"s{i}"}) for i in range(8)))
        return time.monotonic() - began, results
    wall, results = arun(burst())
    assert all(r.ok for r in results)
    assert a.worker.stats["calls"] >= 2 and b.worker.stats["calls"] >= 2
    assert a.worker.stats["calls"] + b.worker.stats["calls"] == 8
    assert wall < 8 * 0.2 * 0.8                                      # in parallel, not one after another


class Job(BaseModel):
    seconds: float = 0.6
    out: str = ""
    who: dict = {}


def test_progress_and_the_call_identity_reach_across_the_wire(fleet, remote):
    fleet.thread([mt.slow, mt.whoami])
    slow, whoami = remote.tool("slow"), remote.tool("whoami")
    wf = Workflow("job", Job, output="out")
    wf.tool("wait", slow, {"seconds": lambda s: s.seconds, "tag": "p"}, output="out")
    wf.tool("who", whoami, {}, output="who")
    wf.sequence("wait", "who")
    rec = Recorder()

    async def main():
        async with Runtime(ScriptedEngine(["-"]), on_event=[rec]) as rt:
            return await rt.run(wf, {})
    result = arun(main())
    assert result.status == "done", result.error
    progress = rec.of("tool_progress")
    assert len(progress) >= 3 and all(e.data["tool"] == "slow" and e.data["step"] == "wait" for e in progress)
    fractions = [e.data["fraction"] for e in progress]
    assert fractions == sorted(fractions) and 0 <= fractions[0] < fractions[-1] < 1
    assert progress[-1].data["eta_seconds"] < progress[0].data["eta_seconds"]
    seen = mt.SEEN[-1]
    assert seen["program"] == result.program_id and seen["step"] == "who" and seen["caller"] == remote.client_id


class Chat(BaseModel):
    question: str = "q"
    answer: str = ""


def test_an_oversize_model_driven_call_is_an_observation_for_the_agent(broker, fleet):
    from agentrt.tools.mqtt import RemoteTools
    fleet.thread([mt.add])
    with RemoteTools(broker.url, max_payload=1000) as remote:
        agent = Agent("calc", "You add.", tools=[remote.tool("add")], max_turns=3)
        wf = Workflow("chat", Chat, output="answer")
        wf.llm("ask", agent, "{question}", output="answer")
        call = '<tool_call>{"name": "add", "arguments": {"a": %s}}' % ("9" * 1200) + TOOL_CALL_CLOSE
        engine = ScriptedEngine([call, "done"])

        async def main():
            async with Runtime(engine) as rt:
                return await rt.run(wf, {})
        result = arun(main())
    assert result.status == "done" and result.output == "done"
    assert "over the 1000-byte limit" in engine.prompt_text(1)
