"""The dual-constrained reward of Prompt-R1 (docs/reward.md): format + answer correctness.

The reward is a pure function of the agent's turns (its assistant blocks, in order, each
exactly as generated) and the gold answers:

* **format** (accumulated in this order, then capped at 1.0)

  - +0.4 for each turn but the last that is exactly ``<think>...</think>``, optional
    whitespace, ``<interaction_prompt>...</interaction_prompt>``, with each of those four
    tags occurring exactly once in the turn;
  - on the last turn, if its first ``<answer>...</answer>`` has non-empty content:
    +0.25, +0.25 again (the reference's separate "content is non-empty" check, always true
    at that point), and +0.1 if the turn is ``<think>...</think>...<answer>...</answer>``.

* **answer**: the best SQuAD token F1 of that answer against the gold answers (0 without an
  answer).

* **total** (variant ``"faithful"``, the reference's): ``-1 + format + answer`` if the format
  score reached its cap 1.0, else ``-1 + format``. Always in [-1, 1].

:func:`compute_reward` returns every component as a :class:`RewardBreakdown`;
:func:`reference_score` returns only the total. Variant ``"answer_gated"`` fixes two quirks
of the reference (see its description and ``docs/reward.md``).

>>> turns = [
...     "<think>I need the capital.</think><interaction_prompt>Capital of France?</interaction_prompt>",
...     "<think>It said Paris.</think><answer>Paris</answer>",
... ]
>>> reference_score(turns, ["Paris"])
1.0
>>> r = compute_reward(turns, ["Paris"])
>>> r.format, r.answer, r.capped
(1.0, 1.0, True)
>>> reference_score(turns[1:], ["Paris"])  # no call to the large LLM: the answer never counts
-0.4
>>> round(compute_reward(turns[1:], ["Paris"], variant="answer_gated").total, 6)
0.6
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from promptr1.core.registry import Registry, UnknownNameError
from promptr1.core.tags import ANSWER_CLOSE, ANSWER_OPEN, PROMPT_CLOSE, PROMPT_OPEN, THINK_CLOSE, THINK_OPEN

from .metrics import (
    _as_golds,
    _f1_and_em,
    exact_match,
    extract_answer,
    numeric_match,
    substring_match,
    token_f1,
)

__all__ = [
    "ANSWER_METRICS",
    "AUTO_ANSWER_METRIC",
    "COST_AWARE_VARIANTS",
    "REWARD_VARIANTS",
    "RewardBreakdown",
    "RewardVariant",
    "answer_metric_for",
    "UnknownNameError",
    "blocks_from_chatml",
    "compute_reward",
    "cost_penalty",
    "reference_score",
    "reference_validation_scores",
    "register_reward_variant",
    "unregister_reward_variant",
]

# Format increments of the reference, in the order they are added.
PROMPT_TURN_BONUS = 0.4
ANSWER_TAG_BONUS = 0.25
ANSWER_NONEMPTY_BONUS = 0.25
THINK_ANSWER_BONUS = 0.1
FORMAT_CAP = 1.0

# ---------------------------------------------------------------------------------------------
# Registries that answer an unknown name with "did you mean"
# ---------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------
# Variants: how format, answer and has_answer combine into the total
# ---------------------------------------------------------------------------------------------

Combine = Callable[[float, float, bool], "tuple[float, bool]"]


@dataclass(frozen=True)
class RewardVariant:
    """A way to combine the components into the total.

    ``combine(format, answer, has_answer)`` returns ``(total, answer_counted)`` where
    ``format`` is already capped at 1.0 and ``answer`` is the answer metric (0.0 when the
    last turn has no answer).
    """

    name: str
    combine: Combine
    description: str


def _combine_faithful(fmt: float, answer: float, has_answer: bool) -> tuple[float, bool]:
    # The answer counts only when the format score reached the cap, whatever made it reach it.
    if fmt == FORMAT_CAP:
        return -1.0 + fmt + answer, True
    return -1.0 + fmt, False


def _combine_answer_gated(fmt: float, answer: float, has_answer: bool) -> tuple[float, bool]:
    if has_answer:
        return min(1.0, max(-1.0, -1.0 + fmt + answer)), True
    # No answer: at most -0.5, never above an answered episode (whose format is at least 0.5).
    return -1.0 + fmt / 2.0, False


REWARD_VARIANTS: Registry[RewardVariant] = Registry(
    "reward variant",
    {
        "faithful": RewardVariant(
            "faithful",
            _combine_faithful,
            "The reference's total: -1 + format + answer if format reached its cap 1.0, else -1 + format.",
        ),
        "cost_aware": RewardVariant(
            "cost_aware",
            _combine_answer_gated,
            "answer_gated's total (the answer always counts, so prompting until the turns run out never pays), "
            "minus what the episode's env-LLM calls cost: cost_weight x dollars spent (divided by "
            "cost_reference_usd when one is set; see cost_penalty). For envs with several env LLMs at different "
            "prices; the cost term is applied by the env, which knows the dollars.",
        ),
        "answer_gated": RewardVariant(
            "answer_gated",
            _combine_answer_gated,
            "The answer counts whenever the last turn has a non-empty answer: -1 + format + answer "
            "clamped into [-1, 1]; without an answer -1 + format / 2 (at most -0.5). Fixes two quirks "
            "of the reference: well-formed prompt turns with no answer scoring 0 (above an honest "
            "single-turn answer), and a direct answer scoring at most -0.4 however right it is.",
        ),
    },
)


#: The variants whose total the env lowers by what the episode's env-LLM calls cost (:func:`cost_penalty`).
COST_AWARE_VARIANTS = ("cost_aware",)


def cost_penalty(cost_usd: float, weight: float, reference_usd: float | None = None) -> float:
    """What ``cost_aware`` subtracts from an episode's total: ``weight x dollars``, or ``weight x dollars /
    reference_usd`` (the cost in units of a reference call) when ``reference_usd`` is set.

    >>> cost_penalty(0.002, 100.0), cost_penalty(0.002, 0.5, reference_usd=0.001)
    (0.2, 1.0)
    >>> cost_penalty(0.002, -1.0)
    Traceback (most recent call last):
    ...
    ValueError: cost_weight must be a finite number >= 0 (0: cost does not count), got -1.0.
    """
    if not (math.isfinite(weight) and weight >= 0):
        raise ValueError(f"cost_weight must be a finite number >= 0 (0: cost does not count), got {weight}.")
    if reference_usd is not None and not (math.isfinite(reference_usd) and reference_usd > 0):
        raise ValueError(f"cost_reference_usd must be a finite number > 0 (or None: dollars), got "
                         f"{reference_usd}.")
    return float(weight) * float(cost_usd) / (float(reference_usd) if reference_usd else 1.0)


def register_reward_variant(
    name: str, combine: Combine, description: str = "", *, overwrite: bool = False
) -> RewardVariant:
    """Add a variant usable as ``compute_reward(..., variant=name)`` (and by the env's ``reward_variant``).

    >>> v = register_reward_variant("answer_only", lambda f, a, h: (a if h else -1.0, h))
    >>> compute_reward(["<answer>Paris</answer>"], "Paris", variant="answer_only").total
    1.0
    >>> unregister_reward_variant("answer_only")
    """
    if not callable(combine):
        raise TypeError(
            f"combine must be callable (format, answer, has_answer) -> (total, answer_counted); "
            f"got {type(combine).__name__}."
        )
    variant = RewardVariant(name, combine, description)
    REWARD_VARIANTS.register(name, variant, overwrite=overwrite)
    return variant


def unregister_reward_variant(name: str) -> None:
    """Remove a variant added with :func:`register_reward_variant` (the built-in ones stay).

    >>> unregister_reward_variant("faithful")
    Traceback (most recent call last):
    ...
    ValueError: reward variant 'faithful' is built in and cannot be removed.
    """
    REWARD_VARIANTS.unregister(name)


#: What feeds the answer term: ``f1`` (the reference), ``em``, ``subem`` (substring), ``math``
#: (numeric equivalence, 1/0; see :func:`promptr1.rewards.metrics.math_equal`).
ANSWER_METRICS: Registry[Callable[[str, Any], float]] = Registry(
    "answer metric",
    {
        "f1": token_f1,
        "em": exact_match,
        "subem": substring_match,
        "math": numeric_match,
        "ssim": "promptr1.rewards.similarity:ssim",  # the paper's text metric (MiniLM; lazy: loads a model)
    },
)

#: ``answer_metric="auto"``: the metric the paper's evaluation uses for each task type.
AUTO_ANSWER_METRIC: dict[str, str] = {"qa": "f1", "math": "math", "text": "ssim"}


def answer_metric_for(answer_metric: str, task_type: str) -> str:
    """The answer metric to use for a task: ``answer_metric`` itself, or with ``"auto"`` the one of its type.

    >>> answer_metric_for("auto", "math"), answer_metric_for("auto", "multihop_qa"), answer_metric_for("em", "text")
    ('math', 'f1', 'em')
    """
    if answer_metric != "auto":
        return answer_metric
    return AUTO_ANSWER_METRIC.get(task_type, "f1")

# ---------------------------------------------------------------------------------------------
# Turn checks
# ---------------------------------------------------------------------------------------------

# The reference pattern for an intermediate turn, verbatim. Python's `$` also matches just
# before one trailing "\n". The tag-count gate below runs first, so this pattern has a single
# way to match and stays linear.
_PROMPT_TURN = re.compile(
    r"^<think>(.*?)</think>(\s*)<interaction_prompt>(.*?)</interaction_prompt>$", re.DOTALL
)
_PROMPT_TAGS = (THINK_OPEN, THINK_CLOSE, PROMPT_OPEN, PROMPT_CLOSE)


def _is_prompt_turn(block: str) -> bool:
    for tag in _PROMPT_TAGS:
        if block.count(tag) != 1:
            return False
    return _PROMPT_TURN.search(block) is not None


_THINK, _END_THINK, _ANSWER, _END_ANSWER = THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE


def _is_think_answer(block: str) -> bool:
    """Same truth value as the reference's
    ``re.search(r'^<think>(.*?)</think>(.*?)<answer>(.*?)</answer>$', block, re.DOTALL)``.

    The regex backtracks cubically on degenerate output (many ``</think>`` and ``<answer>``
    and no final ``</answer>``: 2 s for 400 repeats here); this is linear. It matches iff the
    block starts with ``<think>``, ends with ``</answer>`` (or with ``</answer>`` then one
    ``\\n``, which is where ``$`` also matches), and a ``</think>`` and then an ``<answer>``
    fit, without overlapping, between them. Taking the earliest ``</think>`` and the
    earliest ``<answer>`` after it is optimal, since every ``(.*?)`` may be empty.
    """
    if not block.startswith(_THINK):
        return False
    close_think = block.find(_END_THINK, len(_THINK))
    if close_think < 0:
        return False
    open_answer = block.find(_ANSWER, close_think + len(_END_THINK))
    if open_answer < 0:
        return False
    ends = (len(block), len(block) - 1) if block.endswith("\n") else (len(block),)
    for end in ends:
        if block.endswith(_END_ANSWER, 0, end) and open_answer + len(_ANSWER) <= end - len(_END_ANSWER):
            return True
    return False


# ---------------------------------------------------------------------------------------------
# The breakdown and the reward
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RewardBreakdown:
    """Every component of one episode's reward.

    ``format`` is the capped format score and ``format_raw`` the sum before the cap;
    ``format_prompt_turns + format_answer_tag + format_answer_nonempty + format_think_answer
    == format_raw``. ``answer`` is the answer metric of the last turn's answer (0.0 without
    one), whether or not it entered the total; ``answer_counted`` says whether it did.
    ``capped`` is True when the format score reached its cap 1.0 (the faithful variant's
    condition for counting the answer). ``f1`` and ``em`` are reported whatever
    ``answer_metric`` feeds the answer term. ``answer_text`` is the stripped content of the
    last turn's first ``<answer>`` (None without a closed tag pair); ``has_answer`` is True
    when it is non-empty.
    """

    total: float
    format: float
    answer: float
    format_prompt_turns: float
    format_answer_tag: float
    format_answer_nonempty: float
    format_think_answer: float
    has_answer: bool
    answer_text: str | None
    f1: float
    em: float
    n_turns: int
    capped: bool
    variant: str
    answer_metric: str = "f1"
    answer_counted: bool = False
    format_raw: float = 0.0
    n_prompt_turns_ok: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (for ``info["reward_components"]`` and loggers).

        >>> sorted(compute_reward([], "x").as_dict())[:3]
        ['answer', 'answer_counted', 'answer_metric']
        """
        return self.__dict__.copy()  # the fields in declaration order (a plain dataclass: no __slots__)


