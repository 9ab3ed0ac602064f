"""Known-answer tests for the advantage estimators (expected values worked out by hand in the comments)."""

from __future__ import annotations

import doctest
import math

import promptr1.agents.advantages as adv_mod
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from promptr1.agents.advantages import (
    compute_advantages,
    drgrpo_advantages,
    group_stats,
    grpo_advantages,
    reinforce_baseline_advantages,
    rloo_advantages,
    zero_variance_mask,
)
from promptr1.agents.registry import ADVANTAGE_ESTIMATORS

EPS = 1e-6


def close(actual: torch.Tensor, expected: list[float], tol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=tol, rtol=tol)


def test_doctests() -> None:
    result = doctest.testmod(adv_mod)
    assert result.attempted > 0 and result.failed == 0


def test_grpo_one_group_known_answer() -> None:
    # rewards [1, 0, 0, 1]: mean 0.5, deviations +-0.5, sum of squares 4 * 0.25 = 1,
    # unbiased variance 1 / 3, std 0.5773503; advantage +-0.5 / (0.5773503 + 1e-6) = +-0.8660239
    a = grpo_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.tensor([0, 0, 0, 0]))
    close(a, [0.8660239, -0.8660239, -0.8660239, 0.8660239], tol=1e-6)


def test_grpo_two_interleaved_groups_with_arbitrary_ids() -> None:
    rewards = torch.tensor([0.0, 2.0, 3.0, 2.0, 6.0, 8.0])
    ids = torch.tensor([5, 9, 5, 9, 5, 9])
    # group 5: [0, 3, 6], mean 3, deviations [-3, 0, 3], ss 18, var 18 / 2 = 9, std 3 -> [-1, 0, 1]
    # group 9: [2, 2, 8], mean 4, deviations [-2, -2, 4], ss 24, var 12, std 3.4641016
    #          -> [-0.5773503, -0.5773503, 1.1547005]
    a = grpo_advantages(rewards, ids)
    close(a, [-1.0, -0.5773503, 0.0, -0.5773503, 1.0, 1.1547005])
    # Dr.GRPO: no division by std -> the raw deviations
    close(drgrpo_advantages(rewards, ids), [-3.0, -2.0, 0.0, -2.0, 3.0, 4.0], tol=0)
    close(grpo_advantages(rewards, ids, scale_by_std=False), [-3.0, -2.0, 0.0, -2.0, 3.0, 4.0], tol=0)


def test_grpo_eps_is_added_to_std() -> None:
    # [0, 2]: mean 1, unbiased std sqrt(2) ; eps = 0.5 -> 1 / (1.4142136 + 0.5) = 0.5224077
    a = grpo_advantages(torch.tensor([0.0, 2.0]), torch.tensor([0, 0]), eps=0.5)
    close(a, [-0.5224077, 0.5224077])


def test_single_member_groups() -> None:
    rewards, ids = torch.tensor([0.7, 1.0, 0.0]), torch.tensor([3, 4, 4])
    # GRPO follows verl: a single-member group has mean 0 and std 1 -> 0.7 / (1 + 1e-6)
    close(grpo_advantages(rewards, ids), [0.7 / (1 + EPS), 0.7071064, -0.7071064])
    close(drgrpo_advantages(rewards, ids), [0.7, 0.5, -0.5])
    # RLOO: no "others" -> 0; pair [1, 0] -> 1 - 0 = 1 and 0 - 1 = -1
    close(rloo_advantages(rewards, ids), [0.0, 1.0, -1.0], tol=0)


def test_rloo_known_answer() -> None:
    # [4, 2, 0, 2]: others' means (2+0+2)/3 = 4/3, (4+0+2)/3 = 2, (4+2+2)/3 = 8/3, 2
    #  -> 4 - 4/3 = 8/3, 0, -8/3, 0
    a = rloo_advantages(torch.tensor([4.0, 2.0, 0.0, 2.0]), torch.tensor([1, 1, 1, 1]))
    close(a, [8 / 3, 0.0, -8 / 3, 0.0])


def test_reinforce_baseline() -> None:
    # batch mean of [1, 0, 2, 5] is 2
    close(reinforce_baseline_advantages(torch.tensor([1.0, 0.0, 2.0, 5.0])), [-1.0, -2.0, 0.0, 3.0], tol=0)
    # group ids are ignored: the batch mean is the baseline
    close(reinforce_baseline_advantages(torch.tensor([1.0, 3.0]), torch.tensor([0, 1])), [-1.0, 1.0], tol=0)
    # an explicit per-sample baseline
    close(
        reinforce_baseline_advantages(torch.tensor([1.0, 3.0]), baseline=torch.tensor([0.5, 4.0])),
        [0.5, -1.0],
        tol=0,
    )


def test_group_stats_matches_torch_std() -> None:
    rewards = torch.tensor([0.3, -1.0, 2.5, 0.0, 0.0, 7.0])
    ids = torch.tensor([0, 0, 0, 1, 1, 2])
    n, mean, std = group_stats(rewards, ids)
    assert n.tolist() == [3, 3, 3, 2, 2, 1]
    ref = torch.tensor([0.3, -1.0, 2.5])
    close(mean[:3], [ref.mean().item()] * 3)
    close(std[:3], [ref.std().item()] * 3)
    close(std[3:], [0.0, 0.0, 0.0], tol=0)


