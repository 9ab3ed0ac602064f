"""Advantage estimators for outcome rewards: one scalar reward per sampled episode.

Every estimator has the signature ``fn(rewards (N,), group_ids (N,), **kwargs) -> advantages (N,)`` and is
registered by name in :data:`promptr1.agents.registry.ADVANTAGE_ESTIMATORS`. ``group_ids`` says which
episodes answer the same question (the GRPO "group"); the ids may be any integers, in any order.

Conventions (chosen to match verl, the framework the Prompt-R1 reference code trains with):

* the group standard deviation is the *unbiased* one (``torch.std``'s default, divisor ``n - 1``);
* a group with a single member has mean 0 and std 1 in GRPO, so its advantage is ``r / (1 + eps)``
  (verl's behaviour); RLOO gives it advantage 0 because it has no "others". Use
  :func:`zero_variance_mask` (which counts a single-member group as zero-variance) to drop such episodes.

Advantages are computed without gradients and returned in ``float32`` (or the input's float dtype).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .registry import ADVANTAGE_ESTIMATORS, register_advantage_estimator

__all__ = [
    "compute_advantages",
    "drgrpo_advantages",
    "group_stats",
    "grpo_advantages",
    "reinforce_baseline_advantages",
    "rloo_advantages",
    "zero_variance_mask",
]


def _check(rewards: Tensor, group_ids: Tensor | None) -> tuple[Tensor, Tensor]:
    """Validate shapes; return float rewards (N,) and dense group indices 0..G-1 (N,)."""
    rewards = torch.as_tensor(rewards)
    if rewards.dim() != 1:
        raise ValueError(
            f"rewards must be a 1-D tensor with one scalar reward per episode, shape (N,); got shape "
            f"{tuple(rewards.shape)}. Sum token-level rewards over the sequence first."
        )
    if not rewards.is_floating_point():
        rewards = rewards.float()
    if group_ids is None:
        return rewards, torch.zeros(rewards.shape[0], dtype=torch.long, device=rewards.device)
    group_ids = torch.as_tensor(group_ids, device=rewards.device)
    if group_ids.shape != rewards.shape:
        raise ValueError(
            f"group_ids must have the same shape as rewards, {tuple(rewards.shape)}; got "
            f"{tuple(group_ids.shape)}. Give every episode the id of the question it answers."
        )
    _, dense = torch.unique(group_ids, return_inverse=True)
    return rewards, dense


def _group_sums(rewards: Tensor, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per group (G,): member count, minimum reward, and the sum of (reward - minimum).

    Sums are taken after shifting each group by its minimum, so a group of equal rewards has deviations of
    exactly 0 (a plain ``sum / n`` can be off by one rounding step, which a std division then blows up).
    """
    num_groups = int(idx.max().item()) + 1 if idx.numel() else 0
    count = torch.zeros(num_groups, dtype=rewards.dtype, device=rewards.device).index_add_(
        0, idx, torch.ones_like(rewards)
    )  # (G,)
    low = torch.full_like(count, float("inf")).scatter_reduce(0, idx, rewards, reduce="amin")  # (G,)
    shifted_sum = torch.zeros_like(count).index_add_(0, idx, rewards - low[idx])  # (G,)
    return count, low, shifted_sum


