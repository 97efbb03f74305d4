"""The scripts in examples/ run end to end (as a user would run them) on the tiny model.

The tiny model writes random bytes, so the checks are on what the scripts print about the run
(statuses, counts, hit rates), never on generated text.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str, cwd: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), "--model", "tiny-random-llama", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, encoding="utf-8",
                          errors="replace", timeout=120)
    assert proc.returncode == 0, f"{name} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("name", ["minimal_embedding.py", "custom_tools.py", "direct_engine.py", "custom_front.py"])
def test_example_is_a_short_documented_script(name):
    source = (EXAMPLES / name).read_text()
    assert source.startswith('"""') and len(source.splitlines()) < 80
    assert "--model" in source and 'if __name__ == "__main__":' in source


def test_minimal_embedding(tmp_path):
    out = run_example("minimal_embedding.py", cwd=tmp_path)
    assert len(re.findall(r"^--- qa-\d: done in [\d.]+ s$", out, re.M)) == 2
    assert re.findall(r"^2 LLM calls, \d+ prompt tokens, \d+ from the prefix cache: hit rate \d+%$", out, re.M)
    overall = re.search(r"^overall prefix hit rate: (\d+)% \((\d+)/(\d+) prompt tokens\)$", out, re.M)
    assert overall, out
    cached, total = int(overall[2]), int(overall[3])
    assert 0 < cached < total              # the second program reuses the first one's system prompts


def test_custom_tools(tmp_path):
    trace = tmp_path / "trace.jsonl"
    out = run_example("custom_tools.py", "--trace", str(trace), cwd=tmp_path)
    rows = re.findall(r"^(trip-\d): done in [\d.]+ s · 1 LLM calls · (\d+) tool calls "
                      r"\((\d+) by the agent, (\d+) retries\) · prefix hit rate \d+%$", out, re.M)
    assert [r[0] for r in rows] == ["trip-0", "trip-1", "trip-2"], out
    for _, calls, by_agent, retries in rows:
        assert int(calls) == 1 + int(by_agent) and retries == "1"    # the flaky weather tool, retried once
    for city, weather in (("Paris", "light rain, 12 C"), ("Kyoto", "sunny, 24 C"), ("Lima", "overcast, 19 C")):
        assert f"  {city} ({weather}): " in out                      # the graph-driven tool's result
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    assert f"trace: {len(events)} events in {trace}" in out
    kinds = [e["event"] for e in events]
    assert kinds.count("program_start") == kinds.count("program_end") == 3
    assert kinds.count("tool_retry") == 3
    assert all(e["status"] == "done" for e in events if e["event"] == "program_end")


def test_direct_engine(tmp_path):
    out = run_example("direct_engine.py", cwd=tmp_path)
    assert len(re.findall(r"^generate '.*' -> .* \(\d+ tokens, (length|stop)\)$", out, re.M)) == 2
    assert len(re.findall(r"^chat '(Name three primary colors\.|What is a haiku\?)' -> ", out, re.M)) == 2
    streamed = re.findall(r"\[(\d+) prompt tokens, (\d+) from the prefix cache; \d+ tokens in [\d.]+ s\]", out)
    assert len(streamed) == 2, out
    (_, first_cached), (second_len, second_cached) = [(int(a), int(b)) for a, b in streamed]
    assert first_cached < second_cached < second_len     # the shared system prompt came from the cache
    assert re.search(r"^engine: \d+ steps, prefix hit rate \d+%$", out, re.M)


def test_custom_front(tmp_path):
    out = run_example("custom_front.py", "--policy", "continuum", cwd=tmp_path)
    lines = re.findall(r"^s\d: 3 turns, (\d+) prompt tokens from the cache, (pinned for|never pinned)", out, re.M)
    assert len(lines) == 4, out
    assert all(int(cached) >= 2 * 128 for cached, _ in lines)     # the shared system prompt, every later turn
    assert "continuum: predictor learned 8 bash pauses" in out


def test_openai_client_example(tmp_path):
    out = run_example("openai_client.py", cwd=tmp_path)
    assert "models: ['tiny-random-llama']" in out
    assert re.search(r"^(tool call: get_weather\(.*\) finish=tool_calls|no tool call parsed; the reply comes back "
                     r"as text \(\d+ chars\))$", out, re.M), out
    usage = re.search(r"^streamed \d+ chunks, (\d+) tokens, (\d+) of (\d+) prompt tokens from the cache$", out, re.M)
    assert usage and 1 <= int(usage[1]) <= 32 and 0 < int(usage[2]) < int(usage[3])   # the first turn was cached
    assert re.search(r"^async completions: \[\d+, \d+, \d+, \d+\] tokens$", out, re.M)
    assert "programs started: 1 ended: 1" in out                                      # is_last_step ended it


def test_langgraph_react_example(tmp_path):
    pytest.importorskip("langgraph")
    out = run_example("langgraph_react.py", cwd=tmp_path)
    rows = re.findall(r"^(trip-\d): (\d+) messages \((.*)\); \d+ prompt tokens in the last turn, \d+ from the "
                      r"prefix cache$", out, re.M)
    assert [r[0] for r in rows] == ["trip-1", "trip-2"], out
    assert all(r[2].startswith("HumanMessage, AIMessage") for r in rows)
    assert re.search(r"^agentrt saw 2 programs, 2 ended, \d+ tool pauses$", out, re.M)


@pytest.mark.parametrize("name", ["openai_client.py", "langgraph_react.py"])
def test_server_examples_are_short_documented_scripts(name):
    source = (EXAMPLES / name).read_text()
    assert source.startswith('"""') and len(source.splitlines()) < 80
    assert "--model" in source and 'if __name__ == "__main__":' in source


def test_remote_tools_example_survives_a_killed_worker(tmp_path):
    from mqtt_helpers import need_broker_stack
    need_broker_stack()
    source = (EXAMPLES / "remote_tools.py").read_text()
    assert source.startswith('"""') and len(source.splitlines()) < 80 and 'if __name__ == "__main__":' in source
    out = run_example("remote_tools.py", "-n", "1", "--halfway", "2", "--max-tokens", "16", cwd=tmp_path)
    assert re.search(r"^killed worker-[ab] \(SIGKILL\) mid-call, after \d+ tool calls$", out, re.M), out
    assert re.search(r"^1/1 programs done in [\d.]+ s · \d+ remote calls, [1-9]\d* retried · workers alive: "
                     r"worker-[ab]$", out, re.M), out
    assert len(re.findall(r"^coding_agent-\d: done in ", out, re.M)) == 1
