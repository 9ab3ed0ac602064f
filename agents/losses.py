"""Token-level policy-gradient losses, written to read top to bottom like CleanRL's ``ppo.py`` update.

Shapes: ``B`` sequences (episodes) of ``T`` tokens, vocabulary ``V``. Every per-token tensor is ``(B, T)`` and
comes with an action ``mask`` ``(B, T)``: 1 for tokens the agent sampled, 0 for prompt, environment replies,
chat-template tokens and padding (see :func:`promptr1.agents.masks.build_action_mask`). Masked-out tokens
never contribute to a loss, its gradient or a statistic.

What the trainer calls:

* :func:`token_logprobs` / :func:`entropy_from_logits` on the model's logits;
* :func:`promptr1.agents.advantages.compute_advantages` on the episode rewards;
* :func:`compute_loss` with a :class:`LossConfig` (``LossConfig.from_algorithm("dapo")`` for ``--algo dapo``).

Defaults (docs/architecture.md, training defaults, from Prompt-R1's verl configuration): PPO-clip 0.2, KL to the frozen reference with the
low-variance k3 estimator at coefficient 0.001 as a loss term, token-mean aggregation, no entropy bonus.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from promptr1.core.registry import UnknownNameError, did_you_mean
from torch import Tensor

from .registry import POLICY_LOSSES, get_algorithm, register_policy_loss

__all__ = [
    "AGG_MODES",
    "KL_KINDS",
    "LossConfig",
    "aggregate",
    "compute_loss",
    "entropy_from_logits",
    "kl_in_reward",
    "kl_penalty",
    "masked_mean",
    "policy_loss",
    "reinforce_loss",
    "token_logprobs",
]

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
KL_KINDS = {"k1": "k1", "kl": "k1", "k2": "k2", "mse": "k2", "k3": "k3", "low_var_kl": "k3", "abs": "abs"}

# exp() of a log-ratio beyond this overflows float32 long before it means anything; verl clamps at 20 too.
_LOG_RATIO_CLAMP = 20.0
# k3 is clamped to [-10, 10] as verl's "low_var_kl" does, so one wild token cannot dominate the KL loss.
_K3_CLAMP = 10.0


def _unknown(what: str, given: str, options: tuple[str, ...] | list[str]) -> UnknownNameError:
    return UnknownNameError(did_you_mean(what, given, list(options)))


def _masked_sum(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """Sum of ``x * mask``; positions where ``mask == 0`` contribute exactly 0 even if ``x`` is inf/nan there."""
    mask = mask.to(x.dtype) if x.is_floating_point() else mask
    xm = torch.where(mask != 0, x * mask, torch.zeros_like(x))
    return xm.sum() if dim is None else xm.sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """Mean of ``x`` over positions where ``mask`` is non-zero (weighted by ``mask``); 0 where nothing is in.

    >>> masked_mean(torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]]),
    ...             torch.tensor([[1, 1, 0], [1, 0, 0]]))  # (1 + 2 + 3) / 3
    tensor(2.)
    >>> masked_mean(torch.tensor([[1.0, 2.0], [5.0, 6.0]]), torch.tensor([[1, 1], [0, 0]]), dim=-1)
    tensor([1.5000, 0.0000])
    """
    mask = mask.to(x.dtype)
    num = _masked_sum(x, mask, dim)
    den = mask.sum() if dim is None else mask.sum(dim=dim)
    safe = torch.where(den > 0, den, torch.ones_like(den))  # no 0/0 in the forward or the backward pass
    return torch.where(den > 0, num / safe, torch.zeros_like(num))


def aggregate(
    loss_mat: Tensor, mask: Tensor, mode: str = "token-mean", *, norm_length: int | None = None
) -> Tensor:
    """Reduce a per-token ``(B, T)`` loss to a scalar.

    ``token-mean``               sum over all in-mask tokens / their number (every token weighs the same)
    ``seq-mean-token-mean``      mean over each sequence's tokens, then mean over sequences (GRPO paper)
    ``seq-mean-token-sum``       sum over each sequence's tokens, then mean over sequences
    ``seq-mean-token-sum-norm``  sum over each sequence's tokens / ``norm_length`` (a constant, default ``T``),
                                 then mean over sequences (Dr.GRPO; verl divides by ``T`` but sums over sequences,
                                 a constant factor ``B`` larger)

    "Mean over sequences" counts only sequences with at least one in-mask token, so sequences dropped by the
    mask (zero-variance groups, failed episodes) do not dilute the others.

    Ragged mask, rows with 2 and 1 tokens: token-mean (1 + 3 + 5) / 3 = 3; seq-mean-token-mean
    ((1 + 3) / 2 + 5) / 2 = 3.5; seq-mean-token-sum ((1 + 3) + 5) / 2 = 4.5:

    >>> x, m = torch.tensor([[1.0, 3.0, 9.0], [5.0, 9.0, 9.0]]), torch.tensor([[1, 1, 0], [1, 0, 0]])
    >>> [aggregate(x, m, mode).item() for mode in AGG_MODES]
    [3.0, 3.5, 4.5, 1.5]
    """
    if loss_mat.dim() != 2 or mask.shape != loss_mat.shape:
        raise ValueError(
            f"aggregate expects loss_mat and mask of the same shape (B, T); got {tuple(loss_mat.shape)} and "
            f"{tuple(mask.shape)}."
        )
    mask = mask.to(device=loss_mat.device, dtype=loss_mat.dtype)
    if mode == "token-mean":
        return masked_mean(loss_mat, mask)
    seq_has_tokens = (mask.sum(dim=-1) > 0).to(loss_mat.dtype)  # (B,)
    if mode == "seq-mean-token-mean":
        per_seq = masked_mean(loss_mat, mask, dim=-1)  # (B,)
    elif mode == "seq-mean-token-sum":
        per_seq = _masked_sum(loss_mat, mask, dim=-1)  # (B,)
    elif mode == "seq-mean-token-sum-norm":
        length = loss_mat.shape[-1] if norm_length is None else norm_length
        if length <= 0:
            raise ValueError(
                f"norm_length must be a positive number of tokens (e.g. the max response length); got {length}."
            )
        per_seq = _masked_sum(loss_mat, mask, dim=-1) / length  # (B,)
    else:
        raise _unknown("loss aggregation mode", mode, AGG_MODES)
    return masked_mean(per_seq, seq_has_tokens)


def _expand_advantages(advantages: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, T) broadcast; (B, T) passes through."""
    advantages = torch.as_tensor(advantages, device=like.device).detach().to(like.dtype)
    if advantages.dim() == 1 and advantages.shape[0] == like.shape[0]:
        return advantages.unsqueeze(-1).expand_as(like)
    if advantages.shape == like.shape:
        return advantages
    raise ValueError(
        f"advantages must have shape (B,) = ({like.shape[0]},) or (B, T) = {tuple(like.shape)}; got "
        f"{tuple(advantages.shape)}."
    )


