"""benchmarks/bench_learning.py: its statistics, its scripted rules, and (slow) one tiny end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import load_script
from promptr1.envs.synthetic import SyntheticTasks
from promptr1.envs.synthetic.expert import SimExpert

from promptr1.core.settings import RunSettings


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/bench_learning.py")


def test_bootstrap_known_answers(bench):
    m, lo, hi = bench.bootstrap_mean([1.0] * 30)
    assert (m, lo, hi) == (1.0, 1.0, 1.0)
    m, lo, hi = bench.bootstrap_mean(np.r_[np.zeros(100), np.ones(100)])
    assert m == 0.5 and lo == pytest.approx(0.5 - 1.96 * 0.5 / np.sqrt(200), abs=0.02) and hi > 0.56
    # paired: the same shift on every episode has no spread at all
    d = bench.paired_difference([0.5, 0.2, 1.0, -1.0], [0.25, -0.05, 0.75, -1.25])
    assert d == pytest.approx((0.25, 0.25, 0.25))
    with pytest.raises(ValueError, match="same episodes"):
        bench.paired_difference([1.0], [1.0, 2.0])
    assert bench.bootstrap_mean([1.0, 0.0, 1.0], seed=3) == bench.bootstrap_mean([1.0, 0.0, 1.0], seed=3)


def test_scripted_rules_in_the_table(bench, tmp_path):
    """The demonstration and the splitter solve every task; the relay never does (answer F1 0)."""
    tasks = list(SyntheticTasks("test", n=40))
    settings = RunSettings(env_llm="sim", max_turns=4, temperature=0.0, cpu=True, output_dir=str(tmp_path),
                           progress=False)
    res = bench.evaluate({"demo": bench.DemonstrationPolicy(tasks), "split": bench.SplitterPolicy(),
                          "relay": bench.RelayPolicy()}, tasks, SimExpert(), settings, tmp_path / "eval", 16)
    rows = {k: bench.summarize_policy(bench.per_episode(res, k), tasks) for k in ("demo", "split", "relay")}
    assert rows["demo"]["reward"][0] == 1.0 and rows["demo"]["solved"] == 1.0 and rows["demo"]["n"] == 40
    assert rows["split"]["reward"][0] == 1.0
    assert rows["relay"]["reward"] == (0.0, 0.0, 0.0) and rows["relay"]["turns"] == 2.0
    assert {lab for lab in bench.KIND_LABELS if rows["demo"][lab][1] > 0} == set(bench.KIND_LABELS)
    assert sum(rows["demo"][lab][1] for lab in bench.KIND_LABELS) == 40


@pytest.mark.slow
def test_tiny_end_to_end_run_writes_the_table_curve_and_summary(bench, tmp_path, capsys):
    out = tmp_path / "bench"
    summary = bench.main(["--model", "tiny", "--sft-steps", "2", "--sft-batch-size", "2", "--steps", "2",
                          "--episodes", "10", "--curve-episodes", "4", "--eval-every", "1", "--untrained-steps", "1",
                          "--out", str(out)])
    printed = capsys.readouterr().out
    assert "paired difference (warm start + GRPO) - (warm start only)" in printed
    assert "command: `python benchmarks/bench_learning.py --model tiny" in printed
    assert [c["step"] for c in summary["curve"]] == [0, 1, 2]
    assert summary["paired_difference"]["n"] == 10
    assert (out / "learning_curve.png").stat().st_size > 1000
    saved = json.loads((out / "summary.json").read_text())
    assert saved["rows"]["scripted: demonstration (reads Task.meta)"]["solved"] == 1.0
    assert saved["untrained_grpo"]["groups"] == 2
    # re-evaluating the saved agents (greedy) gives the table's numbers again, without training
    again = bench.main(["--model", "tiny", "--warm-start", str(out / "sft"), "--trained", str(out / "grpo" / "checkpoint-000002"),
                        "--episodes", "10", "--untrained-steps", "1", "--out", str(tmp_path / "again")])
    assert again["curve"] == [] and again["untrained_grpo"]["steps"] == 0
    assert again["paired_difference"] == summary["paired_difference"]
    assert "GRPO's signal" not in again["report"] and "GRPO: the saved agent" in again["report"]
