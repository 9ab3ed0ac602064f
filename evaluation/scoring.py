"""What an episode is scored on: the paper's metric per task type, and the episode's own numbers.

:data:`METRICS` names the paper's metrics for each task type: EM, SM (substring match) and token F1
for QA, EM for math, SSim (cosine of sentence embeddings) for text. :data:`MEASURES`
describes every number an evaluation reports per episode (those metrics, plus the agent's
episode reward, its format rate and its turn count): its title, whether it is a 0/1 outcome
(Wilson interval) or continuous (normal interval), and its plausible range.

:func:`extract_prediction` reads the answer out of a free-text reply (the direct and CoT
baselines); :func:`score_prediction` scores a prediction with a metric set
(:data:`promptr1.rewards.metrics.METRIC_SETS`): ``ours`` by default (numeric equivalence for math EM;
an empty prediction scores 0 on every metric, SSim included) or ``reference``, the official
``eval_scores.py`` exactly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from promptr1.rewards import extract_answer
from promptr1.rewards.metrics import METRIC_SETS

__all__ = [
    "MEASURES",
    "METRICS",
    "PRIMARY_METRIC",
    "Measure",
    "extract_prediction",
    "score_prediction",
    "task_type",
]

#: Metrics reported per task type (the paper's).
METRICS: dict[str, tuple[str, ...]] = {"qa": ("em", "sm", "f1"), "math": ("em",), "text": ("ssim",)}
#: The metric that stands for a dataset in averages and in the chart.
PRIMARY_METRIC: dict[str, str] = {"qa": "f1", "math": "em", "text": "ssim"}


@dataclass(frozen=True)
class Measure:
    """One per-episode number: how to title it and which confidence interval it gets."""

    title: str
    binary: bool
    """True for 0/1 outcomes (Wilson interval); False for continuous values (normal interval)."""
    bounds: tuple[float, float] | None
    """The plausible range the interval is clipped to (None: unbounded)."""


#: Every per-episode number an evaluation reports: the paper's metrics, then the agent's own
#: (``reward``: the env's episode reward; ``format``: 1 when the episode's format score reached
#: its cap 1.0; ``turns``: agent turns taken).
MEASURES: dict[str, Measure] = {
    "em": Measure("EM", True, (0.0, 1.0)),
    "sm": Measure("SM", True, (0.0, 1.0)),
    "f1": Measure("F1", False, (0.0, 1.0)),
    "ssim": Measure("SSim", False, (-1.0, 1.0)),
    "reward": Measure("reward", False, None),
    "format": Measure("format rate", True, (0.0, 1.0)),
    "turns": Measure("turns", False, (0.0, math.inf)),
}


def task_type(ability: str) -> str:
    """The metric family of a task's ``ability``: ``qa`` (also ``multihop_qa`` and unknown ones), ``math``, ``text``.

    >>> task_type("multihop_qa"), task_type("math"), task_type("text")
    ('qa', 'math', 'text')
    """
    return ability if ability in METRICS else "qa"


_ANSWER_MARK = re.compile(
    r"^[ \t]*\**[ \t]*(?:final[ \t]+)?answer[ \t]*\**[ \t]*[:：]", re.IGNORECASE | re.MULTILINE
)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


def extract_prediction(reply: str, ability: str, *, cot: bool = False) -> str:
    """The answer in an environment LLM's free-text reply (the direct and CoT baselines).

    ``<answer>`` wins; then (CoT, or any math reply) what follows the last ``Answer:`` mark (to the
    end of its line; to the end of the reply for text tasks); for math, ``\\boxed{}`` or else the
    last number of the last line; otherwise the whole reply (stripped).

    >>> extract_prediction("Paris.", "qa")
    'Paris.'
    >>> extract_prediction("Step 1...\\nAnswer: Paris", "qa", cot=True)
    'Paris'
    >>> extract_prediction("so 12 + 18 = 30 people", "math")
    '30'
    >>> extract_prediction("The total is \\\\boxed{30}.", "math")
    '\\\\boxed{30}'
    """
    tagged = extract_answer(reply)
    if tagged is not None:
        return tagged
    text = reply.strip()
    kind = task_type(ability)
    if cot or kind == "math":
        marks = list(_ANSWER_MARK.finditer(text))
        if marks:  # text answers run to the end of the reply; others end with their line
            rest = text[marks[-1].end() :]
            rest = rest if kind == "text" else rest.split("\n", 1)[0]
            if rest.strip(" *"):
                text = rest.strip(" *\n")
    if kind == "math":
        boxed = text.rfind("\\boxed")
        if boxed >= 0:
            return text[boxed:].rstrip(". ")
        lines = [ln for ln in text.splitlines() if ln.strip()]
        last = lines[-1] if lines else ""
        numbers = _NUMBER.findall(last)
        return numbers[-1].rstrip(",") if numbers else last.strip()
    return text


def score_prediction(pred: str, golds: Sequence[str], ability: str, embedder: Any = None,
                     metrics: str = "ours") -> dict[str, float]:
    """The paper's metrics for one prediction (:data:`METRICS` of its task type), computed with the metric set
    ``metrics``: ``ours`` (an empty prediction scores 0 on all of them; math EM with numeric equivalence) or
    ``reference`` (the official ``eval_scores.py``).

    >>> score_prediction("The Eiffel Tower", ["Eiffel Tower"], "qa")
    {'em': 1.0, 'sm': 1.0, 'f1': 1.0}
    >>> score_prediction("30.0", ["30"], "math"), score_prediction("30.0", ["30"], "math", metrics="reference")
    ({'em': 1.0}, {'em': 0.0})
    >>> score_prediction("", ["Paris"], "qa"), score_prediction("", ["Paris"], "qa", metrics="reference")
    ({'em': 0.0, 'sm': 0.0, 'f1': 0.0}, {'em': 0.0, 'sm': 1.0, 'f1': 0.0})
    """
    kind = task_type(ability)
    mset = METRIC_SETS[metrics]
    if mset.empty_scores_zero and not pred.strip():
        return {name: 0.0 for name in METRICS[kind]}
    if kind == "text":
        return {"ssim": mset.fn("ssim")(pred, list(golds), embedder=embedder)}
    if kind == "math":
        return {"em": mset.fn("math_em")(pred, golds)}
    return {name: mset.fn(name)(pred, golds) for name in METRICS["qa"]}