def _check_pair(logp: Tensor, other: Tensor, name: str) -> None:
    if logp.dim() != 2 or other.shape != logp.shape:
        raise ValueError(
            f"logp and {name} must both be per-token log-probabilities of shape (B, T); got "
            f"{tuple(logp.shape)} and {tuple(other.shape)}."
        )


def clip_settings(clip_eps: float, clip_eps_high: float | None,
                  dual_clip_c: float | None) -> tuple[float | None, float | None]:
    """Check the PPO clip settings and give ``(clip_eps_high, dual_clip_c)`` with 0 read as None: "off" (no
    clip-higher, no dual clip), the same at every stage (settings, ``LossConfig``, the loss function).

    >>> clip_settings(0.2, 0, 0), clip_settings(0.2, 0.28, 3.0)
    ((None, None), (0.28, 3.0))
    >>> clip_settings(0.2, None, 1.0)
    Traceback (most recent call last):
    ...
    ValueError: dual_clip_c must be > 1 (the dual-clip paper uses 3), or 0 / None to disable it; got 1.0.
    """
    if not 0.0 <= clip_eps < 1.0:
        raise ValueError(f"clip_eps must be in [0, 1) (PPO uses 0.2); got {clip_eps}.")
    if clip_eps_high == 0:
        clip_eps_high = None
    if clip_eps_high is not None and clip_eps_high < 0:
        raise ValueError(f"clip_eps_high must be >= 0 (DAPO uses 0.28; 0 / None: clip_eps); got {clip_eps_high}.")
    if dual_clip_c == 0:
        dual_clip_c = None
    if dual_clip_c is not None and dual_clip_c <= 1.0:
        raise ValueError(f"dual_clip_c must be > 1 (the dual-clip paper uses 3), or 0 / None to disable it; "
                         f"got {dual_clip_c}.")
    return clip_eps_high, dual_clip_c


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    dual_clip_c: float | None = None,
    agg: str = "token-mean",
    norm_length: int | None = None,
    **_: Any,
) -> tuple[Tensor, dict[str, float]]:
    """PPO clipped surrogate, with DAPO's clip-higher and the dual clip of Ye et al. 2020 (arXiv 1912.09729).

    Per token: ``max(-A * ratio, -A * clip(ratio, 1 - clip_eps, 1 + clip_eps_high))``; with ``dual_clip_c``, tokens
    with ``A < 0`` are further capped at ``-A * dual_clip_c`` so a huge ratio cannot blow up the loss.
    ``clip_eps_high=None`` means ``clip_eps`` (symmetric PPO); DAPO uses 0.2 / 0.28.

    Returns ``(loss, stats)`` where stats has ``policy_loss``, ``clip_frac`` (tokens whose clipped term was
    taken), ``dual_clip_frac``, ``approx_kl`` (k3 of old vs new, as CleanRL logs), ``approx_kl_k1``
    (mean old - new log-prob, as verl logs) and ``ratio_mean/min/max``, all over in-mask tokens.

    >>> loss, stats = policy_loss(torch.log(torch.tensor([[1.5]])), torch.zeros(1, 1), torch.tensor([1.0]),
    ...                           torch.ones(1, 1))
    >>> round(loss.item(), 4), stats["clip_frac"]   # ratio 1.5 > 1.2 with A > 0: clipped, loss -1.2
    (-1.2, 1.0)
    """
    _check_pair(logp, old_logp, "old_logp")
    clip_eps_high, dual_clip_c = clip_settings(clip_eps, clip_eps_high, dual_clip_c)
    clip_eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    mask = mask.to(device=logp.device, dtype=logp.dtype)
    in_mask = mask != 0
    adv = _expand_advantages(advantages, logp)  # (B, T)

    # Probability ratio pi_new / pi_old, per token
    log_ratio = torch.where(in_mask, logp - old_logp.detach(), torch.zeros_like(logp))  # (B, T)
    log_ratio = log_ratio.clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    ratio = log_ratio.exp()  # (B, T)

    # Clipped surrogate: take the pessimistic (larger) of the two losses
    pg_loss1 = -adv * ratio  # (B, T)
    pg_loss2 = -adv * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps_high)  # (B, T)
    pg_loss_mat = torch.maximum(pg_loss1, pg_loss2)  # (B, T)

    # Dual clip: for negative advantages, never let the loss exceed -A * c
    dual_active = torch.zeros_like(in_mask)
    if dual_clip_c is not None:
        pg_loss3 = -adv * dual_clip_c  # (B, T)
        dual_active = (adv < 0) & (pg_loss_mat > pg_loss3)
        pg_loss_mat = torch.where(adv < 0, torch.minimum(pg_loss_mat, pg_loss3), pg_loss_mat)

    loss = aggregate(pg_loss_mat, mask, agg, norm_length=norm_length)

    # Diagnostics over in-mask tokens (CleanRL's clipfracs / approx_kl; verl's ppo_kl is approx_kl_k1)
    with torch.no_grad():
        in_ratio = ratio[in_mask]  # (n_tokens,)
        stats = {
            "policy_loss": loss.item(),
            "clip_frac": masked_mean((pg_loss2 > pg_loss1).to(logp.dtype), mask).item(),
            "dual_clip_frac": masked_mean(dual_active.to(logp.dtype), mask).item(),
            "approx_kl": masked_mean((ratio - 1.0) - log_ratio, mask).item(),
            "approx_kl_k1": masked_mean(-log_ratio, mask).item(),
            "ratio_mean": masked_mean(ratio, mask).item(),
            "ratio_min": in_ratio.min().item() if in_ratio.numel() else 1.0,
            "ratio_max": in_ratio.max().item() if in_ratio.numel() else 1.0,
        }
    return loss, stats


