"""Each shared env-LLM setting travels from a YAML file and from the command line to the object that uses it, for
every entry point: ``promptr1 train``, ``eval``, ``chat`` here; the TRL example and the verl agent loop in
tests/test_integration_trl.py (``--settings``) and tests/test_integration_verl.py (``overrides``)."""

from __future__ import annotations

import dataclasses

import pytest

from promptr1.commands.cli import main
from promptr1.evaluation.config import ChatConfig
from promptr1.llm_backends.cache import CachedBackend

#: One value for each shared setting, none of them a default.
VALUES = {"env_llm": "openai:flow-model", "env_system_prompt": "Be terse.", "env_temperature": 0.3,
          "env_max_tokens": 77, "env_max_concurrency": 3, "env_rpm": 120.0, "env_tpm": 9000.0,
          "env_price_per_1k": [0.5, 1.5], "max_calls": 5, "max_cost": 2.5, "max_turns": 3, "max_response_chars": 99,
          "reward_variant": "answer_gated", "framing": "reference"}


def as_yaml(values, cache):
    lines = [f"{k}: {v!r}" if isinstance(v, str) else f"{k}: {v}" for k, v in values.items()]
    return "\n".join([*lines, f"cache: {cache!r}"]) + "\n"


def as_flags(values, cache):
    out = []
    for k, v in values.items():
        out += [f"--{k.replace('_', '-')}", *(map(str, v) if isinstance(v, list) else [str(v)])]
    return [*out, "--cache", str(cache)]


class Captured(Exception):
    """Raised by a stand-in once it has seen what an entry point built."""


def check(backend, env, cache, reward_variant="answer_gated"):
    """``backend`` is what the entry point built from the settings, ``env`` the env it plays in."""
    assert isinstance(backend, CachedBackend) and backend.path == str(cache)
    budget = backend.inner.budget
    assert (budget.max_calls, budget.max_cost) == (5, 2.5)
    inner = backend.inner.inner
    assert inner.model == "flow-model" and inner.price_per_1k == (0.5, 1.5)
    assert (inner.limiter.max_concurrency, inner.limiter.rpm, inner.limiter.tpm) == (3, 120.0, 9000.0)
    assert env.env_system_prompt == "Be terse." and env.sampling == {"temperature": 0.3, "max_tokens": 77}
    assert (env.max_turns, env.max_response_chars, env.reward_variant, env.framing.name) == (
        3, 99, reward_variant, "reference")
    assert env.env_llm is backend


