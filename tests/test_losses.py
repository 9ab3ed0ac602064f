"""Known-answer tests for the losses (expected values worked out by hand in the comments)."""

from __future__ import annotations

import doctest
import math

import promptr1.agents.losses as losses_mod
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from promptr1.agents.losses import (
    AGG_MODES,
    LossConfig,
    aggregate,
    compute_loss,
    entropy_from_logits,
    kl_in_reward,
    kl_penalty,
    masked_mean,
    policy_loss,
    reinforce_loss,
    token_logprobs,
)
from promptr1.agents.registry import POLICY_LOSSES

LN2 = math.log(2.0)


def test_doctests() -> None:
    result = doctest.testmod(losses_mod)
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------- masked mean and aggregation


def test_masked_mean_known_answer_and_empty_mask() -> None:
    x = torch.tensor([[1.0, 2.0, float("nan")], [4.0, float("inf"), 6.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 1]])
    # (1 + 2 + 4 + 6) / 4 = 3.25; nan/inf at masked positions are ignored
    assert masked_mean(x, m).item() == pytest.approx(3.25)
    assert masked_mean(x, m, dim=-1).tolist() == pytest.approx([1.5, 5.0])
    # nothing in the mask: 0, and a zero (not nan) gradient
    y = torch.ones(2, 3, requires_grad=True)
    out = masked_mean(y, torch.zeros(2, 3))
    out.backward()
    assert out.item() == 0.0
    assert torch.equal(y.grad, torch.zeros(2, 3))


LOSS_MAT = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [9.0, 10.0, 11.0, 12.0]])
RAGGED = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("token-mean", 11 / 4),  # (1 + 2 + 3 + 5) / 4 tokens
        ("seq-mean-token-mean", 3.5),  # row means 2 and 5 (the empty row is not a sequence) -> 3.5
        ("seq-mean-token-sum", 5.5),  # row sums 6 and 5 -> 5.5
        ("seq-mean-token-sum-norm", 1.375),  # 6 / 4 and 5 / 4 (T = 4) -> 1.375
    ],
)
def test_aggregate_modes_on_ragged_mask(mode: str, expected: float) -> None:
    assert aggregate(LOSS_MAT, RAGGED, mode).item() == pytest.approx(expected)


def test_aggregate_norm_length_and_errors() -> None:
    # 6 / 10 and 5 / 10 -> 0.55
    assert aggregate(LOSS_MAT, RAGGED, "seq-mean-token-sum-norm", norm_length=10).item() == pytest.approx(
        0.55
    )
    with pytest.raises(
        ValueError, match=r"unknown loss aggregation mode 'token_mean'\. Did you mean 'token-mean'\?"
    ):
        aggregate(LOSS_MAT, RAGGED, "token_mean")
    with pytest.raises(ValueError, match=r"same shape \(B, T\)"):
        aggregate(LOSS_MAT, RAGGED[:, :2], "token-mean")
    assert set(AGG_MODES) == {
        "token-mean",
        "seq-mean-token-mean",
        "seq-mean-token-sum",
        "seq-mean-token-sum-norm",
    }


# ---------------------------------------------------------------- the clipped policy loss


def one_token(ratio: float, adv: float, **kw) -> tuple[float, float, dict]:
    """Loss and d loss / d logp for a single token with the given ratio and advantage."""
    logp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    loss, stats = policy_loss(logp, torch.zeros(1, 1), torch.tensor([adv]), torch.ones(1, 1), **kw)
    loss.backward()
    return loss.item(), logp.grad.item(), stats


