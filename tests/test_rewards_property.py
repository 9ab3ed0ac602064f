"""Property tests: the reward never raises on text and stays in range, whatever the agent writes."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from promptr1.rewards import (
    ANSWER_METRICS,
    REWARD_VARIANTS,
    blocks_from_chatml,
    compute_reward,
    extract_answer,
)

TAGS = [
    "<think>",
    "</think>",
    "<interaction_prompt>",
    "</interaction_prompt>",
    "<answer>",
    "</answer>",
    "<|im_start|>assistant\n",
    "<|im_end|>",
]

# Arbitrary Unicode, control characters and lone surrogates included.
any_text = st.text(st.characters(exclude_categories=()), max_size=200)
tagged_text = st.lists(
    st.one_of(st.sampled_from(TAGS), any_text, st.sampled_from(["\n", " ", "\x00", "Paris"])), max_size=12
).map("".join)


@st.composite
def long_text(draw: st.DrawFn) -> str:
    """~100 KB: a fragment (often tag soup) repeated, the shape a degenerate policy produces."""
    fragment = draw(st.one_of(tagged_text.filter(bool), st.sampled_from(TAGS)))
    return (fragment * (100_000 // len(fragment) + 1))[:100_000]


turn = st.one_of(any_text, tagged_text, long_text())
turns_strategy = st.lists(st.one_of(tagged_text, any_text), max_size=6) | st.lists(turn, max_size=3)
golds_strategy = st.one_of(any_text, st.lists(any_text, max_size=4), st.lists(tagged_text, max_size=2))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(turns=turns_strategy, golds=golds_strategy)
def test_reward_total_in_range_for_any_text(turns: list[str], golds) -> None:
    for variant in REWARD_VARIANTS:
        for metric in ANSWER_METRICS:
            r = compute_reward(turns, golds, variant=variant, answer_metric=metric)
            assert math.isfinite(r.total)
            assert -1.0 <= r.total <= 1.0
            assert 0.0 <= r.format <= 1.0
            assert 0.0 <= r.answer <= 1.0
            assert r.format == min(r.format_raw, 1.0)
            parts = (
                r.format_prompt_turns + r.format_answer_tag + r.format_answer_nonempty + r.format_think_answer
            )
            assert math.isclose(parts, r.format_raw, abs_tol=1e-9)
            assert r.has_answer is bool(r.answer_text)
            if variant == "faithful":
                expected = -1.0 + r.format + r.answer if r.format == 1.0 else -1.0 + r.format
                assert r.total == expected


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(text=st.one_of(tagged_text, any_text, long_text()))
def test_text_helpers_never_raise(text: str) -> None:
    answer = extract_answer(text)
    assert answer is None or answer == answer.strip()
    for block in blocks_from_chatml(text):
        assert "<|im_end|>" not in block


@settings(max_examples=100, deadline=None)
@given(turns=st.lists(tagged_text, max_size=6), golds=st.lists(any_text, min_size=1, max_size=3))
def test_answer_gated_orders_answered_above_unanswered(turns: list[str], golds: list[str]) -> None:
    r = compute_reward(turns, golds, variant="answer_gated")
    if r.has_answer:
        assert r.total >= -0.5  # format >= 0.5 with an answer
    else:
        assert r.total <= -0.5
