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
from promptr1.commands.cli import run_command
from promptr1.core.settings import ConfigError, ParsedSettings

__all__ = [
    "BUDGET_EXIT_CODE",
    "FAILED_EXIT_CODE",
    "run_training",
    "sft_main",
    "train_main",
]

#: ``promptr1 train``'s exit code when the env LLM's budget stopped the run (as ``promptr1 eval``'s).
BUDGET_EXIT_CODE = 3

#: ``promptr1 train``'s exit code when training failed (the env LLM failed on every episode, or on most of them
#: for ``env_error_patience`` steps): the reason is on the console and in ``summary.json``.
FAILED_EXIT_CODE = 1

#: What ``promptr1 train`` writes into its output_dir besides the trainer's checkpoints and logs.
RUN_OUTPUTS = ("sft", "validation", "eval", "eval.json", "summary.json", "settings.yaml")



TRAIN_ABOUT = ("Train the agent with GRPO (or another registered algorithm, --algo): an optional supervised warm "
               "start, then RL against the env LLM, then an optional held-out evaluation.")
TRAIN_EPILOG = (
    "Every run starts from a config and changes it with your options: the bundled CPU quickstart ('quickstart') "
    "unless --config names another (a file, 'paper', or 'defaults' for the values listed above). The run prints "
    "what it started from and every value you changed, and writes both to OUTPUT_DIR/settings.yaml."
    "\n\nExit codes: 0 done, 1 training failed, 2 usage error, 3 stopped by the env LLM's budget (--resume auto "
    "continues), 130/143 interrupted (--resume auto continues).")


def train_main(argv: Sequence[str]) -> int:
    """``promptr1 train``: the bundled CPU quickstart, or the config ``--config`` names, changed by the options."""
    argv = list(argv)

    def train(parsed: ParsedSettings) -> int:
        print(f"promptr1 train: {parsed.describe()}", flush=True)
        return run_training(parsed.settings, origin=parsed, argv=argv)

    try:
        return run_command(GRPOConfig, argv, "train", train, base="quickstart", about=TRAIN_ABOUT,
                           epilog=TRAIN_EPILOG)
    except KeyboardInterrupt:  # outside the training loop (loading, the final evaluation), or a second Ctrl-C
        from promptr1.agents.interrupt import resume_command

        print(f"\npromptr1 train: stopped at once; the work since the last checkpoint is lost. Continue with "
              f"`{resume_command(argv)}`.", file=sys.stderr, flush=True)
        return 130


def sft_main(argv: Sequence[str]) -> int:
    """``promptr1 sft``: supervised warm start on demonstrations of the turn protocol."""
    from promptr1.agents.sft import run_sft

    def sft(parsed: ParsedSettings) -> int:
        run_sft(parsed.settings)
        return 0

    return run_command(SFTConfig, argv, "sft", sft,
                       about="Supervised warm start: fine-tune the agent on scripted demonstrations of the turn "
                             "protocol played against the env LLM; writes a checkpoint to --output-dir that "
                             "'promptr1 train --model' can start from.")