def reinforce_loss(
    logp: Tensor,
    old_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    *,
    agg: str = "token-mean",
    norm_length: int | None = None,
    **_: Any,
) -> tuple[Tensor, dict[str, float]]:
    """Plain policy gradient ``-A * log pi(a)`` per token (on-policy; no ratio, no clip).

    Its gradient equals PPO-clip's at ``ratio == 1``, i.e. on the first update after sampling.

    >>> loss, _ = reinforce_loss(torch.log(torch.tensor([[0.5, 0.25]])), None, torch.tensor([2.0]), torch.ones(1, 2))
    >>> round(loss.item(), 4)   # -2 * (log .5 + log .25) / 2 = 3 log 2
    2.0794
    """
    if old_logp is not None:
        _check_pair(logp, old_logp, "old_logp")
    mask = mask.to(device=logp.device, dtype=logp.dtype)
    adv = _expand_advantages(advantages, logp)  # (B, T)
    pg_loss_mat = -adv * logp  # (B, T)
    loss = aggregate(pg_loss_mat, mask, agg, norm_length=norm_length)
    stats = {"policy_loss": loss.item()}
    if old_logp is not None:
        with torch.no_grad():
            log_ratio = torch.where(mask != 0, logp - old_logp, torch.zeros_like(logp))
            stats["approx_kl"] = masked_mean(log_ratio.exp() - 1.0 - log_ratio, mask).item()
    return loss, stats


