"""Report building: confidence intervals, rows, averages, Markdown, JSONL, PNG."""

from __future__ import annotations

import json
import math

import pytest

from promptr1.evaluation.report import append_jsonl, read_jsonl, render_markdown, write_chart
from promptr1.evaluation.results import average_rows, summarize
from promptr1.evaluation.stats import mean_ci, wilson_ci


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
    mean, lo, hi = mean_ci(vals, bounds=(0.0, 1.0))
    se = math.sqrt(sum((v - 0.5) ** 2 for v in vals) / 3 / 4)
    assert (
        mean == 0.5
        and hi - mean == pytest.approx(1.959964 * se, rel=1e-6)
        and mean - lo == pytest.approx(hi - mean)
    )
    assert mean_ci([0.9, 1.0, 0.95, 1.0, 0.99], bounds=(0.0, 1.0))[2] == 1.0  # clipped to the metric's range


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


# ----------------------------------------------------------------------------- the interval depends on the measure


def test_a_continuous_metric_of_all_zeros_gets_a_normal_interval_not_wilson():
    """The old report showed F1 = 0.0 [0.0, 39.0] for six zeros: a proportion's interval on a graded metric."""
    recs = [rec("hq", "direct", "qa", {"em": 0, "f1": 0.0}) for _ in range(6)]
    (row,) = summarize(recs)
    assert row.metrics["f1"] == (0.0, 0.0, 0.0)  # normal interval: no spread, no width
    lo, hi = wilson_ci(0, 6)
    assert row.metrics["em"] == (0.0, lo, hi) and hi == pytest.approx(0.3903, abs=1e-4)  # EM is 0/1: Wilson
    md = render_markdown([row], average_rows([row]))
    assert "| hq (qa) | F1 | 6 | 0.0 [0.0, 0.0] |" in md
    assert "| hq (qa) | EM | 6 | 0.0 [0.0, 39.0] |" in md


def test_continuous_intervals_stay_within_the_plausible_range():
    f1s = [0.0, 0.1, 0.0, 1.0, 0.0]  # a skewed sample: mean - 1.96 SE < 0
    recs = [rec("hq", "direct", "qa", {"em": 0, "f1": f}) for f in f1s]
    (row,) = summarize(recs)
    mean, lo, hi = row.metrics["f1"]
    assert mean == pytest.approx(0.22) and lo == 0.0 and 0.22 < hi <= 1.0
    se = math.sqrt(sum((f - 0.22) ** 2 for f in f1s) / 4 / 5)
    assert hi == pytest.approx(0.22 + 1.959964 * se, rel=1e-6)
    assert mean_ci([0.5], bounds=(0.0, 1.0)) == (0.5, 0.0, 1.0)  # one value: no spread known
    assert all(math.isnan(x) for x in mean_ci([0.5])[1:])
    with pytest.raises(ValueError, match="0/1 values"):
        mean_ci([0.0, 0.5], binary=True)


def test_agent_rows_carry_reward_format_and_turns():
    recs = [rec("syn", "agent:x", "qa", {"em": e, "f1": float(e)}, reward=r, format=f, num_turns=t)
            for e, r, f, t in [(1, 1.0, 1.0, 2), (0, -0.4, 0.0, 1), (0, -1.0, 0.0, 3)]]
    recs += [rec("syn", "direct", "qa", {"em": 1, "f1": 1.0}, reward=None, format=None, num_turns=1)]
    agent, direct = summarize(recs)
    mean, lo, hi = agent.stats["reward"]
    assert mean == pytest.approx(-0.4 / 3) and lo < mean < hi  # continuous, unbounded: normal interval
    assert agent.stats["format"] == (pytest.approx(1 / 3), *wilson_ci(1, 3))  # 0/1: Wilson
    assert agent.stats["turns"][0] == 2.0
    assert "reward" not in direct.stats and "format" not in direct.stats
    md = render_markdown([agent, direct], average_rows([agent, direct]))
    assert "## Agent episodes" in md and "| syn | `agent:x @ m` | 3 | -0.133 [" in md
