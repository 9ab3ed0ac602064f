"""``promptr1 train | sft | eval | chat``: the trainer's command-line entry points.

Each ``*_main(argv)`` takes the arguments after the sub-command and returns an exit code.
Options are ``--key value`` (or ``--key=value``) for any field of the command's config
dataclass, plus ``--config FILE.yaml`` (or the name of a bundled config, e.g. ``quickstart``).
``promptr1 train`` with no arguments runs the bundled CPU quickstart.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

from promptr1.agents.config import (
    ConfigError,
    EvalConfig,
    GRPOConfig,
    SFTConfig,
    config_help,
    config_to_dict,
    load_config,
)

__all__ = ["bundled_config", "chat_main", "eval_main", "sft_main", "train_main"]


def bundled_config(name: str) -> pathlib.Path | None:
    """Path of a config shipped in ``promptr1/configs`` (``quickstart`` -> quickstart.yaml), if any."""
    from importlib import resources

    stem = name[:-5] if name.endswith(".yaml") else name
    try:
        p = resources.files("promptr1") / "configs" / f"{stem}.yaml"
    except (ModuleNotFoundError, TypeError):
        return None
    return pathlib.Path(str(p)) if p.is_file() else None


def _split_config(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    argv = list(argv)
    path = None
    rest: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--config":
            if i + 1 >= len(argv):
                raise ConfigError("--config needs a value: a YAML file or a bundled name such as 'quickstart'.")
            path, i = argv[i + 1], i + 2
        elif a.startswith("--config="):
            path, i = a.split("=", 1)[1], i + 1
        else:
            rest.append(a)
            i += 1
    if path is not None and not pathlib.Path(path).is_file():
        bundled = bundled_config(path)
        if bundled is None:
            raise ConfigError(f"--config {path!r}: no such file, and no bundled config of that name (try 'quickstart').")
        path = str(bundled)
    return path, rest


def _parse(cls: type, argv: Sequence[str], prog: str, default_config: str | None = None) -> Any:
    if any(a in ("-h", "--help") for a in argv):
        print(f"usage: promptr1 {prog} [--config FILE.yaml] [--key value ...]\n")
        print(config_help(cls))
        return None
    path, rest = _split_config(argv)
    if path is None and default_config is not None:
        path = str(bundled_config(default_config) or "") or None
    return load_config(cls, path, rest)


def _die(exc: Exception, prog: str) -> int:
    print(f"promptr1 {prog}: {exc}", file=sys.stderr)
    return 2


# ----------------------------------------------------------------------------- train


def train_main(argv: Sequence[str]) -> int:
    """``promptr1 train``: (optional SFT warm start) -> GRPO -> (optional trained-vs-untrained eval)."""
    argv = list(argv)
    try:
        if not argv:
            print("promptr1 train: no arguments, running the CPU quickstart (bundled config 'quickstart'; "
                  "see `promptr1 train --help`).", flush=True)
            cfg = _parse(GRPOConfig, [], "train", default_config="quickstart")
        else:
            cfg = _parse(GRPOConfig, argv, "train")
    except ConfigError as exc:
        return _die(exc, "train")
    if cfg is None:
        return 0
    return run_training(cfg)


def run_training(cfg: GRPOConfig) -> int:
    """The whole ``promptr1 train`` pipeline for a parsed config."""
    import torch

    from promptr1.agents.trainer import GRPOTrainer

    t_start = time.perf_counter()
    out = pathlib.Path(cfg.output_dir)
    base_model = cfg.model
    policy = cfg.model
    if cfg.cpu or not torch.cuda.is_available():
        torch.set_num_threads(max(1, torch.get_num_threads()))
    if cfg.sft_steps > 0 and not cfg.resume:
        from promptr1.agents.sft import run_sft

        sft_cfg = SFTConfig(model=cfg.model, tasks=cfg.tasks, env_llm=cfg.env_llm, max_turns=cfg.max_turns,
                            steps=cfg.sft_steps, batch_size=cfg.sft_batch_size, lr=cfg.sft_lr,
                            max_seq_len=cfg.max_seq_len, seed=cfg.seed, cpu=cfg.cpu,
                            mixed_precision=cfg.mixed_precision, output_dir=str(out / "sft"), progress=cfg.progress)
        policy = str(run_sft(sft_cfg))
    elif cfg.sft_steps > 0 and (out / "sft").is_dir():
        policy = str(out / "sft")
    import dataclasses

    train_cfg = dataclasses.replace(cfg, model=policy)
    trainer = GRPOTrainer(train_cfg)
    if trainer.accelerator.is_main_process:
        print(f"promptr1 train: policy {base_model!r}{' (after SFT)' if policy != base_model else ''}, "
              f"env LLM {cfg.env_llm!r}, algo {cfg.algo!r}, {cfg.steps} steps of {cfg.batch_questions}x{cfg.group_size} "
              f"episodes on {trainer.accelerator.device}; logs: {out / 'tensorboard'}", flush=True)
    history = trainer.train()
    final = pathlib.Path(cfg.output_dir) / "latest"
    ckpt = out / final.read_text().strip() if final.exists() else out
    if trainer.accelerator.is_main_process:
        last = history[-1] if history else {}
        print(f"promptr1 train: done in {time.perf_counter() - t_start:.0f}s; last step reward "
              f"{last.get('reward/mean', float('nan')):+.3f}; checkpoint {ckpt}", flush=True)
    if cfg.eval_episodes > 0 and trainer.accelerator.is_main_process:
        trained_model = trainer.unwrapped_model
        tokenizer = trainer.tokenizer
        del trainer
        _final_eval(cfg, base_model, policy, trained_model, tokenizer, out)
        print(f"promptr1 train: total {time.perf_counter() - t_start:.0f}s", flush=True)
    return 0


def _eval_tasks(spec: str, split: str = "test") -> list[Any]:
    from promptr1.envs.tasks import load_tasks

    return list(load_tasks(spec, split=split))


def _final_eval(cfg: GRPOConfig, base_model: str, sft_model: str, trained_model: Any, tokenizer: Any,
                out: pathlib.Path) -> None:
    from promptr1.agents.evaluate import evaluate_policy, format_table
    from promptr1.agents.models import load_policy

    from promptr1.llm_backends import make_backend

    tasks = _eval_tasks(cfg.eval_tasks or cfg.tasks, "test")
    backend = make_backend(cfg.env_llm)  # one env LLM for every row (an in-process model loads once)
    kw = dict(episodes=cfg.eval_episodes, max_turns=cfg.max_turns, max_new_tokens=cfg.max_new_tokens,
              max_seq_len=cfg.max_seq_len, temperature=0.0, batch_size=32, seed=cfg.seed + 1)
    results = []
    base, base_tok = load_policy(base_model)
    results.append(evaluate_policy(base, base_tok, tasks, backend, name="untrained", **kw))
    del base
    if sft_model != base_model and cfg.eval_warm_start:
        sft, sft_tok = load_policy(sft_model)
        results.append(evaluate_policy(sft, sft_tok, tasks, backend, name="after SFT", **kw))
        del sft
    trained_model.eval()
    results.append(evaluate_policy(trained_model, tokenizer, tasks, backend, name="trained (GRPO)", **kw))
    print(f"\nheld-out evaluation ({cfg.eval_episodes} episodes, greedy, env LLM {cfg.env_llm!r}; mean ± 95% CI):")
    print(format_table(results), flush=True)
    (out / "eval.json").write_text(json.dumps(
        {r.name: {k: {"mean": m, "ci95": h} for k, (m, h) in r.summary().items()} | {"episodes": r.n}
         for r in results}, indent=2))


# ----------------------------------------------------------------------------- sft


def sft_main(argv: Sequence[str]) -> int:
    """``promptr1 sft``: supervised warm-start on demonstrations of the turn protocol."""
    try:
        cfg = _parse(SFTConfig, argv, "sft")
    except ConfigError as exc:
        return _die(exc, "sft")
    if cfg is None:
        return 0
    from promptr1.agents.sft import run_sft

    run_sft(cfg)
    return 0


# ----------------------------------------------------------------------------- eval / chat


_HARNESS_FLAGS = ("--methods", "--env-llms", "--max-calls", "--max-cost", "--cache", "--out", "--limit")


def _wants_harness(argv: Sequence[str]) -> bool:
    """Task files given positionally, or any harness-only option: the paper-style evaluation harness."""
    argv = list(argv)
    if argv and not argv[0].startswith("-"):
        return True
    return any(a.split("=")[0] in _HARNESS_FLAGS for a in argv)


def eval_main(argv: Sequence[str]) -> int:
    """``promptr1 eval``: a checkpoint or base model on a task file (or ``synthetic``) and an env LLM.

    With task files given positionally (``promptr1 eval hotpot.parquet gsm8k.parquet --methods direct cot
    agent:runs/x``) or any of the harness options (``--methods``, ``--max-calls``, ``--max-cost``,
    ``--cache``, ``--out``, ...), it runs the evaluation harness instead (baselines, several datasets,
    Markdown/JSONL/PNG report): see :mod:`promptr1.agents.eval_harness`.
    """
    if _wants_harness(argv):
        from promptr1.agents.eval_harness import harness_main

        return harness_main(argv)
    try:
        cfg = _parse(EvalConfig, argv, "eval")
    except ConfigError as exc:
        return _die(exc, "eval")
    if cfg is None:
        return 0
    from promptr1.agents.evaluate import evaluate_policy, format_table
    from promptr1.agents.models import load_policy, resolve_model_path

    model, tok = load_policy(cfg.model)
    model.eval()
    tasks = _eval_tasks(cfg.tasks, cfg.split)
    res = evaluate_policy(model, tok, tasks, cfg.env_llm, name=pathlib.Path(resolve_model_path(cfg.model)).name[:22],
                          episodes=cfg.episodes, max_turns=cfg.max_turns, max_new_tokens=cfg.max_new_tokens,
                          max_seq_len=cfg.max_seq_len, temperature=cfg.temperature, batch_size=cfg.batch_size,
                          seed=cfg.seed)
    print(f"tasks {cfg.tasks!r} ({cfg.split}), env LLM {cfg.env_llm!r}, {res.seconds:.0f}s")
    print(format_table([res]))
    return 0


def chat_main(argv: Sequence[str]) -> int:
    """``promptr1 chat --question "..."``: one question in, the multi-turn transcript and answer out."""
    argv = list(argv)
    if argv and not argv[0].startswith("--"):
        argv = ["--question", argv[0]] + argv[1:]
    try:
        cfg = _parse(EvalConfig, argv, "chat")
    except ConfigError as exc:
        return _die(exc, "chat")
    if cfg is None:
        return 0
    if not cfg.question.strip():
        return _die(ConfigError("give a question: promptr1 chat \"Who directed ...?\" (or --question TEXT)."), "chat")
    from promptr1.agents.rollout import RolloutConfig, run_episodes
    from promptr1.agents.models import load_policy
    from promptr1.envs.collab_env import PromptCollabEnv
    from promptr1.envs.tasks import Task

    model, tok = load_policy(cfg.model)
    model.eval()
    task = Task(question=cfg.question.strip(), answers=("",), id="chat")
    env = PromptCollabEnv(task=[task], env_llm=cfg.env_llm, max_turns=cfg.max_turns)
    import torch

    ep = run_episodes(model, tok, [env], [task], [0],
                      RolloutConfig(max_new_tokens=cfg.max_new_tokens, max_seq_len=cfg.max_seq_len,
                                    temperature=cfg.temperature),
                      generator=torch.Generator().manual_seed(cfg.seed))[0]
    for m in ep.messages:
        if m["role"] == "system":
            continue
        who = {"user": "user/env", "assistant": "agent"}[m["role"]]
        print(f"[{who}] {m['content']}\n")
    answer = ep.components.get("answer_text") if ep.components else None
    print(f"answer: {answer if answer else '(no <answer> given)'}")
    if ep.env_error:
        print(f"env error: {ep.env_error}")
    return 0
