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
"""

from __future__ import annotations

import json
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

from promptr1.agents.config import GRPOConfig, SFTConfig
from promptr1.config import ConfigError, parse_command

__all__ = ["run_training", "sft_main", "train_main"]


def _die(exc: Exception, prog: str) -> int:
    print(f"promptr1 {prog}: {exc}", file=sys.stderr)
    return 2


def train_main(argv: Sequence[str]) -> int:
    """``promptr1 train``; with no arguments, the bundled CPU quickstart."""
    argv = list(argv)
    try:
        if not argv:
            print("promptr1 train: no arguments, running the CPU quickstart (bundled config 'quickstart'; "
                  "see `promptr1 train --help`).", flush=True)
            cfg = parse_command(GRPOConfig, [], "train", default_config="quickstart")
        else:
            cfg = parse_command(GRPOConfig, argv, "train")
    except ConfigError as exc:
        return _die(exc, "train")
    if cfg is None:
        return 0
    try:
        return run_training(cfg)
    except (ConfigError, ImportError, ValueError, FileNotFoundError) as exc:
        return _die(exc, "train")


def sft_main(argv: Sequence[str]) -> int:
    """``promptr1 sft``: supervised warm start on demonstrations of the turn protocol."""
    try:
        cfg = parse_command(SFTConfig, argv, "sft")
    except ConfigError as exc:
        return _die(exc, "sft")
    if cfg is None:
        return 0
    from promptr1.agents.sft import run_sft
    from promptr1.plugins import import_plugins

    try:
        import_plugins(cfg.plugins)
        run_sft(cfg)
    except (ImportError, ValueError, FileNotFoundError) as exc:
        return _die(exc, "sft")
    return 0


def run_training(cfg: GRPOConfig, *, env_llm: Any = None) -> int:
    """The whole ``promptr1 train`` pipeline for a parsed config (``env_llm``: an already-built backend)."""
    import dataclasses

    import torch

    from promptr1.llm_backends import make_backend
    from promptr1.plugins import import_plugins

    import_plugins(cfg.plugins)  # 1. before anything that looks a name up
    cfg.loss_config()  # an unknown --algo or a bad loss setting fails here, before any model loads
    t_start = time.perf_counter()
    out = pathlib.Path(cfg.output_dir)
    if cfg.cpu or not torch.cuda.is_available():
        torch.set_num_threads(max(1, torch.get_num_threads()))
    backend = env_llm if env_llm is not None else make_backend(cfg.env_llm)  # 2. once per run
    try:
        policy = _warm_start(cfg, backend, out)  # 3.
        from promptr1.agents.trainer import GRPOTrainer

        trainer = GRPOTrainer(dataclasses.replace(cfg, model=policy), env_llm=backend)  # 4.
        main = trainer.accelerator.is_main_process
        if main:
            print(f"promptr1 train: policy {cfg.model!r}{' (after SFT)' if policy != cfg.model else ''}, "
                  f"env LLM {cfg.env_llm!r}, algo {cfg.algo!r}, {cfg.steps} steps of "
                  f"{cfg.batch_questions}x{cfg.group_size} episodes on {trainer.accelerator.device}; "
                  f"logs: {out / 'tensorboard'}", flush=True)
        history = trainer.train()
        latest = out / "latest"
        ckpt = out / latest.read_text().strip() if latest.exists() else out
        if main:
            last = history[-1] if history else {}
            print(f"promptr1 train: done in {time.perf_counter() - t_start:.0f}s; last step reward "
                  f"{last.get('reward/mean', float('nan')):+.3f}; checkpoint {ckpt}", flush=True)
        if cfg.eval_episodes > 0 and main:  # 5.
            trained, tokenizer = trainer.unwrapped_model, trainer.tokenizer
            del trainer
            final_evaluation(cfg, policy, trained, tokenizer, backend, out)
            print(f"promptr1 train: total {time.perf_counter() - t_start:.0f}s", flush=True)
    finally:
        if env_llm is None:
            close = getattr(backend, "close", None)
            if callable(close):
                close()
    return 0


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
    (out / "eval.json").write_text(json.dumps(result.to_json(), indent=2))
    return result
