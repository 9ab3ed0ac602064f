"""Tables, confidence intervals, the Markdown report, the JSONL of transcripts and the PNG chart.

Everything here is a function of the episode records that :mod:`promptr1.agents.eval_harness`
writes (one JSON object per episode), so a report can be rebuilt from a ``transcripts.jsonl``
alone::

    records = read_jsonl("runs/eval/transcripts.jsonl")
    rows = summarize(records)
    print(render_markdown(rows, average_rows(rows)))

Scores are shown in percent with a 95% confidence interval: Wilson's interval for 0/1
metrics (EM), a normal interval (1.96 standard errors) for graded ones (F1, SSim).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "METRICS",
    "PRIMARY_METRIC",
    "AverageRow",
    "ScoreRow",
    "append_jsonl",
    "average_rows",
    "mean_ci",
    "read_jsonl",
    "render_markdown",
    "summarize",
    "wilson_ci",
    "write_chart",
]

#: Metrics reported per task type (the paper's): EM and F1 for QA, EM with numeric
#: equivalence for math, SSim for text generation.
METRICS: dict[str, tuple[str, ...]] = {"qa": ("em", "f1"), "math": ("em",), "text": ("ssim",)}
#: The metric that stands for a dataset in averages and in the chart.
PRIMARY_METRIC: dict[str, str] = {"qa": "f1", "math": "em", "text": "ssim"}
_METRIC_TITLES = {"em": "EM", "f1": "F1", "ssim": "SSim"}
_Z95 = 1.959963984540054


# ----------------------------------------------------------------------------- statistics


def wilson_ci(successes: float, n: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval ``(low, high)`` for a proportion; ``(0, 1)`` when ``n == 0``.

    >>> [round(x, 4) for x in wilson_ci(0, 10)]
    [0.0, 0.2775]
    >>> [round(x, 4) for x in wilson_ci(5, 10)]
    [0.2366, 0.7634]
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_ci(
    values: Sequence[float], z: float = _Z95, bounds: tuple[float, float] = (0.0, 1.0)
) -> tuple[float, float, float]:
    """``(mean, low, high)``: Wilson's interval if all values are 0 or 1, else mean ± z·SE within ``bounds``.

    >>> mean_ci([1, 0, 1, 1])[0]
    0.75
    >>> m, lo, hi = mean_ci([0.2, 0.4, 0.6]); round(m, 3), round(hi - m, 3)
    (0.4, 0.226)
    >>> mean_ci([])
    (nan, nan, nan)
    """
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = sum(values) / n
    if all(v in (0, 1) for v in values):
        lo, hi = wilson_ci(sum(values), n, z)
        return mean, lo, hi
    if n == 1:
        return mean, mean, mean
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    half = z * math.sqrt(var / n)
    return mean, max(bounds[0], mean - half), min(bounds[1], mean + half)


# ----------------------------------------------------------------------------- rows


@dataclass
class ScoreRow:
    """One (dataset, method, env LLM) cell group: metric means with 95% CIs and what it cost."""

    dataset: str
    ability: str
    method: str
    env_llm: str
    n: int  # episodes scored (env errors excluded)
    errors: int  # episodes whose env LLM failed (not scored)
    metrics: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # name -> (mean, lo, hi)
    calls: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0  # mean wall time per episode
    turns: float = 0.0  # mean agent turns (1 for direct/cot)
    se: dict[str, float] = field(default_factory=dict)  # name -> standard error of the mean

    @property
    def column(self) -> str:
        return f"{self.method} @ {self.env_llm}"

    @property
    def primary(self) -> str:
        return PRIMARY_METRIC.get(self.ability, "f1")


@dataclass
class AverageRow:
    """Macro average of the primary metric over datasets for one (method, env LLM)."""

    method: str
    env_llm: str
    mean: float
    half_width: float
    datasets: int
    episodes: int


def summarize(records: Iterable[Mapping[str, Any]]) -> list[ScoreRow]:
    """Aggregate episode records into rows, in first-seen (dataset, method, env LLM) order.

    A record needs ``dataset``, ``method``, ``env_llm``, ``ability``, ``metrics`` and
    ``env_error``; records with an ``env_error`` count as errors and are not scored.
    """
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["method"], r["env_llm"]), []).append(r)
    rows = []
    for (dataset, method, env_llm), recs in groups.items():
        ability = recs[0].get("ability", "qa")
        ok = [r for r in recs if not r.get("env_error")]
        row = ScoreRow(dataset, ability, method, env_llm, n=len(ok), errors=len(recs) - len(ok))
        for name in METRICS.get(ability, ("em", "f1")):
            vals = [float(r["metrics"][name]) for r in ok if name in r.get("metrics", {})]
            row.metrics[name] = mean_ci(vals, bounds=(-1.0, 1.0) if name == "ssim" else (0.0, 1.0))
            if len(vals) > 1:
                m = sum(vals) / len(vals)
                row.se[name] = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1) / len(vals))
            else:
                row.se[name] = 0.0
        row.calls = sum(int(r.get("env_llm_calls", 0)) for r in recs)
        row.tokens = sum(int(r.get("tokens", 0)) for r in recs)
        row.cost_usd = sum(float(r.get("cost_usd") or 0.0) for r in recs)
        row.latency_s = sum(float(r.get("latency_s", 0.0)) for r in recs) / len(recs)
        row.turns = sum(int(r.get("num_turns", 0)) for r in recs) / len(recs)
        rows.append(row)
    return rows


def average_rows(rows: Sequence[ScoreRow]) -> list[AverageRow]:
    """Per (method, env LLM): the mean over datasets of each dataset's primary metric.

    The half-width is ``1.96 * sqrt(sum SE_i^2) / k`` over the ``k`` datasets (independent samples).
    """
    by_col: dict[tuple[str, str], list[ScoreRow]] = {}
    for row in rows:
        if row.n > 0:
            by_col.setdefault((row.method, row.env_llm), []).append(row)
    out = []
    for (method, env_llm), rs in by_col.items():
        k = len(rs)
        mean = sum(r.metrics[r.primary][0] for r in rs) / k
        half = _Z95 * math.sqrt(sum(r.se.get(r.primary, 0.0) ** 2 for r in rs)) / k
        out.append(AverageRow(method, env_llm, mean, half, k, sum(r.n for r in rs)))
    return out


# ----------------------------------------------------------------------------- Markdown


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.1f}"


def _cell(stat: tuple[float, float, float] | None) -> str:
    if stat is None or math.isnan(stat[0]):
        return "–"
    mean, lo, hi = stat
    return f"{_pct(mean)} [{_pct(lo)}, {_pct(hi)}]"


def render_markdown(
    rows: Sequence[ScoreRow],
    averages: Sequence[AverageRow],
    *,
    title: str = "Prompt-R1 evaluation",
    status: str = "complete",
    notes: Sequence[str] = (),
) -> str:
    """The report: a dataset × metric by method @ env-LLM table, the averages, and the costs.

    Cells read ``mean [95% CI low, high]`` in percent; ``n`` is the number of scored episodes.
    """
    columns: list[str] = []
    for row in rows:
        if row.column not in columns:
            columns.append(row.column)
    datasets: list[str] = []
    for row in rows:
        if row.dataset not in datasets:
            datasets.append(row.dataset)
    index = {(r.dataset, r.column): r for r in rows}

    lines = [f"# {title}", "", f"**Status:** {status}", ""]
    lines += [f"- {n}" for n in notes]
    if notes:
        lines.append("")
    lines += [
        "## Scores",
        "",
        (
            "Percent, `mean [95% CI]`; EM and F1 for QA, EM with numeric equivalence for math, SSim (cosine "
            "of sentence embeddings) for text. `n` = scored episodes; env-LLM failures are not scored."
        ),
        "",
    ]
    header = "| dataset | metric | n | " + " | ".join(f"`{c}`" for c in columns) + " |"
    lines += [header, "|" + "---|" * (3 + len(columns))]
    for ds in datasets:
        ds_rows = [index.get((ds, c)) for c in columns]
        first = next(r for r in ds_rows if r is not None)
        ns = sorted({r.n for r in ds_rows if r is not None})
        n_text = str(ns[0]) if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
        for name in METRICS.get(first.ability, ("em", "f1")):
            cells = [_cell(r.metrics.get(name)) if r is not None else "–" for r in ds_rows]
            lines.append(
                f"| {ds} ({first.ability}) | {_METRIC_TITLES.get(name, name)} | {n_text} | "
                + " | ".join(cells)
                + " |"
            )
    avg = {f"{a.method} @ {a.env_llm}": a for a in averages}
    if avg:
        cells = []
        for c in columns:
            a = avg.get(c)
            cells.append(
                "–"
                if a is None
                else f"**{_pct(a.mean)}** ± {_pct(a.half_width)} ({a.datasets} sets, {a.episodes} ep.)"
            )
        lines.append("| **average** | primary | | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Average: mean over datasets of the primary metric (F1 QA, EM math, SSim text) ± 95% half-width.",
        ]

    lines += [
        "",
        "## Cost",
        "",
        "| method @ env LLM | episodes | env errors | env-LLM calls | tokens | USD | latency (s) | turns |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in columns:
        rs = [r for r in rows if r.column == c]
        n = sum(r.n + r.errors for r in rs)
        lat = sum(r.latency_s * (r.n + r.errors) for r in rs) / max(n, 1)
        turns = sum(r.turns * (r.n + r.errors) for r in rs) / max(n, 1)
        lines.append(
            f"| `{c}` | {n} | {sum(r.errors for r in rs)} | {sum(r.calls for r in rs)} | "
            f"{sum(r.tokens for r in rs)} | {sum(r.cost_usd for r in rs):.4f} | {lat:.2f} | {turns:.2f} |"
        )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- JSONL


def append_jsonl(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Append one record as a line and flush it to disk (a killed run loses no finished episode)."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records from a JSONL file; a torn last line (a run killed mid-write) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


# ----------------------------------------------------------------------------- chart


def write_chart(
    rows: Sequence[ScoreRow],
    averages: Sequence[AverageRow],
    path: str | os.PathLike,
    *,
    title: str = "Prompt-R1 evaluation (primary metric, 95% CI)",
) -> Path:
    """A grouped bar chart: one group per dataset (and the average), one bar per method @ env LLM."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns: list[str] = []
    datasets: list[str] = []
    for r in rows:
        if r.column not in columns:
            columns.append(r.column)
        if r.dataset not in datasets:
            datasets.append(r.dataset)
    index = {(r.dataset, r.column): r for r in rows}
    avg = {f"{a.method} @ {a.env_llm}": a for a in averages}
    groups = datasets + (["average"] if avg else [])
    primary = {r.dataset: r.primary for r in rows}
    width = 0.8 / max(len(columns), 1)
    fig_w = max(6.0, min(14.0, 0.9 * len(groups) + 0.25 * len(groups) * len(columns)))
    fig, ax = plt.subplots(figsize=(fig_w, 4.8))
    for j, col in enumerate(columns):
        heights, lows, highs = [], [], []
        for g in groups:
            if g == "average":
                a = avg.get(col)
                m, lo, hi = (a.mean, a.mean - a.half_width, a.mean + a.half_width) if a else (math.nan,) * 3
            else:
                r = index.get((g, col))
                m, lo, hi = r.metrics.get(r.primary, (math.nan,) * 3) if r and r.n else (math.nan,) * 3
            heights.append(0.0 if math.isnan(m) else 100 * m)
            lows.append(0.0 if math.isnan(m) else 100 * max(m - lo, 0.0))
            highs.append(0.0 if math.isnan(m) else 100 * max(hi - m, 0.0))
        xs = [i + (j - (len(columns) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, heights, width, yerr=[lows, highs], capsize=2, label=col)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(
        [g if g == "average" else f"{g}\n({_METRIC_TITLES.get(primary[g], primary[g])})" for g in groups],
        fontsize=8,
    )
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(
        fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=min(len(columns), 3), frameon=False
    )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
