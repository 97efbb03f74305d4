"""`agentrt bench merge`: saved runs of one benchmark (same commit, settings and kind of machine)
as one report, medians over all of their runs; anything that differs is refused, naming it."""
from __future__ import annotations

import copy
import json

from typer.testing import CliRunner

from agentrt.cli import app


def saved_run(tmp_path):
    path = tmp_path / "one.json"
    result = CliRunner().invoke(app, ["bench", "workflows", "-w", "swe_agent", "--model", "tiny-random-llama",
                                      "--sim", "h100-llama3-8b", "--programs", "3", "--scale", "0.01", "--turns", "2-3",
                                      "--rate", "1", "--runs", "1", "--policies", "lru,agentrt", "--threads", "1",
                                      "--kv-device-tokens", "2048", "--no-warmup", "--save", str(path)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    report = json.loads(path.read_text())
    report["code"] = "0123abcd" * 5                   # as if run from a committed tree
    return report


def write(tmp_path, name, report):
    path = tmp_path / name
    path.write_text(json.dumps(report))
    return str(path)


def test_merged_runs_give_medians_over_every_run_and_differences_are_refused(tmp_path):
    base = saved_run(tmp_path)
    paths = []
    for i, factor in enumerate((1.0, 3.0, 2.0)):          # three runs whose agentrt JCTs differ
        r = copy.deepcopy(base)
        run = r["policies"]["agentrt"]["runs"][0]
        run["mean_jct_s"] = round(run["mean_jct_s"] * factor, 4)
        paths.append(write(tmp_path, f"r{i}.json", r))
    result = CliRunner().invoke(app, ["bench", "merge", *paths, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    merged = json.loads(result.stdout)
    one = base["policies"]["agentrt"]["runs"][0]["mean_jct_s"]
    assert len(merged["policies"]["agentrt"]["runs"]) == 3 and merged["settings"]["runs"] == 3
    assert merged["policies"]["agentrt"]["median"]["mean_jct_s"] == round(2.0 * one, 4)
    lru = merged["policies"]["lru"]["median"]["mean_jct_s"]
    assert merged["vs_lru_mean_jct"]["agentrt"] == round(lru / (2.0 * one), 4)
    assert "merged from 3 saved reports" in merged["notes"][-1] and "step_logs" not in merged
    table = CliRunner().invoke(app, ["bench", "merge", *paths], catch_exceptions=False)
    assert table.exit_code == 0 and "median of 3 run(s)" in table.stdout
    for change, said in ((lambda r: r["settings"].update(seed=1), "other settings: seed"),
                         (lambda r: r.update(code="f" * 40), "differs in code"),
                         (lambda r: r["machine"].update(cpu_capability="AVX512"), "another kind of machine")):
        other = copy.deepcopy(base)
        change(other)
        bad = CliRunner().invoke(app, ["bench", "merge", paths[0], write(tmp_path, "other.json", other)])
        assert bad.exit_code == 2 and said in bad.output + (bad.stderr or ""), said
    dirty = copy.deepcopy(base)
    dirty["code"] += "+dirty"
    bad = CliRunner().invoke(app, ["bench", "merge", write(tmp_path, "d.json", dirty), paths[0]])
    assert bad.exit_code == 2 and "committed tree" in bad.output + (bad.stderr or "")
