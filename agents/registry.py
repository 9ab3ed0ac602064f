"""Name registries: the extension point for advantage estimators, policy losses and algorithms.

Three registries live here:

``ADVANTAGE_ESTIMATORS``
    ``name -> fn(rewards (N,), group_ids (N,), **kwargs) -> advantages (N,)``.
    Built in: ``grpo``, ``drgrpo``, ``rloo``, ``reinforce`` (see :mod:`promptr1.agents.advantages`).
``POLICY_LOSSES``
    ``name -> fn(logp (B,T), old_logp (B,T), advantages (B,) or (B,T), mask (B,T), **kwargs) -> (loss, stats)``.
    Built in: ``ppo-clip``, ``reinforce`` (see :mod:`promptr1.agents.losses`).
``ALGORITHMS``
    ``name -> AlgoSpec(estimator=..., loss=..., defaults={...})``: what ``--algo NAME`` selects.
    Built in: ``grpo``, ``drgrpo``, ``rloo``, ``reinforce``, ``dapo``.

A user adds an algorithm in a few lines::

    import torch
    from promptr1.agents.registry import AlgoSpec, register_advantage_estimator, register_algorithm

    @register_advantage_estimator("median-baseline")
    def median_baseline(rewards, group_ids, **kwargs):
        out = torch.zeros_like(rewards)
        for g in group_ids.unique():
            sel = group_ids == g
            out[sel] = rewards[sel] - rewards[sel].median()
        return out

    register_algorithm("median-grpo", AlgoSpec(estimator="median-baseline", loss="ppo-clip",
                                               defaults={"kl_coef": 0.0}))

Unknown names are answered with a "did you mean":

>>> try:
...     ADVANTAGE_ESTIMATORS.get("grpoo")
... except KeyError as err:
...     print(err)
unknown advantage estimator 'grpoo'. Did you mean 'grpo'? Expected one of: drgrpo, grpo, ...
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from promptr1.core.registry import Registry, UnknownNameError

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "ALGORITHMS",
    "POLICY_LOSSES",
    "AlgoSpec",
    "Registry",
    "UnknownNameError",
    "get_algorithm",
    "register_advantage_estimator",
    "register_algorithm",
    "register_policy_loss",
]

@dataclass(frozen=True)
class AlgoSpec:
    """What ``--algo NAME`` selects: an advantage estimator, a policy loss and default overrides.

    ``defaults`` overrides fields of :class:`promptr1.agents.losses.LossConfig` (e.g. ``clip_eps_high``,
    ``kl_coef``, ``loss_agg``, ``mask_zero_variance``); explicit user settings override ``defaults`` in turn.
    """

    estimator: str
    loss: str = "ppo-clip"
    defaults: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))


_BUILTIN_MODULES = ("promptr1.agents.advantages", "promptr1.agents.losses")

ADVANTAGE_ESTIMATORS: Registry[Callable[..., Any]] = Registry("advantage estimator", loaders=_BUILTIN_MODULES)
POLICY_LOSSES: Registry[Callable[..., Any]] = Registry("policy loss", loaders=_BUILTIN_MODULES)
ALGORITHMS: Registry[AlgoSpec] = Registry("algorithm")


def register_advantage_estimator(
    name: str, fn: Callable[..., Any] | None = None, *, overwrite: bool = False
) -> Any:
    """Register ``fn(rewards (N,), group_ids (N,), **kwargs) -> advantages (N,)``; a decorator without ``fn``."""
    return ADVANTAGE_ESTIMATORS.register(name, fn, overwrite=overwrite)


def register_policy_loss(name: str, fn: Callable[..., Any] | None = None, *, overwrite: bool = False) -> Any:
    """Register ``fn(logp, old_logp, advantages, mask, **kwargs) -> (loss, stats)``; a decorator without ``fn``.

    ``compute_loss`` calls it with the keyword arguments ``clip_eps``, ``clip_eps_high``, ``dual_clip_c``,
    ``agg`` and ``norm_length`` plus ``LossConfig.loss_kwargs``; accept ``**kwargs`` for those you ignore.
    """
    return POLICY_LOSSES.register(name, fn, overwrite=overwrite)


def register_algorithm(name: str, spec: AlgoSpec | None = None, *, overwrite: bool = False) -> Any:
    """Register an :class:`AlgoSpec` under ``name`` so that ``--algo name`` selects it."""
    if spec is not None and not isinstance(spec, AlgoSpec):
        raise TypeError(
            f"register_algorithm expects an AlgoSpec(estimator=..., loss=..., defaults={{...}}); "
            f"got {type(spec).__name__}."
        )
    return ALGORITHMS.register(name, spec, overwrite=overwrite)


def get_algorithm(name: str) -> AlgoSpec:
    """The :class:`AlgoSpec` for ``name``, with its estimator and loss names checked to exist."""
    spec = ALGORITHMS.get(name)
    ADVANTAGE_ESTIMATORS.get(spec.estimator)
    POLICY_LOSSES.get(spec.loss)
    return spec


# Built-in algorithms. Sources of the defaults:
#   grpo:   DeepSeekMath (arXiv 2402.03300) as configured by Prompt-R1 (docs/architecture.md, training defaults): std-normalised group
#           advantage, PPO-clip 0.2, dual clip c = 3 for negative advantages (the reference's verl always
#           applies it), k3 KL loss coef 0.001, token-mean.
#   drgrpo: "Understanding R1-Zero-Like Training" (arXiv 2503.20783): no std division, per-sequence token
#           sum divided by a constant length instead of the sequence's own length.
#   rloo:   Ahmadian et al. 2024 (arXiv 2402.14740): leave-one-out group baseline.
#   reinforce: REINFORCE with the batch-mean reward as baseline, -A * log pi loss.
#   dapo:   DAPO (arXiv 2503.14476): clip-higher (0.2 / 0.28), token-mean, no KL, groups whose rewards are all
#           equal dropped (our masking stands in for its dynamic re-sampling).
register_algorithm(
    "grpo",
    AlgoSpec("grpo", "ppo-clip", {"dual_clip_c": 3.0}, "GRPO: (r - mean_g) / (std_g + eps), PPO-clip, dual clip 3"),
)
register_algorithm(
    "drgrpo",
    AlgoSpec(
        "drgrpo", "ppo-clip", {"loss_agg": "seq-mean-token-sum-norm"}, "Dr.GRPO: r - mean_g, constant-length norm"
    ),
)
register_algorithm(
    "rloo", AlgoSpec("rloo", "ppo-clip", {}, "RLOO: r_i - mean of the other members of the group")
)
register_algorithm(
    "reinforce", AlgoSpec("reinforce", "reinforce", {}, "REINFORCE with a batch-mean baseline, -A * log pi")
)
register_algorithm(
    "dapo",
    AlgoSpec(
        "grpo",
        "ppo-clip",
        {"clip_eps": 0.2, "clip_eps_high": 0.28, "loss_agg": "token-mean", "kl_coef": 0.0, "mask_zero_variance": True},
        "DAPO: clip-higher, token-mean, no KL, zero-variance groups masked",
    ),
)
