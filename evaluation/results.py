"""Evaluation results: one record per episode, rows per (dataset, method, env LLM), and :class:`EvalResult`.

An episode record (:func:`episode_record`) is one JSON object: what was asked, what was answered,
the paper's metrics, and for agent episodes the episode reward and format. Everything else is a
function of the records, so a report can be rebuilt from a ``transcripts.jsonl`` alone::

    records = read_jsonl("runs/eval/transcripts.jsonl")
    rows = summarize(records)

Rows carry every measure of :data:`~promptr1.evaluation.scoring.MEASURES` as ``(mean, low, high)``
with a 95 % interval from :func:`~promptr1.evaluation.stats.mean_ci`: the paper's metrics in
``metrics``, the agent's reward, format rate and turns in ``stats``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from promptr1.llm_backends.base import error_summary

from .scoring import MEASURES, METRICS, PRIMARY_METRIC, task_type
from .stats import CI, Z95, mean_ci, standard_error

__all__ = ["AverageRow", "EvalResult", "ScoreRow", "average_rows", "episode_record", "record_key", "summarize"]


def episode_record(
    *,
    dataset: str,
    method: str,
    env_llm: str,
    index: int,
    task: Any,
    prediction: str,
    metrics: Mapping[str, float],
    env_error: str | None,
    turns: Sequence[Mapping[str, str]],
    num_turns: int,
    env_llm_calls: int,
    latency_s: float,
    env_llm_latency_s: float,
    tokens: int,
    cost_usd: float,
    reward: float | None = None,
    format_ok: float | None = None,
    reward_variant: str | None = None,
    reward_components: Mapping[str, Any] | None = None,
    cost_by_model: Mapping[str, float] | None = None,
    calls_by_model: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The one per-episode record (a line of ``transcripts.jsonl``).

    ``turns`` is the whole chat; ``metrics`` the paper's metrics of ``prediction`` (empty when the
    env LLM failed: not scored). ``reward``, ``format`` (1.0 when the format score reached its cap)
    and ``reward_variant`` are set for agent episodes, None for the single-call baselines; so is
    ``reward_components``, the env's reward breakdown (``format_raw``, ``answer_text``, ...), which
    scores the episode again as the reference's training validation does.
    """
    return {
        "dataset": dataset,
        "method": method,
        "env_llm": env_llm,
        "index": int(index),
        "task_id": task.id,
        "ability": task.ability,
        "question": task.question,
        "gold": list(task.answers),
        "turns": [dict(m) for m in turns],
        "prediction": prediction,
        "metrics": dict(metrics),
        "env_error": env_error,
        "num_turns": int(num_turns),
        "env_llm_calls": int(env_llm_calls),
        "latency_s": float(latency_s),
        "env_llm_latency_s": float(env_llm_latency_s),
        "tokens": int(tokens),
        "cost_usd": float(cost_usd or 0.0),
        "reward": None if reward is None else float(reward),
        "format": None if format_ok is None else float(format_ok),
        "reward_variant": reward_variant,
        "reward_components": None if reward_components is None else dict(reward_components),
        **({"cost_by_model": {k: float(v) for k, v in cost_by_model.items()},
            "calls_by_model": {k: int(v) for k, v in (calls_by_model or {}).items()}} if cost_by_model else {}),
    }


def record_key(r: Mapping[str, Any]) -> tuple[str, str, str, int]:
    """``(dataset, method, env_llm, index)``: what a resumed run matches records on."""
    return (r["dataset"], r["method"], r["env_llm"], int(r["index"]))


def _ci(name: str, values: Sequence[float]) -> CI:
    m = MEASURES[name]
    return mean_ci(values, binary=m.binary, bounds=m.bounds)


