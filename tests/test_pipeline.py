"""``promptr1 train``'s pipeline: plug-ins first, one env LLM per run, the run's env settings reach evaluation."""

from __future__ import annotations

import json

import pytest

from promptr1.commands.cli import main

FAST = ["--batch-questions", "2", "--group-size", "2", "--max-new-tokens", "6", "--max-turns", "2",
        "--progress", "false", "--max-seq-len", "768", "--kl-coef", "0"]

PLUGIN = """
from promptr1.envs.synthetic.expert import SimExpert
from promptr1.llm_backends import BACKENDS, register_backend

BUILT = []


def counting_sim(**kwargs):
    BUILT.append(1)
    return SimExpert(**kwargs)


if "counting-sim" not in BACKENDS:
    register_backend("counting-sim", counting_sim)
"""


@pytest.fixture(scope="module")
def tiny_path():
    from promptr1.testing.tiny_model import tiny_model_path

    return str(tiny_model_path())


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    path = tmp_path / "counting_backend_plugin.py"
    path.write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "counting_backend_plugin"
    import sys

    from promptr1.llm_backends import BACKENDS

    mod = sys.modules.pop("counting_backend_plugin", None)
    if mod is not None and "counting-sim" in BACKENDS:
        BACKENDS.unregister("counting-sim")


def test_plugin_backend_serves_sft_training_and_evaluation_built_once(tmp_path, tiny_path, plugin, capsys,
                                                                       monkeypatch):
    """A backend registered by a plug-in works in the SFT warm start (plug-ins used to be imported after it),
    and the env LLM is built once for SFT, training and the final evaluation (it used to be built three times).
    The reward variant of the run reaches every env, the evaluation's included."""
    import promptr1.envs.collab_env as env_mod

    variants: list[str] = []
    real_init = env_mod.PromptCollabEnv.__init__

    def spy(self, *a, **k):
        variants.append(k.get("reward_variant") or getattr(k.get("settings"), "reward_variant", "faithful"))
        real_init(self, *a, **k)

    monkeypatch.setattr(env_mod.PromptCollabEnv, "__init__", spy)
    out = tmp_path / "run"
    rc = main(["train", "--config", "defaults", "--model", tiny_path, "--plugins", plugin, "--env-llm", "counting-sim", "--sft-steps", "1",
               "--sft-batch-size", "2", "--steps", "1", "--eval-episodes", "2", "--reward-variant", "answer_gated",
               "--output-dir", str(out), *FAST])
    assert rc == 0, capsys.readouterr().err
    import counting_backend_plugin

    assert counting_backend_plugin.BUILT == [1]
    assert (out / "sft" / "latest").is_file() and (out / "eval.json").is_file()
    assert variants and set(variants) == {"answer_gated"}
    printed = capsys.readouterr().out
    assert "untrained" in printed and "after SFT" in printed and "trained (GRPO)" in printed


def test_unknown_plugin_is_a_usage_error_before_any_model_loads(tmp_path, capsys):
    rc = main(["train", "--config", "defaults", "--plugins", "no_such_plugin_module", "--output-dir", str(tmp_path / "x")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "no_such_plugin_module" in err and "--plugins" in err
    assert not (tmp_path / "x").exists()


def test_unknown_algorithm_fails_before_any_model_loads(tmp_path, capsys):
    rc = main(["train", "--config", "defaults", "--algo", "grpoo", "--output-dir", str(tmp_path / "x")])
    assert rc == 2
    assert "Did you mean 'grpo'?" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_train_writes_the_config_it_ran_with(tmp_path, tiny_path):
    """The checkpoint records the resolved settings; an explicit --kl-coef 0 stays 0 (no reference model)."""
    out = tmp_path / "run"
    assert main(["train", "--config", "defaults", "--model", tiny_path, "--steps", "1", "--output-dir", str(out), *FAST]) == 0
    latest = (out / "latest").read_text().strip()
    state = json.loads((out / latest / "trainer_state.json").read_text())
    assert state["config"]["kl_coef"] == 0 and state["config"]["max_turns"] == 2