def group_stats(rewards: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-episode group size, group mean and unbiased group std, each ``(N,)``.

    The std of a single-member group is reported as 0 (there is no spread to measure).

    >>> n, mean, std = group_stats(torch.tensor([1.0, 0.0, 3.0]), torch.tensor([7, 7, 9]))
    >>> n.tolist(), mean.tolist()
    ([2, 2, 1], [0.5, 0.5, 3.0])
    >>> [round(s, 4) for s in std.tolist()]  # sqrt(((1-.5)^2 + (0-.5)^2) / (2-1)) = sqrt(.5)
    [0.7071, 0.7071, 0.0]
    """
    rewards, idx = _check(rewards, group_ids)
    count, low, shifted_sum = _group_sums(rewards, idx)
    shifted_mean = shifted_sum / count  # (G,)
    dev = (rewards - low[idx]) - shifted_mean[idx]  # (N,)
    mean = low + shifted_mean  # (G,)
    ss = torch.zeros_like(count).index_add_(0, idx, dev * dev)  # (G,)
    std = torch.where(count > 1, ss / (count - 1).clamp(min=1), torch.zeros_like(ss)).sqrt()  # (G,)
    return count[idx].long(), mean[idx], std[idx]


@torch.no_grad()
def grpo_advantages(
    rewards: Tensor, group_ids: Tensor, *, eps: float = 1e-6, scale_by_std: bool = True, **_: Any
) -> Tensor:
    """GRPO group-normalised advantage ``(r - mean_g) / (std_g + eps)``; ``scale_by_std=False`` is Dr.GRPO.

    ``std_g`` is the unbiased group std; a single-member group uses mean 0, std 1 (as verl does).

    Rewards [1, 0, 0, 1] in one group: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.57735,
    so the advantages are +-0.5 / 0.57735 = +-0.86603:

    >>> grpo_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.tensor([0, 0, 0, 0])).tolist()  # doctest: +ELLIPSIS
    [0.866..., -0.866..., -0.866..., 0.866...]
    >>> grpo_advantages(torch.tensor([1.0, 0.0, 2.0, 2.0]), torch.tensor([0, 0, 1, 1]), scale_by_std=False).tolist()
    [0.5, -0.5, 0.0, 0.0]
    """
    rewards, idx = _check(rewards, group_ids)
    count, mean, std = group_stats(rewards, idx)
    single = count == 1
    mean = torch.where(single, torch.zeros_like(mean), mean)
    centred = rewards - mean  # (N,)
    if not scale_by_std:
        return centred
    std = torch.where(single, torch.ones_like(std), std)
    denom = std + eps  # (N,); 0 only for an all-equal group with eps = 0, whose deviations are 0
    return centred / torch.where(denom > 0, denom, torch.ones_like(denom))


@torch.no_grad()
def drgrpo_advantages(rewards: Tensor, group_ids: Tensor, **kwargs: Any) -> Tensor:
    """Dr.GRPO advantage ``r - mean_g`` (no division by the group std; arXiv 2503.20783).

    >>> drgrpo_advantages(torch.tensor([3.0, 1.0]), torch.tensor([0, 0])).tolist()
    [1.0, -1.0]
    """
    kwargs.pop("scale_by_std", None)
    return grpo_advantages(rewards, group_ids, scale_by_std=False, **kwargs)


@torch.no_grad()
def rloo_advantages(rewards: Tensor, group_ids: Tensor, **_: Any) -> Tensor:
    """RLOO advantage: ``r_i`` minus the mean reward of the *other* members of its group.

    Equivalent to ``n / (n - 1) * (r_i - mean_g)``. A single-member group has no others: advantage 0.

    Group [1, 0, 0]: for the first, others' mean is 0 -> 1; for the others, (1 + 0) / 2 = 0.5 -> -0.5.

    >>> rloo_advantages(torch.tensor([1.0, 0.0, 0.0, 5.0]), torch.tensor([0, 0, 0, 1])).tolist()
    [1.0, -0.5, -0.5, 0.0]
    """
    rewards, idx = _check(rewards, group_ids)
    count, low, shifted_sum = _group_sums(rewards, idx)
    n = count[idx]  # (N,)
    shifted = rewards - low[idx]  # (N,); the shift cancels in r_i - mean(others)
    others_mean = (shifted_sum[idx] - shifted) / (n - 1).clamp(min=1)  # (N,)
    return torch.where(n > 1, shifted - others_mean, torch.zeros_like(rewards))


@torch.no_grad()
def reinforce_baseline_advantages(
    rewards: Tensor, group_ids: Tensor | None = None, baseline: Tensor | float | None = None, **_: Any
) -> Tensor:
    """REINFORCE with a baseline: ``r - baseline``; the baseline defaults to the batch-mean reward.

    ``group_ids`` is accepted for a uniform signature and ignored (the batch is one group).

    >>> reinforce_baseline_advantages(torch.tensor([1.0, 0.0, 2.0])).tolist()
    [0.0, -1.0, 1.0]
    >>> reinforce_baseline_advantages(torch.tensor([1.0, 0.0]), baseline=0.25).tolist()
    [0.75, -0.25]
    """
    rewards, _ = _check(rewards, None)
    if baseline is None:
        baseline = rewards.mean() if rewards.numel() else rewards.new_zeros(())
    return rewards - torch.as_tensor(baseline, dtype=rewards.dtype, device=rewards.device)


@torch.no_grad()
def zero_variance_mask(rewards: Tensor, group_ids: Tensor, atol: float = 1e-8) -> Tensor:
    """``True`` for episodes whose group rewards are all equal (within ``atol``): mask these out of the loss.

    Such a group carries no learning signal under group baselines (every advantage is 0) but would still
    dilute a token-mean. A single-member group counts as zero-variance.

    >>> zero_variance_mask(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5]), torch.tensor([0, 0, 1, 1, 2])).tolist()
    [True, True, False, False, True]
    """
    rewards, idx = _check(rewards, group_ids)
    num_groups = int(idx.max().item()) + 1 if idx.numel() else 0
    lo = torch.full((num_groups,), float("inf"), dtype=rewards.dtype, device=rewards.device)
    hi = torch.full((num_groups,), float("-inf"), dtype=rewards.dtype, device=rewards.device)
    lo = lo.scatter_reduce(0, idx, rewards, reduce="amin")  # (G,)
    hi = hi.scatter_reduce(0, idx, rewards, reduce="amax")  # (G,)
    return (hi - lo <= atol)[idx]


def compute_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    *,
    estimator: str = "grpo",
    mask_zero_variance: bool = False,
    **estimator_kwargs: Any,
) -> tuple[Tensor, Tensor]:
    """Look ``estimator`` up by name and apply it; return ``(advantages (N,), keep (N,) bool)``.

    ``keep`` is ``False`` for episodes to drop from the loss (zero-variance groups when
    ``mask_zero_variance``); pass it to ``compute_loss`` as ``batch["sample_mask"]``.

    >>> adv, keep = compute_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([0, 0, 1, 1]),
    ...                                estimator="drgrpo", mask_zero_variance=True)
    >>> adv.tolist(), keep.tolist()
    ([0.5, -0.5, 0.0, 0.0], [True, True, False, False])
    """
    fn = ADVANTAGE_ESTIMATORS.get(estimator)
    adv = fn(rewards, group_ids, **estimator_kwargs)
    rewards_t = torch.as_tensor(rewards)
    if adv.shape != rewards_t.shape:
        raise ValueError(
            f"advantage estimator {estimator!r} returned shape {tuple(adv.shape)}; expected {tuple(rewards_t.shape)}, "
            "one advantage per episode."
        )
    if mask_zero_variance:
        keep = ~zero_variance_mask(rewards_t, group_ids)
    else:
        keep = torch.ones(rewards_t.shape, dtype=torch.bool, device=adv.device)
    return adv, keep


register_advantage_estimator("grpo", grpo_advantages)
register_advantage_estimator("drgrpo", drgrpo_advantages)
register_advantage_estimator("rloo", rloo_advantages)
register_advantage_estimator("reinforce", reinforce_baseline_advantages)