@pytest.mark.parametrize(
    "ratio, adv, loss, grad, clipped",
    [
        # A > 0: loss = max(-A r, -A clip(r, 0.8, 1.2))
        (0.5, 1.0, -0.5, -0.5, 0.0),  # max(-0.5, -0.8) = -0.5: unclipped, d/dlogp (-r) = -r
        (1.1, 1.0, -1.1, -1.1, 0.0),  # inside the trust region
        (1.5, 1.0, -1.2, 0.0, 1.0),  # max(-1.5, -1.2) = -1.2: clipped, no gradient
        # A < 0: loss = max(r, clip(r, 0.8, 1.2)) for A = -1
        (0.5, -1.0, 0.8, 0.0, 1.0),  # max(0.5, 0.8) = 0.8: clipped
        (1.5, -1.0, 1.5, 1.5, 0.0),  # max(1.5, 1.2) = 1.5: unclipped (plain PPO keeps the big loss)
        (1.0, 2.0, -2.0, -2.0, 0.0),  # ratio 1: loss -A, gradient -A
    ],
)
def test_ppo_clip_known_answers(ratio: float, adv: float, loss: float, grad: float, clipped: float) -> None:
    got_loss, got_grad, stats = one_token(ratio, adv, clip_eps=0.2)
    assert got_loss == pytest.approx(loss, abs=1e-6)
    assert got_grad == pytest.approx(grad, abs=1e-6)
    assert stats["clip_frac"] == clipped
    assert stats["ratio_mean"] == pytest.approx(ratio)


@pytest.mark.parametrize(
    "ratio, adv, loss, grad, dual",
    [
        (5.0, -1.0, 3.0, 0.0, 1.0),  # max(5, 1.2) = 5 > c = 3: capped at -A c = 3, no gradient
        (2.0, -1.0, 2.0, 2.0, 0.0),  # max(2, 1.2) = 2 < 3: untouched
        (5.0, 1.0, -1.2, 0.0, 0.0),  # dual clip applies to negative advantages only
        (5.0, -2.0, 6.0, 0.0, 1.0),  # max(10, 2.4) = 10 > -A c = 6
    ],
)
def test_dual_clip(ratio: float, adv: float, loss: float, grad: float, dual: float) -> None:
    got_loss, got_grad, stats = one_token(ratio, adv, clip_eps=0.2, dual_clip_c=3.0)
    assert got_loss == pytest.approx(loss, abs=1e-5)
    assert got_grad == pytest.approx(grad, abs=1e-5)
    assert stats["dual_clip_frac"] == dual
    # without the dual clip the first case is the plain PPO value 5
    assert one_token(5.0, -1.0)[0] == pytest.approx(5.0)


def test_clip_higher() -> None:
    # symmetric 0.2: ratio 1.25 with A > 0 is clipped to 1.2; clip-higher 0.28 lets it through
    assert one_token(1.25, 1.0, clip_eps=0.2)[0] == pytest.approx(-1.2)
    assert one_token(1.25, 1.0, clip_eps=0.2, clip_eps_high=0.28)[0] == pytest.approx(-1.25)
    assert one_token(1.5, 1.0, clip_eps=0.2, clip_eps_high=0.28)[0] == pytest.approx(-1.28)
    # the lower bound is still 1 - clip_eps: A < 0, ratio 0.7 -> max(0.7, 0.8) = 0.8
    assert one_token(0.7, -1.0, clip_eps=0.2, clip_eps_high=0.28)[0] == pytest.approx(0.8)


def test_policy_loss_batch_stats_and_gradient() -> None:
    # ratios [[1, 1, (pad)], [1.5, 2, (pad)]], A = [1, -2]; token-mean over 4 tokens
    logp = torch.log(torch.tensor([[1.0, 1.0, 1.0], [1.5, 2.0, 1.0]])).requires_grad_()
    old = torch.zeros(2, 3)
    old[:, 2] = float("nan")  # garbage at a masked position must not leak into anything
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    loss, stats = policy_loss(logp, old, torch.tensor([1.0, -2.0]), mask)
    # per token: -1, -1, max(2*1.5, 2*1.2) = 3, max(2*2, 2*1.2) = 4 -> (−1 −1 + 3 + 4) / 4 = 1.25
    assert loss.item() == pytest.approx(1.25)
    assert stats["clip_frac"] == 0.0  # the A < 0 tokens are above 1 + eps: the unclipped term is larger
    assert stats["ratio_mean"] == pytest.approx((1 + 1 + 1.5 + 2) / 4)
    assert stats["ratio_min"] == pytest.approx(1.0) and stats["ratio_max"] == pytest.approx(2.0)
    # approx_kl (k3 of old vs new): mean of (r - 1) - log r = [0, 0, 0.5 - ln 1.5, 1 - ln 2] / 4
    assert stats["approx_kl"] == pytest.approx((0.5 - math.log(1.5) + 1 - LN2) / 4)
    assert stats["approx_kl_k1"] == pytest.approx(-(math.log(1.5) + LN2) / 4)
    loss.backward()
    # d/dlogp of -A r / 4 = -A r / 4: [-1/4, -1/4, 0], [2 * 1.5 / 4, 2 * 2 / 4, 0]
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.25, -0.25, 0.0], [0.75, 1.0, 0.0]]))


