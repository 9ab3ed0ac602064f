"""Reports: the Markdown report, the plain-text comparison table, the PNG chart, and the JSONL of records.

Scores are shown with 95 % confidence intervals from :func:`~promptr1.evaluation.stats.mean_ci`:
Wilson's interval for 0/1 measures (EM, SM, format rate), mean ± 1.96 standard errors clipped to the
measure's range for continuous ones (F1, SSim, reward, turns).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .results import AverageRow, EvalResult, ScoreRow
from .scoring import MEASURES, METRICS, task_type
from .stats import format_ci

__all__ = ["append_jsonl", "format_table", "read_jsonl", "render_markdown", "write_chart"]


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.1f}"


def _ordered(rows: Sequence[ScoreRow]) -> tuple[list[str], list[str]]:
    columns: list[str] = []
    datasets: list[str] = []
    for r in rows:
        if r.column not in columns:
            columns.append(r.column)
        if r.dataset not in datasets:
            datasets.append(r.dataset)
    return columns, datasets


# ----------------------------------------------------------------------------- Markdown


def render_markdown(
    rows: Sequence[ScoreRow],
    averages: Sequence[AverageRow],
    *,
    title: str = "Prompt-R1 evaluation",
    status: str = "complete",
    notes: Sequence[str] = (),
) -> str:
    """The report: scores (dataset × metric by ``method @ env LLM``), averages, the agents' episode
    reward and format rate, and costs.

    Score cells read ``mean [95% CI low, high]`` in percent; ``n`` is the number of scored episodes.
    """
    columns, datasets = _ordered(rows)
    index = {(r.dataset, r.column): r for r in rows}

    lines = [f"# {title}", "", f"**Status:** {status}", ""]
    lines += [f"- {n}" for n in notes]
    if notes:
        lines.append("")
    lines += [
        "## Scores",
        "",
        (
            "Percent, `mean [95% CI]`; EM, SM (substring match, either way) and F1 for QA, EM for math, SSim "
            "(cosine of sentence embeddings) for text, computed with the metric set named in the notes above. "
            "Wilson interval for EM and SM, mean ± 1.96 SE for F1 and SSim. "
            "`n` = scored episodes; env-LLM failures are not scored."
        ),
        "",
    ]
    lines += ["| dataset | metric | n | " + " | ".join(f"`{c}`" for c in columns) + " |",
              "|" + "---|" * (3 + len(columns))]
    for ds in datasets:
        ds_rows = [index.get((ds, c)) for c in columns]
        first = next(r for r in ds_rows if r is not None)
        ns = sorted({r.n for r in ds_rows if r is not None})
        n_text = str(ns[0]) if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
        for name in METRICS[task_type(first.ability)]:
            cells = [format_ci(r.metrics.get(name, (math.nan,) * 3), scale=100, digits=1) if r else "–"
                     for r in ds_rows]
            lines.append(f"| {ds} ({first.ability}) | {MEASURES[name].title} | {n_text} | " + " | ".join(cells) + " |")
    avg = {f"{a.method} @ {a.env_llm}": a for a in averages}
    if avg:
        cells = []
        for c in columns:
            a = avg.get(c)
            cells.append("–" if a is None else
                         f"**{_pct(a.mean)}** ± {_pct(a.half_width)} ({a.datasets} sets, {a.episodes} ep.)")
        lines.append("| **average** | primary | | " + " | ".join(cells) + " |")
        lines += ["", "Average: mean over datasets of the primary metric (F1 QA, EM math, SSim text) ± 95% half-width."]

    agent_rows = [r for r in rows if "reward" in r.stats]
    if agent_rows:
        lines += [
            "",
            "## Agent episodes",
            "",
            "Episode reward of the environment (its reward variant), format rate (episodes whose format score "
            "reached its cap, Wilson interval) and agent turns; `mean [95% CI]`.",
            "",
            "| dataset | method @ env LLM | n | reward | format rate | turns |",
            "|---|---|---|---|---|---|",
        ]
        for r in agent_rows:
            lines.append(
                f"| {r.dataset} | `{r.column}` | {r.n} | {format_ci(r.stats['reward'], sign=True)} | "
                f"{format_ci(r.stats.get('format', (math.nan,) * 3), digits=2)} | "
                f"{format_ci(r.stats['turns'], digits=2)} |"
            )

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
    models = sorted({m for r in rows for m in r.cost_by_model})
    if models:  # several env LLMs: what each method spent on each, per episode
        lines += ["", "## Cost by env LLM (per episode)", "",
                  "| method @ env LLM | USD / episode | " + " | ".join(f"{m}: calls, USD" for m in models) + " |",
                  "|---|---|" + "---|" * len(models)]
        for c in columns:
            rs = [r for r in rows if r.column == c]
            n = max(sum(r.n + r.errors for r in rs), 1)
            cells = [f"{sum(r.calls_by_model.get(m, 0) for r in rs) / n:.2f}, "
                     f"{sum(r.cost_by_model.get(m, 0.0) for r in rs) / n:.6f}" for m in models]
            lines.append(f"| `{c}` | {sum(r.cost_usd for r in rs) / n:.6f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- plain-text table


def format_table(result: EvalResult) -> str:
    """A plain-text table, one line per (method, env LLM, dataset): episodes, then reward, F1, EM, SM
    (SSim for text tasks), format rate and turns as ``mean [95% CI]``, and the seconds spent.

    The env LLM and the dataset appear in the name only when the result holds several. This is the
    "untrained vs after SFT vs trained" table of the training pipeline.
    """
    rows = result.rows
    many_env = len({r.env_llm for r in rows}) > 1
    many_ds = len({r.dataset for r in rows}) > 1
    names = ["reward", "f1", "em", *(["sm"] if any("sm" in r.metrics for r in rows) else []),
             *(["ssim"] if any("ssim" in r.metrics for r in rows) else []), "format", "turns"]

    def name_of(r: ScoreRow) -> str:
        return r.method + (f" @ {r.env_llm}" if many_env else "") + (f" [{r.dataset}]" if many_ds else "")

    def cell(r: ScoreRow, name: str) -> str:
        ci = r.get(name)
        if ci is None:
            return "–"
        return format_ci(ci, sign=name == "reward", digits=2 if name in ("format", "turns") else 3)

    table = [[name_of(r), str(r.n), *(cell(r, k) for k in names), _secs(result.seconds.get(r.column, 0.0))]
             for r in rows]
    head = ["policy", "episodes", *(MEASURES[k].title for k in names), "time"]
    widths = [max(len(x) for x in col) for col in zip(head, *table)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    lines = [fmt(head), "-" * len(fmt(head))]
    for r, cells in zip(rows, table):
        lines.append(fmt(cells))
        if r.errors:
            lines.append(f"  ({r.errors} episodes not scored: env-LLM errors)")
    lines.append("mean [95% CI]: Wilson for EM, SM and format rate, normal for reward, F1, SSim and turns; "
                 "time: wall seconds of the policy (all its datasets).")
    return "\n".join(lines)


def _secs(s: float) -> str:
    return f"{s:.1f}s" if s < 10 else f"{s:.0f}s"


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

    columns, datasets = _ordered(rows)
    index = {(r.dataset, r.column): r for r in rows}
    avg = {f"{a.method} @ {a.env_llm}": a for a in averages}
    groups = datasets + (["average"] if avg else [])
    primary = {r.dataset: r.primary for r in rows}
    width = 0.8 / max(len(columns), 1)
    fig_w = max(6.0, min(14.0, 0.9 * len(groups) + 0.25 * len(groups) * len(columns)))
    fig, ax = plt.subplots(figsize=(fig_w, 4.8))
    nan3 = (math.nan,) * 3
    for j, col in enumerate(columns):
        heights, lows, highs = [], [], []
        for g in groups:
            if g == "average":
                a = avg.get(col)
                m, lo, hi = (a.mean, a.mean - a.half_width, a.mean + a.half_width) if a else nan3
            else:
                r = index.get((g, col))
                m, lo, hi = r.metrics.get(r.primary, nan3) if r and r.n else nan3
            ok = not math.isnan(m)
            heights.append(100 * m if ok else 0.0)
            lows.append(100 * max(m - lo, 0.0) if ok and not math.isnan(lo) else 0.0)
            highs.append(100 * max(hi - m, 0.0) if ok and not math.isnan(hi) else 0.0)
        xs = [i + (j - (len(columns) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, heights, width, yerr=[lows, highs], capsize=2, label=col)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(
        [g if g == "average" else f"{g}\n({MEASURES[primary[g]].title})" for g in groups], fontsize=8
    )
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=min(len(columns), 3), frameon=False)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
