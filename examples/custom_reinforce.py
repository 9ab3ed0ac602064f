"""A custom RL algorithm for the Prompt-R1 trainer in under 100 lines: REINFORCE-LOO with capped importance weights.

* advantage ``loo-whiten``: each episode's reward minus the mean of the *other* episodes of its group (the
  leave-one-out baseline), then whitened over the whole batch (mean 0, std 1);
* policy loss ``reinforce-tis``: ``-w * A * log pi(a)`` per agent token, with ``w = min(pi / pi_old, cap)``
  detached (truncated importance sampling: exact REINFORCE on the first update, bounded off-policy later);
* algorithm ``reinforce-loo``: the two above, no KL term.

Run it (it registers the names, then hands over to the trainer's ``promptr1 train``)::

    python examples/custom_reinforce.py --model tiny --steps 2 --cpu true

or as a plug-in of the CLI: ``promptr1 train --plugins examples/custom_reinforce.py --algo reinforce-loo``.
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor

from promptr1.agents.losses import aggregate
from promptr1.agents.registry import (
    ALGORITHMS,
    AlgoSpec,
    register_advantage_estimator,
    register_algorithm,
    register_policy_loss,
)

import promptr1.testing  # noqa: E402,F401  (registers the test doubles: the `tiny` model, `echo`/`scripted` env LLMs)

ALGO_NAME = "reinforce-loo"


def loo_whiten(rewards: Tensor, group_ids: Tensor, eps: float = 1e-6, **_) -> Tensor:
    """Leave-one-out group baseline, then batch whitening; (N,) -> (N,)."""
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    group_ids = torch.as_tensor(group_ids, device=rewards.device)
    adv = torch.zeros_like(rewards)  # (N,)
    for g in group_ids.unique():
        sel = group_ids == g
        n = int(sel.sum())
        if n > 1:  # a lone episode has no baseline: advantage 0
            r = rewards[sel]
            adv[sel] = r - (r.sum() - r) / (n - 1)
    if adv.numel() > 1 and adv.std() > eps:
        adv = (adv - adv.mean()) / (adv.std() + eps)
    return adv


def reinforce_tis(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *,
                  agg: str = "token-mean", norm_length: int | None = None, is_cap: float = 2.0, **_):
    """REINFORCE with truncated importance weights; returns (loss, stats)."""
    mask = mask.to(logp.dtype)  # (B, T)
    adv = advantages.reshape(-1, 1).to(logp.dtype) if advantages.dim() == 1 else advantages  # (B, 1) or (B, T)
    log_ratio = torch.where(mask != 0, logp.detach() - old_logp, torch.zeros_like(logp))  # (B, T)
    weight = log_ratio.clamp(max=20.0).exp().clamp(max=is_cap)  # (B, T), no gradient
    loss = aggregate(-weight * adv * logp, mask, agg, norm_length=norm_length)
    capped = ((log_ratio.exp() > is_cap).to(logp.dtype) * mask).sum() / mask.sum().clamp(min=1)
    return loss, {"policy_loss": loss.item(), "is_capped_frac": capped.item()}


def register() -> None:
    """Register the estimator, the loss and the algorithm (idempotent)."""
    register_advantage_estimator("loo-whiten", loo_whiten, overwrite=True)
    register_policy_loss("reinforce-tis", reinforce_tis, overwrite=True)
    if ALGO_NAME not in ALGORITHMS:
        register_algorithm(ALGO_NAME, AlgoSpec(
            estimator="loo-whiten", loss="reinforce-tis", defaults={"kl_coef": 0.0},
            description="REINFORCE, leave-one-out baseline + batch whitening, truncated importance weights"))


register()


def main(argv: list[str] | None = None) -> int:
    """``promptr1 train --algo reinforce-loo`` with any further trainer options."""
    from promptr1.commands.train import train_main

    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--algo" or a.startswith("--algo=") for a in argv):
        argv = ["--algo", ALGO_NAME, *argv]
    return train_main(argv)


if __name__ == "__main__":
    sys.exit(main())
