"""The examples are tests: SB3 PPO learns strategy choice, SB3 logs to TensorBoard, a custom algorithm plugs in."""

from __future__ import annotations

import math
import pathlib
import subprocess
import sys

import pytest
import torch
from conftest import load_script

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str):
    return load_script(f"examples/{name}.py")


def scalar_tags(folder: pathlib.Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for f in folder.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(f))
        acc.Reload()
        tags.update(acc.Tags()["scalars"])
    return tags


# ------------------------------------------------------------------ SB3 on the strategy wrapper
def test_sb3_ppo_beats_random_and_the_best_fixed_strategy_chosen_on_other_episodes(tmp_path, capsys):
    ex = load_example("sb3_strategy_ppo")
    res = ex.main(["--steps", "16000", "--episodes", "200", "--logdir", str(tmp_path)])
    print(capsys.readouterr().out)  # the table, visible with pytest -s
    assert res["episodes"] == 200 and not res["observe_plan"]
    # the best fixed strategy is chosen on training-split episodes, then scored on the held-out ones
    assert res["select_episodes"] == 200 and res["best_fixed_label"] == "decompose x3 then final"
    margin, low, high = res["margin"][0]  # PPO - best fixed, paired over the same 200 episodes
    assert margin > 0.05 and low > 0.0, res["margin"]
    assert res["trained"] > res["random"] + 0.3, res
    assert res["best_fixed"] > res["random"], res  # the baseline is a real one
    assert res["scripted"] == 1.0 and res["trained"] < res["scripted"]  # the rule that reads the plan's state wins
    assert "rollout/ep_rew_mean" in scalar_tags(tmp_path)
    assert "| best fixed strategy, chosen on 200 training-split episodes" in ex.format_table(res)


def test_fixed_policy_baselines_by_hand():
    ex = load_example("sb3_strategy_ppo")
    env = ex.make_env("test")
    names = env.strategy_names
    # committing at once never calls the expert: -0.4 on every task (format 0.6, not capped)
    assert ex.evaluate(ex.fixed_policy(names.index("final"), 0), env, 20) == pytest.approx(-0.4)
    # five prompts, no answer: format capped, answer 0 -> 0.0
    assert ex.evaluate(ex.fixed_policy(names.index("direct"), 5), env, 20) == pytest.approx(0.0)


# ------------------------------------------------------------------ SB3 on the token wrapper
def test_sb3_token_ppo_logs_to_tensorboard(tmp_path):
    ex = load_example("sb3_token_ppo")
    model = ex.main(["--steps", "256", "--logdir", str(tmp_path)])
    assert model.num_timesteps >= 256
    run_dirs = [p for p in tmp_path.iterdir() if p.name.startswith("token-ppo")]
    assert run_dirs and any(run_dirs[0].glob("events.out.tfevents.*"))
    assert {"train/policy_gradient_loss", "train/entropy_loss", "time/fps"} <= scalar_tags(tmp_path)


def test_examples_log_beside_the_trainer_runs_by_default():
    from promptr1.agents.config import GRPOConfig

    trainer_root = pathlib.PurePosixPath(GRPOConfig().output_dir).parts[0]
    for name in ("sb3_token_ppo", "sb3_strategy_ppo"):
        logdir = load_example(name).DEFAULT_LOGDIR
        assert pathlib.PurePosixPath(logdir).parts[0] == trainer_root == "runs"


# ------------------------------------------------------------------ the custom algorithm
def test_custom_algorithm_is_short_and_registered():
    assert len((EXAMPLES / "custom_reinforce.py").read_text().splitlines()) <= 100
    ex = load_example("custom_reinforce")
    from promptr1.agents.registry import ADVANTAGE_ESTIMATORS, ALGORITHMS, POLICY_LOSSES, get_algorithm

    assert ADVANTAGE_ESTIMATORS.get("loo-whiten") is ex.loo_whiten
    assert POLICY_LOSSES.get("reinforce-tis") is ex.reinforce_tis
    spec = get_algorithm("reinforce-loo")
    assert (spec.estimator, spec.loss, dict(spec.defaults)) == ("loo-whiten", "reinforce-tis", {"kl_coef": 0.0})
    load_example("custom_reinforce")  # importing twice (a second plug-in load) is fine
    assert "reinforce-loo" in ALGORITHMS


