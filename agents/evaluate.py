"""Evaluate an agent: mean reward, answer F1/EM, format rate and turns, with 95% confidence intervals.

Used by ``promptr1 eval``, ``promptr1 chat`` and the quickstart (trained vs untrained).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from promptr1.agents.rollout import ChatFramer, Episode, RolloutConfig, run_episodes

__all__ = ["EvalResult", "evaluate_policy", "format_table", "mean_ci"]


def mean_ci(values: Sequence[float], z: float = 1.96) -> tuple[float, float]:
    """Mean and half-width of its normal-approximation 95% confidence interval.

    >>> mean_ci([1.0, 1.0, 1.0])
    (1.0, 0.0)
    >>> m, h = mean_ci([0.0, 1.0]); round(m, 2), round(h, 2)
    (0.5, 0.98)
    """
    v = np.asarray(list(values), dtype=float)
    if v.size == 0:
        return math.nan, math.nan
    if v.size == 1:
        return float(v[0]), math.nan
    return float(v.mean()), float(z * v.std(ddof=1) / math.sqrt(v.size))


@dataclass
class EvalResult:
    """Per-episode numbers of one evaluation and their summaries."""

    name: str
    rewards: list[float] = field(default_factory=list)
    f1: list[float] = field(default_factory=list)
    em: list[float] = field(default_factory=list)
    format_ok: list[float] = field(default_factory=list)
    turns: list[float] = field(default_factory=list)
    env_errors: int = 0
    seconds: float = 0.0
    episodes: list[Episode] = field(default_factory=list, repr=False)

    @property
    def n(self) -> int:
        return len(self.rewards)

    def summary(self) -> dict[str, tuple[float, float]]:
        return {"reward": mean_ci(self.rewards), "f1": mean_ci(self.f1), "em": mean_ci(self.em),
                "format": mean_ci(self.format_ok), "turns": mean_ci(self.turns)}


def _fmt(mean: float, half: float) -> str:
    if math.isnan(half):
        return f"{mean:+.3f}"
    return f"{mean:+.3f} ± {half:.3f}"


def format_table(results: Sequence[EvalResult]) -> str:
    """A plain-text table, one row per result (mean ± 95% CI half-width)."""
    head = f"{'model':<22} {'episodes':>8}  {'reward':>16}  {'answer F1':>16}  {'EM':>16}  {'format rate':>16}  {'turns':>14}  {'time':>6}"
    lines = [head, "-" * len(head)]
    for r in results:
        s = r.summary()
        lines.append(
            f"{r.name:<22} {r.n:>8}  {_fmt(*s['reward']):>16}  {_fmt(*s['f1']):>16}  {_fmt(*s['em']):>16}  "
            f"{_fmt(*s['format']):>16}  {_fmt(*s['turns']):>14}  {r.seconds:>5.0f}s"
        )
        if r.env_errors:
            lines.append(f"{'':<22} ({r.env_errors} episodes dropped: env LLM errors)")
    return "\n".join(lines)


def evaluate_policy(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[Any],
    env_llm: Any,
    *,
    name: str = "model",
    episodes: int = 64,
    max_turns: int = 3,
    max_new_tokens: int = 96,
    max_seq_len: int = 1024,
    temperature: float = 0.0,
    batch_size: int = 32,
    seed: int = 1234,
    env_kwargs: dict[str, Any] | None = None,
) -> EvalResult:
    """Play ``episodes`` episodes (tasks taken in order, cycling) and collect the metrics.

    ``temperature=0`` decodes greedily. Episodes whose env LLM failed are counted, not scored.
    """
    from promptr1.envs.collab_env import PromptCollabEnv
    from promptr1.llm_backends import make_backend

    backend = make_backend(env_llm) if isinstance(env_llm, str) else env_llm
    framer = ChatFramer(tokenizer)
    rcfg = RolloutConfig(max_new_tokens=max_new_tokens, max_seq_len=max_seq_len, temperature=temperature)
    chosen = [tasks[i % len(tasks)] for i in range(episodes)]
    res = EvalResult(name=name)
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    envs = [PromptCollabEnv(task=list(tasks[:1]) or chosen, env_llm=backend, max_turns=max_turns, **(env_kwargs or {}))
            for _ in range(min(batch_size, episodes))]
    for start in range(0, episodes, batch_size):
        part = chosen[start:start + batch_size]
        eps = run_episodes(model, tokenizer, envs[: len(part)], part, list(range(len(part))), rcfg,
                           framer=framer, generator=gen, seed=seed + start)
        for e in eps:
            res.episodes.append(e)
            if e.env_error is not None:
                res.env_errors += 1
                continue
            c = e.components
            res.rewards.append(e.reward)
            res.f1.append(float(c.get("f1", c.get("answer", 0.0)) or 0.0))
            res.em.append(float(c.get("em", 0.0) or 0.0))
            res.format_ok.append(float(float(c.get("format", 0.0) or 0.0) >= 1.0 - 1e-9))
            res.turns.append(float(e.turns))
    res.seconds = time.perf_counter() - t0
    return res
