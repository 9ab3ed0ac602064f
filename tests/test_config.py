"""Config dataclasses: YAML + --key value overrides, typed, with "did you mean" for bad keys."""

from __future__ import annotations

import pytest

from promptr1.agents.config import ConfigError, EvalConfig, GRPOConfig, config_help, load_config


def test_defaults_cite_reference_values():
    cfg = GRPOConfig()
    assert cfg.clip_eps == 0.2 and cfg.kl_coef == 0.001 and cfg.temperature == 1.0 and cfg.kl_estimator == "k3"


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("steps: 7\nlr: 3.0e-6\ngroup_size: 8\ncpu: true\n")
    cfg = load_config(GRPOConfig, f, ["--steps", "9", "--algo=rloo", "--deterministic"])
    assert (cfg.steps, cfg.lr, cfg.group_size, cfg.cpu, cfg.algo, cfg.deterministic) == (9, 3e-6, 8, True, "rloo", True)


def test_dashes_and_underscores_both_work():
    assert load_config(GRPOConfig, None, ["--batch-questions", "3"]).batch_questions == 3
    assert load_config(GRPOConfig, None, ["--batch_questions", "5"]).batch_questions == 5


def test_unknown_key_lists_close_match():
    with pytest.raises(ConfigError, match="Did you mean '--group_size'"):
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
    text = config_help(EvalConfig)
    for name in ("--model", "--episodes", "--temperature"):
        assert name in text
    assert "greedy" in text  # the attribute docstring is shown


def test_bundled_quickstart_config_parses():
    from promptr1.agents.cli import bundled_config

    path = bundled_config("quickstart")
    assert path is not None, "promptr1/configs/quickstart.yaml must ship with the package"
    cfg = load_config(GRPOConfig, path)
    assert cfg.model == "smollm2" and cfg.env_llm == "sim" and cfg.eval_episodes >= 64
