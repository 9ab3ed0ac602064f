"""``promptr1 train`` and ``promptr1 sft``: the pipeline above the training and evaluation wings.

One ``promptr1 train`` run, in order:

1. the plug-ins are imported (before anything else, so that a backend, algorithm or reward variant they
   register is there for every later step);
2. the env LLM is built once, and shared by the warm start, training and the final evaluation (an
   in-process model such as ``hf:`` or ``smollm2`` is loaded once);
3. optional supervised warm start (``sft_steps``);
4. GRPO (or any registered algorithm) with :class:`~promptr1.agents.trainer.GRPOTrainer`;
5. optional held-out evaluation (``eval_episodes``) of the untrained, warm-started and trained policies
   through the evaluation wing, with the same env settings (reward variant included) as training.

Around step 4, two callbacks (:class:`ValidationCallback`, :class:`BudgetStopCallback`) validate the live
policy before training and every ``eval_every`` steps, and stop the run cleanly once the env LLM's budget
(``max_calls`` / ``max_cost``) is spent: the step finishes, a checkpoint is written, and ``promptr1 train``
exits with code 3 (``--resume auto`` continues). The env LLM is built once as
``CachedBackend(BudgetedBackend(backend))`` (the cache only with ``cache``), so that the warm start, training,
validation and the final evaluation share one backend, one budget and one cache. ``--dry-run`` prints what
the config will cost in env-LLM calls, tokens and dollars, and loads nothing.
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

from promptr1.agents.config import GRPOConfig, SFTConfig
from promptr1.agents.logger import Callback
from promptr1.config import ConfigError, run_command

__all__ = [
    "BUDGET_EXIT_CODE",
    "FAILED_EXIT_CODE",
    "QUICKSTART_OPTIONS",
    "BudgetStopCallback",
    "ValidationCallback",
    "dry_run_report",
    "run_training",
    "sft_main",
    "train_base_config",
    "train_main",
]

#: ``promptr1 train``'s exit code when the env LLM's budget stopped the run (as ``promptr1 eval``'s).
BUDGET_EXIT_CODE = 3

#: ``promptr1 train``'s exit code when training failed (the env LLM failed on every episode, or on most of them
#: for ``env_error_patience`` steps): the reason is on the console and in ``summary.json``.
FAILED_EXIT_CODE = 1

#: What ``promptr1 train`` writes into its output_dir besides the trainer's checkpoints and logs.
RUN_OUTPUTS = ("sft", "validation", "eval", "eval.json", "summary.json")



#: The options that keep ``promptr1 train``'s quickstart: without ``--config``, a command line holding only these
#: (or nothing) starts from the bundled ``quickstart`` config; any other option starts from the plain defaults.
#: They change how long the quickstart runs, where it writes and on what, not what it trains.
QUICKSTART_OPTIONS = ("steps", "sft_steps", "eval_episodes", "eval_warm_start", "output_dir", "overwrite", "resume",
                      "save_every", "seed", "cpu", "progress", "dry_run")

TRAIN_ABOUT = ("Train the agent with GRPO (or another registered algorithm, --algo): an optional supervised warm "
               "start, then RL against the env LLM, then an optional held-out evaluation.")
TRAIN_EPILOG = (
    "Which settings a run starts from: with --config, that file's, then your options. Without --config, 'promptr1 "
    "train' alone runs the CPU quickstart (bundled config 'quickstart'), and so does a command line whose options "
    "are only " + ", ".join("--" + n.replace("_", "-") for n in QUICKSTART_OPTIONS) + ": 'promptr1 train --steps 2 "
    "--overwrite' is the quickstart, shorter. Any other option without --config starts from the defaults listed "
    "above; 'promptr1 train --config quickstart --model NAME ...' keeps the quickstart's settings with any option."
    "\n\nExit codes: 0 done, 1 training failed, 2 usage error, 3 stopped by the env LLM's budget (--resume auto "
    "continues).")


def train_base_config(argv: Sequence[str]) -> str | None:
    """The bundled config ``promptr1 train ARGV`` starts from when ARGV names none: ``quickstart`` when every option
    is one of :data:`QUICKSTART_OPTIONS` (or there is none), else ``None`` (the plain defaults).

    >>> train_base_config([]), train_base_config(["--steps", "2", "--output-dir=runs/q"])
    ('quickstart', 'quickstart')
    >>> train_base_config(["--steps", "2", "--model", "tiny"]), train_base_config(["--config", "paper"])
    (None, None)
    """
    names = {a[2:].split("=", 1)[0].replace("-", "_") for a in argv if a.startswith("--")}
    if "config" in names:
        return None
    return "quickstart" if names <= set(QUICKSTART_OPTIONS) else None


def train_main(argv: Sequence[str]) -> int:
    """``promptr1 train``; with no arguments (or only :data:`QUICKSTART_OPTIONS`), the bundled CPU quickstart."""
    argv = list(argv)
    base = None if any(a in ("-h", "--help") for a in argv) else train_base_config(argv)
    if base == "quickstart":
        given = f" with {' '.join(argv)}" if argv else ""
        print(f"promptr1 train: running the CPU quickstart (bundled config 'quickstart'){given}; "
              "see `promptr1 train --help`.", flush=True)
    return run_command(GRPOConfig, argv, "train", run_training, default_config=base, about=TRAIN_ABOUT,
                       epilog=TRAIN_EPILOG)


def sft_main(argv: Sequence[str]) -> int:
    """``promptr1 sft``: supervised warm start on demonstrations of the turn protocol."""
    from promptr1.agents.sft import run_sft

    def sft(cfg: SFTConfig) -> int:
        run_sft(cfg)
        return 0

    return run_command(SFTConfig, argv, "sft", sft,
                       about="Supervised warm start: fine-tune the agent on scripted demonstrations of the turn "
                             "protocol played against the env LLM; writes a checkpoint to --output-dir that "
                             "'promptr1 train --model' can start from.")


def run_training(cfg: GRPOConfig, *, env_llm: Any = None, callbacks: Sequence[Callback] = ()) -> int:
    """The whole ``promptr1 train`` pipeline for a parsed config; returns the exit code: 0, or
    :data:`BUDGET_EXIT_CODE` when the env LLM's budget stopped training (a checkpoint was written).

    ``env_llm``: an already-built backend (used as is, not closed; the budget and the cache still wrap it).
    ``callbacks``: more :class:`~promptr1.agents.logger.Callback` objects for the trainer.
    """
    import dataclasses

    from promptr1.plugins import import_plugins

    import_plugins(cfg.plugins)  # 1. before anything that looks a name up
    cfg.loss_config()  # an unknown --algo or a bad loss setting fails here, before any model loads
    check_training_settings(cfg, given_backend=env_llm is not None)
    if not cfg.resume:
        from promptr1.agents.models import check_model_name

        check_model_name(cfg.model, what="--model")
    if cfg.dry_run:
        print(dry_run_report(cfg), flush=True)
        return 0
    from promptr1.agents.checkpoint import claim_output_dir

    removed = claim_output_dir(cfg.output_dir, resume=cfg.resume, overwrite=cfg.overwrite, names=RUN_OUTPUTS)
    if removed:
        print(f"promptr1 train: --overwrite: removed the earlier run's {', '.join(p.name for p in removed)} from "
              f"{cfg.output_dir}", flush=True)

    import torch

    t_start = time.perf_counter()
    out = pathlib.Path(cfg.output_dir)
    if cfg.cpu or not torch.cuda.is_available():
        torch.set_num_threads(max(1, torch.get_num_threads()))
    from promptr1.llm_backends import from_settings

    backend, budget = from_settings(cfg, given=env_llm)  # 2. once per run: limits, budget, cache
    if cfg.max_cost is not None and not cfg.env_price_per_1k:
        print("promptr1 train: warning: --max-cost is set but no price was given (--env-price-per-1k IN OUT); "
              "a backend without its own price table reports every call as $0, so only --max-calls can stop it.",
              file=sys.stderr, flush=True)
    try:
        policy = _warm_start(cfg, backend, out)  # 3.
        from promptr1.agents.trainer import GRPOTrainer

        guards: list[Callback] = []
        if cfg.eval_every > 0:
            guards.append(ValidationCallback(cfg, backend, budget=budget))
        stop = BudgetStopCallback(budget)
        guards.append(stop)
        trainer = GRPOTrainer(dataclasses.replace(cfg, model=policy), env_llm=backend,
                              callbacks=[*guards, *callbacks])  # 4.
        main = trainer.accelerator.is_main_process
        if main:
            print(f"promptr1 train: policy {cfg.model!r}{' (after SFT)' if policy != cfg.model else ''}, "
                  f"env LLM {cfg.env_llm!r}, algo {cfg.algo!r}, {cfg.steps} steps of "
                  f"{cfg.batch_questions}x{cfg.group_size} episodes on {trainer.accelerator.device}; "
                  f"logs: {out / 'tensorboard'}", flush=True)
        from promptr1.agents.trainer import TrainingFailed

        try:
            history = trainer.train()
        except TrainingFailed as e:
            if main:
                print(f"promptr1 train: FAILED: {e}", file=sys.stderr, flush=True)
                write_training_summary(out, "failed", str(e), trainer.step, cfg, budget)
            return FAILED_EXIT_CODE
        latest = out / "latest"
        ckpt = out / latest.read_text().strip() if latest.exists() else out
        if main:
            last = history[-1] if history else {}
            print(f"promptr1 train: done in {time.perf_counter() - t_start:.0f}s; last step reward "
                  f"{last.get('reward/mean', float('nan')):+.3f}; checkpoint {ckpt}; env LLM: {budget.calls} "
                  f"uncached calls, ${budget.cost:.4f}", flush=True)
        if stop.stopped_at is not None:
            if main:
                why = (f"the env-LLM budget stopped training at step {stop.stopped_at} of {cfg.steps} ({stop.reason}); "
                       f"checkpoint {ckpt}. Run the same command with --resume auto to continue (with a new budget).")
                print(f"promptr1 train: {why}", flush=True)
                write_training_summary(out, "budget-stopped", why, trainer.step, cfg, budget)
            return BUDGET_EXIT_CODE
        if main:
            write_training_summary(out, "complete", f"{trainer.step} of {cfg.steps} steps; checkpoint {ckpt}",
                                   trainer.step, cfg, budget)
        if cfg.eval_episodes > 0 and main:  # 5.
            trained, tokenizer = trainer.unwrapped_model, trainer.tokenizer
            del trainer
            final_evaluation(cfg, policy, trained, tokenizer, backend, out)
            print(f"promptr1 train: total {time.perf_counter() - t_start:.0f}s", flush=True)
    finally:
        close = getattr(backend, "close", None)  # closes the budget wrapper and the cache, and our own backend
        if callable(close):
            close()
    return 0


def write_training_summary(out: pathlib.Path, status: str, reason: str, step: int, cfg: GRPOConfig,
                           budget: Any) -> pathlib.Path:
    """``OUTPUT_DIR/summary.json``: how the run ended (``complete``, ``budget-stopped`` or ``failed``) and why."""
    from promptr1.fileio import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    path = out / "summary.json"
    atomic_write_text(path, json.dumps({"status": status, "reason": reason, "step": step, "steps": cfg.steps,
                                        "env_llm": cfg.env_llm, "env_llm_calls": budget.calls,
                                        "env_llm_cost_usd": budget.cost}, indent=2))
    return path


# ----------------------------------------------------------------------------- the env LLM of a run


def check_training_settings(cfg: GRPOConfig, *, given_backend: bool = False) -> None:
    """Reject bad validation and env-LLM limit settings before anything is loaded (the budget and cache settings
    are checked when the settings are made)."""
    from promptr1.llm_backends.assemble import backend_kwargs

    for name in ("eval_every", "eval_limit"):
        if int(getattr(cfg, name)) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)!r}.")
    kwargs = backend_kwargs(cfg)
    if kwargs and given_backend:
        raise ConfigError(f"{sorted(kwargs)} configure a backend built from --env-llm; an env LLM passed in as an "
                          "object is used as it is. Build it with those arguments instead.")


# ----------------------------------------------------------------------------- callbacks


class BudgetStopCallback(Callback):
    """Stops training at the end of the step in which the env LLM's budget ran out.

    The trainer then writes its final checkpoint; calls the budget refused flagged their episodes
    (``env_error`` ``"budget: ..."``), which the trainer dropped from their groups like any env error. The
    budget's use is logged as ``env_llm/budget_calls`` and ``env_llm/budget_cost_usd`` (this run's uncached calls).
    Under ``accelerate launch`` each process has its own budget and all stop when one does.
    """

    def __init__(self, budget: Any) -> None:
        self.budget = budget
        self.stopped_at: int | None = None
        self.reason: str | None = None

    def on_step_end(self, trainer: Any, step: int, metrics: Mapping[str, float]) -> bool:
        writer = getattr(getattr(trainer, "logger", None), "writer", None)
        if writer is not None:
            writer.add_scalar("env_llm/budget_calls", self.budget.calls, step)
            writer.add_scalar("env_llm/budget_cost_usd", self.budget.cost, step)
        spent = self.budget.stop_reason is not None
        acc = getattr(trainer, "accelerator", None)
        if acc is not None and acc.num_processes > 1:  # every process stops at the same step
            import torch

            flag = torch.tensor([1.0 if spent else 0.0], device=acc.device)
            spent = bool(acc.reduce(flag, reduction="sum").item() > 0)
        if spent:
            self.stopped_at = step
            self.reason = self.budget.stop_reason or "another process's budget ran out"
            return False
        return True


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
        if step % max(self.cfg.eval_every, 1) == 0 or step == self.cfg.steps:
            self._maybe_validate(trainer, step)
        return True

    def _maybe_validate(self, trainer: Any, step: int) -> None:
        acc = trainer.accelerator
        done = (self.folder / f"step-{step:06d}" / "summary.json").is_file()
        spent = self.budget is not None and self.budget.stop_reason is not None
        if acc.is_main_process and not done and not spent:
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
            reference = _reference_validation_scalars(result.records)
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


def _reference_validation_scalars(records: Sequence[Mapping[str, Any]],
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


# ----------------------------------------------------------------------------- --dry-run


def _fmt(n: float) -> str:
    return f"{n:,.0f}"


def _validation_questions(cfg: GRPOConfig) -> tuple[int, str]:
    """Questions one validation plays (loads the task sources, not a model), and a note on sources it could not
    read (then ``eval_limit`` stands for their size, or they count 0)."""
    from promptr1.envs.tasks import load_tasks

    n, missing = 0, []
    for spec in cfg.eval_tasks or cfg.tasks:
        try:
            size = len(load_tasks(spec, split="test"))
        except (FileNotFoundError, ValueError, ImportError):
            missing.append(str(spec))
            size = cfg.eval_limit
        n += min(size, cfg.eval_limit) if cfg.eval_limit > 0 else size
    note = ""
    if missing:
        note = (f"  validation sources not readable here ({', '.join(missing)}): counted as "
                + (f"--eval-limit {cfg.eval_limit} questions each" if cfg.eval_limit > 0 else "0 questions"))
    return n, note


def dry_run_report(cfg: GRPOConfig) -> str:
    """What ``cfg`` will ask of the env LLM, as upper bounds: calls, input and output tokens, and dollars
    (with ``env_price_per_1k``), per episode, per step, per validation and for the whole run.

    Every agent turn may be a prompt, and the env sends every prompt, the last turn's included: up to
    ``max_turns`` calls an episode. A prompt is at most one agent turn (``max_new_tokens`` tokens); a reply is at
    most ``env_max_tokens`` tokens (with no limit, ``max_response_chars / 4`` as an estimate). The k-th call's
    input holds the env system prompt, the k-1 earlier prompts and replies, and the new prompt.

    >>> report = dry_run_report(GRPOConfig(steps=2, batch_questions=1, group_size=2, max_turns=2))
    >>> report.splitlines()[0]
    'promptr1 train --dry-run: expected env-LLM use, upper bounds (no model loaded, no call made)'
    >>> [line.split()[-4] for line in report.splitlines() if line.strip().startswith(("per step", "whole run"))]
    ['4', '8']
    """
    from promptr1.envs.collab_env import DEFAULT_ENV_SYSTEM_PROMPT
    from promptr1.llm_backends.limits import estimate_tokens

    episodes = cfg.batch_questions * cfg.group_size
    calls = cfg.max_turns  # every turn may send a prompt
    prompt = cfg.max_new_tokens
    if cfg.env_max_tokens > 0:
        reply, reply_note = cfg.env_max_tokens, f"env_max_tokens={cfg.env_max_tokens}"
    else:
        reply = estimate_tokens("x" * cfg.max_response_chars)
        reply_note = (f"no env_max_tokens limit: estimated from max_response_chars={cfg.max_response_chars} "
                      "(replies can be longer)")
    system = estimate_tokens(DEFAULT_ENV_SYSTEM_PROMPT)
    inp = sum(system + (k - 1) * (prompt + reply) + prompt for k in range(1, calls + 1))
    outp = calls * reply
    price = tuple(float(v) for v in cfg.env_price_per_1k) if cfg.env_price_per_1k else None

    def cost(i: float, o: float) -> str:
        return f"{i / 1000 * price[0] + o / 1000 * price[1]:,.4f}" if price else "n/a"

    rows: list[tuple[str, float, float, float]] = [
        ("per episode", calls, inp, outp),
        (f"per step ({episodes} episodes)", calls * episodes, inp * episodes, outp * episodes),
    ]
    n_val, val_note = 0, ""
    if cfg.eval_every > 0:
        questions, val_note = _validation_questions(cfg)
        n_val = int(cfg.eval_before_train) + cfg.steps // cfg.eval_every + int(cfg.steps % cfg.eval_every != 0)
        rows.append((f"per validation ({questions} episodes)", calls * questions, inp * questions, outp * questions))
    total_eps = cfg.steps * episodes + (n_val * questions if n_val else 0)
    label = f"whole run ({cfg.steps} steps" + (f" + {n_val} validations)" if n_val else ")")
    rows.append((label, calls * total_eps, inp * total_eps, outp * total_eps))
    lines = [
        "promptr1 train --dry-run: expected env-LLM use, upper bounds (no model loaded, no call made)",
        f"  env LLM {cfg.env_llm!r}; {cfg.batch_questions} question(s) x {cfg.group_size} rollouts = {episodes} episodes "
        "a step (per process under accelerate launch)",
        f"  up to {calls} calls an episode (max_turns={cfg.max_turns}: every turn may send a prompt, the last one "
        "included)",
        f"  a prompt <= {prompt} tokens (max_new_tokens), a reply <= {reply} tokens ({reply_note}), env system "
        f"prompt ~{system} tokens; the k-th call re-sends the k-1 earlier prompts and replies",
        "  cost: " + (f"${price[0]:g} / ${price[1]:g} per 1,000 input / output tokens (--env-price-per-1k)" if price
                      else "n/a: no price given (--env-price-per-1k IN OUT, USD per 1,000 tokens)"),
        "",
        f"  {'':<38} {'calls':>10} {'input tokens':>14} {'output tokens':>14} {'cost (USD)':>12}",
    ]
    for name, c, i, o in rows:
        lines.append(f"  {name:<38} {_fmt(c):>10} {_fmt(i):>14} {_fmt(o):>14} {cost(i, o):>12}")
    if val_note:
        lines.append(val_note)
    if cfg.max_calls is not None:
        per_step = calls * episodes
        lines.append(f"\n  --max-calls {cfg.max_calls}: at the upper bound the budget runs out in step "
                     f"{max(1, math.ceil(cfg.max_calls / per_step))} of {cfg.steps}.")
    if cfg.max_cost is not None and price:
        per_step_cost = (inp * price[0] + outp * price[1]) / 1000 * episodes
        if per_step_cost > 0:
            lines.append(f"  --max-cost {cfg.max_cost:g}: at the upper bound the budget runs out in step "
                         f"{max(1, math.ceil(cfg.max_cost / per_step_cost))} of {cfg.steps}.")
    if cfg.cache:
        lines.append(f"  --cache {cfg.cache} ({cfg.cache_mode}): cached replies cost nothing; these are the calls "
                     "before the cache.")
    return "\n".join(lines)


def _warm_start(cfg: GRPOConfig, backend: Any, out: pathlib.Path) -> str:
    """The policy GRPO starts from: ``cfg.model``, or the SFT warm start of it (run now, or found on resume)."""
    if cfg.sft_steps <= 0:
        return cfg.model
    if cfg.resume and (out / "sft").is_dir():
        return str(out / "sft")
    from promptr1.agents.sft import run_sft

    return str(run_sft(SFTConfig.from_training(cfg, output_dir=str(out / "sft")), env_llm=backend))


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
    print(f"\nheld-out evaluation ({cfg.eval_episodes} episodes, greedy, env LLM {cfg.env_llm!r}, reward "
          f"{cfg.reward_variant!r}; mean and 95% CI):")
    print(format_table(result), flush=True)
    from promptr1.fileio import atomic_write_text

    atomic_write_text(out / "eval.json", json.dumps(result.to_json(), indent=2))
    return result