def test_gradient_only_through_masked_in_tokens() -> None:
    torch.manual_seed(0)
    logp = (torch.randn(4, 7) * 0.1 - 1.0).requires_grad_()
    old = logp.detach() + torch.randn(4, 7) * 0.05
    mask = (torch.rand(4, 7) > 0.4).long()
    mask[0] = 0  # a whole sequence out
    adv = torch.randn(4)
    for agg in AGG_MODES:
        for fn in (policy_loss, reinforce_loss):
            logp.grad = None
            loss, _ = fn(logp, old, adv, mask, agg=agg)
            loss.backward()
            assert torch.all(logp.grad[mask == 0] == 0), (fn.__name__, agg)
            assert logp.grad[mask == 1].abs().sum() > 0, (fn.__name__, agg)


def test_reinforce_gradient_equals_ppo_on_policy() -> None:
    torch.manual_seed(1)
    logp = torch.randn(3, 5).requires_grad_()
    mask = torch.ones(3, 5)
    adv = torch.tensor([1.0, -0.5, 2.0])
    reinforce_loss(logp, None, adv, mask)[0].backward()
    g_reinforce = logp.grad.clone()
    logp.grad = None
    policy_loss(logp, logp.detach(), adv, mask)[0].backward()
    torch.testing.assert_close(logp.grad, g_reinforce)


def test_policy_loss_argument_errors() -> None:
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="clip_eps"):
        policy_loss(x, x, torch.zeros(1), torch.ones(1, 2), clip_eps=1.5)
    with pytest.raises(ValueError, match="dual_clip_c must be > 1"):
        policy_loss(x, x, torch.zeros(1), torch.ones(1, 2), dual_clip_c=0.5)
    with pytest.raises(ValueError, match=r"advantages must have shape \(B,\)"):
        policy_loss(x, x, torch.zeros(3), torch.ones(1, 2))
    with pytest.raises(ValueError, match="old_logp"):
        policy_loss(x, torch.zeros(2, 2), torch.zeros(1), torch.ones(1, 2))


def test_token_level_advantages() -> None:
    # (B, T) advantages: ratio 1 -> per-token loss -A; token-mean of [-1, 3] over the mask = 1
    loss, _ = policy_loss(
        torch.zeros(1, 3), torch.zeros(1, 3), torch.tensor([[1.0, -3.0, 100.0]]), torch.tensor([[1, 1, 0]])
    )
    assert loss.item() == pytest.approx(1.0)


# ---------------------------------------------------------------- KL


def test_kl_estimators_known_points() -> None:
    lp, ref = torch.log(torch.tensor([[0.5, 0.25, 0.3]])), torch.log(torch.tensor([[0.25, 0.5, 0.3]]))
    # d = ref - logp = [-ln 2, ln 2, 0]
    torch.testing.assert_close(kl_penalty(lp, ref, "k1"), torch.tensor([[LN2, -LN2, 0.0]]))
    torch.testing.assert_close(kl_penalty(lp, ref, "k2"), torch.tensor([[LN2**2 / 2, LN2**2 / 2, 0.0]]))
    # k3 = e^d - d - 1: 0.5 + ln 2 - 1 = 0.1931472 ; 2 - ln 2 - 1 = 0.3068528 ; 0
    torch.testing.assert_close(kl_penalty(lp, ref, "k3"), torch.tensor([[0.5 + LN2 - 1, 1 - LN2, 0.0]]))
    torch.testing.assert_close(kl_penalty(lp, ref, "low_var_kl"), kl_penalty(lp, ref, "k3"))
    torch.testing.assert_close(kl_penalty(lp, ref, "abs"), torch.tensor([[LN2, LN2, 0.0]]))
    with pytest.raises(ValueError, match="Did you mean 'k3'"):
        kl_penalty(lp, ref, "k33")


