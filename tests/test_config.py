"""Config dataclasses: YAML + --key value overrides, typed, with "did you mean" for bad keys."""

from __future__ import annotations

import dataclasses

import pytest

from promptr1.agents.config import GRPOConfig, SFTConfig
from promptr1.config import ConfigError, RunSettings, bundled_config, config_help, load_config


def test_defaults_cite_reference_values():
    cfg = GRPOConfig()
    loss = cfg.loss_config()
    assert loss.clip_eps == 0.2 and loss.kl_coef == 0.001 and loss.kl_estimator == "k3"
    assert cfg.temperature == 1.0 and cfg.max_turns == 5 and cfg.max_response_chars == 2048
    docs = config_help(GRPOConfig)
    assert "(ref: 5)" in docs and "(ref: 2048)" in docs


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("steps: 7\nlr: 3.0e-6\ngroup_size: 8\ncpu: true\n")
    cfg = load_config(GRPOConfig, f, ["--steps", "9", "--algo=rloo", "--deterministic"])
    assert (cfg.steps, cfg.lr, cfg.group_size, cfg.cpu, cfg.algo, cfg.deterministic) == (9, 3e-6, 8, True, "rloo", True)


def test_dashes_and_underscores_both_work():
    assert load_config(GRPOConfig, None, ["--batch-questions", "3"]).batch_questions == 3
    assert load_config(GRPOConfig, None, ["--batch_questions", "5"]).batch_questions == 5


def test_unknown_key_lists_close_match():
    with pytest.raises(ConfigError, match="Did you mean '--group-size'"):
        load_config(GRPOConfig, None, ["--group-sise", "4"])


def test_unknown_yaml_key(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config(GRPOConfig, f)


@pytest.mark.parametrize("argv, msg", [
    (["--steps", "two"], "expects an integer"),
    (["--steps", "2.5"], "expects an integer"),
    (["--lr", "fast"], "expects a number"),
    (["--cpu", "maybe"], "true or false"),
    (["--steps"], "needs a value"),
    (["steps", "3"], "expected an option"),
])
def test_bad_values(argv, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(GRPOConfig, None, argv)


def test_help_lists_every_option_with_docs():
    text = config_help(GRPOConfig)
    for f in dataclasses.fields(GRPOConfig):
        assert f"--{f.name.replace('_', '-')} " in text
    assert "greedy" in text  # the attribute docstring of a RunSettings field is shown
    assert "(default: the algorithm's)" in text  # settings left to --algo say so


def test_bundled_quickstart_config_parses():
    path = bundled_config("quickstart")
    assert path is not None, "promptr1/configs/quickstart.yaml must ship with the package"
    cfg = load_config(GRPOConfig, path)
    assert cfg.model == "smollm2" and cfg.env_llm == "sim" and cfg.eval_episodes >= 64


def test_shared_settings_are_declared_once():
    """Every setting of RunSettings keeps its name and type in each command's config; no command re-declares
    one under another name (the old clip_low/kl_kind/agg/agent_max_new_tokens pairs)."""
    shared = {f.name: f.type for f in dataclasses.fields(RunSettings)}
    for cls in (GRPOConfig, SFTConfig):
        own = {f.name: f.type for f in dataclasses.fields(cls)}
        assert all(own[name] == tp for name, tp in shared.items())
    names = {f.name for f in dataclasses.fields(GRPOConfig)}
    for old in ("clip_low", "clip_high", "kl_kind", "agg", "agent_max_new_tokens", "env_concurrency"):
        assert old not in names


def test_explicit_value_beats_the_algorithm_default():
    """--algo dapo --kl-coef 0.001: the user's KL stays (it used to be dropped because it equals grpo's)."""
    cfg = load_config(GRPOConfig, None, ["--algo", "dapo", "--kl-coef", "0.001"])
    loss = cfg.loss_config()
    assert loss.kl_coef == 0.001 and loss.clip_eps_high == 0.28 and loss.mask_zero_variance
    assert load_config(GRPOConfig, None, ["--algo", "dapo"]).loss_config().kl_coef == 0.0


def test_clip_eps_high_zero_undoes_clip_higher():
    loss = load_config(GRPOConfig, None, ["--algo", "dapo", "--clip-eps-high", "0"]).loss_config()
    assert loss.clip_eps_high is None and loss.clip_eps == 0.2
    assert load_config(GRPOConfig, None, ["--clip-eps-high", "0.3"]).loss_config().clip_eps_high == 0.3


def test_list_settings_from_argv_and_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("tasks: [a.jsonl, b.parquet]\n")
    assert load_config(GRPOConfig, f).tasks == ["a.jsonl", "b.parquet"]
    cfg = load_config(GRPOConfig, f, ["--tasks", "c.jsonl", "d.jsonl", "--steps", "2"])
    assert cfg.tasks == ["c.jsonl", "d.jsonl"] and cfg.steps == 2
    with pytest.raises(ConfigError, match="one or more values"):
        load_config(GRPOConfig, None, ["--tasks", "--steps", "2"])


def test_sft_from_training_shares_the_run_settings():
    cfg = load_config(GRPOConfig, None, ["--max-turns", "4", "--reward-variant", "answer_gated", "--sft-lr", "1e-4",
                                         "--sft-steps", "3", "--env-temperature", "0.5"])
    sft = SFTConfig.from_training(cfg, output_dir="x")
    assert (sft.max_turns, sft.reward_variant, sft.lr, sft.steps, sft.output_dir) == (4, "answer_gated", 1e-4, 3, "x")
    assert sft.env_kwargs() == cfg.env_kwargs() and cfg.env_kwargs()["sampling"]["temperature"] == 0.5


def test_grpo_applies_the_reference_dual_clip():
    """grpo defaults to dual clip c = 3 (the reference); --dual-clip-c sets it, 0 turns it off; a known answer:
    ratio 5 on a negative advantage is capped at c, so the loss is -A * c and no gradient flows."""
    import torch

    from promptr1.agents.losses import policy_loss

    assert GRPOConfig().loss_config().dual_clip_c == 3.0
    assert load_config(GRPOConfig, None, ["--dual-clip-c", "2.5"]).loss_config().dual_clip_c == 2.5
    assert load_config(GRPOConfig, None, ["--dual-clip-c", "0"]).loss_config().dual_clip_c is None
    assert load_config(GRPOConfig, None, ["--algo", "dapo"]).loss_config().dual_clip_c is None
    logp = torch.tensor([[float(torch.log(torch.tensor(5.0)))]], requires_grad=True)
    old = torch.zeros(1, 1)
    loss, stats = policy_loss(logp, old, torch.tensor([-1.0]), torch.ones(1, 1),
                              **{"clip_eps": 0.2, "dual_clip_c": GRPOConfig().loss_config().dual_clip_c})
    loss.backward()
    assert loss.item() == pytest.approx(3.0) and logp.grad.abs().item() == 0.0 and stats["dual_clip_frac"] == 1.0
