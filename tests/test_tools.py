"""Tool specs: schema from signatures, argument validation, running with timeout/retries/cancel."""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import pytest
from pydantic import BaseModel, Field

from agentrt.tools import Tool, ToolArgumentError, ToolTimeoutError, format_observation, tool
from agentrt.tools.spec import BACKOFF_CAP


@tool(expected_duration=2.0, retries=1)
def search(query: str, k: int = 5, tags: list[str] | None = None, score: float = 0.5) -> list[str]:
    """Search the corpus for passages.

    Longer explanation that is not part of the description.

    Args:
        query: the text to look for,
            in plain words.
        k (int): how many passages to return.
    """
    return [query] * k


def run(coro):
    return asyncio.run(coro)


# ---------------------------------------------------------------------------------- spec & schema
def test_decorator_builds_tool_with_settings():
    assert isinstance(search, Tool)
    assert (search.name, search.expected_duration, search.retries, search.timeout) == ("search", 2.0, 1, 30.0)
    assert not search.is_async
    assert search.description == "Search the corpus for passages."
    assert not callable(search)  # deliberately no __call__: use .fn or .run
    assert search.fn("x", 2) == ["x", "x"]

    @tool
    async def ping() -> str:
        return "pong"

    assert ping.is_async and ping.name == "ping" and ping.description == "" and ping.retries == 0


def test_schema_from_signature():
    schema = search.schema()
    assert schema["name"] == "search"
    assert schema["description"] == "Search the corpus for passages."
    params = schema["parameters"]
    assert params["type"] == "object" and params["additionalProperties"] is False
    assert params["required"] == ["query"]
    props = params["properties"]
    assert list(props) == ["query", "k", "tags", "score"]
    assert props["query"] == {"type": "string", "description": "the text to look for, in plain words."}
    assert props["k"] == {"type": "integer", "default": 5, "description": "how many passages to return."}
    assert props["score"] == {"type": "number", "default": 0.5}
    assert {"type": "array", "items": {"type": "string"}} in props["tags"]["anyOf"]
    assert "title" not in params and all("title" not in p for p in props.values())


def test_params_and_signature_text():
    assert [(p.name, p.type_label, p.required, p.default) for p in search.params] == [
        ("query", "str", True, None), ("k", "int", False, 5),
        ("tags", "list[str] | None", False, None), ("score", "float", False, 0.5)]
    assert search.signature_text() == "search(query: str, k: int = 5, tags: list[str] | None = None, score: float = 0.5)"


def test_field_defaults_and_names_that_clash_with_pydantic():
    @tool
    def fetch(schema: str, model_id: int = Field(3, ge=1, description="which model"), /) -> str:
        return f"{schema}:{model_id}"

    props = fetch.schema()["parameters"]["properties"]
    assert set(props) == {"schema", "model_id"}
    assert props["model_id"]["minimum"] == 1 and props["model_id"]["description"] == "which model"
    result = run(fetch.run({"schema": "s", "model_id": 7}))
    assert result.ok and result.value == "s:7"
    assert "greater than or equal to 1" in run(fetch.run({"schema": "s", "model_id": 0})).error


def test_missing_annotation_is_a_clear_type_error():
    def bad(query, k: int = 1):
        return query

    with pytest.raises(TypeError, match=r"parameter 'query' of bad\(\) has no type annotation.*query: str"):
        tool(bad)


@pytest.mark.parametrize("star", ["args", "kwargs"])
def test_var_args_rejected(star):
    def many(*args: int) -> int:
        return 0

    def named(**kwargs: int) -> int:
        return 0

    fn, text = (many, r"\*args") if star == "args" else (named, r"\*\*kwargs")
    with pytest.raises(TypeError, match=rf"{text}.*fixed set of named parameters"):
        tool(fn)


def test_bad_settings_and_names():
    def f(x: int) -> int:
        return x

    with pytest.raises(ValueError, match="timeout"):
        tool(f, timeout=0)
    with pytest.raises(ValueError, match="retries"):
        tool(f, retries=-1)
    with pytest.raises(ValueError, match="name="):
        tool(lambda x: x)
    assert tool(f, timeout=None, name="double", description="Doubles.").description == "Doubles."


# ------------------------------------------------------------------------------------- validation
def test_validate_messages_name_tool_and_argument():
    assert search.validate({"query": "q", "k": "3"}).k == 3  # lax coercion like any pydantic model
    with pytest.raises(ToolArgumentError) as err:
        search.validate({"k": 2})
    assert str(err.value) == "tool 'search': missing required argument 'query' (str)"
    with pytest.raises(ToolArgumentError, match=r"tool 'search': argument 'k': Input should be a valid integer.*'many'"):
        search.validate({"query": "q", "k": "many"})
    with pytest.raises(ToolArgumentError, match=r"tool 'search': unexpected argument 'q' \(accepted: query, k, tags, score\)"):
        search.validate({"query": "q", "q": 1})
    with pytest.raises(ToolArgumentError, match=r"argument 'tags\[1\]'"):
        search.validate({"query": "q", "tags": ["a", 2]})
    with pytest.raises(ToolArgumentError, match="must be an object"):
        search.validate(["q"])  # type: ignore[arg-type]


def test_bad_arguments_are_not_attempted():
    calls = []

    @tool(retries=3)
    def count(n: int) -> int:
        calls.append(n)
        return n

    result = run(count.run({"n": "x"}))
    assert not result.ok and result.attempts == 0 and calls == []
    assert isinstance(result.exception, ToolArgumentError) and "argument 'n'" in result.error