def test_k3_is_clamped_like_verl() -> None:
    # d = 30 -> clamped to 20 -> e^20 - 21 is huge -> clamped to 10 ; d = -30 -> e^-20 + 19 -> 10
    out = kl_penalty(torch.tensor([[-30.0, 0.0]]), torch.tensor([[0.0, -30.0]]), "k3")
    assert out.tolist() == [[10.0, 10.0]]


def test_k1_and_k3_are_unbiased_estimates_of_kl() -> None:
    # exact expectation over the sampling distribution p: sum_x p(x) k(x) = KL(p || q)
    p, q = torch.tensor([0.5, 0.25, 0.25]), torch.tensor([0.25, 0.25, 0.5])
    kl_true = 0.5 * math.log(2) + 0.25 * math.log(0.5)  # 0.1732868
    for kind in ("k1", "k3"):
        k = kl_penalty(p.log().unsqueeze(0), q.log().unsqueeze(0), kind)[0]
        assert (p * k).sum().item() == pytest.approx(kl_true, rel=1e-5)


def test_kl_in_reward() -> None:
    kl = torch.tensor([[0.5, 0.25, 9.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    # outcome rewards: 1 - 0.1 * 0.75 = 0.925 ; 0 - 0.1 * 3 = -0.3
    torch.testing.assert_close(
        kl_in_reward(torch.tensor([1.0, 0.0]), kl, 0.1, mask), torch.tensor([0.925, -0.3])
    )
    # token-level rewards
    r = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(
        kl_in_reward(r, kl, 0.1, mask), torch.tensor([[-0.05, -0.025, 1.0], [-0.1, -0.1, -0.1]])
    )
    assert not kl_in_reward(torch.tensor([1.0, 0.0]), kl.requires_grad_(), 0.1).requires_grad


# ---------------------------------------------------------------- log-probs and entropy


def test_token_logprobs_matches_cross_entropy() -> None:
    torch.manual_seed(0)
    logits = (torch.randn(3, 5, 11) * 3).requires_grad_()
    tokens = torch.randint(0, 11, (3, 5))
    ref = -F.cross_entropy(logits.reshape(-1, 11), tokens.reshape(-1), reduction="none").reshape(3, 5)
    got = token_logprobs(logits, tokens)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(token_logprobs(logits, tokens, chunk_size=4), ref)
    # same gradient as the reference
    (g_ref,) = torch.autograd.grad(ref.sum(), logits)
    (g_got,) = torch.autograd.grad(token_logprobs(logits, tokens, chunk_size=2).sum(), logits)
    torch.testing.assert_close(g_got, g_ref)
    # temperature divides the logits
    ref_t = -F.cross_entropy((logits / 0.7).reshape(-1, 11), tokens.reshape(-1), reduction="none").reshape(
        3, 5
    )
    torch.testing.assert_close(token_logprobs(logits, tokens, temperature=0.7), ref_t)


def test_token_logprobs_low_precision_and_errors() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 50) * 4
    tokens = torch.randint(0, 50, (2, 3))
    got = token_logprobs(logits.bfloat16(), tokens)
    assert got.dtype == torch.float32
    ref = torch.log_softmax(logits.bfloat16().float(), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(got, ref)
    with pytest.raises(ValueError, match=r"logits\[:, :-1\] and tokens\[:, 1:\]"):
        token_logprobs(logits, tokens[:, 1:])
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(logits, tokens, temperature=0.0)


def test_entropy_known_answers() -> None:
    # uniform over V: log V, whatever the constant logit
    torch.testing.assert_close(
        entropy_from_logits(torch.full((2, 3, 7), 5.0)), torch.full((2, 3), math.log(7))
    )
    # one certain token (huge logit gap): entropy 0, and no nan from the large values
    z = torch.tensor([[[1e4, 0.0, 0.0]]])
    assert entropy_from_logits(z).item() == pytest.approx(0.0, abs=1e-6)
    # two equal logits and one at -inf: log 2
    z = torch.tensor([[[0.0, 0.0, float("-inf")]]])
    assert entropy_from_logits(z).item() == pytest.approx(LN2)


def test_entropy_matches_categorical_reference() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 13) * 2
    ref = torch.distributions.Categorical(logits=logits).entropy()
    torch.testing.assert_close(entropy_from_logits(logits), ref)
    torch.testing.assert_close(entropy_from_logits(logits, chunk_size=5), ref)
    ref_t = torch.distributions.Categorical(logits=logits / 2.0).entropy()
    torch.testing.assert_close(entropy_from_logits(logits, temperature=2.0), ref_t)


# ---------------------------------------------------------------- LossConfig and compute_loss


def test_loss_config_defaults_cite_the_reference() -> None:
    cfg = LossConfig()
    assert (cfg.estimator, cfg.policy_loss, cfg.clip_eps, cfg.clip_eps_high, cfg.loss_agg) == (
        "grpo",
        "ppo-clip",
        0.2,
        None,
        "token-mean",
    )
    assert (cfg.kl_coef, cfg.kl_estimator, cfg.adv_eps, cfg.entropy_coef) == (0.001, "k3", 1e-6, 0.0)
    assert LossConfig.from_algorithm("grpo") == dataclasses.replace(cfg, dual_clip_c=3.0)  # ref: dual clip 3
    assert cfg.estimator_call_kwargs() == {"eps": 1e-6}


def test_loss_config_from_algorithm() -> None:
    dapo = LossConfig.from_algorithm("dapo")
    assert (
        dapo.algo,
        dapo.estimator,
        dapo.clip_eps,
        dapo.clip_eps_high,
        dapo.kl_coef,
        dapo.mask_zero_variance,
    ) == ("dapo", "grpo", 0.2, 0.28, 0.0, True)
    dr = LossConfig.from_algorithm("drgrpo")
    assert (dr.estimator, dr.loss_agg) == ("drgrpo", "seq-mean-token-sum-norm")
    assert LossConfig.from_algorithm("reinforce").policy_loss == "reinforce"
    assert LossConfig.from_algorithm("rloo").estimator == "rloo"
    # explicit settings win over the algorithm's
    assert LossConfig.from_algorithm("dapo", kl_coef=0.01).kl_coef == 0.01
    with pytest.raises(
        ValueError, match=r"unknown LossConfig field \(in overrides\) 'clip_hihg'\. Did you mean 'clip_eps_high'\?"
    ):
        LossConfig.from_algorithm("grpo", clip_hihg=0.3)
    with pytest.raises(KeyError, match="Did you mean 'dapo'"):
        LossConfig.from_algorithm("dapoo")


def test_loss_config_validation() -> None:
    with pytest.raises(ValueError, match="Did you mean 'seq-mean-token-mean'"):
        LossConfig(loss_agg="seq-mean-token-maen")
    with pytest.raises(ValueError, match="Did you mean 'k3'"):
        LossConfig(kl_estimator="k33")
    with pytest.raises(ValueError, match="kl_coef"):
        LossConfig(kl_coef=-1.0)
    with pytest.raises(ValueError, match="dual_clip_c"):
        LossConfig(dual_clip_c=1.0)


def test_compute_loss_combines_terms_known_answer() -> None:
    logp = torch.log(torch.tensor([[0.5, 0.25]])).requires_grad_()
    entropy = torch.tensor([[1.0, 3.0]], requires_grad=True)
    batch = {
        "logp": logp,
        "old_logp": logp.detach(),
        "ref_logp": torch.log(torch.tensor([[0.25, 0.25]])),
        "advantages": torch.tensor([1.0]),
        "mask": torch.ones(1, 2),
        "entropy": entropy,
    }
    cfg = LossConfig(entropy_coef=0.01)
    loss, stats = compute_loss(batch, cfg)
    # policy: ratio 1, A = 1 -> -1 per token -> -1
    # k3 per token: d = ref - logp = [ln(.25 / .5), 0] = [-ln 2, 0] -> e^d - d - 1 = [0.5 + ln 2 - 1, 0]
    #   = [0.1931472, 0] -> token-mean 0.0965736
    # entropy: token-mean of [1, 3] = 2 -> bonus -0.01 * 2
    expected = -1.0 + 0.001 * (0.5 + LN2 - 1) / 2 - 0.01 * 2
    assert loss.item() == pytest.approx(expected, abs=1e-7)
    assert stats["policy_loss"] == pytest.approx(-1.0)
    assert stats["kl"] == pytest.approx((0.5 + LN2 - 1) / 2)
    assert stats["entropy"] == pytest.approx(2.0)
    assert stats["tokens"] == 2.0 and stats["loss"] == pytest.approx(expected, abs=1e-7)
    loss.backward()
    torch.testing.assert_close(entropy.grad, torch.tensor([[-0.005, -0.005]]))


def test_compute_loss_requires_ref_logp_for_kl() -> None:
    batch = {"logp": torch.zeros(1, 2), "advantages": torch.zeros(1), "mask": torch.ones(1, 2)}
    with pytest.raises(KeyError, match="ref_logp"):
        compute_loss(batch, LossConfig())
    # KL in the reward or switched off: no reference needed
    compute_loss(batch, LossConfig(kl_in_reward=True))
    _, stats = compute_loss(batch, LossConfig(kl_coef=0.0))
    assert "kl" not in stats
    with pytest.raises(KeyError, match="entropy"):
        compute_loss(batch, LossConfig(kl_coef=0.0, entropy_coef=0.1))
    with pytest.raises(KeyError, match=r"batch\['advantages'\]"):
        compute_loss({"logp": torch.zeros(1, 2), "mask": torch.ones(1, 2)})


def test_sample_mask_drops_whole_sequences() -> None:
    torch.manual_seed(0)
    logp = torch.randn(3, 4)
    old = logp + 0.1 * torch.randn(3, 4)
    ref = logp + 0.1 * torch.randn(3, 4)
    adv = torch.tensor([1.0, -1.0, 0.5])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    keep = torch.tensor([True, False, True])
    for agg in AGG_MODES:
        cfg = LossConfig(loss_agg=agg)
        full, _ = compute_loss(
            {
                "logp": logp,
                "old_logp": old,
                "ref_logp": ref,
                "advantages": adv,
                "mask": mask,
                "sample_mask": keep,
            },
            cfg,
        )
        kept, _ = compute_loss(
            {
                "logp": logp[keep],
                "old_logp": old[keep],
                "ref_logp": ref[keep],
                "advantages": adv[keep],
                "mask": mask[keep],
            },
            cfg,
        )
        torch.testing.assert_close(full, kept)


def test_compute_loss_uses_a_registered_policy_loss() -> None:
    seen = {}

    def scaled(logp, old_logp, advantages, mask, *, agg, scale=1.0, **kwargs):
        seen.update(kwargs, agg=agg, scale=scale)
        return scale * aggregate(-advantages.unsqueeze(-1) * logp, mask, agg), {"policy_loss": 0.0}

    POLICY_LOSSES.register("_scaled", scaled)
    try:
        cfg = LossConfig(policy_loss="_scaled", kl_coef=0.0, loss_kwargs={"scale": 3.0})
        loss, _ = compute_loss(
            {"logp": torch.full((1, 2), -1.0), "advantages": torch.ones(1), "mask": torch.ones(1, 2)}, cfg
        )
        assert loss.item() == pytest.approx(3.0)  # 3 * mean(-1 * -1)
        assert seen["scale"] == 3.0 and seen["clip_eps"] == 0.2 and seen["agg"] == "token-mean"
    finally:
        POLICY_LOSSES.unregister("_scaled")