def run_training(cfg: GRPOConfig, *, env_llm: Any = None, callbacks: Sequence[Callback] = (),
                 origin: ParsedSettings | None = None, argv: Sequence[str] | None = None) -> int:
    """The whole ``promptr1 train`` pipeline for a parsed config; returns the exit code: 0, or
    :data:`BUDGET_EXIT_CODE` when the env LLM's budget stopped training (a checkpoint was written).

    ``env_llm``: an already-built backend (used as is, not closed; the budget and the cache still wrap it).
    ``callbacks``: more :class:`~promptr1.agents.logger.Callback` objects for the trainer.
    ``origin``: what the settings started from and what changed (written to ``OUTPUT_DIR/settings.yaml``).
    ``argv``: the command line, for the command an interrupted run prints to continue.
    """
    import dataclasses

    from promptr1.core.plugins import import_plugins

    import_plugins(cfg.plugins)  # 1. before anything that looks a name up
    cfg.loss_config()  # an unknown --algo or a bad loss setting fails here, before any model loads
    check_training_settings(cfg, given_backend=env_llm is not None)
    from promptr1.agents.preflight import check_training_inputs

    check_training_inputs(cfg, given_backend=env_llm is not None)  # names and paths, before any model loads
    if cfg.resume and not cfg.dry_run:
        from promptr1.agents.checkpoint import resume_report

        line, finished = resume_report(cfg.output_dir, cfg.resume, cfg.steps)
        print(f"promptr1 train: {line}", flush=True)
        if finished:
            return 0
    if cfg.dry_run:
        from promptr1.commands.dry_run import dry_run_report

        print(dry_run_report(cfg), flush=True)
        return 0
    from promptr1.agents.checkpoint import claim_output_dir

    removed = claim_output_dir(cfg.output_dir, resume=cfg.resume, overwrite=cfg.overwrite, names=RUN_OUTPUTS)
    if removed:
        print(f"promptr1 train: --overwrite: removed the earlier run's {', '.join(p.name for p in removed)} from "
              f"{cfg.output_dir}", flush=True)

    out = pathlib.Path(cfg.output_dir)
    write_settings(out, cfg, origin)
    import torch

    t_start = time.perf_counter()
    if cfg.cpu or not torch.cuda.is_available():
        torch.set_num_threads(max(1, torch.get_num_threads()))
    from promptr1.llm_backends import from_settings

    backend, budget = from_settings(cfg, given=env_llm)  # 2. once per run: limits, budget, cache
    if cfg.max_cost is not None and not cfg.env_price_per_1k and not cfg.env_model_prices:
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
        cfg = dataclasses.replace(cfg, steps=trainer.cfg.steps)  # `epochs` sets the steps from the data
        main = trainer.accelerator.is_main_process
        if main:
            print(f"promptr1 train: policy {cfg.model!r}{' (after SFT)' if policy != cfg.model else ''}, "
                  f"env LLM {cfg.env_llm_label()!r}, algo {cfg.algo!r}, {cfg.steps} steps of "
                  f"{cfg.batch_questions}x{cfg.group_size} episodes on {trainer.accelerator.device}; "
                  f"logs: {out / 'tensorboard'}", flush=True)
        from promptr1.agents.trainer import TrainingFailed, TrainingInterrupted

        try:
            history = trainer.train()
        except TrainingInterrupted as e:
            from promptr1.agents.interrupt import resume_command

            why = f"interrupted at step {e.step}: continue with `{resume_command(argv)}`"
            if main:
                print(f"promptr1 train: {why} (checkpoint {e.checkpoint})", file=sys.stderr, flush=True)
                write_training_summary(out, "interrupted", why, e.step, cfg, budget)
            return e.exit_code
        except TrainingFailed as e:
            if budget.stop_reason is not None:  # the budget stopped the run: exit 3, never a failure
                if main:
                    why = (f"budget reached ({budget.stop_reason}) at step {trainer.step} of {cfg.steps}; "
                           f"before it, {e}. Run the same command with --resume auto to continue (with a new "
                           "budget).")
                    print(f"promptr1 train: {why}", flush=True)
                    write_training_summary(out, "budget-stopped", why, trainer.step, cfg, budget)
                return BUDGET_EXIT_CODE
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
                why = (f"budget reached: the env-LLM budget stopped training at step {stop.stopped_at} of "
                       f"{cfg.steps} ({stop.reason}); "
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
            try:
                final_evaluation(cfg, policy, trained, tokenizer, backend, out)
            except KeyboardInterrupt:  # training is complete and saved; only the comparison is cut short
                print(f"\npromptr1 train: the held-out evaluation was interrupted; training is complete "
                      f"({ckpt}).", file=sys.stderr, flush=True)
                return 130
            print(f"promptr1 train: total {time.perf_counter() - t_start:.0f}s; {_peak_memory_text()}", flush=True)
        if main:
            from promptr1.evaluation.validation import run_outputs

            where = "; ".join(f"{what} {path}" for what, path in run_outputs(out).items())
            print(f"promptr1 train: outputs: {where}", flush=True)
    finally:
        close = getattr(backend, "close", None)  # closes the budget wrapper and the cache, and our own backend
        if callable(close):
            close()
    return 0


def write_settings(out: pathlib.Path, cfg: Any, origin: ParsedSettings | None) -> pathlib.Path:
    """``OUTPUT_DIR/settings.yaml``: what the run started from, every value changed from it, and every setting."""
    import dataclasses

    import yaml

    from promptr1.core.fileio import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    doc = {"started_from": origin.base if origin else "the settings object given",
           "changed": {k: {"from": b, "to": v} for k, (b, v) in (origin.changes if origin else {}).items()},
           "settings": dataclasses.asdict(cfg)}
    path = out / "settings.yaml"
    atomic_write_text(path, yaml.safe_dump(doc, sort_keys=False))
    return path


def write_training_summary(out: pathlib.Path, status: str, reason: str, step: int, cfg: GRPOConfig,
                           budget: Any) -> pathlib.Path:
    """``OUTPUT_DIR/summary.json``: how the run ended (``complete``, ``budget-stopped``, ``interrupted`` or
    ``failed``) and why."""
    from promptr1.core.fileio import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    path = out / "summary.json"
    from promptr1.agents.logger import peak_memory_gb

    atomic_write_text(path, json.dumps({"status": status, "reason": reason, "step": step, "steps": cfg.steps,
                                        "env_llm": cfg.env_llm_label(), "env_llm_calls": budget.calls,
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


