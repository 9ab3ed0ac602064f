"""The training commands' configs: :class:`GRPOConfig` (``promptr1 train``) and :class:`SFTConfig` (``promptr1 sft``).

Both extend :class:`promptr1.core.settings.RunSettings` (model, tasks, env LLM, episode and decoding settings,
seed, output folder, plug-ins), which declares every shared setting once. Defaults marked *(ref)* come
from the Prompt-R1 paper and its official code. The settings in :data:`AlgorithmSettings.CHOSEN_DEFAULTS`
default to ``None``: the algorithm chosen with ``--algo`` supplies them unless the user gives a value,
and a value the user gives always wins (also one equal to some default).

>>> from promptr1.core.settings import load_config
>>> cfg = load_config(GRPOConfig, overrides=["--algo", "dapo", "--kl-coef", "0.001"])
>>> loss = cfg.loss_config()
>>> loss.kl_coef, loss.clip_eps_high       # the user's KL, DAPO's clip-higher
(0.001, 0.28)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from promptr1.core.settings import ConfigError, RunSettings, Settings, check_whole

__all__ = ["AlgorithmSettings", "CheckpointSettings", "GRPOConfig", "OptimizerSettings", "SFTConfig", "SFTSettings",
           "TrainingSystemSettings", "ValidationSettings", "WarmStartSettings"]


@dataclass
class AlgorithmSettings(Settings):
    """The optimisation: steps, batch, learning rate and the loss. The settings in :data:`CHOSEN_DEFAULTS` default
    to ``None``: the algorithm chosen with ``algo`` supplies them unless the user gives a value."""

    HEADING: ClassVar[str] = "algorithm (steps, batch, learning rate, loss)"
    ORDER: ClassVar[int] = 50
    CHOSEN_DEFAULTS: ClassVar[tuple[str, ...]] = (
        "clip_eps", "clip_eps_high", "dual_clip_c", "kl_coef", "kl_estimator", "entropy_coef", "loss_agg",
    )

    algo: str = "grpo"
    """Registered algorithm: grpo, drgrpo, rloo, reinforce, dapo, or one a plug-in registered."""
    steps: int = 20
    """Training steps (each: rollouts, then the update)."""
    epochs: int = 0
    """Passes over the training tasks: when > 0, ``steps`` becomes ``epochs x (rows // questions a step)`` (questions
    a step: ``batch_questions`` x processes; a last partial batch is dropped), worked out when training starts
    (ref: one epoch, ``trainer.total_epochs=1``, its dataloader dropping the last partial batch). 0: ``steps``."""
    batch_questions: int = 4
    """Questions sampled per step (per process under ``accelerate launch``) (ref: 128)."""
    group_size: int = 4
    """Rollouts per question, the GRPO group G (ref: 5)."""
    update_epochs: int = 1
    """Passes over each rollout batch (ref: 1)."""
    minibatches: int = 1
    """Optimizer steps per epoch; the rollout batch is split into this many minibatches (ref: 10)."""
    micro_batch_size: int = 8
    """Sequences per forward/backward pass (gradient accumulation inside a minibatch)."""
    lr: float = field(default=2e-6, metadata={"aka": ("learning_rate",)})
    """AdamW learning rate (ref: 1e-6 for 3B-7B agents; a 135M model tolerates more)."""
    warmup_steps: int = 0
    """Steps over which the learning rate rises linearly from 0 to ``lr`` (0: no warm-up)."""
    lr_scheduler: str = "constant"
    """``constant``, ``linear`` or ``cosine`` (after warm-up)."""
    clip_eps: float | None = None
    """PPO clip range (algorithm's; grpo: 0.2, ref)."""
    clip_eps_high: float | None = None
    """Upper clip range (clip-higher); algorithm's (dapo: 0.28; others: equal to ``clip_eps``); 0 = equal to
    ``clip_eps``."""
    dual_clip_c: float | None = None
    """Dual-clip bound for negative advantages, > 1 (algorithm's; grpo: 3, ref; others: none); 0 turns it off."""
    kl_coef: float | None = None
    """KL-to-reference coefficient (algorithm's; grpo: 0.001, ref; dapo: 0); 0 skips the reference model."""
    kl_estimator: str | None = None
    """``k1``, ``k2``, ``k3`` (the low-variance estimator, ref) or ``abs``; algorithm's."""
    entropy_coef: float | None = None
    """Entropy bonus coefficient (algorithm's; ref: 0)."""
    loss_agg: str | None = None
    """Loss aggregation: token-mean (ref), seq-mean-token-mean, seq-mean-token-sum, seq-mean-token-sum-norm."""
    kl_in_reward: bool = False
    """Subtract ``kl_coef * sum_t KL`` from each episode's reward before the advantages, instead of a loss term."""
    recompute_old_logp: bool = True
    """Recompute old log-probs with a no-grad forward of the training model before the update."""
    truncated_reward: str = "ours"
    """What an episode that ends on an env reply (out of turns, or over ``max_seq_len``) trains on: ``ours`` (the
    reward function's value: ``-1 + min(0.4 k, 1)`` for k well-formed prompts, -1 on overflow) or ``reference``
    (0, as in the official trainer, whose score sits on a masked token). Our trainer, the TRL rollout and the verl
    loop read it; reports always show the reward function's value."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("steps", "batch_questions", "group_size", "update_epochs", "minibatches", "micro_batch_size"):
            check_whole(name, getattr(self, name))
        if self.truncated_reward not in ("ours", "reference"):
            raise ConfigError(f"--truncated-reward must be 'ours' (the reward function's value) or 'reference' (0 for "
                              f"episodes ending on an env reply); got {self.truncated_reward!r}.")
        check_whole("epochs", self.epochs, 0)

    def epoch_steps(self, rows: int, processes: int = 1) -> int:
        """``steps`` for ``epochs`` passes over ``rows`` training tasks, ``batch_questions`` x ``processes`` questions a
        step, a last partial batch dropped (the reference: ``len(dataloader) x total_epochs``, ``drop_last``).

        >>> GRPOConfig(epochs=1, batch_questions=16).epoch_steps(25_700, processes=8)  # 128 a step
        200
        """
        per_step = self.batch_questions * processes
        steps = self.epochs * (rows // per_step)
        if steps < 1:
            raise ValueError(f"epochs={self.epochs} over {rows} training tasks at {per_step} questions a step "
                             f"(batch_questions {self.batch_questions} x {processes} processes) is no whole step; "
                             "give more tasks, fewer batch_questions, or steps instead of epochs.")
        return steps

    def loss_config(self) -> Any:
        """The :class:`~promptr1.agents.losses.LossConfig`: ``algo``'s defaults, then every setting the user gave
        (``None`` fields are the ones left to the algorithm)."""
        from promptr1.agents.losses import LossConfig

        # None: not given, the algorithm's value; 0 for clip_eps_high / dual_clip_c: off (LossConfig reads it so)
        given = {name: getattr(self, name) for name in self.CHOSEN_DEFAULTS if getattr(self, name) is not None}
        given["kl_in_reward"] = self.kl_in_reward
        return LossConfig.from_algorithm(self.algo, **given)


@dataclass
class OptimizerSettings(Settings):
    """What every optimizer of the package shares (the RL update and the supervised warm start)."""

    HEADING: ClassVar[str] = "optimizer"
    ORDER: ClassVar[int] = 51

    weight_decay: float = 0.0
    """AdamW weight decay (the reference's trainer: 0.01, which the ``paper`` configs set)."""
    max_grad_norm: float = 1.0
    """Clip the gradient's global norm to this before each optimizer step (0: no clipping; ref: 1.0)."""
    mixed_precision: str = "auto"
    """``no``, ``bf16``, ``fp16``, or ``auto`` (bf16 where the GPU supports it, else no)."""


@dataclass
class SFTSettings(Settings):
    """``promptr1 sft``'s warm start: supervised steps on demonstrations of the turn protocol."""

    HEADING: ClassVar[str] = "warm start (supervised steps on demonstrations)"
    ORDER: ClassVar[int] = 52

    steps: int = 30
    """Optimizer steps, each on ``batch_size`` demonstrations (token-mean NLL of the agent's tokens)."""
    batch_size: int = 8
    """Demonstrations per step."""
    lr: float = 5e-5
    """AdamW learning rate (cosine schedule, warm-up over the first tenth of the steps)."""


@dataclass
class WarmStartSettings(Settings):
    """A training run's warm start: ``promptr1 sft``'s steps before RL, with its defaults."""

    HEADING: ClassVar[str] = "warm start (supervised steps before RL)"
    ORDER: ClassVar[int] = 52

    sft_steps: int = 0
    """Supervised warm-start steps on generated demonstrations before RL (0: none)."""
    sft_lr: float = SFTSettings.lr
    """Learning rate of the warm start (as ``promptr1 sft --lr``, whose default it takes)."""
    sft_batch_size: int = SFTSettings.batch_size
    """Demonstrations per warm-start step (as ``promptr1 sft --batch-size``, whose default it takes)."""


@dataclass
class ValidationSettings(Settings):
    """Validation during training and the held-out evaluation after it."""

    HEADING: ClassVar[str] = "evaluation (validation, held-out evaluation)"
    ORDER: ClassVar[int] = 60

    eval_tasks: list[str] = field(default_factory=list)
    """Held-out tasks for the final evaluation; empty means the test split of ``tasks``."""
    eval_every: int = 0
    """Validate the live policy every N steps (and before the first, see ``eval_before_train``) on ``eval_tasks``
    (empty: the test split of ``tasks``), greedy, through the evaluation wing; logged under ``eval/`` (ref: 10;
    0: no validation during training)."""
    eval_before_train: bool = True
    """With ``eval_every``: validate before the first step too (ref: yes)."""
    eval_limit: int = 0
    """Questions per validation dataset (its first ones); 0: all."""
    eval_reference_scores: bool = False
    """Each validation also logs the scores the reference's training logs for its validation (its
    ``qa_em_and_format``: ``score``, ``em``, ``sm``, ``f1``, ``format``, every row scored as QA) as
    ``eval/reference/<dataset>/<score>``, for curves comparable with the paper's (the ``paper`` configs turn it on)."""
    eval_episodes: int = 0
    """After training, evaluate untrained vs trained on this many held-out episodes (0: skip)."""
    eval_warm_start: bool = True
    """Also evaluate the policy right after the SFT warm-start (separates SFT's gain from RL's)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("eval_every", "eval_limit", "eval_episodes"):
            check_whole(name, getattr(self, name), 0)


@dataclass
class TrainingSystemSettings(Settings):
    """How training runs on the machine, and when it gives up."""

    HEADING: ClassVar[str] = "training system (precision, memory, failures)"
    ORDER: ClassVar[int] = 91

    deterministic: bool = False
    """Use deterministic torch algorithms and a per-turn barrier (same seed, same metrics; slower)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass instead of keeping them: less accelerator memory, slower steps."""
    lora_r: int = 0
    """LoRA rank (0 disables LoRA; needs ``pip install peft``)."""
    lora_alpha: int = 16
    """LoRA scaling: the adapter's update is multiplied by ``lora_alpha / lora_r`` (with ``lora_r`` > 0)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA adapters' input during training (with ``lora_r`` > 0)."""
    dry_run: bool = False
    """Print the expected env-LLM calls, tokens and cost per step and for the run, then exit (no model loaded)."""
    max_env_error_rate: float = 0.5
    """Stop training with an error (checkpoint written, non-zero exit) once this share of a step's episodes failed
    on the env LLM (``env_error``; budget refusals not counted) for ``env_error_patience`` steps in a row: the
    trainer drops failed episodes, so such steps train on little or nothing. 1.0: never stop."""
    env_error_patience: int = 3
    """Consecutive steps above ``max_env_error_rate`` before training stops."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= float(self.max_env_error_rate) <= 1.0:
            raise ConfigError(f"--max-env-error-rate is a share of a step's episodes, between 0 and 1 (1: never "
                              f"stop); got {self.max_env_error_rate!r}.")
        check_whole("env_error_patience", self.env_error_patience)


@dataclass
class CheckpointSettings(Settings):
    """Checkpoints and logs of a training run."""

    HEADING: ClassVar[str] = "checkpoints and logs"
    ORDER: ClassVar[int] = 96

    save_every: int = 0
    """Write a checkpoint every N steps (0: only at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept in ``output_dir``; older ones are deleted as new ones are written (0: keep all)."""
    save_optimizer: str = "latest"
    """Which checkpoints keep the optimizer and LR-scheduler state (AdamW's moments: twice the float32 weights),
    which an exact resume needs: ``latest`` (the newest one; an older kept checkpoint loses it once a newer one is
    complete, and stays loadable as weights), ``all`` (every kept one), or ``unfinished`` (the newest one until the
    run has done its ``steps``: the final checkpoint of a finished run holds weights only, so the run resumes after
    an interruption but cannot be extended with a larger ``--steps``). Default ``latest``: what resuming needs."""
    resume: str = ""
    """``auto`` (latest in output_dir), a checkpoint folder, or empty for a fresh run."""
    log_every: int = 1
    """Write metrics to TensorBoard and the console every N steps."""
    num_transcripts: int = 2
    """Full transcripts written to TensorBoard per step."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.save_optimizer not in ("latest", "all", "unfinished"):
            raise ConfigError(f"save_optimizer must be latest (the newest checkpoint keeps the optimizer state), all, "
                              f"or unfinished (none in a finished run's final checkpoint); got {self.save_optimizer!r}.")


@dataclass
class GRPOConfig(CheckpointSettings, TrainingSystemSettings, ValidationSettings, WarmStartSettings, OptimizerSettings,
                 AlgorithmSettings, RunSettings):
    """Everything ``promptr1 train`` needs. Every field is a ``--key value`` option."""

@dataclass
class SFTConfig(OptimizerSettings, SFTSettings, RunSettings):
    """``promptr1 sft``: supervised warm-start on demonstrations of the turn protocol."""

    #: Shared settings a warm start does not use (its turns are scripted demonstrations, not sampled; the episode's
    #: reward is not trained on): left out of ``promptr1 sft --help`` and refused on its command line.
    IGNORED_SETTINGS: ClassVar[tuple[str, ...]] = (
        "max_new_tokens", "temperature", "top_p", "repetition_penalty", "kv_reuse", "rollout_max_batch_tokens",
        "reward_variant", "answer_metric",
    )

    @classmethod
    def from_training(cls, cfg: GRPOConfig, **changes: Any) -> SFTConfig:
        """The warm start of a training run: the shared settings of ``cfg``, its ``sft_*`` settings."""
        return cls.pick(cfg, steps=cfg.sft_steps, batch_size=cfg.sft_batch_size, lr=cfg.sft_lr, **changes)