# ------------------------------------------------------------------------------------------ running
def test_sync_and_async_tools_run():
    @tool
    async def add(a: int, b: int = 1) -> int:
        await asyncio.sleep(0)
        return a + b

    assert run(add.run({"a": 2})) [:3] == (3, None, 1)
    result = run(search.run({"query": "q", "k": 2}))
    assert result.ok and result.value == ["q", "q"] and result.duration >= 0
    validated = add.validate({"a": 5, "b": 5})
    assert run(add.run(validated)).value == 10  # an already validated model is used as is


def test_sync_tool_runs_in_a_thread_and_loop_stays_responsive():
    threads = []

    @tool
    def blocking(seconds: float) -> str:
        threads.append(threading.current_thread())
        time.sleep(seconds)
        return "done"

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        result = await blocking.run({"seconds": 0.2})
        task.cancel()
        return result, ticks

    result, ticks = run(main())
    assert result.value == "done"
    assert threads[0] is not threading.main_thread()
    assert ticks >= 5


def test_timeout_per_attempt():
    @tool(timeout=0.05)
    async def slow() -> None:
        await asyncio.sleep(5)

    result = run(slow.run({}))
    assert result.error == "slow timed out after 0.05 s" and result.attempts == 1
    assert isinstance(result.exception, ToolTimeoutError)
    assert 0.04 <= result.duration < 1.0

    slow_retry = tool(slow.fn, name="slow", timeout=0.05, retries=2, backoff=0.01)
    result = run(slow_retry.run({}))
    assert result.error == "slow timed out after 0.05 s (3 attempts)" and result.attempts == 3


def test_timeout_raised_by_tool_is_not_our_timeout():
    @tool(timeout=5)
    def impatient() -> None:
        raise TimeoutError("upstream took too long")

    result = run(impatient.run({}))
    assert result.error == "impatient raised TimeoutError: upstream took too long"
    assert not isinstance(result.exception, ToolTimeoutError)


def _flaky(failures: int, backoff: float) -> tuple[Tool, list[int]]:
    calls: list[int] = []

    def flaky(query: str) -> str:
        calls.append(len(calls) + 1)
        if len(calls) <= failures:
            raise ValueError("bad query")
        return f"ok:{query}"

    return tool(flaky, retries=2, backoff=backoff), calls


def test_retries_with_backoff_then_success():
    flaky, calls = _flaky(2, backoff=0.05)
    seen = []
    result = run(flaky.run({"query": "x"}, on_attempt=lambda n, exc, dt: seen.append((n, type(exc).__name__, dt))))
    assert result.ok and result.value == "ok:x" and result.attempts == 3 and calls == [1, 2, 3]
    assert [(n, name) for n, name, _ in seen] == [(1, "ValueError"), (2, "ValueError"), (3, "NoneType")]
    assert all(dt >= 0 for _, _, dt in seen)
    assert result.duration >= 0.05 + 0.10  # waited backoff, then twice that

    quick, _ = _flaky(2, backoff=0.0)
    assert run(quick.run({"query": "x"})).duration < result.duration


def test_retries_exhausted():
    flaky, calls = _flaky(10, backoff=0.001)
    result = run(flaky.run({"query": "x"}))
    assert not result.ok and result.value is None and result.attempts == 3 and len(calls) == 3
    assert result.error == "flaky raised ValueError: bad query (3 attempts)"
    assert isinstance(result.exception, ValueError)


def test_retry_delay_doubles_and_caps():
    t = tool(search.fn, name="s", backoff=0.5)
    assert [t.retry_delay(n) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert t.retry_delay(50) == BACKOFF_CAP


@pytest.mark.parametrize("phase", ["attempt", "backoff"])
def test_cancellation_propagates_and_is_not_retried(phase):
    attempts = []

    @tool(retries=5, backoff=10.0 if phase == "backoff" else 0.0)
    async def stuck() -> None:
        attempts.append(1)
        if phase == "backoff":
            raise RuntimeError("fail fast, then sit in backoff")
        await asyncio.sleep(10)

    async def main():
        task = asyncio.create_task(stuck.run({}))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.05)  # a retry, if any, would start here

    run(main())
    assert attempts == [1]


def test_cancelling_a_sync_tool_propagates():
    @tool(retries=3, backoff=0.0)
    def sleepy() -> str:
        time.sleep(0.1)
        return "late"

    async def main():
        task = asyncio.create_task(sleepy.run({}))
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())


# ------------------------------------------------------------------------------------ observations
class Hit(BaseModel):
    url: str
    score: float


@dataclass
class Point:
    x: int
    y: int


@pytest.mark.parametrize("value, text", [
    ("plain text", "plain text"),
    (None, "(no output)"),
    ({"a": 1, "b": [1, 2]}, '{"a":1,"b":[1,2]}'),
    ([Hit(url="u", score=0.5)], '[{"url":"u","score":0.5}]'),
    (Hit(url="ü", score=1), '{"url":"ü","score":1.0}'),
    (Point(1, 2), '{"x":1,"y":2}'),
    ((1, "a"), '[1,"a"]'),
    (42, "42"),
])
def test_format_observation(value, text):
    assert format_observation(value) == text


def test_format_observation_truncates():
    text = format_observation("x" * 100, max_chars=10)
    assert text.startswith("x" * 10 + "...") and "100 chars" in text