@dataclass
class ScoreRow:
    """One (dataset, method, env LLM): every measure's ``(mean, low, high)`` and what it cost."""

    dataset: str
    ability: str
    method: str
    env_llm: str
    n: int
    """Episodes scored (env-LLM failures excluded)."""
    errors: int
    """Episodes whose env LLM failed (not scored)."""
    metrics: dict[str, CI] = field(default_factory=dict)
    """The paper's metrics for the task type: ``em``/``f1`` (QA), ``em`` (math), ``ssim`` (text)."""
    stats: dict[str, CI] = field(default_factory=dict)
    """The agent's ``reward`` and ``format`` (agent rows only) and ``turns``, over scored episodes."""
    calls: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    cost_by_model: dict[str, float] = field(default_factory=dict)
    """With several env LLMs: USD and calls spent on each (summed over the row's episodes)."""
    calls_by_model: dict[str, int] = field(default_factory=dict)
    latency_s: float = 0.0
    """Mean wall time per episode."""
    turns: float = 0.0
    """Mean agent turns over all episodes, failures included (1 for direct/CoT)."""
    se: dict[str, float] = field(default_factory=dict)
    """Standard error of each metric's mean."""

    @property
    def column(self) -> str:
        return f"{self.method} @ {self.env_llm}"

    @property
    def primary(self) -> str:
        return PRIMARY_METRIC[task_type(self.ability)]

    def get(self, name: str) -> CI | None:
        """The ``(mean, low, high)`` of a metric or stat, None if this row has none."""
        return self.metrics.get(name) or self.stats.get(name)


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

    Records with an ``env_error`` count as errors and are not scored.
    """
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["method"], r["env_llm"]), []).append(r)
    rows = []
    for (dataset, method, env_llm), recs in groups.items():
        ability = recs[0].get("ability", "qa")
        ok = [r for r in recs if not r.get("env_error")]
        row = ScoreRow(dataset, ability, method, env_llm, n=len(ok), errors=len(recs) - len(ok))
        for name in METRICS[task_type(ability)]:
            vals = [float(r["metrics"][name]) for r in ok if name in (r.get("metrics") or {})]
            row.metrics[name] = _ci(name, vals)
            row.se[name] = standard_error(vals)
        for name in ("reward", "format"):
            vals = [float(r[name]) for r in ok if r.get(name) is not None]
            if vals:
                row.stats[name] = _ci(name, vals)
        row.stats["turns"] = _ci("turns", [float(r.get("num_turns", 0)) for r in ok])
        row.calls = sum(int(r.get("env_llm_calls", 0)) for r in recs)
        row.tokens = sum(int(r.get("tokens", 0)) for r in recs)
        row.cost_usd = sum(float(r.get("cost_usd") or 0.0) for r in recs)
        for r in recs:
            for name, usd in (r.get("cost_by_model") or {}).items():
                row.cost_by_model[name] = row.cost_by_model.get(name, 0.0) + float(usd)
            for name, n in (r.get("calls_by_model") or {}).items():
                row.calls_by_model[name] = row.calls_by_model.get(name, 0) + int(n)
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
        half = Z95 * math.sqrt(sum(r.se.get(r.primary, 0.0) ** 2 for r in rs)) / k
        out.append(AverageRow(method, env_llm, mean, half, k, sum(r.n for r in rs)))
    return out


def _num(x: float) -> float | None:
    """A JSON-safe number: NaN (no value) becomes None."""
    return None if math.isnan(x) else x


def _clean(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-@]+", "_", s)


@dataclass
class EvalResult:
    """What an evaluation produced: rows, averages, every record of the plan, budget use and files.

    ``seconds`` maps each ``"method @ env LLM"`` column to the wall time this run spent on it
    (episodes a resumed run skipped cost nothing).
    """

    rows: list[ScoreRow]
    averages: list[AverageRow]
    records: list[dict[str, Any]]
    planned: int
    stop_reason: str | None = None
    calls: int = 0
    cost_usd: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)
    task_types: dict[str, str] = field(default_factory=dict)
    """Per dataset: which task type its rows got and from what evidence."""
    signal: int | None = None
    """The signal (SIGINT, SIGTERM) that stopped the evaluation early, if one did: the episodes finished by
    then are kept, and the same command resumes."""

    @property
    def budget_stopped(self) -> bool:
        """True when the budget (``max_calls`` / ``max_cost``) stopped the run before every planned episode
        had a record: a partial result (exit 3; the same command resumes), whatever the recorded episodes
        say."""
        return self.stop_reason is not None and self.partial and not getattr(self, "signal", None)

    @property
    def partial(self) -> bool:
        """True when some planned episodes have no record (budget stop, or a crash)."""
        return len(self.records) < self.planned

    def failed_columns(self) -> dict[str, str]:
        """``{"method @ env LLM": reason}`` for every column whose episodes all failed on the env LLM (nothing of
        it could be scored: a wrong key, a dead server, a model name the server does not know)."""
        by_column: dict[str, list[dict[str, Any]]] = {}
        for r in self.records:
            by_column.setdefault(f"{r.get('method')} @ {r.get('env_llm')}", []).append(r)
        out = {}
        for column, recs in by_column.items():
            if recs and all(r.get("env_error") for r in recs):
                out[column] = (f"all {len(recs)} episodes failed on the env LLM: "
                               + error_summary(str(r["env_error"]) for r in recs))
        return out

    @property
    def failed(self) -> bool:
        """True when some column's episodes all failed on the env LLM (see :meth:`failed_columns`)."""
        return bool(self.failed_columns())

    def row(self, dataset: str, method: str, env_llm: str | None = None) -> ScoreRow:
        """The row of one dataset and method (and env LLM, if several)."""
        for r in self.rows:
            if r.dataset == dataset and r.method == method and (env_llm is None or r.env_llm == env_llm):
                return r
        raise KeyError(
            f"no result for dataset={dataset!r}, method={method!r}, env_llm={env_llm!r}; "
            f"have {sorted({(r.dataset, r.method, r.env_llm) for r in self.rows})}."
        )

    def score(self, dataset: str, method: str, metric: str | None = None, env_llm: str | None = None) -> float:
        """Mean of ``metric`` (default: the dataset's primary one; also ``reward``, ``format``,
        ``turns``) for one dataset and method."""
        r = self.row(dataset, method, env_llm)
        ci = r.get(metric or r.primary)
        if ci is None:
            raise KeyError(f"row {r.column!r} of {dataset!r} has no {metric!r}; it has "
                           f"{sorted([*r.metrics, *r.stats])}.")
        return ci[0]

    def scalars(self, prefix: str = "eval") -> dict[str, float]:
        """Flat ``{key: mean}``: ``eval/<dataset>/<measure>/<method>@<env>`` and ``eval/average/<method>@<env>``."""
        out: dict[str, float] = {}
        for r in self.rows:
            for name, (mean, _, _) in [*r.metrics.items(), *r.stats.items()]:
                if not math.isnan(mean):
                    out[f"{prefix}/{_clean(r.dataset)}/{name}/{_clean(r.method)}@{_clean(r.env_llm)}"] = mean
        for a in self.averages:
            out[f"{prefix}/average/{_clean(a.method)}@{_clean(a.env_llm)}"] = a.mean
        return out

    def log_to(self, sink: Any, step: int, prefix: str = "eval") -> dict[str, float]:
        """Send :meth:`scalars` to a TensorBoard ``SummaryWriter`` (``add_scalar``), a logger with
        ``record(key, value)``, or a function ``fn(key, value)``. Returns the scalars."""
        if not (hasattr(sink, "add_scalar") or hasattr(sink, "record") or callable(sink)):
            raise TypeError(
                f"log_to needs a SummaryWriter, a logger with record(), or a function; got {type(sink).__name__}."
            )
        values = self.scalars(prefix)
        for key, value in values.items():
            if hasattr(sink, "add_scalar"):
                sink.add_scalar(key, value, step)
            elif hasattr(sink, "record"):
                sink.record(key, value)
            else:
                sink(key, value)
        return values

    def to_json(self, status: str = "") -> dict[str, Any]:
        """The result as plain data (``summary.json``): run status, budget use, ``table`` (one entry per
        row: every measure as ``{"mean", "low", "high"}``, episodes, errors, seconds), and the full rows."""
        table = []
        for r in self.rows:
            entry: dict[str, Any] = {"dataset": r.dataset, "method": r.method, "env_llm": r.env_llm,
                                     "episodes": r.n, "errors": r.errors,
                                     "seconds": self.seconds.get(r.column)}
            for name, (mean, lo, hi) in [*r.metrics.items(), *r.stats.items()]:
                entry[name] = {"mean": _num(mean), "low": _num(lo), "high": _num(hi)}
            table.append(entry)
        return {
            "status": status,
            "partial": self.partial,
            "budget_stopped": self.budget_stopped,
            "failed": self.failed_columns(),
            "planned": self.planned,
            "finished": len(self.records),
            "stop_reason": self.stop_reason,
            "calls": self.calls,
            "cost_usd": self.cost_usd,
            "seconds": dict(self.seconds),
            "task_types": dict(self.task_types),
            "table": table,
            "rows": [asdict(r) for r in self.rows],
            "averages": [asdict(a) for a in self.averages],
        }
