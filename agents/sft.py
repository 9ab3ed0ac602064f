"""Supervised warm-start on demonstrations of the turn protocol (``promptr1 sft``).

A demonstration is a list of well-formed agent turns (:func:`promptr1.envs.demonstrations.demonstration`:
the bundled synthetic and ``geo`` tasks).
Each is *played through the environment* so that the env LLM's real replies sit between the
turns, framed exactly as in RL rollouts (:class:`~promptr1.agents.rollout.ChatFramer`): the
training sequence has the same layout as a rollout, and only the agent's tokens carry loss.
"""

from __future__ import annotations

import math
import pathlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from promptr1.agents.config import GRPOConfig, SFTConfig
from promptr1.core.settings import config_to_dict
from promptr1.agents.episode import Episode, agent_turn, record_step, start_episode
from promptr1.agents.rollout import ChatFramer, collate_episodes

__all__ = ["build_sft_example", "run_sft", "sft_examples", "warm_start"]


def build_sft_example(env: Any, task: Any, turns: Sequence[str], framer: ChatFramer) -> Episode:
    """Play ``turns`` in ``env`` on ``task`` through the episode engine; return the token sequence with agent
    tokens masked in (laid out as a rollout's, the framing's prefill included)."""
    ep = start_episode(env, task, framer=framer)
    for turn in turns:
        text = agent_turn(ep, turn, framer)
        if not record_step(ep, text, env.step(text), framer=framer):
            break
    return ep


def sft_examples(tasks: Sequence[Any], env_factory: Callable[[], Any], framer: ChatFramer,
                 demo: Callable[[Any], list[str]], *, max_seq_len: int,
                 concurrency: int = 8) -> list[Episode]:
    """Demonstration episodes for ``tasks``, in the order of ``tasks``.

    Up to ``concurrency`` demonstrations are played at once, each thread with its own env from
    ``env_factory``: a backend that batches concurrent requests (the in-process ``hf`` and ``smollm2``
    backends) then answers one turn of several demonstrations in one generation, and a remote one overlaps
    its calls. ``concurrency=1`` plays them one by one.

    Skipped: those longer than ``max_seq_len``, those with an env error, and those whose env replies do not
    say what the task's plan expects (``meta["expect"]``, see
    :func:`promptr1.envs.demonstrations.replies_on_track`): with a real env LLM a reply can be wrong, and a
    demonstration that answers right anyway teaches the agent to ignore the replies.
    """
    from concurrent.futures import ThreadPoolExecutor

    from promptr1.envs.demonstrations import replies_on_track

    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1 (demonstrations played at once), got {concurrency}.")
    local = threading.local()

    def play(t: Any) -> Episode:
        env = getattr(local, "env", None)
        if env is None:
            env = local.env = env_factory()
        return build_sft_example(env, t, demo(t), framer)

    workers = min(concurrency, max(len(tasks), 1))
    if workers == 1:
        played = [play(t) for t in tasks]
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="promptr1-sft-demo") as pool:
            played = list(pool.map(play, tasks))
    out = []
    for t, ep in zip(tasks, played):
        first = next((i for i, m in enumerate(ep.messages) if m["role"] == "assistant"), len(ep.messages))
        replies = [m["content"] for m in ep.messages[first:] if m["role"] == "user"]
        if ep.env_error is None and len(ep.ids) <= max_seq_len and replies_on_track(t, replies):
            out.append(ep)
    return out


