"""The name registries: did-you-mean errors, decorator registration, built-ins, and a user-defined algorithm."""

from __future__ import annotations

import doctest
import subprocess
import sys
from collections.abc import Iterator

import promptr1.agents.registry as registry_mod
import pytest
import torch
from promptr1.agents.advantages import compute_advantages
from promptr1.agents.losses import LossConfig, compute_loss, policy_loss
from promptr1.agents.registry import (
    ADVANTAGE_ESTIMATORS,
    ALGORITHMS,
    POLICY_LOSSES,
    AlgoSpec,
    Registry,
    UnknownNameError,
    get_algorithm,
    register_advantage_estimator,
    register_algorithm,
    register_policy_loss,
)


def test_doctests() -> None:
    result = doctest.testmod(registry_mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_registry_register_get_names() -> None:
    reg: Registry[int] = Registry("widget")
    assert reg.register("alpha", 1) == 1

    @reg.register("beta")
    def beta() -> int:
        return 2

    assert reg.get("beta") is beta and reg.get("alpha") == 1
    assert reg.names() == ["alpha", "beta"] and list(reg) == ["alpha", "beta"] and len(reg) == 2
    assert "alpha" in reg and "gamma" not in reg
    with pytest.raises(ValueError, match="already registered; pass overwrite=True"):
        reg.register("alpha", 3)
    reg.register("alpha", 3, overwrite=True)
    assert reg.get("alpha") == 3
    reg.register("alpha", 3)  # registering the very same object again is harmless
    with pytest.raises(TypeError, match="non-empty string"):
        reg.register("", 4)
    assert reg.unregister("alpha") == 3 and reg.names() == ["beta"]


def test_unknown_name_message() -> None:
    with pytest.raises(UnknownNameError) as info:
        ADVANTAGE_ESTIMATORS.get("grpoo")
    # other tests (and user plug-ins) may have registered more names: check the built-ins are listed
    msg = str(info.value)
    assert msg.startswith("unknown advantage estimator 'grpoo'. Did you mean 'grpo'? Expected one of: ")
    assert all(f" {n}," in msg or f" {n}." in msg for n in ("drgrpo", "grpo", "reinforce", "rloo"))
    # it is both a KeyError and a ValueError
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    with pytest.raises(KeyError, match=r"^unknown policy loss 'xyz'\. Expected one of: .*ppo-clip.*reinforce"):
        POLICY_LOSSES.get("xyz")
    with pytest.raises(ValueError, match=r"unknown widget 'a'\. Expected one of: \(none\)\."):
        Registry("widget").get("a")


def test_builtins() -> None:
    assert {"grpo", "drgrpo", "rloo", "reinforce"} <= set(ADVANTAGE_ESTIMATORS.names())
    assert POLICY_LOSSES.get("ppo-clip") is policy_loss
    assert "reinforce" in POLICY_LOSSES
    assert {"grpo", "drgrpo", "rloo", "reinforce", "dapo"} <= set(ALGORITHMS.names())
    dapo = get_algorithm("dapo")
    assert (dapo.estimator, dapo.loss) == ("grpo", "ppo-clip")
    assert dict(dapo.defaults) == {
        "clip_eps": 0.2,
        "clip_eps_high": 0.28,
        "loss_agg": "token-mean",
        "kl_coef": 0.0,
        "mask_zero_variance": True,
    }
    with pytest.raises(TypeError):
        dapo.defaults["kl_coef"] = 1.0  # read-only


def test_register_algorithm_checks() -> None:
    with pytest.raises(TypeError, match="expects an AlgoSpec"):
        register_algorithm("_bad", {"estimator": "grpo"})  # type: ignore[arg-type]
    register_algorithm("_dangling", AlgoSpec(estimator="no-such-estimator"))
    try:
        with pytest.raises(KeyError, match="unknown advantage estimator 'no-such-estimator'"):
            get_algorithm("_dangling")
    finally:
        ALGORITHMS.unregister("_dangling")


@pytest.fixture
def median_algorithm() -> Iterator[None]:
    """The user-extension example from docs/algorithms.md, removed again after the test."""

    @register_advantage_estimator("median-baseline")
    def median_baseline(rewards, group_ids, **kwargs):
        out = torch.zeros_like(rewards)
        for g in group_ids.unique():
            sel = group_ids == g
            out[sel] = rewards[sel] - rewards[sel].median()
        return out

    @register_policy_loss("clipped-reinforce")
    def clipped_reinforce(logp, old_logp, advantages, mask, *, agg, max_adv=1.0, **kwargs):
        from promptr1.agents.losses import aggregate

        adv = advantages.clamp(-max_adv, max_adv).unsqueeze(-1)  # (B, 1)
        loss = aggregate(-adv * logp, mask, agg)
        return loss, {"policy_loss": loss.item()}

    register_algorithm(
        "median-rl",
        AlgoSpec(
            estimator="median-baseline",
            loss="clipped-reinforce",
            defaults={"kl_coef": 0.0, "loss_kwargs": {"max_adv": 0.5}},
        ),
    )
    yield
    ALGORITHMS.unregister("median-rl")
    POLICY_LOSSES.unregister("clipped-reinforce")
    ADVANTAGE_ESTIMATORS.unregister("median-baseline")


def test_user_defined_algorithm_end_to_end(median_algorithm: None) -> None:
    cfg = LossConfig.from_algorithm("median-rl")
    assert (cfg.estimator, cfg.policy_loss, cfg.kl_coef) == ("median-baseline", "clipped-reinforce", 0.0)
    rewards = torch.tensor([0.0, 1.0, 5.0, 2.0, 2.0, 3.0])
    ids = torch.tensor([0, 0, 0, 1, 1, 1])
    adv, keep = compute_advantages(
        rewards, ids, estimator=cfg.estimator, mask_zero_variance=cfg.mask_zero_variance
    )
    # medians 1 and 2 -> [-1, 0, 4, 0, 0, 1]
    assert adv.tolist() == [-1.0, 0.0, 4.0, 0.0, 0.0, 1.0] and keep.all()
    logp = torch.full((6, 2), -2.0, requires_grad=True)
    loss, stats = compute_loss({"logp": logp, "advantages": adv, "mask": torch.ones(6, 2)}, cfg)
    # advantages clamped to +-0.5: [-.5, 0, .5, 0, 0, .5]; per-token -A * (-2) = 2A; token-mean = 2 * 0.5 / 6
    assert loss.item() == pytest.approx(2 * 0.5 / 6)
    assert stats["policy_loss"] == pytest.approx(2 * 0.5 / 6)


@pytest.mark.parametrize(
    "first",
    ["promptr1.agents.registry", "promptr1.agents.advantages", "promptr1.agents.losses"],
)
def test_builtins_load_whatever_is_imported_first(first: str) -> None:
    code = (
        f"import importlib; importlib.import_module({first!r});"
        "from promptr1.agents.registry import ADVANTAGE_ESTIMATORS, POLICY_LOSSES, ALGORITHMS;"
        "print(ADVANTAGE_ESTIMATORS.names(), POLICY_LOSSES.names(), ALGORITHMS.names())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        "['drgrpo', 'grpo', 'reinforce', 'rloo'] ['ppo-clip', 'reinforce'] "
        "['dapo', 'drgrpo', 'grpo', 'reinforce', 'rloo']"
    )
