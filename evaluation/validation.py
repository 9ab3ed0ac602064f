"""The evaluation wing inside a training run: validation every N steps, and the final held-out evaluation.

:class:`ValidationCallback` is a trainer callback (``promptr1 train --eval-every N``); :func:`final_evaluation` compares
the untrained, warm-started and trained policies after training (``--eval-episodes N``). Both play through
:func:`promptr1.evaluation.compare_policies` with the run's env settings and env-LLM backend (its budget and cache).
"""

from __future__ import annotations

import json
import math
import pathlib
import re
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from promptr1.agents.config import GRPOConfig
from promptr1.agents.logger import Callback

__all__ = ["ValidationCallback", "final_evaluation", "reference_validation_scalars", "run_outputs"]


class ValidationCallback(Callback):
    """Validates the live policy before training and every ``cfg.eval_every`` steps (and after the last step).

    Each validation is :func:`promptr1.evaluation.compare_policies` on the trainer's own model: greedy, on
    ``cfg.eval_tasks`` (empty: the test split of ``cfg.tasks``), at most ``cfg.eval_limit`` questions per dataset,
    with the run's env settings and the run's env-LLM backend object (so its calls share the run's budget and
    cache). Its scalars go to TensorBoard as ``eval/<dataset>/<measure>/policy@<env LLM>`` and
    ``eval/average/policy@<env LLM>`` at the step; each validation's report sits in
    ``OUTPUT_DIR/validation/step-NNNNNN/`` and a line per validation in ``OUTPUT_DIR/validation/history.jsonl``.
    A resumed run does not repeat a validation already written. Only the main process validates.
    """

    def __init__(self, cfg: GRPOConfig, backend: Any, *, budget: Any = None, label: str = "policy") -> None:
        self.cfg = cfg
        self.backend = backend
        self.budget = budget
        self.label = label
        self.folder = pathlib.Path(cfg.output_dir) / "validation"
        self.history: list[dict[str, Any]] = []

    def on_train_begin(self, trainer: Any) -> None:
        if self.cfg.eval_before_train:
            self._maybe_validate(trainer, trainer.step)

    def on_step_end(self, trainer: Any, step: int, metrics: Mapping[str, float]) -> bool:
        if step % max(self.cfg.eval_every, 1) == 0 or step == trainer.cfg.steps:  # the trainer's: epochs may set it
            self._maybe_validate(trainer, step)
        return True

    def _maybe_validate(self, trainer: Any, step: int) -> None:
        acc = trainer.accelerator
        done = (self.folder / f"step-{step:06d}" / "summary.json").is_file()
        spent = self.budget is not None and self.budget.stop_reason is not None
        stopping = getattr(trainer, "stop_requested", False)  # Ctrl-C / SIGTERM: no validation on the way out
        if acc.is_main_process and not done and not spent and not stopping:
            self.validate(trainer, step)
        acc.wait_for_everyone()

    def validate(self, trainer: Any, step: int) -> Any:
        """One validation of ``trainer``'s live model at ``step``; returns the :class:`EvalResult`."""
        from promptr1.evaluation import compare_policies

        cfg = self.cfg
        t0 = time.perf_counter()
        model = trainer.unwrapped_model
        was_training = model.training
        tasks = list(cfg.eval_tasks or cfg.tasks)
        try:
            result = compare_policies(
                {self.label: (model, trainer.tokenizer)}, tasks, self.backend, cfg,
                episodes=cfg.eval_limit or None, temperature=0.0,
                output_dir=str(self.folder / f"step-{step:06d}"), chart=False, progress=False,
                batch_size=max(1, cfg.batch_questions * cfg.group_size))
        finally:
            model.train(was_training)
        writer = getattr(getattr(trainer, "logger", None), "writer", None)
        scalars = result.log_to(writer, step) if writer is not None else result.scalars()
        if getattr(cfg, "eval_reference_scores", False):  # the reference's validation scores, eval/reference/*
            reference = reference_validation_scalars(result.records)
            for key, value in reference.items():
                if writer is not None:
                    writer.add_scalar(key, value, step)
            scalars = {**scalars, **reference}
        if writer is not None:
            writer.flush()
        entry = {"step": step, "seconds": round(time.perf_counter() - t0, 3), "partial": result.partial,
                 "stop_reason": result.stop_reason, "scalars": scalars}
        self.history.append(entry)
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / "history.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
        parts = []
        for row in result.rows:
            reward = row.stats.get("reward")
            parts.append(f"{row.dataset} {row.primary} {row.metrics[row.primary][0]:.3f}"
                         + (f", reward {reward[0]:+.3f}" if reward is not None and not math.isnan(reward[0]) else "")
                         + f" ({row.n} episodes)")
        print(f"promptr1 train: validation at step {step}: {'; '.join(parts) or 'no episodes'} "
              f"[{entry['seconds']:.0f}s]", file=sys.stderr, flush=True)
        return result


