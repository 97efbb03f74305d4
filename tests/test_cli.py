"""The `agentrt` CLI, on the tiny model (fast: no real model is loaded)."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from agentrt import __version__
from agentrt.cli import app
from agentrt.engine import MODEL_ALIASES

TINY = ["--model", "tiny-random-llama"]


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


def run(runner: CliRunner, *args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_version(runner):
    result = run(runner, "--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"agentrt {__version__}"


def test_models_json(runner):
    result = run(runner, "models", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["models"] == MODEL_ALIASES
    assert data["default"] in MODEL_ALIASES


@pytest.mark.parametrize("command", [["generate"], ["demo"], ["models"], ["bench", "engine"], ["bench"], []])
def test_every_help_shows_an_example(runner, command):
    result = run(runner, *command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.stdout


def test_generate_json_batch(runner):
    result = run(runner, "generate", "hello", "what is a cache?", *TINY, "--max-tokens", "5", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)                 # stdout holds exactly one JSON object
    assert data["model"] == "tiny-random-llama" and data["chat"] is True
    assert [o["prompt"] for o in data["outputs"]] == ["hello", "what is a cache?"]
    for o in data["outputs"]:
        assert 1 <= len(o["token_ids"]) <= 5 and isinstance(o["text"], str)
    assert data["generated_tokens"] == sum(len(o["token_ids"]) for o in data["outputs"])


def test_generate_text_no_chat(runner):
    result = run(runner, "generate", "abc", *TINY, "-n", "3", "--no-chat", "--seed", "1", "-t", "0.7")
    assert result.exit_code == 0, result.stderr
    assert "abc" in result.stdout and "tok/s" in result.stdout


def test_unknown_model_exits_2_with_one_line(runner):
    result = run(runner, "generate", "hi", "--model", "no-such-model")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "unknown model 'no-such-model'" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize("flag, value, field", [("--temperature", "-1", "temperature"), ("--top-p", "0", "top_p"),
                                                ("--max-tokens", "0", "max_tokens")])
def test_bad_sampling_param_exits_2(runner, flag, value, field):
    result = run(runner, "generate", "hi", *TINY, flag, value)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: invalid SamplingParams: " + field)
    assert result.stderr.count("\n") == 1


def test_bench_unknown_case_exits_2(runner):
    result = run(runner, "bench", "engine", *TINY, "--cases", "decode1,warp9")
    assert result.exit_code == 2 and "warp9" in result.stderr


def test_bench_engine_json(runner):
    result = run(runner, "bench", "engine", *TINY, "--cases", "prefill512,decode1", "--runs", "1", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["model"] == "tiny-random-llama"
    assert {"cpu_count", "torch_version", "dtype"} <= set(data["machine"])
    assert data["peers"]["agentrt"]["available"] and data["peers"]["transformers"]["available"]
    assert data["peers"]["llama.cpp"] == {"available": False, "reason": "not applicable: no GGUF for tiny-random-llama"}
    assert list(data["cases"]) == ["prefill512", "decode1"]
    for case in data["cases"].values():
        assert case["unit"] == "tok/s" and case["higher_is_better"]
        for peer in ("agentrt", "transformers"):
            m = case["results"][peer]
            assert m["median"] > 0 and len(m["runs"]) == 1
        assert case["results"]["llama.cpp"] is None
        assert case["ratios"]["transformers"] == pytest.approx(
            case["results"]["agentrt"]["median"] / case["results"]["transformers"]["median"])
        assert case["ratios"]["llama.cpp"] is None
        assert case["targets"][0]["peer"] == "transformers" and isinstance(case["targets"][0]["met"], bool)


def test_bench_transformers_at_two_dtypes_targets_take_its_best(runner):
    result = run(runner, "bench", "engine", *TINY, "--cases", "prefill512", "--runs", "1", "--json",
                 "--transformers-dtypes", "float32,bfloat16")
    assert result.exit_code == 0, result.stderr
    case = json.loads(result.stdout)["cases"]["prefill512"]
    ours = case["results"]["agentrt"]["median"]
    tf = {n: case["results"][n]["median"] for n in ("transformers-float32", "transformers-bfloat16")}
    assert case["ratios"]["transformers-float32"] == pytest.approx(ours / tf["transformers-float32"])
    assert case["targets"][0]["ratio"] == pytest.approx(ours / max(tf.values()))


def test_bench_bad_transformers_dtype_exits_2(runner):
    result = run(runner, "bench", "engine", *TINY, "--cases", "prefill512", "--transformers-dtypes", "float64")
    assert result.exit_code == 2 and "float64" in result.stderr


def test_bench_engine_table(runner):
    result = run(runner, "bench", "engine", *TINY, "--cases", "prefill512,prefill2048", "--runs", "1")
    assert result.exit_code == 0, result.stderr
    assert "prefill512" in result.stdout and "absent" in result.stdout
    assert "prefill2048: skipped" in result.stdout     # tiny's context is 2048 tokens
    assert "warm-up" in result.stderr                  # progress goes to stderr


def test_bench_engine_without_transformers(runner):
    result = run(runner, "bench", "engine", *TINY, "--cases", "decode1", "--runs", "1", "--json", "--no-transformers")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert "transformers" not in data["peers"] and data["settings"]["transformers_dtypes"] == []
    case = data["cases"]["decode1"]
    assert case["results"]["agentrt"]["median"] > 0 and "transformers" not in case["results"]
    assert [t["met"] for t in case["targets"] if t["peer"] == "transformers"] == [None]


class FakePeer:
    """A peer on a fake clock: prefill costs `prefill_s` per call, each further token `token_s`."""
    name = "fake"

    def __init__(self, clock: list[float], prefill_s: float, token_s: float, short: bool = False):
        self.clock, self.prefill_s, self.token_s, self.short = clock, prefill_s, token_s, short
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    def generate(self, prompts, max_new):
        self.clock[0] += self.prefill_s + self.token_s * (max_new - 1)
        return [[1] * (max_new - self.short) for _ in prompts]

    def run_info(self):
        return {}


@pytest.fixture
def fake_clock(monkeypatch):
    from agentrt.bench import engine_bench

    clock = [0.0]
    monkeypatch.setattr(engine_bench.time, "perf_counter", lambda: clock[0])
    return clock


def test_decode_figure_subtracts_the_prefill_run(fake_clock):
    from agentrt.bench.engine_bench import CASES, measure

    decode8 = next(c for c in CASES if c.name == "decode8")
    peer = FakePeer(fake_clock, prefill_s=2.0, token_s=0.1)
    m = measure(peer, decode8, [[5] * 256] * 8, runs=3, budget_s=100, log=lambda _: None)
    assert m.median == pytest.approx(8 * 63 / 6.3) and len(m.runs) == 3
    assert peer.resets == 6                      # every generate call starts cold (3 runs of 2 calls)


def test_all_peers_warm_up_first_and_budget_stops_runs(fake_clock):
    from agentrt.bench.engine_bench import CASES, WARMUP_NEW, run_case

    agents = next(c for c in CASES if c.name == "agents32")
    a, b = FakePeer(fake_clock, prefill_s=10.0, token_s=0.0), FakePeer(fake_clock, prefill_s=4.0, token_s=1.0)
    a.name, b.name = "agentrt", "other"
    lines: list[str] = []
    result = run_case([a, b], agents, [[5] * 8] * 32, runs=3, budget_s=25.0, log=lines.append)
    assert [line.split()[1:3] for line in lines[:2]] == [["agentrt", "warm-up:"], ["other", "warm-up:"]]
    assert result.results["agentrt"].runs == [10.0]           # warm-up 10 s + run 10 s: a second would end at 30 s
    assert result.results["agentrt"].warmup_s == 10.0
    assert result.results["other"].warmup_s == 4.0 + (WARMUP_NEW - 1)    # the warm-up is cut to WARMUP_NEW tokens
    assert result.ratio("other") == pytest.approx(67.0 / 10.0)            # time case: peer time / agentrt time
    result = run_case([a], agents, [[5] * 8] * 32, runs=3, budget_s=0.0, log=lines.append)
    assert result.results["agentrt"].runs == [10.0]           # at least one measured run, whatever the budget


def test_short_output_is_an_error_not_a_faster_figure(fake_clock):
    from agentrt.bench.engine_bench import CASES, BenchError, measure, run_case

    peer = FakePeer(fake_clock, prefill_s=1.0, token_s=0.1, short=True)
    with pytest.raises(BenchError, match=r"expected 1 x \d+ tokens"):
        measure(peer, CASES[2], [[5] * 256], runs=1, budget_s=10, log=lambda _: None)
    good = FakePeer(fake_clock, prefill_s=1.0, token_s=0.1)
    good.name = "agentrt"
    result = run_case([good, peer], CASES[2], [[5] * 256], runs=1, budget_s=10, log=lambda _: None)
    assert "agentrt" in result.results and "BenchError" in result.errors["fake"]   # the others' figures survive


# ------------------------------------------------------------------- start-up: no torch for --help
def imported_modules(importtime_log: str) -> set[str]:
    """The modules `python -X importtime` reports (stderr lines `import time: self | total | name`)."""
    return {line.rsplit("|", 1)[-1].strip() for line in importtime_log.splitlines()
            if line.startswith("import time:") and "|" in line}


def run_cli_process(*args: str):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-X", "importtime", "-m", "agentrt.cli", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args", [["--help"], ["--version"], []])
def test_top_level_help_and_version_import_neither_torch_nor_transformers(args):
    done = run_cli_process(*args)
    assert done.returncode in (0, 2), done.stderr              # no arguments: typer shows the help, exit 2
    modules = imported_modules(done.stderr)
    assert "agentrt.cli" in modules                            # the log is read right
    assert not {m for m in modules if m.split(".")[0] in ("torch", "transformers")}
    if args == ["--version"]:
        assert done.stdout.strip() == f"agentrt {__version__}"
    else:
        listed = done.stdout + done.stderr
        for command in ("models", "generate", "demo", "run", "graph", "bench"):
            assert f" {command} " in listed, command


def all_command_paths(group=None, prefix=()) -> list[tuple[str, ...]]:
    import typer.main
    group = group or typer.main.get_command(app)
    paths = []
    for name, command in group.commands.items():
        paths.append((*prefix, name))
        if hasattr(command, "commands"):
            paths += all_command_paths(command, (*prefix, name))
    return paths


def test_every_subcommand_help_still_works(runner):
    paths = all_command_paths()
    assert {("run",), ("graph",), ("bench", "engine"), ("bench", "workflows"), ("bench", "replay")} <= set(paths)
    for path in paths:
        result = run(runner, *path, "--help")
        assert result.exit_code == 0, (path, result.output)
        assert f"Usage: agentrt {' '.join(path)}" in " ".join(result.stdout.split()), path


def test_cli_choices_agree_with_the_modules_that_define_them():
    from agentrt.bench.workloads import WORKLOADS
    from agentrt.cli.bench_cmds import ALL_POLICIES, WorkloadName
    from agentrt.sched.policies import POLICIES

    assert sorted(ALL_POLICIES.split(",")) == sorted(POLICIES)
    assert sorted(w.value for w in WorkloadName) == sorted(WORKLOADS)