_FIELD_NAMES = tuple(f.name for f in fields(RewardBreakdown))


def _check_turns(turns: object) -> Sequence[str]:
    if type(turns) is list and all(type(t) is str for t in turns):
        return turns  # the common case, checked without the abstract-base-class tests below
    if turns is None:
        raise TypeError(
            "turns must be a sequence of the agent's turns (str); got None. "
            "Pass [] for an episode with no turn."
        )
    if isinstance(turns, (str, bytes, bytearray)):
        raise TypeError(
            f"turns must be a sequence of the agent's turns, not a single {type(turns).__name__}. "
            "Wrap one turn in a list, or split a ChatML transcript with blocks_from_chatml(text)."
        )
    if not isinstance(turns, Sequence):
        if not isinstance(turns, Iterable):
            raise TypeError(f"turns must be a sequence of str; got {type(turns).__name__}.")
        turns = list(turns)
    for i, turn in enumerate(turns):
        if not isinstance(turn, str):
            raise TypeError(
                f"turn #{i} must be a str (the text the agent generated); got {type(turn).__name__}."
            )
    return turns


def compute_reward(
    turns: Sequence[str],
    answers: Any,
    *,
    variant: str | RewardVariant = "faithful",
    answer_metric: str = "f1",
) -> RewardBreakdown:
    """Score one episode: the agent's turns (in order, as generated) against the gold answers.

    ``answers`` is a str or an iterable of str (see :mod:`promptr1.rewards.metrics`).
    ``variant`` names an entry of :data:`REWARD_VARIANTS` (``"faithful"``, the reference,
    or ``"answer_gated"``) or is a :class:`RewardVariant`. ``answer_metric`` names an entry
    of :data:`ANSWER_METRICS`.

    Unlike the reference, which returns 0.0 when the transcript or the gold answers are
    None, this raises a TypeError: a missing gold answer is a data bug, not a reward.

    >>> good = "<think>t</think><interaction_prompt>p</interaction_prompt>"
    >>> r = compute_reward([good] * 4, ["Paris"])  # 3 scored prompts, then a 4th, no answer
    >>> r.total, r.format_raw > 1.0, r.has_answer
    (0.0, True, False)
    >>> compute_reward([good, "<think>t</think><answer>Lyon</answer>"], ["Paris"]).total
    0.0
    >>> compute_reward([good, "<answer>Paris</answer>"], "Paris").total  # 0.4 + 0.5: not capped
    -0.09999999999999998
    >>> compute_reward([], "Paris", variant="faithfull")
    Traceback (most recent call last):
    ...
    promptr1.core.registry.UnknownNameError: unknown reward variant 'faithfull'. Did you mean 'faithful'? Expected one of: answer_gated, cost_aware, faithful.
    """
    turns = _check_turns(turns)
    golds = _as_golds(answers)
    spec = variant if isinstance(variant, RewardVariant) else REWARD_VARIANTS[variant]
    metric = ANSWER_METRICS[answer_metric]

    fmt = 0.0
    n_ok = 0
    for block in turns[:-1]:
        if _is_prompt_turn(block):
            fmt += PROMPT_TURN_BONUS
            n_ok += 1
    prompt_part = fmt

    answer_text = extract_answer(turns[-1]) if turns else None
    has_answer = bool(answer_text)  # extract_answer strips, so non-empty means non-blank
    tag_part = nonempty_part = think_part = 0.0
    if has_answer:
        fmt += ANSWER_TAG_BONUS
        tag_part = ANSWER_TAG_BONUS
        # The reference checks again that the content is non-empty after strip. Given the
        # condition above that is always true; it stays a separate addition because the
        # float sum must be accumulated in the reference's order (the total depends on
        # `format == 1.0` exactly).
        if answer_text.strip():  # type: ignore[union-attr]
            fmt += ANSWER_NONEMPTY_BONUS
            nonempty_part = ANSWER_NONEMPTY_BONUS
        if _is_think_answer(turns[-1]):
            fmt += THINK_ANSWER_BONUS
            think_part = THINK_ANSWER_BONUS
    fmt_raw = fmt
    fmt = min(fmt, FORMAT_CAP)

    if has_answer:
        f1, em = _f1_and_em(answer_text, golds)  # type: ignore[arg-type]
        answer = f1 if answer_metric == "f1" else em if answer_metric == "em" else metric(answer_text, golds)
    else:
        f1 = em = answer = 0.0
    total, counted = spec.combine(fmt, answer, has_answer)

    return RewardBreakdown(
        total=float(total),
        format=fmt,
        answer=answer,
        format_prompt_turns=prompt_part,
        format_answer_tag=tag_part,
        format_answer_nonempty=nonempty_part,
        format_think_answer=think_part,
        has_answer=has_answer,
        answer_text=answer_text,
        f1=f1,
        em=em,
        n_turns=len(turns),
        capped=fmt == FORMAT_CAP,
        variant=spec.name,
        answer_metric=answer_metric,
        answer_counted=bool(counted),
        format_raw=fmt_raw,
        n_prompt_turns_ok=n_ok,
    )


