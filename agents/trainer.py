"""``GRPOTrainer``: multi-turn token-level policy gradient on accelerate.

One training step::

    questions  <- next batch_questions tasks (each process takes its share)
    episodes   <- group_size rollouts per question (promptr1.agents.rollout, token in / token out)
    rewards    <- the environment's dual-constrained reward; env-error episodes leave their group
    advantages <- the registry's estimator over each group (--algo)
    for epoch in update_epochs, for minibatch in minibatches:
        loss = policy loss (PPO-clip) + kl_coef * KL(policy || reference) - entropy_coef * entropy
        backward over micro-batches, clip grad norm, AdamW step
    scheduler step; log; checkpoint every save_every steps

Runs on CPU, one GPU, or several processes under ``accelerate launch`` (DDP; FSDP/DeepSpeed
through accelerate's own config). Seeding happens in one place (:func:`seed_everything`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from promptr1.agents.checkpoint import (
    ACCELERATE_STATE,
    CheckpointError,
    accelerate_rng_problem,
    checkpoint_name,
    claim_output_dir,
    find_resume_checkpoint,
    drop_optimizer_state,
    find_latest_checkpoint,
    has_optimizer_state,
    load_checkpoint_file,
    load_trainer_state,
    older_checkpoints,
    publish_checkpoint,
    restore_rng_state,
    temp_dir_for,
)
from promptr1.agents.config import GRPOConfig
from promptr1.core.settings import config_to_dict
from promptr1.agents.logger import Callback, CallbackList, Logger
from promptr1.agents.models import load_policy, resolve_dtype, resolve_model_path, sequence_logprobs
from promptr1.agents.seeding import derived_seed, seed_everything
from promptr1.llm_backends.base import error_summary
from promptr1.llm_backends.budget import is_budget_stop
from promptr1.core.plugins import import_plugins
from promptr1.agents.episode import ends_on_context, training_reward
from promptr1.agents.rollout import ChatFramer, Episode, collate_episodes, rollout_config, run_episodes

__all__ = ["GRPOTrainer", "TrainingFailed", "TrainingInterrupted"]

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)


class TrainingFailed(RuntimeError):
    """Training stopped because it could not learn anything: the env LLM failed on (nearly) every episode.

    A checkpoint of the last step is written first; ``promptr1 train`` exits non-zero with this message.
    """


class TrainingInterrupted(RuntimeError):
    """Training stopped at the end of a step because of SIGINT (Ctrl-C) or SIGTERM; a checkpoint of that step
    was written first (``checkpoint``), so ``resume="auto"`` continues from it. ``exit_code``: 130 or 143."""

    def __init__(self, step: int, signum: int, checkpoint: pathlib.Path) -> None:
        from promptr1.agents.interrupt import signal_exit_code

        self.step, self.signum, self.checkpoint = step, signum, checkpoint
        self.exit_code = signal_exit_code(signum)
        super().__init__(f"interrupted at step {step}; checkpoint {checkpoint}")



# ----------------------------------------------------------------------------- helpers


def _resolve_mixed_precision(cfg: GRPOConfig) -> str:
    mp = cfg.mixed_precision
    if mp not in ("auto", "no", "bf16", "fp16"):
        raise ValueError(f"mixed_precision must be auto, no, bf16 or fp16; got {mp!r}.")
    if mp != "auto":
        return mp
    if not cfg.cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def _num(x: Any, default: float = float("nan")) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return default


# ----------------------------------------------------------------------------- trainer


class GRPOTrainer:
    """Train an agent LLM with GRPO (or any registered algorithm) in :class:`PromptCollabEnv`.

    Args:
        cfg: the :class:`GRPOConfig`.
        model, tokenizer: an already loaded policy (default: load ``cfg.model``).
        env_llm: an LLMBackend instance (default: the one ``cfg`` describes, with its limits, budget and cache:
            :func:`promptr1.llm_backends.from_settings`).
        tasks: the training tasks (default: ``load_tasks(cfg.tasks, split="train")``).
        env_kwargs: extra keyword arguments for every :class:`PromptCollabEnv`.
        env_factory: a zero-argument callable returning an env (anything with ``reset(seed, options)``
            and ``step``/``astep`` like :class:`PromptCollabEnv`); replaces the default envs.
        callbacks: :class:`~promptr1.agents.logger.Callback` objects.
    """

    def __init__(
        self,
        cfg: GRPOConfig,
        *,
        model: Any = None,
        tokenizer: Any = None,
        env_llm: Any = None,
        tasks: Sequence[Any] | None = None,
        env_kwargs: dict[str, Any] | None = None,
        env_factory: Any = None,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        from accelerate import Accelerator

        self.cfg = cfg
        import_plugins(cfg.plugins)
        seed_everything(cfg.seed, cfg.deterministic)
        self.accelerator = Accelerator(cpu=cfg.cpu, mixed_precision=_resolve_mixed_precision(cfg))
        self.loss_cfg = cfg.loss_config()
        self._skip_rows_without_gradient = True  # see _rows_with_gradient; tests turn it off to compare
        self.callbacks = CallbackList(list(callbacks))
        self.step = 0
        self._stop_signum = 0  # the signal that stopped the last train() (0: none)
        self._stop: Any = None  # the StopRequest of a train() in progress
        self.cursor = 0  # questions consumed (all processes together)

        from promptr1.envs.tasks import load_tasks

        self.tasks = list(tasks) if tasks is not None else list(load_tasks(cfg.tasks, split="train"))
        if not self.tasks:
            raise ValueError(f"no training tasks in {cfg.tasks!r}.")
        if cfg.epochs > 0:  # steps from the data, as the reference's epoch (before the LR schedule is made)
            steps = cfg.epoch_steps(len(self.tasks), self.accelerator.num_processes)
            self.cfg = cfg = dataclasses.replace(cfg, steps=steps)
        if self.accelerator.is_main_process:  # before anything is loaded: never write over an earlier run
            claim_output_dir(cfg.output_dir, resume=cfg.resume, overwrite=cfg.overwrite)
        self.accelerator.wait_for_everyone()
        resume_from = self._find_resume()
        self._loaded_by_us = model is None
        if model is None:
            # The trained weights stay float32 (an update of lr 1e-6 is below bf16's resolution) and compute runs
            # under the accelerator's autocast, unless the user asks for a lower model_dtype explicitly.
            policy_dtype = torch.float32 if cfg.model_dtype == "auto" else cfg.model_dtype
            model, tokenizer = load_policy(str(resume_from) if resume_from else cfg.model, dtype=policy_dtype)
        elif tokenizer is None:
            raise ValueError("pass the tokenizer together with the model: GRPOTrainer(cfg, model=m, tokenizer=t).")
        self.tokenizer = tokenizer
        self.framer = ChatFramer(tokenizer)  # fails early on a template that cannot be spliced

        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.config.use_cache = False
        if cfg.lora_r > 0:
            model = self._wrap_lora(model)
        self.ref_model = None
        if self.loss_cfg.kl_coef > 0:
            self.ref_model = self._make_reference(cfg, resume_from, model)

        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = self._make_scheduler(optimizer)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self._register_state_hooks()
        if self.ref_model is not None:
            self.ref_model.to(self.accelerator.device)

        from promptr1.envs.collab_env import PromptCollabEnv
        from promptr1.llm_backends import from_settings

        self.env_llm = env_llm if env_llm is not None else (from_settings(cfg)[0] if env_factory is None else None)
        n_env = cfg.batch_questions * cfg.group_size
        if env_factory is not None:
            self.envs = [env_factory() for _ in range(n_env)]
        else:
            self.envs = [PromptCollabEnv.from_settings(self.tasks, self.env_llm, cfg, **(env_kwargs or {}))
                         for _ in range(n_env)]
        # Deterministic runs keep a barrier per turn so that batch composition (and so seeded sampling)
        # never depends on env-LLM timing; otherwise episodes advance independently.
        self.rollout_cfg = rollout_config(cfg, independent=not cfg.deterministic)

        if resume_from is not None:
            self._load_state(resume_from)
        self.logger: Logger | None = None

    # ------------------------------------------------------------------ setup pieces
    def _register_state_hooks(self) -> None:
        """Without sharding, the HF-format weights beside the state are the model's: accelerate's state then holds
        only the optimizer, scheduler and RNG (no second copy of the weights). FSDP and DeepSpeed keep their own."""
        from accelerate.utils import DistributedType

        self._owns_weights_files = self.accelerator.distributed_type not in (DistributedType.FSDP,
                                                                             DistributedType.DEEPSPEED)
        if not self._owns_weights_files:
            return
        self.accelerator.register_save_state_pre_hook(lambda models, weights, output_dir: weights.clear())
        self.accelerator.register_load_state_pre_hook(lambda models, input_dir: models.clear())

    @contextlib.contextmanager
    def generation_model(self):
        """The module to sample with, as the distributed strategy requires: the plain module for one process and
        DDP; under FSDP the wrapped module (each forward gathers the shards it needs); under DeepSpeed ZeRO-3 the
        module inside ``GatheredParameters`` (the full weights for the rollout, released afterwards)."""
        from accelerate.utils import DistributedType

        acc = self.accelerator
        if acc.distributed_type == DistributedType.FSDP:
            yield self.model
        elif acc.distributed_type == DistributedType.DEEPSPEED and _zero_stage(acc) == 3:
            import deepspeed

            module = self.unwrapped_model
            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                yield module
        else:
            yield self.unwrapped_model

    def _find_resume(self) -> pathlib.Path | None:
        return find_resume_checkpoint(self.cfg.output_dir, self.cfg.resume)

    def _wrap_lora(self, model: Any) -> Any:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise ImportError(
                f"lora_r={self.cfg.lora_r} needs the optional dependency peft, which is not installed. "
                "Install it with `pip install 'prompt-r1[peft]'` or set --lora-r 0."
            ) from None
        conf = LoraConfig(r=self.cfg.lora_r, lora_alpha=self.cfg.lora_alpha, lora_dropout=self.cfg.lora_dropout,
                          target_modules="all-linear", task_type="CAUSAL_LM")
        return get_peft_model(model, conf)

    def _make_reference(self, cfg: GRPOConfig, resume_from: pathlib.Path | None, model: Any) -> Any:
        if cfg.lora_r > 0:
            return None  # the reference is the base model with adapters disabled
        dtype = resolve_dtype(cfg.model_dtype, cpu=cfg.cpu)  # the frozen reference: bf16 on a capable GPU
        if resume_from is not None:
            state = load_trainer_state(resume_from)
            ref, _ = load_policy(state.get("reference_model", cfg.model), dtype=dtype)
        elif self._loaded_by_us:
            ref, _ = load_policy(cfg.model, dtype=dtype)  # straight from disk, never through a float32 copy
        else:
            import copy

            ref = copy.deepcopy(model).to(dtype)  # a model object the caller gave us: copy it
        ref.eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        return ref

    def _make_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        from transformers import get_scheduler

        name = self.cfg.lr_scheduler
        if name not in ("constant", "linear", "cosine"):
            raise ValueError(f"lr_scheduler must be constant, linear or cosine; got {name!r}.")
        if name == "constant":
            name = "constant_with_warmup"
        return get_scheduler(name, optimizer, num_warmup_steps=self.cfg.warmup_steps,
                             num_training_steps=max(self.cfg.steps, 1))

    @property
    def unwrapped_model(self) -> Any:
        return self.accelerator.unwrap_model(self.model)

    # ------------------------------------------------------------------ data
    def _question_order(self, epoch: int) -> list[int]:
        rng = np.random.default_rng(derived_seed(self.cfg.seed, "tasks", epoch))
        return rng.permutation(len(self.tasks)).tolist()

    def next_questions(self) -> list[Any]:
        """This process's share of the next ``batch_questions * num_processes`` questions."""
        n_proc = self.accelerator.num_processes
        total = self.cfg.batch_questions * n_proc
        out = []
        for j in range(total):
            k = self.cursor + j
            epoch, i = divmod(k, len(self.tasks))
            out.append(self.tasks[self._question_order(epoch)[i]])
        self.cursor += total
        r = self.accelerator.process_index
        return out[r * self.cfg.batch_questions:(r + 1) * self.cfg.batch_questions]

    # ------------------------------------------------------------------ one step
    def collect(self, questions: Sequence[Any]) -> tuple[list[Episode], dict[str, float]]:
        """Play ``group_size`` episodes per question with the current policy."""
        G = self.cfg.group_size
        rank = self.accelerator.process_index
        tasks = [q for q in questions for _ in range(G)]
        groups = [rank * len(questions) + i for i in range(len(questions)) for _ in range(G)]
        gen = torch.Generator().manual_seed(derived_seed(self.cfg.seed, "rollout", self.step, rank))
        timings: dict[str, float] = {}
        with self.generation_model() as model, self.accelerator.autocast():
            self._within_step(f"episodes 0/{len(tasks)}")
            episodes = run_episodes(model, self.tokenizer, self.envs[: len(tasks)], tasks, groups, self.rollout_cfg,
                                    framer=self.framer, generator=gen, timings=timings,
                                    seed=derived_seed(self.cfg.seed, "env", self.step, rank) % (2**31),
                                    on_episode_end=lambda done, n: self._within_step(f"episodes {done}/{n}"))
        return episodes, timings

    def _within_step(self, text: str) -> None:
        """Where the step in hand is, on the console's progress bar (see :meth:`Logger.within_step`)."""
        if self.logger is not None:
            self.logger.within_step(f"step {self.step + 1}: {text}")

    def _logprobs(self, model: Any, batch: dict[str, torch.Tensor], *, with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token log-probs (and entropies) ``(b, T)`` aligned to token positions; 0 before the first action."""
        T_rollout = self.rollout_cfg.temperature if self.rollout_cfg.temperature > 0 else 1.0
        return sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["action_mask"],
                                 temperature=T_rollout, with_entropy=with_entropy,
                                 entropy_grad=self.loss_cfg.entropy_coef != 0, autocast=self.accelerator.autocast)

    def _micro_batches(self, idx: list[int]) -> list[list[int]]:
        m = max(1, self.cfg.micro_batch_size)
        return [idx[i:i + m] for i in range(0, len(idx), m)]

    def _slice(self, batch: dict[str, torch.Tensor], rows: list[int]) -> dict[str, torch.Tensor]:
        """Rows of the batch, cut to their longest sequence, moved to the device."""
        sub = {k: v[rows] for k, v in batch.items()}
        T = int(sub["attention_mask"].sum(-1).max().item())
        dev = self.accelerator.device
        return {k: (v[:, :T] if v.dim() == 2 else v).to(dev) for k, v in sub.items()}

    def _rows_with_gradient(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(N,)`` bool: the rows whose loss can have a non-zero gradient.

        A row dropped by ``sample_mask`` (a zero-variance group under ``mask_zero_variance``, a failed
        episode) never can. A row with advantage 0 cannot either when the loss is a built-in policy loss
        (``ppo-clip`` and ``reinforce`` scale with the advantage), with no KL and no entropy term, and an aggregation whose
        normaliser does not depend on the rows computed together (every mode but ``seq-mean-token-sum-norm``
        without a ``norm_length``). With several processes every row is kept: each process must run the same
        number of backward passes for the gradient all-reduce.
        """
        if self.accelerator.num_processes > 1 or not self._skip_rows_without_gradient:
            return torch.ones_like(batch["sample_mask"], dtype=torch.bool)
        keep = batch["sample_mask"].bool()
        lc = self.loss_cfg
        zero_adv_is_inert = (
            lc.policy_loss in ("ppo-clip", "reinforce") and not lc.kl_coef and not lc.entropy_coef
            and (lc.loss_agg != "seq-mean-token-sum-norm" or lc.norm_length is not None))
        if zero_adv_is_inert:
            keep = keep & (batch["advantages"] != 0)
        return keep

    def _zero_gradients(self) -> None:
        """Give every trained parameter a zero gradient: what a backward pass of a loss without signal leaves, so
        that the optimizer's step is the one it would take after that pass (AdamW still decays its moments, applies
        weight decay and counts the step; a ``None`` gradient would skip the parameter instead)."""
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)

    @torch.no_grad()
    def _no_grad_logprobs(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = torch.zeros_like(batch["old_logp"])
        model.eval()
        for rows in self._micro_batches(list(range(batch["input_ids"].shape[0]))):
            sub = self._slice(batch, rows)
            lp, _ = self._logprobs(model, sub, with_entropy=False)
            out[rows, : lp.shape[1]] = lp.float().cpu()
        return out

    def train_step(self) -> dict[str, float]:
        """Rollouts, advantages and the update for one step; returns the step's metrics."""
        from promptr1.agents.advantages import compute_advantages
        from promptr1.agents.losses import compute_loss, kl_in_reward, kl_penalty

        cfg, acc = self.cfg, self.accelerator
        rec: dict[str, float] = {}
        t_step = time.perf_counter()
        questions = self.next_questions()
        episodes, timings = self.collect(questions)
        self.callbacks.on_rollout_end(self, episodes)

        batch = collate_episodes(episodes, self.tokenizer.pad_token_id)
        # the training signal: the reward function's value, or 0 for episodes ending on an env reply under
        # truncated_reward="reference" (the official trainer's); reports keep e.reward
        rewards = torch.tensor([training_reward(e, cfg.truncated_reward) for e in episodes], dtype=torch.float32)
        groups = torch.tensor([e.group for e in episodes])
        ok = torch.tensor([e.env_error is None for e in episodes])  # (N,) env failures leave their group

        # --- old and reference log-probs (no grad)
        t_upd = time.perf_counter()
        mask = batch["action_mask"].bool()
        if cfg.recompute_old_logp:
            recomputed = self._no_grad_logprobs(self.model, batch)
            if mask.any():
                diff = (recomputed[mask] - batch["old_logp"][mask]).abs()
                rec["rollout/logp_mismatch_mean"] = diff.mean().item()
                rec["rollout/logp_mismatch_max"] = diff.max().item()
            batch["old_logp"] = recomputed
        if self.ref_model is not None:
            batch["ref_logp"] = self._no_grad_logprobs(self.ref_model, batch)
        elif self.loss_cfg.kl_coef > 0 and cfg.lora_r > 0:
            with self.unwrapped_model.disable_adapter():
                batch["ref_logp"] = self._no_grad_logprobs(self.model, batch)
        if self.loss_cfg.kl_in_reward and "ref_logp" in batch:
            # KL of the sampling policy to the reference, summed over each episode's agent tokens
            kl = kl_penalty(batch["old_logp"], batch["ref_logp"], self.loss_cfg.kl_estimator)  # (N, T)
            penalized = kl_in_reward(rewards, kl, self.loss_cfg.kl_coef, batch["action_mask"])  # (N,)
            rec["reward/kl_penalty"] = (rewards - penalized)[ok].mean().item() if ok.any() else 0.0
            rewards = penalized

        # --- advantages (groups never straddle processes)
        adv = torch.zeros_like(rewards)
        keep = torch.zeros_like(ok)
        if ok.any():
            _, g_local = torch.unique(groups[ok], return_inverse=True)
            a, k = compute_advantages(rewards[ok], g_local, estimator=self.loss_cfg.estimator,
                                      mask_zero_variance=self.loss_cfg.mask_zero_variance,
                                      **self.loss_cfg.estimator_call_kwargs())
            adv[ok], keep[ok] = a.float(), k
        batch["advantages"] = adv
        batch["sample_mask"] = keep

        # --- the update
        self.model.train()
        N = len(episodes)
        stats_acc: dict[str, list[float]] = {}
        grad_norms: list[float] = []
        need_entropy = True  # cheap enough to log; used in the loss when entropy_coef != 0
        needed = self._rows_with_gradient(batch)
        rec["rollout/update_rows_fraction"] = float(needed.float().mean()) if N else 0.0
        order_rng = np.random.default_rng(derived_seed(cfg.seed, "minibatch", self.step, acc.process_index))
        plan: list[tuple[list[int], list[list[int]]]] = []  # (minibatch, its micro-batches) of every epoch
        no_signal = updates = 0  # optimizer steps taken on a zero gradient without any pass; all of them
        for _epoch in range(cfg.update_epochs):
            perm = order_rng.permutation(N).tolist()
            n_mini = max(1, min(cfg.minibatches, N))
            for mini in (perm[i::n_mini] for i in range(n_mini)):
                # rows that cannot move the weights skip their forward and backward passes; the denominators
                # below still count them, so the gradient is the same. A minibatch with none has a zero gradient:
                # it makes no pass at all, and the optimizer takes the same (zero-gradient) step on zeros.
                work = [r for r in sorted(mini) if needed[r]]
                if not work and not self._owns_weights_files:
                    work = sorted(mini)[:1]  # FSDP / DeepSpeed step through their engine: one row, as before
                plan.append((mini, self._micro_batches(work) if work else []))
        n_micro, done_micro = sum(len(micro) for _, micro in plan), 0
        for mini, micro in plan:
            if not micro:
                self._zero_gradients()
                no_signal += 1
            eff = (batch["action_mask"][mini] * batch["sample_mask"][mini, None]).sum().item()
            seqs = ((batch["action_mask"][mini].sum(-1) > 0) & batch["sample_mask"][mini]).sum().item()
            for j, rows in enumerate(micro):
                sub = self._slice(batch, rows)
                sub_tokens = (sub["action_mask"] * sub["sample_mask"][:, None]).sum().item()
                sub_seqs = ((sub["action_mask"].sum(-1) > 0) & sub["sample_mask"]).sum().item()
                if self.loss_cfg.loss_agg == "token-mean":
                    weight = sub_tokens / eff if eff > 0 else 0.0
                else:
                    weight = sub_seqs / seqs if seqs > 0 else 0.0
                last = j == len(micro) - 1
                ctx = acc.no_sync(self.model) if (not last and acc.num_processes > 1) else contextlib.nullcontext()
                with ctx:
                    logp, ent = self._logprobs(self.model, sub, with_entropy=need_entropy)
                    loss_batch = {"logp": logp, "mask": sub["action_mask"], "advantages": sub["advantages"],
                                  "old_logp": sub["old_logp"], "sample_mask": sub["sample_mask"]}
                    if "ref_logp" in sub:
                        loss_batch["ref_logp"] = sub["ref_logp"]
                    if ent is not None:
                        loss_batch["entropy"] = ent if self.loss_cfg.entropy_coef != 0 else ent.detach()
                    loss, stats = compute_loss(loss_batch, self.loss_cfg)
                    acc.backward(loss * weight)
                if weight > 0:
                    for k, v in stats.items():
                        stats_acc.setdefault(k, []).append(float(v))
                done_micro += 1
                self._within_step(f"update {done_micro}/{n_micro} micro-batches")
            if cfg.max_grad_norm > 0:
                gn = acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                grad_norms.append(float(gn))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            updates += 1
        self.scheduler.step()
        # the share of this step's optimizer steps whose minibatch had no row that could move the weights (1.0:
        # the step had no signal, e.g. every group's rewards were equal, and made no forward or backward pass)
        rec["rollout/no_signal_updates"] = no_signal / updates if updates else 0.0
        if updates and no_signal == updates:
            log.info("step %d had no signal (no row with a non-zero gradient): the optimizer stepped on zero "
                     "gradients without a forward or backward pass", self.step + 1)
        t_end = time.perf_counter()
        self.step += 1

        # --- metrics
        rec.update(self._episode_metrics(episodes))
        for k, v in stats_acc.items():
            key = {"kl_loss": "kl", "loss": "total"}.get(k, k)
            rec[f"losses/{key}"] = float(np.mean(v))
        if grad_norms:
            rec["losses/grad_norm"] = float(np.mean(grad_norms))
        rec["losses/lr"] = float(self.scheduler.get_last_lr()[0])
        rec["losses/adv_abs_mean"] = adv[keep].abs().mean().item() if keep.any() else 0.0
        rec["rollout/kept_fraction"] = keep.float().mean().item()
        gen_tokens = sum(e.gen_tokens for e in episodes)
        rec["time/generate_s"] = timings.get("generate_s", 0.0)
        rec["time/env_wait_s"] = timings.get("env_s", 0.0)
        rec["time/update_s"] = t_end - t_upd
        rec["time/step_s"] = t_end - t_step
        rec["time/gen_tokens_per_s"] = gen_tokens / max(timings.get("generate_s", 0.0), 1e-9)
        rec["time/train_tokens_per_s"] = float(batch["attention_mask"].sum()) * cfg.update_epochs / max(t_end - t_upd, 1e-9)
        if torch.cuda.is_available() and acc.device.type == "cuda":
            rec["time/peak_memory_gb"] = torch.cuda.max_memory_allocated(acc.device) / 2**30
        rec["rollout/prefill_tokens"] = timings.get("prefill_tokens", 0.0)
        rec = self._reduce(rec)
        self._last_episodes = episodes
        return rec

    def _episode_metrics(self, episodes: Sequence[Episode]) -> dict[str, float]:
        r: dict[str, float] = {}
        ok = [e for e in episodes if e.env_error is None]
        r["rollout/episodes"] = float(len(episodes))
        r["env_llm/errors"] = float(len(episodes) - len(ok))
        r["env_llm/error_rate"] = (len(episodes) - len(ok)) / max(len(episodes), 1)
        tried = [e for e in episodes if not is_budget_stop(e.env_error)]
        # the share of episodes that reached the env LLM and failed there (what max_env_error_rate watches)
        r["env_llm/failure_rate"] = sum(e.env_error is not None for e in tried) / len(tried) if tried else 0.0
        r["rollout/overflow"] = float(sum(e.overflow for e in episodes))
        # share of episodes whose stream ends on an env reply (out of turns or overflow): those the reference
        # trains at 0 (truncated_reward="reference")
        r["rollout/masked_end_rate"] = float(np.mean([ends_on_context(e) for e in episodes])) if episodes else 0.0
        r["rollout/turns_mean"] = float(np.mean([e.turns for e in episodes]))
        r["rollout/action_tokens_mean"] = float(np.mean([e.num_action_tokens for e in episodes]))
        r["rollout/seq_len_mean"] = float(np.mean([len(e.ids) for e in episodes]))
        r["rollout/terminated_rate"] = float(np.mean([e.terminated for e in episodes]))
        if ok:
            rewards = [e.reward for e in ok]
            r["reward/mean"] = float(np.mean(rewards))
            r["reward/std"] = float(np.std(rewards))
            r["reward/max"] = float(np.max(rewards))
            r["reward/min"] = float(np.min(rewards))
            r["reward/train_mean"] = float(np.mean([training_reward(e, self.cfg.truncated_reward) for e in ok]))
            comps: dict[str, list[float]] = {}
            for e in ok:
                for k, v in e.components.items():
                    if isinstance(v, bool) or not isinstance(v, (int, float)):
                        continue
                    comps.setdefault(k, []).append(float(v))
            for k, v in comps.items():
                if k != "total":
                    r[f"reward/{k}"] = float(np.mean(v))
            if "format" in comps:
                r["reward/format_rate"] = float(np.mean([x >= 1.0 - 1e-9 for x in comps["format"]]))
            f1 = comps.get("f1", comps.get("answer"))
            if f1 is not None:
                r["reward/answer_f1"] = float(np.mean(f1))
            if "em" in comps:
                r["reward/answer_em"] = float(np.mean(comps["em"]))
        stats = [e.episode_stats for e in episodes if e.episode_stats]
        for key, name in (("env_llm_latency_s", "latency_s"), ("env_llm_tokens", "tokens"),
                          ("env_llm_cost_usd", "cost_usd"), ("env_llm_calls", "calls"), ("env_llm_attempts", "attempts")):
            vals = [_num(s.get(key), 0.0) for s in stats]
            if vals:
                r[f"env_llm/{name}"] = float(np.sum(vals)) if name in ("tokens", "cost_usd", "calls") else float(np.mean(vals))
        if stats:
            calls = sum(_num(s.get("env_llm_calls"), 0.0) for s in stats)
            attempts = sum(_num(s.get("env_llm_attempts"), 0.0) for s in stats)
            r["env_llm/retries"] = max(attempts - calls, 0.0)
        return r

    def _reduce(self, rec: dict[str, float]) -> dict[str, float]:
        """Average the metrics over processes (all processes log the same keys)."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return rec
        keys = sorted(rec)
        t = torch.tensor([rec[k] if math.isfinite(rec[k]) else 0.0 for k in keys], device=acc.device)
        t = acc.reduce(t, reduction="mean")
        return dict(zip(keys, t.cpu().tolist()))

    # ------------------------------------------------------------------ loop
    def train(self, steps: int | None = None) -> list[dict[str, float]]:
        """Run until ``steps`` total steps (default ``cfg.steps``); returns per-step metrics."""
        cfg, acc = self.cfg, self.accelerator
        total = cfg.steps if steps is None else steps
        out_dir = pathlib.Path(cfg.output_dir)
        if self.step >= total:  # a finished run resumed: nothing to do, no second checkpoint of its last step
            return []
        if self.logger is None:
            self.logger = Logger(str(out_dir / "tensorboard") if acc.is_main_process else None,
                                 progress=cfg.progress and acc.is_main_process, total_steps=total,
                                 initial_step=self.step, enabled=acc.is_main_process)
            self.logger.record_hparams(config_to_dict(cfg) | {"loss." + k: v for k, v in self.loss_cfg.to_dict().items()})
        from promptr1.agents.interrupt import StopRequest

        with StopRequest() as stop:  # Ctrl-C / SIGTERM: finish the step, write a checkpoint, raise
            self._stop = stop
            try:
                history, failure = self._train_loop(total, stop)
            finally:
                self._stop = None
        if history and failure is None and all(m.get("env_llm/failure_rate", 0.0) >= 1.0 for m in history):
            failure = (f"every episode of the run that reached the env LLM failed there; {self._last_env_errors()}. "
                       "The model was not trained on anything; fix the env LLM and run again.")
        final = self.save()
        self.callbacks.on_train_end(self)
        self.logger.close()
        self.logger = None
        signum = stop.signum or self._stop_signum
        if signum:
            raise TrainingInterrupted(self.step, signum, final)
        if failure is not None:
            raise TrainingFailed(f"training stopped at step {self.step}: {failure}")
        return history

    def _train_loop(self, total: int, stop: Any) -> tuple[list[dict[str, float]], str | None]:
        """Steps until ``total``, a callback's stop, a failing env LLM or a stop request; returns the steps'
        metrics and the failure, if any."""
        cfg, acc = self.cfg, self.accelerator
        self.callbacks.on_train_begin(self)
        history = []
        failing: list[int] = []  # consecutive steps above max_env_error_rate
        failure: str | None = None
        self._stop_signum = 0
        while self.step < total:
            metrics = self.train_step()
            rate = metrics.get("env_llm/failure_rate", 0.0)
            failing = [*failing, self.step] if cfg.max_env_error_rate < 1.0 and rate > cfg.max_env_error_rate else []
            if len(failing) >= cfg.env_error_patience:
                failure = (f"the env LLM failed on more than {cfg.max_env_error_rate:.0%} of the episodes in "
                           f"{len(failing)} steps in a row (steps {failing[0]}-{failing[-1]}; last step "
                           f"{rate:.0%}); {self._last_env_errors()}. Training on what is left would learn "
                           "nothing; fix the env LLM (see the errors above), or raise --max-env-error-rate.")
            for k, v in metrics.items():
                self.logger.record(k, v)
            if cfg.num_transcripts > 0 and acc.is_main_process:
                for i, e in enumerate(self._last_episodes[: cfg.num_transcripts]):
                    self.logger.record_text(f"transcripts/{i}", self.transcript(e))
            means = self.logger.dump(self.step) if self.step % max(cfg.log_every, 1) == 0 else metrics
            history.append(metrics)
            keep_going = self.callbacks.on_step_end(self, self.step, metrics)
            self._stop_signum = self._any_process_signal(stop.signum)
            periodic = cfg.save_every > 0 and self.step % cfg.save_every == 0
            if periodic and self.step < total and not self._stop_signum:  # (the final save follows the loop)
                self.save()
            if not keep_going or failure or self._stop_signum:
                break
            del means
        return history, failure

    @property
    def stop_requested(self) -> bool:
        """A SIGINT/SIGTERM arrived during :meth:`train`: the step in hand is the last (callbacks skip extra
        work)."""
        return self._stop is not None and self._stop.requested

    def _any_process_signal(self, signum: int | None) -> int:
        """The stop signal this process (or, under ``accelerate launch``, any process) received; 0 for none.
        Every process stops at the same step."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return int(signum or 0)
        flag = torch.tensor([float(signum or 0)], device=acc.device)
        return int(acc.gather(flag).max().item())

    def _last_env_errors(self) -> str:
        """The most common env errors of the last step, for a failure message."""
        errors = [e.env_error for e in self._last_episodes if e.env_error and not is_budget_stop(e.env_error)]
        if not errors:
            return "no env error text was recorded"
        return f"last step's errors: {error_summary(errors)}"

    def transcript(self, e: Episode) -> str:
        lines = [f"reward={e.reward:+.3f} turns={e.turns} gold={list(getattr(e.task, 'answers', []))}"]
        for m in e.messages:
            lines.append(f"[{m['role']}] {m['content']}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "cursor": self.cursor,
            "config": config_to_dict(self.cfg),
            # a registered short name is saved as its folder, so that resuming needs no registry (or plug-in)
            "reference_model": resolve_model_path(self.cfg.model),
            "num_processes": self.accelerator.num_processes,
        }

    def save(self) -> pathlib.Path:
        """Write a checkpoint of the current step atomically; returns its folder."""
        acc = self.accelerator
        out = pathlib.Path(self.cfg.output_dir)
        tmp = temp_dir_for(out, self.step)
        acc.wait_for_everyone()
        if acc.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                import shutil

                shutil.rmtree(tmp)
            tmp.mkdir()
        acc.wait_for_everyone()
        # Weights in HF format: get_state_dict gathers FSDP shards / ZeRO-3 partitions to the main process (every
        # process takes part). Optimizer, scheduler and every process's RNG go through accelerate's state API,
        # which saves them per rank (sharded) under FSDP and DeepSpeed.
        full = acc.get_state_dict(self.model)
        if acc.is_main_process:
            self.unwrapped_model.save_pretrained(tmp, state_dict=full, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            (tmp / "trainer_state.json").write_text(json.dumps(self.state_dict(), indent=2, sort_keys=True,
                                                               default=str))
        del full
        acc.wait_for_everyone()
        acc.save_state(str(tmp / ACCELERATE_STATE))
        acc.wait_for_everyone()
        # The optimizer and scheduler state (twice the float32 weights) only where a resume needs it
        # (cfg.save_optimizer): not in a finished run's final checkpoint ("unfinished"), and not in the older
        # checkpoints once the new one is complete ("latest", "unfinished"). Sharded states keep their layout.
        prune = self.cfg.save_optimizer != "all" and self._owns_weights_files
        if acc.is_main_process and prune and self.cfg.save_optimizer == "unfinished" and self.step >= self.cfg.steps:
            drop_optimizer_state(tmp)
        final = out / checkpoint_name(self.step)  # the main process's answer may carry a version suffix
        if acc.is_main_process:
            final = publish_checkpoint(out, self.step, keep=self.cfg.keep_checkpoints)
            if prune:
                for old in older_checkpoints(out, final):
                    drop_optimizer_state(old)
            self.callbacks.on_checkpoint(self, str(final))
        acc.wait_for_everyone()
        return final

    def _load_state(self, folder: pathlib.Path) -> None:
        """Restore optimizer, scheduler, step, data cursor and RNG states (weights were loaded already)."""
        state = load_trainer_state(folder)
        self.step = int(state["step"])
        self.cursor = int(state["cursor"])
        if (folder / ACCELERATE_STATE).is_dir():
            import pickle

            if self._owns_weights_files and not has_optimizer_state(folder):
                if self.step >= self.cfg.steps:
                    return  # a finished run resumed with nothing left to train: no optimizer step will be taken
                raise CheckpointError(
                    f"--resume: {folder} holds no optimizer state (only the newest checkpoint of a run keeps it, and "
                    "none is kept in a finished run's final checkpoint with --save-optimizer unfinished), so training "
                    f"would not continue exactly. Resume from the run's latest checkpoint, or start a new run from "
                    f"these weights with --model {folder}.")

            try:  # accelerate loads every file with torch.load(weights_only=True): data, never code
                self.accelerator.load_state(str(folder / ACCELERATE_STATE))
            except pickle.UnpicklingError:
                raise CheckpointError.unsafe(folder / ACCELERATE_STATE) from None
            problem = accelerate_rng_problem(folder / ACCELERATE_STATE, self.accelerator.process_index)
            if problem:  # accelerate skips an unreadable RNG file silently
                log.warning("the RNG state was not restored: %s. The resumed run goes on from the RNG state seeded "
                            "at its start, so it may not repeat an uninterrupted run exactly.", problem)
            return
        opt = folder / "optimizer.pt"  # a checkpoint written before the state API was used
        if opt.exists():
            self.optimizer.load_state_dict(load_checkpoint_file(opt))
        sch = folder / "scheduler.pt"
        if sch.exists():
            self.scheduler.load_state_dict(load_checkpoint_file(sch))
        rng = folder / f"rng_state_rank{self.accelerator.process_index}.pt"
        if rng.exists():
            restore_rng_state(load_checkpoint_file(rng))


def _zero_stage(acc: Any) -> int:
    plugin = getattr(acc.state, "deepspeed_plugin", None)
    return int(getattr(plugin, "zero_stage", 0) or 0)