def reference_validation_scalars(records: Sequence[Mapping[str, Any]],
                                  prefix: str = "eval/reference") -> dict[str, float]:
    """``{PREFIX/<dataset>/<score>: mean}`` of the reference's validation scores (``score``, ``em``, ``sm``, ``f1``,
    ``format``: :func:`promptr1.rewards.reference_validation_scores`) over each dataset's agent episodes; episodes
    whose env LLM failed are left out, as everywhere in the evaluation. Each episode is scored from the env's own
    reward breakdown (the blocks it scored), or from its assistant turns when the record holds none."""
    from promptr1.rewards.dual import REFERENCE_VALIDATION_SCORES, reference_validation_scores

    by_dataset: dict[str, list[dict[str, float]]] = {}
    for r in records:
        if r.get("env_error") or r.get("reward") is None:  # a failed episode, or a baseline (no episode reward)
            continue
        comps = r.get("reward_components") or {}
        if "format_raw" in comps:
            scores = reference_validation_scores(None, r["gold"], components=comps)
        else:  # e.g. an episode that outgrew max_seq_len: no breakdown
            scores = reference_validation_scores(
                [m["content"] for m in r.get("turns", []) if m.get("role") == "assistant"], r["gold"])
        by_dataset.setdefault(str(r["dataset"]), []).append(scores)
    out = {}
    for dataset, rows in by_dataset.items():
        name = re.sub(r"[^A-Za-z0-9_.\-@]+", "_", dataset)
        for score in REFERENCE_VALIDATION_SCORES:
            out[f"{prefix}/{name}/{score}"] = sum(row[score] for row in rows) / len(rows)
    return out


def final_evaluation(cfg: GRPOConfig, sft_model: str, trained_model: Any, tokenizer: Any, backend: Any,
                     out: pathlib.Path) -> Any:
    """Untrained (and warm-started) vs trained on held-out tasks, through the evaluation wing."""
    from promptr1.agents.models import load_policy
    from promptr1.evaluation import compare_policies, format_table

    policies: dict[str, Any] = {"untrained": load_policy(cfg.model)}
    if sft_model != cfg.model and cfg.eval_warm_start:
        policies["after SFT"] = load_policy(sft_model)
    trained_model.eval()
    policies["trained (GRPO)"] = (trained_model, tokenizer)
    tasks = cfg.eval_tasks or cfg.tasks  # the evaluation wing takes the test split of each source
    result = compare_policies(policies, tasks, backend, cfg, episodes=cfg.eval_episodes)
    print(f"\nheld-out evaluation ({cfg.eval_episodes} episodes, greedy, env LLM {cfg.env_llm_label()!r}, reward "
          f"{cfg.reward_variant!r}; mean and 95% CI):")
    print(format_table(result), flush=True)
    from promptr1.core.fileio import atomic_write_text

    atomic_write_text(out / "eval.json", json.dumps(result.to_json(), indent=2))
    return result


def run_outputs(out: str | pathlib.Path) -> dict[str, pathlib.Path]:
    """Where a ``promptr1 train`` run's results are, for its last line: ``{what: path}`` for those that exist
    (the latest checkpoint, the TensorBoard logs, the held-out evaluation's report and chart, the summary).

    >>> run_outputs("/nonexistent")
    {}
    """
    out = pathlib.Path(out)
    latest = out / "latest"
    found = {
        "checkpoint": out / latest.read_text().strip() if latest.is_file() else None,
        "TensorBoard logs": out / "tensorboard",
        "report": out / "eval" / "report.md",
        "chart": out / "eval" / "chart.png",
        "summary": out / "summary.json",
    }
    return {what: p for what, p in found.items() if p is not None and p.exists()}