def reference_score(turns: Sequence[str], answers: Any) -> float:
    """Only the total of the faithful reward (the reference's ``compute_score_format_answer``).

    >>> reference_score(["<think>t</think><answer>Paris</answer>"], "Paris")  # 0.6 format
    -0.4
    >>> reference_score(["no tags at all"], "Paris")
    -1.0
    """
    return compute_reward(turns, answers).total


#: The scores the reference logs for every validation row (its ``qa_em_and_format`` module), in its order.
REFERENCE_VALIDATION_SCORES = ("score", "em", "sm", "f1", "format")


def reference_validation_scores(turns: Sequence[str] | None, answers: Any, *,
                                components: Mapping[str, Any] | None = None) -> dict[str, float]:
    """The five numbers the reference's training logs for a validation episode, every row scored as QA
    (its validation file is labelled one QA source): ``score`` (the faithful total), ``em``, ``sm``,
    ``f1`` of the last turn's first ``<answer>``, and ``format`` (the format score before its cap).

    ``em`` and ``f1`` are those of :func:`~promptr1.rewards.metrics.exact_match` and
    :func:`~promptr1.rewards.metrics.token_f1`, ``sm`` is the one-way
    :func:`~promptr1.rewards.metrics.substring_match` (a gold answer inside the answer): they are
    computed on any closed answer tag, an empty one included, and are 0 without one. ``score`` counts
    the F1 only for a non-empty answer once the format score reached its cap, as the reward does.

    ``components``: the env's reward breakdown (``RewardBreakdown.as_dict()``) instead of ``turns``:
    its ``answer_text`` and ``format_raw`` are used, so the blocks the env scored (with the prefill of an
    episode that ran out of turns) are the ones scored here.

    >>> good = "<think>t</think><interaction_prompt>p</interaction_prompt>"
    >>> reference_validation_scores([good, "<think>t</think><answer>Paris, France</answer>"], ["Paris"])
    {'score': 0.6666666666666666, 'em': 0.0, 'sm': 1.0, 'f1': 0.6666666666666666, 'format': 1.0}
    >>> reference_validation_scores([good, good, "<answer>Paris</answer>"], ["Paris"])  # format 1.3 is logged
    {'score': 1.0, 'em': 1.0, 'sm': 1.0, 'f1': 1.0, 'format': 1.3}
    >>> reference_validation_scores(["<think>t</think><answer>Paris</answer>"], "Paris")  # not capped: no answer
    {'score': -0.4, 'em': 1.0, 'sm': 1.0, 'f1': 1.0, 'format': 0.6}
    >>> reference_validation_scores([], "Paris")
    {'score': -1.0, 'em': 0.0, 'sm': 0.0, 'f1': 0.0, 'format': 0.0}
    """
    golds = _as_golds(answers)
    if components is None:
        breakdown = compute_reward(_check_turns(turns), golds)
        answer_text, fmt_raw = breakdown.answer_text, breakdown.format_raw
    else:
        if "format_raw" not in components:
            raise ValueError(f"components hold no 'format_raw' (keys: {sorted(components)}); pass the episode's "
                             "turns instead, or the env's RewardBreakdown.as_dict().")
        answer_text, fmt_raw = components.get("answer_text"), float(components["format_raw"])
    fmt = min(fmt_raw, FORMAT_CAP)
    has_answer = bool(answer_text and answer_text.strip())
    f1 = token_f1(answer_text, golds) if answer_text is not None else 0.0
    total, _ = _combine_faithful(fmt, f1 if has_answer else 0.0, has_answer)
    return {
        "score": float(total),
        "em": exact_match(answer_text, golds) if answer_text is not None else 0.0,
        "sm": substring_match(answer_text, golds) if answer_text is not None else 0.0,
        "f1": f1,
        "format": float(fmt_raw),
    }


