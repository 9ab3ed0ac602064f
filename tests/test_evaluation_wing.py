"""The evaluation wing plays agents exactly as training does, with the training run's env settings.

Model agents go through the rollout's sampler (``promptr1.agents.rollout.sample_turns`` via
``arun_episodes``), never through HF ``generate``; greedy evaluation of the tiny model gives the very
episodes ``run_episodes`` gives; the reward variant of the settings reaches the eval env; the training
pipeline's comparison table comes out of :func:`compare_policies`; ``promptr1 eval --help`` lists every
option.
"""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from promptr1.core.settings import RunSettings
from promptr1.llm_backends.budget import Budget, BudgetedBackend
from promptr1.commands.eval import chat_main, eval_main
from promptr1.evaluation.config import ChatConfig, EvalConfig
from promptr1.evaluation.policies import ModelPolicy, rollout_config
from promptr1.evaluation.report import format_table
from promptr1.evaluation.runner import compare_policies, run_evaluation
from promptr1.envs.tasks import Task, load_tasks
from promptr1.llm_backends import Completion, make_backend
from promptr1.llm_backends.base import BaseBackend
from promptr1.rewards import compute_reward
from promptr1.testing.agents import ScriptedAgentPolicy

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny():
    from promptr1.agents.models import load_policy

    model, tok = load_policy("tiny")
    model.eval()
    return model, tok


@pytest.fixture(scope="module")
def tasks():
    source = load_tasks("synthetic", split="test")
    return [source[i] for i in range(3)]


def settings(tmp_path, **kw) -> EvalConfig:
    base = dict(model="tiny", env_llm="sim", tasks=["synthetic"], max_turns=2, max_new_tokens=12,
                max_seq_len=1024, temperature=0.0, output_dir=str(tmp_path / "eval"), embedder="hashing",
                chart=False, progress=False, cpu=True, batch_size=3)
    base.update(kw)
    return EvalConfig(**base)


# ----------------------------------------------------------------------------- one generation path


def test_model_agents_are_played_by_the_rollout_sampler(tmp_path, tiny, tasks, monkeypatch):
    import promptr1.agents.rollout as rollout

    model, tok = tiny
    calls = []
    real = rollout.sample_turns

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    def no_generate(*args, **kwargs):
        raise AssertionError("evaluation must not use HF generate: it plays through the rollout's sampler")

    monkeypatch.setattr(rollout, "sample_turns", spy)
    monkeypatch.setattr(model, "generate", no_generate)
    padding_side, dtype = tok.padding_side, next(model.parameters()).dtype
    cfg = settings(tmp_path, methods=["agent:live"])
    res = run_evaluation(cfg, agents={"live": (model, tok)}, datasets={"syn": tasks})
    assert len(res.records) == 3 and not res.partial
    assert calls, "sample_turns was never called"
    assert all(c["stop_strings"] == rollout.DEFAULT_STOP_STRINGS and c["temperature"] == 0.0 for c in calls)
    assert all(c["max_new_tokens"] <= 12 for c in calls)
    assert tok.padding_side == padding_side and next(model.parameters()).dtype == dtype  # left untouched


def test_greedy_evaluation_gives_the_episodes_of_run_episodes(tmp_path, tiny, tasks):
    from promptr1.agents.rollout import RolloutConfig, run_episodes
    from promptr1.envs.collab_env import PromptCollabEnv

    model, tok = tiny
    cfg = settings(tmp_path, methods=["agent:live"])
    backend = make_backend("sim")
    rcfg = RolloutConfig(max_new_tokens=12, max_seq_len=1024, temperature=0.0, independent=False)
    assert dataclasses.replace(rollout_config(cfg), independent=False) == rcfg
    envs = [PromptCollabEnv.from_settings(t, backend, cfg) for t in tasks]
    direct = run_episodes(model, tok, envs, tasks, [0, 1, 2], rcfg, seed=cfg.seed)

    policy = ModelPolicy(model, tok, rollout=rcfg)
    res = run_evaluation(cfg, agents={"live": policy}, datasets={"syn": tasks}, backends={"sim": backend})
    assert [r["turns"] for r in res.records] == [e.messages for e in direct]
    assert [r["reward"] for r in res.records] == [e.reward for e in direct]
    assert [r["num_turns"] for r in res.records] == [e.turns for e in direct]
    assert [r["prediction"] for r in res.records] == [e.components.get("answer_text") or "" for e in direct]


