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

Around step 4, two callbacks (:class:`~promptr1.evaluation.validation.ValidationCallback`,
:class:`~promptr1.agents.callbacks.BudgetStopCallback`) validate the live
policy before training and every ``eval_every`` steps, and stop the run cleanly once the env LLM's budget
(``max_calls`` / ``max_cost``) is spent: the step finishes, a checkpoint is written, and ``promptr1 train``
exits with code 3 (``--resume auto`` continues). The env LLM is built once as
``CachedBackend(BudgetedBackend(backend))`` (the cache only with ``cache``), so that the warm start, training,
validation and the final evaluation share one backend, one budget and one cache. ``--dry-run`` prints what
the config will cost in env-LLM calls, tokens and dollars, and loads nothing.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

from promptr1.agents.config import GRPOConfig, SFTConfig
from promptr1.agents.logger import Callback
from promptr1.config import ConfigError, run_command

__all__ = [
    "BUDGET_EXIT_CODE",
    "FAILED_EXIT_CODE",
    "QUICKSTART_OPTIONS",
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
                      "save_every", "save_optimizer", "seed", "cpu", "progress", "dry_run")

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
        from promptr1.agents.dry_run import dry_run_report

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
        from promptr1.agents.callbacks import BudgetStopCallback
        from promptr1.agents.sft import warm_start
        from promptr1.evaluation.validation import ValidationCallback, final_evaluation

        policy = warm_start(cfg, backend, out)  # 3.
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
                  f"uncached calls, ${budget.cost:.4f}; {_peak_memory_text()}", flush=True)
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
            print(f"promptr1 train: total {time.perf_counter() - t_start:.0f}s; {_peak_memory_text()}", flush=True)
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
    from promptr1.agents.logger import peak_memory_gb

    atomic_write_text(path, json.dumps({"status": status, "reason": reason, "step": step, "steps": cfg.steps,
                                        "env_llm": cfg.env_llm, "env_llm_calls": budget.calls,
                                        "env_llm_cost_usd": budget.cost, **peak_memory_gb()}, indent=2))
    return path


def _peak_memory_text() -> str:
    """``peak memory 3.1 GB RAM, 2.0 GB GPU``: the process's peaks so far (for the summary lines)."""
    from promptr1.agents.logger import peak_memory_gb

    peaks = peak_memory_gb()
    parts = [f"{peaks['peak_rss_gb']:.1f} GB RAM"] if "peak_rss_gb" in peaks else []
    if "peak_gpu_gb" in peaks:
        parts.append(f"{peaks['peak_gpu_gb']:.1f} GB GPU")
    return "peak memory " + (", ".join(parts) if parts else "unknown")


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