def test_zero_variance_mask() -> None:
    rewards = torch.tensor([1.0, 1.0 + 1e-10, 0.0, 1.1, -1.0, -1.0, -1.0, 0.4])
    ids = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3])
    # group 0 equal within atol, group 1 differs, group 2 all -1, group 3 has one member
    assert zero_variance_mask(rewards, ids).tolist() == [True, True, False, False, True, True, True, True]
    assert zero_variance_mask(torch.tensor([1.0, 1.05]), torch.tensor([0, 0]), atol=0.1).tolist() == [
        True,
        True,
    ]


def test_compute_advantages_by_name_and_masking() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5])
    ids = torch.tensor([0, 0, 1, 1])
    a, keep = compute_advantages(rewards, ids, estimator="rloo")
    close(a, [1.0, -1.0, 0.0, 0.0], tol=0)
    assert keep.tolist() == [True, True, True, True]
    a, keep = compute_advantages(rewards, ids, estimator="grpo", mask_zero_variance=True, eps=0.0)
    # group 0: [1, 0] mean .5 std sqrt(.5) -> +-0.7071068
    close(a, [0.7071068, -0.7071068, 0.0, 0.0])
    assert keep.tolist() == [True, True, False, False]


def test_compute_advantages_unknown_name_and_bad_estimator() -> None:
    with pytest.raises(KeyError, match=r"unknown advantage estimator 'grpoo'\. Did you mean 'grpo'\?"):
        compute_advantages(torch.zeros(2), torch.zeros(2, dtype=torch.long), estimator="grpoo")

    ADVANTAGE_ESTIMATORS.register("_bad_shape", lambda r, g, **kw: r[:1])
    try:
        with pytest.raises(ValueError, match="returned shape"):
            compute_advantages(torch.zeros(3), torch.zeros(3, dtype=torch.long), estimator="_bad_shape")
    finally:
        ADVANTAGE_ESTIMATORS.unregister("_bad_shape")


def test_input_validation_messages() -> None:
    with pytest.raises(ValueError, match=r"1-D tensor .* shape \(N,\)"):
        grpo_advantages(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="same shape as rewards"):
        rloo_advantages(torch.zeros(3), torch.zeros(2, dtype=torch.long))


def test_integer_rewards_and_no_grad() -> None:
    r = torch.tensor([1, 0], dtype=torch.long)
    assert grpo_advantages(r, torch.tensor([0, 0])).dtype == torch.float32
    rg = torch.tensor([1.0, 0.0], requires_grad=True)
    assert not grpo_advantages(rg, torch.tensor([0, 0])).requires_grad


groups = st.lists(
    st.lists(st.floats(-5, 5, allow_nan=False, width=32), min_size=2, max_size=6), min_size=1, max_size=5
)


@settings(max_examples=60, deadline=None)
@given(groups)
@example([[4.7] * 6])  # equal rewards: a float32 oracle's mean is off by an ulp and its "advantage" is -0.31
@example([[-2.9] * 3, [1.0, 2.0]])
def test_grpo_matches_per_group_reference(gs: list[list[float]]) -> None:
    rewards = torch.tensor([x for g in gs for x in g])
    ids = torch.tensor([i for i, g in enumerate(gs) for _ in g])
    a = grpo_advantages(rewards, ids)
    for i, g in enumerate(gs):
        # The oracle in float64 on the float32 rewards: their differences are exact there, so a group of equal
        # rewards has mean exactly its value and advantage exactly 0 (in float32 the textbook formula is not).
        t = rewards[ids == i].double()
        expected = ((t - t.mean()) / (t.std() + EPS)).float()  # torch.std is unbiased by default
        torch.testing.assert_close(a[ids == i], expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(
            rloo_advantages(rewards, ids)[ids == i],
            ((t - t.mean()) * len(g) / (len(g) - 1)).float(),
            atol=1e-4,
            rtol=1e-4,
        )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(-3, 3, allow_nan=False, width=32), st.integers(1, 6)), min_size=1, max_size=6
    )
)
def test_zero_variance_groups_get_zero_advantage(spec: list[tuple[float, int]]) -> None:
    # every group has one repeated reward -> every estimator that uses a group baseline gives 0
    rewards = torch.tensor([r for r, n in spec for _ in range(n)])
    ids = torch.tensor([i for i, (_, n) in enumerate(spec) for _ in range(n)])
    multi = torch.tensor([n > 1 for _, n in spec for _ in range(n)])
    assert torch.all(grpo_advantages(rewards, ids)[multi] == 0)
    assert torch.all(drgrpo_advantages(rewards, ids)[multi] == 0)
    assert torch.all(rloo_advantages(rewards, ids) == 0)
    assert zero_variance_mask(rewards, ids).all()


def test_estimator_registry_has_builtins() -> None:
    assert {"grpo", "drgrpo", "rloo", "reinforce"} <= set(ADVANTAGE_ESTIMATORS.names())
    assert ADVANTAGE_ESTIMATORS.get("grpo") is grpo_advantages
    assert math.isclose(
        ADVANTAGE_ESTIMATORS.get("drgrpo")(torch.tensor([2.0, 0.0]), torch.tensor([0, 0]))[0].item(), 1.0
    )