def test_model_policy_loads_by_name_through_the_one_resolver(tiny):
    from promptr1.agents.models import resolve_model_path

    policy = ModelPolicy.load("tiny", rollout=rollout_config(RunSettings(temperature=0.0)), device="cpu")
    assert policy.name == "tiny" and not policy.model.training
    assert policy.model.config._name_or_path == resolve_model_path("tiny")


# ----------------------------------------------------------------------------- the env settings reach the env


def test_the_reward_variant_reaches_the_eval_env(tmp_path, tasks):
    """An agent that answers at once: faithful gives -0.4 (the answer never counts), answer_gated counts it."""
    turn = "<think>Guess.</think><answer>{}</answer>"
    answer_now = ScriptedAgentPolicy(lambda chat: turn.format("Kurgan Lukro"))
    out = {}
    for variant in ("faithful", "answer_gated"):
        cfg = settings(tmp_path, methods=["agent:scripted"], reward_variant=variant,
                       output_dir=str(tmp_path / variant))
        res = run_evaluation(cfg, agents={"scripted": answer_now}, datasets={"syn": tasks})
        out[variant] = res
        for r in res.records:
            assert r["reward_variant"] == variant
            want = compute_reward([turn.format("Kurgan Lukro")], r["gold"], variant=variant).total
            assert r["reward"] == pytest.approx(want)
    assert all(r["reward"] == pytest.approx(-0.4) for r in out["faithful"].records)
    assert out["answer_gated"].score("syn", "agent:scripted", "reward") > -0.4
    changed = settings(tmp_path, methods=["agent:scripted"], reward_variant="answer_gated",
                       output_dir=str(tmp_path / "faithful"))
    with pytest.raises(ValueError, match="reward_variant='faithful' .now 'answer_gated'"):  # no mixed resume
        run_evaluation(changed, agents={"scripted": answer_now}, datasets={"syn": tasks})


def test_budget_guards_real_calls_only(tmp_path):
    class Paid(BaseBackend):
        name = "paid"
        deterministic = True

        def complete(self, messages, **sampling):
            return Completion(text="ok", cost_usd=0.1)

    from promptr1.llm_backends import EnvLLMError
    from promptr1.llm_backends.cache import CachedBackend

    budget = Budget(max_calls=1)
    backend = CachedBackend(BudgetedBackend(Paid(), budget), str(tmp_path / "c.sqlite"))
    msg = [{"role": "user", "content": "hi"}]
    assert backend.complete(msg).text == "ok"
    assert backend.complete(msg).cached  # a cache hit never reaches the budget
    with pytest.raises(EnvLLMError) as err:
        backend.complete([{"role": "user", "content": "another"}])
    assert err.value.kind == "budget" and budget.calls == 1 and budget.cost == pytest.approx(0.1)


# ----------------------------------------------------------------------------- the pipeline's comparison table


class CountingBackend(BaseBackend):
    """Wraps the sim expert; counts calls and complains if closed (the caller owns it)."""

    name = "sim"
    deterministic = True

    def __init__(self):
        super().__init__()
        self.inner = make_backend("sim")
        self.calls = 0
        self.closed = False

    def complete(self, messages, **sampling):
        self.calls += 1
        return self.inner.complete(messages, **sampling)

    def close(self):
        self.closed = True


