"""Report building: confidence intervals, rows, averages, Markdown, JSONL, PNG."""

from __future__ import annotations

import json
import math

import pytest

from promptr1.agents.report import (
    append_jsonl,
    average_rows,
    mean_ci,
    read_jsonl,
    render_markdown,
    summarize,
    wilson_ci,
    write_chart,
)


def rec(dataset, method, ability, metrics, env_error=None, **kw):
    return {
        "dataset": dataset,
        "method": method,
        "env_llm": "m",
        "ability": ability,
        "metrics": metrics,
        "env_error": env_error,
        **kw,
    }


RECORDS = (
    [
        rec(
            "hq",
            "direct",
            "qa",
            {"em": e, "f1": f},
            env_llm_calls=1,
            tokens=10,
            cost_usd=0.5,
            num_turns=1,
            latency_s=2.0,
        )
        for e, f in [(1, 1.0), (0, 0.5), (0, 0.0), (1, 1.0)]
    ]
    + [rec("hq", "direct", "qa", {}, env_error="timeout: slow", env_llm_calls=1, num_turns=1, latency_s=2.0)]
    + [rec("gsm", "direct", "math", {"em": e}, env_llm_calls=1, num_turns=1) for e in (1, 1, 0)]
)


def test_wilson_matches_the_textbook_formula():
    # p = 0.8, n = 50, z = 1.96 (by hand: centre 0.838416 / 1.076832 = 0.7786, half-width 0.1090)
    lo, hi = wilson_ci(40, 50, z=1.96)
    assert lo == pytest.approx(0.6696, abs=1e-4) and hi == pytest.approx(0.8876, abs=1e-4)


def test_mean_ci_graded_values_use_the_standard_error():
    vals = [0.0, 0.5, 1.0, 0.5]
    mean, lo, hi = mean_ci(vals)
    se = math.sqrt(sum((v - 0.5) ** 2 for v in vals) / 3 / 4)
    assert (
        mean == 0.5
        and hi - mean == pytest.approx(1.959964 * se, rel=1e-6)
        and mean - lo == pytest.approx(hi - mean)
    )
    assert mean_ci([0.9, 1.0, 0.95, 1.0, 0.99])[2] == 1.0  # clipped to the metric's range


def test_summarize_excludes_env_errors_and_counts_costs():
    rows = summarize(RECORDS)
    hq, gsm = rows
    assert (hq.dataset, hq.n, hq.errors) == ("hq", 4, 1)
    assert hq.metrics["em"][0] == 0.5 and hq.metrics["f1"][0] == pytest.approx(0.625)
    assert hq.calls == 5 and hq.tokens == 40 and hq.cost_usd == pytest.approx(2.0) and hq.latency_s == 2.0
    assert list(gsm.metrics) == ["em"] and gsm.metrics["em"][0] == pytest.approx(2 / 3)


def test_average_is_the_macro_mean_of_primary_metrics():
    (avg,) = average_rows(summarize(RECORDS))
    assert avg.mean == pytest.approx((0.625 + 2 / 3) / 2)  # F1 for QA, EM for math
    assert avg.datasets == 2 and avg.episodes == 7 and avg.half_width > 0


def test_markdown_has_a_row_per_dataset_and_metric():
    rows = summarize(RECORDS)
    md = render_markdown(rows, average_rows(rows), status="PARTIAL: 8 of 10")
    assert "**Status:** PARTIAL: 8 of 10" in md
    assert "| hq (qa) | EM | 4 | 50.0 [" in md and "| hq (qa) | F1 | 4 | 62.5 [" in md
    assert "| gsm (math) | EM | 3 | 66.7 [" in md
    assert "| `direct @ m` | 8 | 1 | 8 | 40 | 2.0000 |" in md


def test_jsonl_round_trip_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "t.jsonl"
    append_jsonl(path, {"a": 1, "text": "Zoë 東京"})
    append_jsonl(path, {"a": 2})
    with open(path, "a") as fh:
        fh.write('{"a": 3, "tor')
    assert read_jsonl(path) == [{"a": 1, "text": "Zoë 東京"}, {"a": 2}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []
    assert json.loads(path.read_text().splitlines()[0])["text"] == "Zoë 東京"


def test_chart_is_a_png(tmp_path):
    rows = summarize(RECORDS)
    path = write_chart(rows, average_rows(rows), tmp_path / "c.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