def test_custom_estimator_known_answer():
    ex = load_example("custom_reinforce")
    adv = ex.loo_whiten(torch.tensor([1.0, 0.0, 1.0, 1.0, 0.5]), torch.tensor([0, 0, 1, 1, 2]))
    # leave-one-out: [1-0, 0-1, 1-1, 1-1, lone -> 0] = [1, -1, 0, 0, 0]; whiten: std = sqrt(2/4) (unbiased)
    s = math.sqrt(2 / 4)
    assert adv.tolist() == pytest.approx([1 / s, -1 / s, 0.0, 0.0, 0.0], abs=1e-5)
    three = ex.loo_whiten(torch.tensor([3.0, 0.0, 0.0]), torch.tensor([0, 0, 0]))
    # [3 - 0, 0 - 1.5, 0 - 1.5] = [3, -1.5, -1.5]; mean 0, std = sqrt((9 + 2.25 + 2.25) / 2)
    s3 = math.sqrt(13.5 / 2)
    assert three.tolist() == pytest.approx([3 / s3, -1.5 / s3, -1.5 / s3], abs=1e-5)


def test_custom_loss_known_answer_and_truncated_weights():
    ex = load_example("custom_reinforce")
    logp = torch.log(torch.tensor([[0.5, 0.25]])).requires_grad_()
    loss, stats = ex.reinforce_tis(logp, logp.detach(), torch.tensor([2.0]), torch.ones(1, 2))
    assert loss.item() == pytest.approx(3 * math.log(2), abs=1e-5)  # -2 (log .5 + log .25) / 2
    assert stats["is_capped_frac"] == 0.0
    loss.backward()
    assert logp.grad[0].tolist() == pytest.approx([-1.0, -1.0])  # -A * w / T
    # the sampling policy gave these tokens 1/8 of today's probability: ratio 8, capped at 2
    logp2 = torch.log(torch.tensor([[0.5, 0.25]])).requires_grad_()
    loss2, stats2 = ex.reinforce_tis(logp2, logp2.detach() - math.log(8), torch.tensor([2.0]), torch.ones(1, 2))
    assert loss2.item() == pytest.approx(2 * 3 * math.log(2), abs=1e-5) and stats2["is_capped_frac"] == 1.0
    # a masked-out token contributes nothing
    loss3, _ = ex.reinforce_tis(logp.detach(), logp.detach(), torch.tensor([2.0]), torch.tensor([[1.0, 0.0]]))
    assert loss3.item() == pytest.approx(2 * math.log(2), abs=1e-5)


def test_custom_algorithm_through_the_trainers_loss_config():
    load_example("custom_reinforce")
    from promptr1.agents.advantages import compute_advantages
    from promptr1.agents.losses import LossConfig, compute_loss

    cfg = LossConfig.from_algorithm("reinforce-loo")
    assert cfg.estimator == "loo-whiten" and cfg.policy_loss == "reinforce-tis" and cfg.kl_coef == 0.0
    adv, keep = compute_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), estimator=cfg.estimator)
    assert adv.tolist() == pytest.approx([2 ** -0.5, -(2 ** -0.5)], abs=1e-5)
    logp = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    loss, stats = compute_loss({"logp": logp, "mask": torch.ones(2, 2), "advantages": adv}, cfg)
    assert "is_capped_frac" in stats and loss.item() == pytest.approx(0.0, abs=1e-6)  # advantages cancel


@pytest.mark.slow
def test_custom_algorithm_trains_end_to_end(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, str(EXAMPLES / "custom_reinforce.py"), "--model", "tiny", "--steps", "1", "--cpu", "true",
           "--batch-questions", "2", "--group-size", "2", "--max-new-tokens", "16", "--max-seq-len", "512",
           "--output-dir", str(out), "--progress", "false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "algo 'reinforce-loo'" in proc.stdout
    assert "losses/is_capped_frac" in scalar_tags(out / "tensorboard")  # our loss ran inside the trainer