def test_compare_policies_builds_the_untrained_vs_trained_table(tmp_path, tiny):
    model, tok = tiny
    backend = CountingBackend()
    relay = ScriptedAgentPolicy.relay()
    train_settings = RunSettings(model="tiny", env_llm="sim", max_turns=3, reward_variant="answer_gated",
                                 max_new_tokens=8, max_seq_len=1024, temperature=1.0, cpu=True,
                                 output_dir=str(tmp_path / "run"), progress=False)
    res = compare_policies({"untrained": (model, tok), "relay (scripted)": relay}, ["synthetic"], backend,
                           train_settings, episodes=4, embedder="hashing", chart=False)
    assert not backend.closed and backend.calls > 0  # used, not rebuilt, not closed
    assert [r.method for r in res.rows] == ["untrained", "relay (scripted)"]
    assert all(r.n == 4 and {"reward", "format", "turns"} <= set(r.stats) for r in res.rows)
    assert all(rec["reward_variant"] == "answer_gated" for rec in res.records)
    assert all(rec["num_turns"] <= 3 for rec in res.records)  # the settings' max_turns
    assert (tmp_path / "run" / "eval" / "report.md").is_file()
    table = format_table(res)
    head = table.splitlines()[0]
    for col in ("policy", "episodes", "reward", "F1", "EM", "format rate", "turns", "time"):
        assert col in head
    untrained = next(line for line in table.splitlines() if line.startswith("untrained"))
    assert re.search(r"[-+]\d\.\d{3} \[[-+]\d\.\d{3}, [-+]\d\.\d{3}\]", untrained)  # reward mean [CI]
    assert res.seconds["untrained @ sim"] > 0
    summary = res.to_json()
    assert [t["method"] for t in summary["table"]] == ["untrained", "relay (scripted)"]
    assert summary["table"][0]["episodes"] == 4 and "reward" in summary["table"][0]
    json.dumps(summary)  # plain data

    # a second call starts afresh: live models are never "resumed"
    again = compare_policies({"untrained": (model, tok)}, ["synthetic"], backend, train_settings, episodes=2,
                             embedder="hashing", chart=False)
    assert len(again.records) == 2 and [r.method for r in again.rows] == ["untrained"]


def test_log_to_a_logger_and_scalars_include_the_agent_stats(tmp_path, tasks):
    cfg = settings(tmp_path, methods=["agent:relay"])
    res = run_evaluation(cfg, agents={"relay": ScriptedAgentPolicy.relay()}, datasets={"syn": tasks})

    class Logger:
        def __init__(self):
            self.seen = {}

        def record(self, key, value):
            self.seen[key] = value

    log = Logger()
    values = res.log_to(log, step=1)
    assert log.seen == values
    for name in ("em", "f1", "reward", "format", "turns"):
        assert f"eval/syn/{name}/agent_relay@sim" in values
    with pytest.raises(TypeError, match="SummaryWriter"):
        res.log_to(object(), step=1)


# ----------------------------------------------------------------------------- command line


def test_eval_help_lists_every_option(capsys):
    assert eval_main(["--help"]) == 0
    out = capsys.readouterr().out
    for f in dataclasses.fields(EvalConfig):
        assert f"--{f.name.replace('_', '-')} " in out, f.name
    for old in ("--agent-temperature", "--agent-max-new-tokens", "--env-llms ", "--out "):
        assert old not in out
    assert chat_main(["--help"]) == 0
    out = capsys.readouterr().out
    used = [f for f in dataclasses.fields(ChatConfig) if f.name not in ChatConfig.IGNORED_SETTINGS]
    assert all(f"--{f.name.replace('_', '-')} " in out for f in used)
    assert "--tasks " not in out and "--output-dir " not in out  # one question: no task files, nothing written


def test_eval_config_adds_only_eval_settings():
    shared = {f.name for f in dataclasses.fields(RunSettings)}
    own = {f.name for f in dataclasses.fields(EvalConfig)} - shared
    assert own == {"methods", "transfer_env_llms", "split", "limit", "batch_size", "concurrency", "embedder", "chart",
                   "preset", "task_type", "metrics"}
    # Shared settings keep their name and type; evaluation only changes two defaults, on purpose: it decodes
    # greedily (a reproducible score) and writes to its own folder.
    changed = {}
    for f in dataclasses.fields(EvalConfig):
        if f.name in shared:
            base = next(g for g in dataclasses.fields(RunSettings) if g.name == f.name)
            assert f.type == base.type, f.name
            if (f.default, f.default_factory) != (base.default, base.default_factory):
                changed[f.name] = f.default
    assert changed == {"temperature": 0.0, "output_dir": "runs/eval"}


