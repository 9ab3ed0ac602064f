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
unknown advantage estimator 'grpoo'. Did you mean 'grpo'? Available: 'drgrpo', 'grpo', ...
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, TypeVar, overload

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

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """Raised by :meth:`Registry.get` for a name that is not registered.

    It is both a ``KeyError`` (a failed lookup) and a ``ValueError`` (a bad option value, which is what a
    command-line parser wants); ``str()`` gives the plain message, without ``KeyError``'s quotes.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """A named collection of objects of one kind (``kind`` is used in error messages only).

    ``loaders`` are modules imported on the first lookup, so the built-in entries they register are present
    without an import cycle between this module and the modules that define them.

    >>> colors = Registry("color")
    >>> colors.register("red", 0xFF0000)
    16711680
    >>> @colors.register("green")
    ... def green():
    ...     return 0x00FF00
    >>> colors.names()
    ['green', 'red']
    >>> try:
    ...     colors.get("gren")
    ... except KeyError as err:
    ...     print(err)
    unknown color 'gren'. Did you mean 'green'? Available: 'green', 'red'.
    """

    def __init__(self, kind: str, *, loaders: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._loaders = loaders
        self._loaded = not loaders

    def _load_builtins(self) -> None:
        if not self._loaded:
            self._loaded = True  # set first: the loader modules call register() on this registry
            for module in self._loaders:
                importlib.import_module(module)

    @overload
    def register(self, name: str, obj: None = None, *, overwrite: bool = False) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T, *, overwrite: bool = False) -> T: ...

    def register(self, name: str, obj: T | None = None, *, overwrite: bool = False) -> T | Callable[[T], T]:
        """Register ``obj`` under ``name``; without ``obj``, return a decorator that does it.

        Registering a name twice is an error unless ``overwrite=True`` (so two plug-ins cannot silently
        shadow each other). Returns ``obj`` unchanged.
        """
        if not isinstance(name, str) or not name.strip():
            raise TypeError(f"a {self.kind} name must be a non-empty string; got {name!r}.")
        name = name.strip()

        def _add(o: T) -> T:
            self._load_builtins()
            if name in self._entries and not overwrite and self._entries[name] is not o:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered; pass overwrite=True to replace it "
                    "or choose another name."
                )
            self._entries[name] = o
            return o

        if obj is None:
            return _add
        return _add(obj)

    def get(self, name: str) -> T:
        """Return the object registered under ``name``, or raise :class:`UnknownNameError` with a hint."""
        self._load_builtins()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            pass
        names = self.names()
        hint = difflib.get_close_matches(str(name), names, n=1)
        did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
        available = ", ".join(repr(n) for n in names) or "(none)"
        raise UnknownNameError(f"unknown {self.kind} {name!r}.{did_you_mean} Available: {available}.")

    def names(self) -> list[str]:
        """Sorted registered names."""
        self._load_builtins()
        return sorted(self._entries)

    def unregister(self, name: str) -> T:
        """Remove and return an entry (useful in tests)."""
        obj = self.get(name)
        del self._entries[name]
        return obj

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"


@dataclass(frozen=True)
class AlgoSpec:
    """What ``--algo NAME`` selects: an advantage estimator, a policy loss and default overrides.

    ``defaults`` overrides fields of :class:`promptr1.agents.losses.LossConfig` (e.g. ``clip_high``,
    ``kl_coef``, ``agg``, ``mask_zero_variance``); explicit user settings override ``defaults`` in turn.
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

    ``compute_loss`` calls it with the keyword arguments ``clip_low``, ``clip_high``, ``dual_clip_c``,
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
#   grpo:   DeepSeekMath (arXiv 2402.03300) as configured by Prompt-R1 (design.md §7): std-normalised group
#           advantage, PPO-clip 0.2, k3 KL loss coef 0.001, token-mean.
#   drgrpo: "Understanding R1-Zero-Like Training" (arXiv 2503.20783): no std division, per-sequence token
#           sum divided by a constant length instead of the sequence's own length.
#   rloo:   Ahmadian et al. 2024 (arXiv 2402.14740): leave-one-out group baseline.
#   reinforce: REINFORCE with the batch-mean reward as baseline, -A * log pi loss.
#   dapo:   DAPO (arXiv 2503.14476): clip-higher (0.2 / 0.28), token-mean, no KL, groups whose rewards are all
#           equal dropped (our masking stands in for its dynamic re-sampling).
register_algorithm("grpo", AlgoSpec("grpo", "ppo-clip", {}, "GRPO: (r - mean_g) / (std_g + eps), PPO-clip"))
register_algorithm(
    "drgrpo",
    AlgoSpec(
        "drgrpo", "ppo-clip", {"agg": "seq-mean-token-sum-norm"}, "Dr.GRPO: r - mean_g, constant-length norm"
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
        {"clip_low": 0.2, "clip_high": 0.28, "agg": "token-mean", "kl_coef": 0.0, "mask_zero_variance": True},
        "DAPO: clip-higher, token-mean, no KL, zero-variance groups masked",
    ),
)