@pytest.fixture(params=["yaml", "flags"])
def given(request, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    cache = tmp_path / "cache.sqlite"
    if request.param == "yaml":
        path = tmp_path / "settings.yaml"
        path.write_text(as_yaml(VALUES, str(cache)))
        return ["--config", str(path)], cache
    return as_flags(VALUES, cache), cache


def test_train(given, tmp_path, monkeypatch):
    argv, cache = given
    import promptr1.agents.trainer as trainer_mod
    from promptr1.envs.collab_env import PromptCollabEnv

    class Stub:
        def __init__(self, cfg, *, env_llm=None, callbacks=()):
            env = PromptCollabEnv(task="synthetic", env_llm=env_llm, **PromptCollabEnv.settings_kwargs(cfg))  # as the trainer builds it
            check(env_llm, env, cache)
            raise Captured

    monkeypatch.setattr(trainer_mod, "GRPOTrainer", Stub)
    with pytest.raises(Captured):
        main(["train", "--config", "defaults", *argv, "--model", "tiny", "--output-dir", str(tmp_path / "run")])


def test_trainer_alone_builds_the_same(given, tmp_path):
    """A plain GRPOTrainer(cfg) (no env LLM given) honours the same block."""
    argv, cache = given
    from promptr1.agents.config import GRPOConfig
    from promptr1.agents.trainer import GRPOTrainer
    from promptr1.core.settings import load_config

    cfg = load_config(GRPOConfig, None, [*argv, "--model", "tiny", "--output-dir", str(tmp_path / "run"),
                                     "--batch-questions", "1", "--group-size", "1"])
    trainer = GRPOTrainer(cfg)
    check(trainer.env_llm, trainer.envs[0], cache)


def test_eval(given, tmp_path, monkeypatch):
    argv, cache = given
    import promptr1.evaluation.runner as runner

    real = runner._Run

    def capture(cfg, backends, out, budget):
        from promptr1.envs.collab_env import PromptCollabEnv

        run = real(cfg, backends, out, budget)  # the evaluation's own env settings and backends
        backend = run.backends["openai:flow-model"]
        check(backend, PromptCollabEnv.from_settings("synthetic", backend, run.cfg), cache)
        assert run.sampling == {"temperature": 0.3, "max_tokens": 77}  # what the direct/CoT baselines send
        raise Captured

    monkeypatch.setattr(runner, "_Run", capture)
    with pytest.raises(Captured):
        main(["eval", "synthetic", *argv, "--methods", "direct", "--output-dir", str(tmp_path / "eval")])


def test_chat(given, monkeypatch):
    argv, cache = given
    reward_variant = "answer_gated"
    if argv[0] != "--config":  # chat's command line refuses what it ignores (no gold answer, so no reward); YAML not
        argv = as_flags({k: v for k, v in VALUES.items() if k not in ChatConfig.IGNORED_SETTINGS}, cache)
        reward_variant = "faithful"
    import promptr1.envs.collab_env as env_mod
    import promptr1.evaluation.policies as policies

    class Env(env_mod.PromptCollabEnv):
        def __init__(self, **kw):
            super().__init__(**kw)
            check(self.env_llm, self, cache, reward_variant)
            raise Captured

    monkeypatch.setattr(env_mod, "PromptCollabEnv", Env)
    monkeypatch.setattr(policies.ModelPolicy, "load", classmethod(lambda cls, *a, **k: None))
    with pytest.raises(Captured):
        main(["chat", "Who founded Vantrel Corp?", *argv])


def test_every_shared_setting_is_covered():
    from promptr1.core.settings import BackendSettings

    block = {f.name for f in dataclasses.fields(BackendSettings)}
    # cache is given beside VALUES; cache_mode: default; the several-env-LLMs trio: test_several_env_llms below
    assert block - set(VALUES) == {"cache", "cache_mode", "env_models", "env_model_prices", "env_default_model"}


def test_several_env_llms_from_yaml_and_flags(tmp_path):
    """env_models / env_model_prices / env_default_model and the cost term reach the env, from a file and from flags."""
    from promptr1.agents.config import GRPOConfig
    from promptr1.core.settings import load_config
    from promptr1.envs.collab_env import PromptCollabEnv
    from promptr1.llm_backends import from_settings

    path = tmp_path / "s.yaml"
    path.write_text("env_models: [cheap=sim, strong=sim-strong]\nenv_model_prices: ['strong=0.002:0.008']\n"
                    "env_default_model: strong\nreward_variant: cost_aware\ncost_weight: 0.5\nmax_calls: 7\n")
    flags = ["--env-models", "cheap=sim", "strong=sim-strong", "--env-model-prices", "strong=0.002:0.008",
             "--env-default-model", "strong", "--reward-variant", "cost_aware", "--cost-weight", "0.5",
             "--max-calls", "7"]
    for argv in (["--config", str(path)], flags):
        cfg = load_config(GRPOConfig, None, argv)
        backends, budget = from_settings(cfg)
        env = PromptCollabEnv.from_settings("synthetic", backends, cfg)
        assert sorted(env.env_llms) == ["cheap", "strong"] and env.default_model == "strong"
        assert env.env_llms["strong"].inner.name == "sim-strong" and env.env_llms["cheap"].budget is budget
        assert env.model_prices == {"strong": (0.002, 0.008)} and env.cost_weight == 0.5 and budget.max_calls == 7
        backends.close()