def test_reference_preset_fills_only_what_the_user_did_not_give():
    from promptr1.core.settings import ConfigError, load_config

    cfg = load_config(EvalConfig, overrides=["--preset", "reference", "--max-turns", "3"])
    # no repetition penalty: the official scripts define 1.05 but never send it
    assert (cfg.temperature, cfg.top_p, cfg.repetition_penalty, cfg.max_new_tokens) == (0.7, 0.8, 1.0, 8192)
    assert cfg.max_turns == 3  # the user's value wins over the preset's 10
    assert "max_tokens" not in cfg.env_sampling()  # no token limit on the large LLM
    assert load_config(EvalConfig).temperature == 0.0  # no preset: greedy
    with pytest.raises(ConfigError, match="Did you mean 'reference'"):
        load_config(EvalConfig, overrides=["--preset", "referense"])


def test_eval_and_chat_commands_on_the_tiny_model(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = eval_main(["--model", "tiny", "--methods", "direct", "agent", "--limit", "2", "--max-turns", "2",
                    "--max-new-tokens", "6", "--temperature", "0", "--output-dir", str(out), "--chart", "false",
                    "--progress", "false", "--cpu"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "`agent:tiny @ sim`" in printed and "## Agent episodes" in printed
    assert eval_main(["--methods", "agent", "--model", ""]) == 2
    assert "names no model" in capsys.readouterr().err
    rc = chat_main(["Where was Brukmo Doldrak born?", "--model", "tiny", "--max-new-tokens", "6", "--max-turns", "2",
                    "--cpu"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "[agent]" in out and "answer:" in out
    assert chat_main(["--model", "tiny"]) == 2


def test_in_memory_tasks(tmp_path):
    qa = [Task(question="Say ok", answers=("You said: Say ok",))]
    res = run_evaluation(settings(tmp_path, methods=["direct"], env_llm="echo"), datasets={"mine": qa})
    assert res.score("mine", "direct", "em") == 1.0


def test_report_says_which_task_type_each_dataset_got_and_the_user_can_set_it(tmp_path):
    """Types are never chosen silently: the report and summary.json name the type and its evidence, and
    --task-type NAME=TYPE sets it."""
    import json as _json

    from promptr1.core.settings import ConfigError, load_config
    from promptr1.evaluation import run_evaluation
    from promptr1.testing.scripted import EchoBackend

    data = tmp_path / "numbers.jsonl"
    data.write_text("\n".join(_json.dumps({"question": f"What is {i} plus {i}?", "answers": [str(2 * i)]})
                              for i in range(3)) + "\n")
    base = ["--tasks", str(data), "--methods", "direct", "--env-llm", "echo", "--chart", "false",
            "--embedder", "hashing"]
    cfg = load_config(EvalConfig, overrides=[*base, "--output-dir", str(tmp_path / "a")])
    res = run_evaluation(cfg, backends={"echo": EchoBackend()})
    report = res.paths["report"].read_text()
    assert "task type of `numbers`: math 3 (content: 100% of gold answers are numbers)" in report
    assert _json.loads(res.paths["summary"].read_text())["task_types"]["numbers"].startswith("math 3")
    cfg = load_config(EvalConfig, overrides=[*base, "--output-dir", str(tmp_path / "b"), "--task-type", "numbers=qa"])
    res = run_evaluation(cfg, backends={"echo": EchoBackend()})
    assert "qa 3 (set by the user (task_type=qa))" in res.paths["report"].read_text()
    assert set(res.rows[0].metrics) == {"em", "sm", "f1"}  # scored as QA
    with pytest.raises(ConfigError, match="NAME=TYPE"):
        load_config(EvalConfig, overrides=[*base, "--task-type", "numbers=maths"])
    cfg = load_config(EvalConfig, overrides=[*base, "--output-dir", str(tmp_path / "c"), "--task-type", "other=qa"])
    with pytest.raises(ValueError, match="match no dataset"):
        run_evaluation(cfg, backends={"echo": EchoBackend()})