# ---------------------------------------------------------------------------------------------
# Raw transcripts
# ---------------------------------------------------------------------------------------------

_IM_ASSISTANT = "<|im_start|>assistant\n"
_IM_END = "<|im_end|>"


def blocks_from_chatml(text: str) -> list[str]:
    """The assistant blocks of a Qwen ChatML transcript, in order.

    Same result as the reference's
    ``re.findall(r'<\\|im_start\\|>assistant\\n(.*?)<\\|im_end\\|>', text, re.DOTALL)``
    (an assistant block that is never closed is dropped), computed in linear time.

    >>> chat = ("<|im_start|>user\\nQ<|im_end|>\\n<|im_start|>assistant\\nA1<|im_end|>\\n"
    ...         "<|im_start|>user\\nR<|im_end|>\\n<|im_start|>assistant\\nA2<|im_end|>")
    >>> blocks_from_chatml(chat)
    ['A1', 'A2']
    """
    if not isinstance(text, str):
        raise TypeError(f"blocks_from_chatml expects the transcript as a str; got {type(text).__name__}.")
    blocks: list[str] = []
    pos = 0
    while True:
        start = text.find(_IM_ASSISTANT, pos)
        if start < 0:
            return blocks
        start += len(_IM_ASSISTANT)
        end = text.find(_IM_END, start)
        if end < 0:  # no later block can be closed either
            return blocks
        blocks.append(text[start:end])
        pos = end + len(_IM_END)