def run_sft(cfg: SFTConfig, *, model: Any = None, tokenizer: Any = None, tasks: Sequence[Any] | None = None,
            env_llm: Any = None, demo: Callable[[Any], list[str]] | None = None,
            log: Callable[[str], None] = print) -> pathlib.Path:
    """Fine-tune on demonstrations; save the model (HF format) to ``cfg.output_dir``; return the folder."""
    from accelerate import Accelerator

    from promptr1.agents.models import load_policy
    from promptr1.agents.seeding import seed_everything
    from promptr1.envs.collab_env import PromptCollabEnv
    from promptr1.envs.tasks import load_tasks
    from promptr1.llm_backends import from_settings

    from promptr1.agents.checkpoint import claim_output_dir

    if model is None:
        from promptr1.agents.preflight import check_sft_inputs

        check_sft_inputs(cfg, given_backend=env_llm is not None)  # names and paths, before anything loads
    claim_output_dir(cfg.output_dir, overwrite=cfg.overwrite, command="promptr1 sft")  # before anything loads
    seed_everything(cfg.seed)
    mp = cfg.mixed_precision
    if mp == "auto":
        mp = "bf16" if (not cfg.cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()) else "no"
    acc = Accelerator(cpu=cfg.cpu, mixed_precision=mp)
    if model is None:
        # float32 weights (fine-tuning updates are below bf16's resolution) unless a dtype is asked for explicitly
        model, tokenizer = load_policy(cfg.model, dtype=torch.float32 if cfg.model_dtype == "auto" else cfg.model_dtype)
    framer = ChatFramer(tokenizer)
    if demo is None:
        from promptr1.envs.demonstrations import demonstration as demo  # type: ignore[no-redef]
    tasks = list(tasks) if tasks is not None else list(load_tasks(cfg.tasks, split="train"))
    backend = env_llm if env_llm is not None else from_settings(cfg)[0]
    n_needed = cfg.steps * cfg.batch_size
    pool = [tasks[i % len(tasks)] for i in range(min(n_needed, len(tasks)))]
    t0 = time.perf_counter()
    examples = sft_examples(pool, lambda: PromptCollabEnv.from_settings(tasks, backend, cfg),
                            framer, demo, max_seq_len=cfg.max_seq_len)
    if not examples:
        raise ValueError(f"no usable demonstrations among {len(pool)}: every one failed in the env, exceeded "
                         "max_seq_len, or got env replies that did not say what its plan expects.")
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    from transformers import get_scheduler

    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=max(1, cfg.steps // 10),
                              num_training_steps=max(cfg.steps, 1))
    model, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
    model.train()
    rng = np.random.default_rng(cfg.seed)
    order: list[int] = []
    from promptr1.agents.logger import Logger

    out = pathlib.Path(cfg.output_dir)
    logger = Logger(str(out / "tensorboard") if acc.is_main_process else None, progress=cfg.progress,
                    total_steps=cfg.steps, enabled=acc.is_main_process, name="sft")
    losses = []
    for step in range(cfg.steps):
        if len(order) < cfg.batch_size:
            order += rng.permutation(len(examples)).tolist()
        idx, order = order[: cfg.batch_size], order[cfg.batch_size:]
        batch = collate_episodes([examples[i] for i in idx], tokenizer.pad_token_id)
        batch = {k: v.to(acc.device) for k, v in batch.items()}
        from promptr1.agents.models import sequence_logprobs

        logp, _ = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["action_mask"],
                                    autocast=acc.autocast)  # (B, T)
        mask = batch["action_mask"]  # (B, T)
        loss = -(logp * mask).sum() / mask.sum().clamp(min=1)  # token-mean NLL of agent tokens
        acc.backward(loss)
        if cfg.max_grad_norm > 0:
            acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        logger.record("sft/nll", losses[-1])  # TensorBoard: the warm start's loss curve beside the RL run's
        logger.record("sft/lr", scheduler.get_last_lr()[0])
        logger.dump(step + 1)
    logger.close()
    if acc.is_main_process:
        from promptr1.agents.checkpoint import write_checkpoint

        write_checkpoint(out, cfg.steps, model=acc.unwrap_model(model), tokenizer=tokenizer, optimizer=None,
                         scheduler=None, trainer_state={"kind": "sft", "config": config_to_dict(cfg),
                                                        "final_nll": losses[-1] if losses else math.nan})
    acc.wait_for_everyone()
    dropped = f" ({len(pool) - len(examples)} of {len(pool)} dropped)" if len(examples) < len(pool) else ""
    log(f"sft: {cfg.steps} steps on {len(examples)} demonstrations{dropped} in {time.perf_counter() - t0:.1f}s; "
        f"NLL {losses[0]:.3f} -> {np.mean(losses[-5:]):.3f}; saved {out}")
    return out


def warm_start(cfg: GRPOConfig, backend: Any, out: pathlib.Path) -> str:
    """The policy GRPO starts from: ``cfg.model``, or the SFT warm start of it (run now, or found on resume)."""
    if cfg.sft_steps <= 0:
        return cfg.model
    if cfg.resume and (out / "sft").is_dir():
        return str(out / "sft")
    return str(run_sft(SFTConfig.from_training(cfg, output_dir=str(out / "sft")), env_llm=backend))
