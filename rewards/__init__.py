"""Rewards and metrics of prompt-r1: pure functions of the agent's turns and the gold answers.

>>> from promptr1.rewards import compute_reward
>>> compute_reward(["<think>t</think><answer>Paris</answer>"], ["Paris"]).format
0.6
"""

from .dual import (
    ANSWER_METRICS,
    AUTO_ANSWER_METRIC,
    COST_AWARE_VARIANTS,
    REWARD_VARIANTS,
    RewardBreakdown,
    RewardVariant,
    UnknownNameError,
    answer_metric_for,
    blocks_from_chatml,
    compute_reward,
    cost_penalty,
    reference_score,
    reference_validation_scores,
    register_reward_variant,
    unregister_reward_variant,
)
from .metrics import (
    METRIC_SETS,
    exact_match,
    extract_answer,
    math_equal,
    normalize_answer,
    numeric_match,
    parse_number,
    substring_match,
    token_f1,
)

__all__ = [
    "ANSWER_METRICS",
    "METRIC_SETS",
    "AUTO_ANSWER_METRIC",
    "COST_AWARE_VARIANTS",
    "REWARD_VARIANTS",
    "RewardBreakdown",
    "RewardVariant",
    "UnknownNameError",
    "answer_metric_for",
    "blocks_from_chatml",
    "compute_reward",
    "cost_penalty",
    "exact_match",
    "extract_answer",
    "math_equal",
    "normalize_answer",
    "numeric_match",
    "parse_number",
    "reference_score",
    "reference_validation_scores",
    "register_reward_variant",
    "substring_match",
    "token_f1",
    "unregister_reward_variant",
]