def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: str = "k3") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from the sampled tokens' log-probs, ``(B, T)``.

    With ``d = ref_logp - logp`` (Schulman, "Approximating KL divergence", 2020):

    * ``k1`` (alias ``kl``): ``-d``; unbiased, high variance, can be negative;
    * ``k2`` (alias ``mse``): ``d**2 / 2``;
    * ``k3`` (alias ``low_var_kl``): ``exp(d) - d - 1``; unbiased, never negative, low variance. ``d`` is
      clamped to [-20, 20] and the result to [-10, 10], as verl's ``low_var_kl`` does;
    * ``abs``: ``|d|``.

    >>> lp, ref = torch.log(torch.tensor([[0.5]])), torch.log(torch.tensor([[0.25]]))
    >>> round(kl_penalty(lp, ref, "k1").item(), 4), round(kl_penalty(lp, ref, "k3").item(), 4)  # log 2; .5 + log .5
    (0.6931, 0.1931)
    """
    _check_pair(logp, ref_logp, "ref_logp")
    if kind not in KL_KINDS:
        raise _unknown("KL estimator", kind, list(KL_KINDS))
    kind = KL_KINDS[kind]
    d = ref_logp - logp  # (B, T) log pi_ref / pi
    if kind == "k1":
        return -d
    if kind == "k2":
        return 0.5 * d.square()
    if kind == "abs":
        return d.abs()
    d = d.clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    return (d.exp() - d - 1.0).clamp(-_K3_CLAMP, _K3_CLAMP)


@torch.no_grad()
def kl_in_reward(rewards: Tensor, kl: Tensor, coef: float, mask: Tensor | None = None) -> Tensor:
    """Fold a KL penalty into the rewards instead of the loss (no gradient flows through it).

    ``rewards`` ``(B,)`` (one outcome reward per episode): ``r - coef * sum_t kl * mask``.
    ``rewards`` ``(B, T)`` (token-level): ``r - coef * kl * mask``.

    >>> kl_in_reward(torch.tensor([1.0]), torch.tensor([[0.5, 0.25, 9.0]]), 0.1, torch.tensor([[1, 1, 0]]))
    tensor([0.9250])
    """
    if mask is None:
        mask = torch.ones_like(kl)
    mask = mask.to(kl.dtype)
    penalty = torch.where(mask != 0, kl * mask, torch.zeros_like(kl))  # (B, T)
    if rewards.dim() == 1 and kl.dim() == 2 and rewards.shape[0] == kl.shape[0]:
        return rewards - coef * penalty.sum(dim=-1)
    if rewards.shape == kl.shape:
        return rewards - coef * penalty
    raise ValueError(
        f"rewards must have shape (B,) or (B, T) matching kl {tuple(kl.shape)}; got {tuple(rewards.shape)}."
    )


def _rows(x: Tensor, chunk_size: int | None) -> list[slice]:
    n = x.shape[0]
    step = n if not chunk_size or chunk_size >= n else chunk_size
    return [slice(i, i + step) for i in range(0, max(n, 1), step)] if n else []


def token_logprobs(
    logits: Tensor, tokens: Tensor, *, temperature: float = 1.0, chunk_size: int | None = 512
) -> Tensor:
    """Log-probability of ``tokens`` ``(B, T)`` under ``logits / temperature`` ``(B, T, V)``, as ``(B, T)`` float32.

    Computed as ``logit[token] - logsumexp(logits)`` over ``chunk_size`` rows (of ``B * T``) at a time, in
    float32, so the temporary buffer is about ``(chunk_size, V)`` instead of a full ``(B, T, V)`` copy.
    Measured on CPU under ``no_grad`` with B, T, V = 4, 256, 49152 (192 MiB of logits): extra peak memory
    197 MiB unchunked, 102 MiB with chunk_size 512, 30 MiB with 128, at about the speed of
    ``log_softmax(...).gather(...)``. Under autograd the float32 chunks are kept for the backward pass, so the
    saving is for the no-grad old/reference log-prob passes. ``chunk_size=None`` processes all rows at once.

    For a causal LM, logits at position ``t`` predict token ``t + 1``: pass ``logits[:, :-1]`` and
    ``input_ids[:, 1:]`` and use ``action_mask[:, 1:]``. The temperature must be the one used for sampling.

    >>> token_logprobs(torch.zeros(1, 2, 4), torch.tensor([[0, 3]]))  # uniform over 4: log(1/4)
    tensor([[-1.3863, -1.3863]])
    """
    if logits.dim() != 3 or tokens.shape != logits.shape[:2]:
        raise ValueError(
            f"token_logprobs expects logits (B, T, V) and tokens (B, T); got {tuple(logits.shape)} and "
            f"{tuple(tokens.shape)}. For a causal LM pass logits[:, :-1] and tokens[:, 1:]."
        )
    if temperature <= 0:
        raise ValueError(
            f"temperature must be > 0 (the sampling temperature, default 1.0); got {temperature}."
        )
    B, T, V = logits.shape
    flat = logits.reshape(B * T, V)  # (B*T, V)
    idx = tokens.reshape(B * T, 1).long()  # (B*T, 1)
    out = []
    for rows in _rows(flat, chunk_size):
        z = flat[rows].float()
        if temperature != 1.0:
            z = z / temperature
        picked = z.gather(-1, idx[rows]).squeeze(-1)  # (rows,)
        out.append(picked - torch.logsumexp(z, dim=-1))
    return (torch.cat(out) if out else flat.new_zeros(0, dtype=torch.float32)).reshape(B, T)


def entropy_from_logits(logits: Tensor, *, temperature: float = 1.0, chunk_size: int | None = 512) -> Tensor:
    """Entropy of ``softmax(logits / temperature)`` per position, ``(B, T, V) -> (B, T)`` float32.

    ``H = logsumexp(z) - sum_v softmax(z)_v * z_v`` (stable for large logits). ``chunk_size`` as in
    :func:`token_logprobs`.

    >>> entropy_from_logits(torch.zeros(1, 1, 8))  # uniform over 8: log 8
    tensor([[2.0794]])
    """
    if logits.dim() != 3:
        raise ValueError(f"entropy_from_logits expects logits of shape (B, T, V); got {tuple(logits.shape)}.")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature}.")
    B, T, V = logits.shape
    flat = logits.reshape(B * T, V)
    out = []
    for rows in _rows(flat, chunk_size):
        z = flat[rows].float()
        if temperature != 1.0:
            z = z / temperature
        p = torch.softmax(z, dim=-1)
        pz = torch.where(p > 0, p * z, torch.zeros_like(z))  # 0 * -inf (a banned token) counts as 0
        out.append(torch.logsumexp(z, dim=-1) - pz.sum(dim=-1))
    return (torch.cat(out) if out else flat.new_zeros(0, dtype=torch.float32)).reshape(B, T)


@dataclass
class LossConfig:
    """Everything that defines the RL algorithm: advantage estimator, policy loss and their settings.

    Defaults are Prompt-R1's GRPO (docs/architecture.md, training defaults, verl's GRPO recipe); ``LossConfig.from_algorithm(name)``
    applies an algorithm's overrides (``--algo``).
    """

    algo: str = "grpo"
    """Name of the algorithm these settings came from (informational; used in logs)."""
    estimator: str = "grpo"
    """Advantage estimator, a name in ``ADVANTAGE_ESTIMATORS``."""
    adv_eps: float = 1e-6
    """GRPO's ``eps`` in ``(r - mean) / (std + eps)`` [ref: 1e-6]."""
    estimator_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for the estimator."""
    mask_zero_variance: bool = False
    """Drop episodes of groups whose rewards are all equal (DAPO: on)."""
    policy_loss: str = "ppo-clip"
    """Policy loss, a name in ``POLICY_LOSSES``."""
    clip_eps: float = 0.2
    """PPO clip: ratio lower bound ``1 - clip_eps`` [ref: 0.2]."""
    clip_eps_high: float | None = None
    """Ratio upper bound ``1 + clip_eps_high``; None or 0 = ``clip_eps`` (DAPO clip-higher: 0.28)."""
    dual_clip_c: float | None = None
    """Dual-clip bound for negative advantages (e.g. 3.0); None or 0 disables it."""
    loss_agg: str = "token-mean"
    """Loss aggregation, one of ``AGG_MODES`` [ref: token-mean]."""
    norm_length: int | None = None
    """Constant length for ``seq-mean-token-sum-norm`` (None: the batch's T)."""
    kl_coef: float = 0.001
    """Coefficient of the KL to the frozen reference [ref: 0.001]; 0 disables it."""
    kl_estimator: str = "k3"
    """KL estimator, one of ``k1``, ``k2``, ``k3`` (``low_var_kl``), ``abs`` [ref: k3]."""
    kl_in_reward: bool = False
    """Put the KL into the rewards (the trainer calls :func:`kl_in_reward`) instead of the loss."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient: the loss gets ``- entropy_coef * entropy`` [ref: 0]."""
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for a user-registered policy loss."""

    def __post_init__(self) -> None:
        if self.loss_agg not in AGG_MODES:
            raise _unknown("loss aggregation mode (loss_agg)", self.loss_agg, AGG_MODES)
        if self.kl_estimator not in KL_KINDS:
            raise _unknown("KL estimator (kl_estimator)", self.kl_estimator, list(KL_KINDS))
        self.clip_eps_high, self.dual_clip_c = clip_settings(self.clip_eps, self.clip_eps_high, self.dual_clip_c)
        if self.kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0 (ref 0.001; 0 disables the KL term); got {self.kl_coef}.")
        if self.adv_eps < 0:
            raise ValueError(f"adv_eps must be >= 0; got {self.adv_eps}.")

    @classmethod
    def from_algorithm(cls, name: str = "grpo", **overrides: Any) -> LossConfig:
        """Defaults, then the algorithm's ``AlgoSpec.defaults``, then ``overrides``.

        >>> cfg = LossConfig.from_algorithm("dapo")
        >>> cfg.clip_eps_high, cfg.kl_coef, cfg.mask_zero_variance
        (0.28, 0.0, True)
        """
        spec = get_algorithm(name)
        known = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {"algo": name, "estimator": spec.estimator, "policy_loss": spec.loss}
        for source, mapping in (("algorithm " + repr(name), spec.defaults), ("overrides", overrides)):
            for key, value in mapping.items():
                if key not in known:
                    raise UnknownNameError(did_you_mean(f"LossConfig field (in {source})", key, sorted(known)))
                values[key] = value
        return cls(**values)

    def estimator_call_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the advantage estimator: ``eps`` plus ``estimator_kwargs``."""
        return {"eps": self.adv_eps, **self.estimator_kwargs}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def compute_loss(
    batch: Mapping[str, Tensor], cfg: LossConfig | None = None
) -> tuple[Tensor, dict[str, float]]:
    """Total loss = policy loss + ``kl_coef`` * KL loss - ``entropy_coef`` * entropy; returns ``(loss, stats)``.

    ``batch`` keys (``(B, T)`` unless noted):

    ``logp``         log-probs of the sampled tokens under the current policy (with grad), required
    ``mask``         action mask (1 = agent token), required
    ``advantages``   ``(B,)`` or ``(B, T)``, required
    ``old_logp``     log-probs at sampling time; default ``logp.detach()`` (on-policy, ratio 1)
    ``ref_logp``     log-probs under the frozen reference; required when ``kl_coef > 0`` and not ``kl_in_reward``
    ``entropy``      per-token entropy (with grad); required when ``entropy_coef != 0``
    ``sample_mask``  ``(B,)`` bool, False drops the whole sequence (zero-variance groups, failed episodes)

    Stats (floats): ``loss``, ``policy_loss``, ``kl`` (the aggregated KL estimate, before ``kl_coef``; logged
    whenever ``ref_logp`` is given), ``entropy``,
    ``tokens`` (in-mask tokens), plus the policy loss's own stats (``clip_frac``, ``approx_kl``, ...).
    """
    cfg = LossConfig() if cfg is None else cfg
    for key in ("logp", "mask", "advantages"):
        if key not in batch:
            raise KeyError(f"compute_loss needs batch[{key!r}]; the batch has {sorted(batch)}.")
    logp = batch["logp"]  # (B, T)
    mask = batch["mask"].to(device=logp.device, dtype=logp.dtype)  # (B, T)
    if mask.shape != logp.shape:
        raise ValueError(f"mask must have the shape of logp {tuple(logp.shape)}; got {tuple(mask.shape)}.")
    sample_mask = batch.get("sample_mask")
    if sample_mask is not None:
        mask = mask * sample_mask.to(device=mask.device, dtype=mask.dtype).reshape(
            -1, 1
        )  # (B, T): drop sequences
    old_logp = batch.get("old_logp")
    if old_logp is None:
        old_logp = logp.detach()
    advantages = batch["advantages"]

    # Policy-gradient term
    loss_fn = POLICY_LOSSES.get(cfg.policy_loss)
    pg_loss, stats = loss_fn(
        logp,
        old_logp,
        advantages,
        mask,
        clip_eps=cfg.clip_eps,
        clip_eps_high=cfg.clip_eps_high,
        dual_clip_c=cfg.dual_clip_c,
        agg=cfg.loss_agg,
        norm_length=cfg.norm_length,
        **cfg.loss_kwargs,
    )
    loss = pg_loss

    # KL to the frozen reference, as a loss term
    ref_logp = batch.get("ref_logp")
    if cfg.kl_coef > 0 and not cfg.kl_in_reward:
        if ref_logp is None:
            raise KeyError(
                f"kl_coef={cfg.kl_coef} needs batch['ref_logp'] (log-probs under the frozen reference model); "
                "provide it, set kl_coef=0, or set kl_in_reward=True."
            )
        kl_loss = aggregate(
            kl_penalty(logp, ref_logp, cfg.kl_estimator), mask, cfg.loss_agg, norm_length=cfg.norm_length
        )
        loss = loss + cfg.kl_coef * kl_loss
        stats["kl"] = kl_loss.item()
    elif ref_logp is not None:
        with torch.no_grad():
            stats["kl"] = aggregate(kl_penalty(logp, ref_logp, cfg.kl_estimator), mask, cfg.loss_agg).item()

    # Entropy bonus
    entropy = batch.get("entropy")
    if cfg.entropy_coef != 0:
        if entropy is None:
            raise KeyError(
                f"entropy_coef={cfg.entropy_coef} needs batch['entropy'] (entropy_from_logits of the policy "
                "logits, with grad); provide it or set entropy_coef=0."
            )
        ent = aggregate(entropy, mask, cfg.loss_agg, norm_length=cfg.norm_length)
        loss = loss - cfg.entropy_coef * ent
        stats["entropy"] = ent.item()
    elif entropy is not None:
        stats["entropy"] = masked_mean(entropy.detach(), mask).item()

    stats["loss"] = loss.item()
    stats["tokens"] = float(mask.sum().item())
    return loss, stats


register_policy_loss("ppo-clip", policy_loss)
register_policy_loss("reinforce", reinforce_loss)
