"""Several env LLMs in one env, and a reward that counts money (docs/cost-aware.md)."""

from __future__ import annotations

import json

import pytest

from promptr1.envs.collab_env import PromptCollabEnv
from promptr1.envs.protocol import call_target
from promptr1.envs.synthetic.expert import SimExpert, StrongSimExpert
from promptr1.envs.tasks import Task, load_tasks
from promptr1.rewards import compute_reward, cost_penalty
from promptr1.testing.scripted import ScriptedBackend

TASK = Task("Who founded Vantrel Corp?", ("Mira Osk",), id="t0")
ASK = "<think>a</think><interaction_prompt>{}</interaction_prompt>"
ANSWER = "<think>b</think><answer>Mira Osk</answer>"
PRICES = {"cheap": (0.001, 0.002), "strong": (0.01, 0.02)}


def two_models(**kw):
    cheap, strong = ScriptedBackend(["cheap says Mira Osk."]), ScriptedBackend(["strong says Mira Osk."])
    env = PromptCollabEnv(task=[TASK], env_llm={"cheap": cheap, "strong": strong}, model_prices=PRICES, **kw)
    return env, cheap, strong


def test_the_agent_names_its_target_and_each_keeps_its_own_history():
    env, cheap, strong = two_models(max_turns=4)
    _, info = env.reset(seed=0)
    system = info["messages"][0]["content"]
    assert "cheap ($0.001 / $0.002 per 1,000 input / output tokens; the default)" in system and "[cheap]" in system
    obs, *_ = env.step(ASK.format("[strong] Who founded Vantrel Corp?"))
    assert "strong says" in obs and strong.calls[-1][-1] == {"role": "user", "content": "Who founded Vantrel Corp?"}
    obs, *_ = env.step(ASK.format("And where?"))  # no name: the default
    assert "cheap says" in obs and len(cheap.calls) == 1
    # the cheap model never saw the strong one's exchange
    assert [m["content"] for m in cheap.calls[0] if m["role"] != "system"] == ["And where?"]
    env.step(ASK.format("[strong] Sure?"))
    assert [m["content"] for m in strong.calls[-1] if m["role"] != "system"] == [
        "Who founded Vantrel Corp?", "strong says Mira Osk.", "Sure?"]


def test_an_unknown_model_gets_an_error_reply_not_an_exception():
    env, cheap, strong = two_models()
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(ASK.format("[gpt-9] Who founded Vantrel Corp?"))
    assert "unknown model 'gpt-9'" in obs and "cheap, strong" in obs and not (terminated or truncated)
    assert cheap.calls == [] and strong.calls == []


def test_reference_framing_names_the_model_in_the_arguments():
    cheap, strong = ScriptedBackend(["c"]), ScriptedBackend(["s"])
    env = PromptCollabEnv(task=[TASK], env_llm={"cheap": cheap, "strong": strong}, framing="reference")
    _, info = env.reset(seed=0)
    assert 'add "model": NAME' in info["messages"][0]["content"]
    call = json.dumps({"name": "prompt", "arguments": {"prompt": "Who?", "model": "strong"}})
    env.step(ASK.format(call))
    assert len(strong.calls) == 1 and strong.calls[0][-1]["content"] == "Who?" and cheap.calls == []


def test_cost_per_episode_and_per_model_and_the_cost_aware_reward():
    env, *_ = two_models(reward_variant="cost_aware", cost_weight=2.0, cost_reference_usd=0.01)
    env.reset(seed=0)
    env.step(ASK.format("[strong] Who founded Vantrel Corp?"))
    env.step(ASK.format("[cheap] Who founded Vantrel Corp?"))
    _, reward, terminated, _, info = env.step(ANSWER)
    stats = info["episode"]
    # ScriptedBackend counts words: the strong call saw the system prompt's words too
    strong_call = stats["cost_by_model"]["strong"]
    assert stats["calls_by_model"] == {"cheap": 1, "strong": 1} and strong_call > stats["cost_by_model"]["cheap"] > 0
    spent = stats["env_llm_cost_usd"]
    assert spent == pytest.approx(sum(stats["cost_by_model"].values()))
    base = compute_reward(env.turns, TASK.answers, variant="answer_gated").total  # cost_aware's base: 1.0 here
    comps = info["reward_components"]
    assert base == 1.0 and comps["cost_usd"] == pytest.approx(spent)
    assert comps["cost_penalty"] == pytest.approx(2.0 * spent / 0.01) and reward == pytest.approx(1.0 - 2.0 * spent / 0.01)


def test_the_default_env_and_reward_are_exactly_as_before():
    env = PromptCollabEnv(task=[TASK], env_llm=ScriptedBackend(["Mira Osk."]))
    _, info = env.reset(seed=0)
    assert "Large models you can ask" not in info["messages"][0]["content"]
    env.step(ASK.format("[strong] Who founded Vantrel Corp?"))  # no routing: the text goes as written
    _, reward, *_, info = env.step(ANSWER)
    assert env.env_llm.calls[0][-1]["content"] == "[strong] Who founded Vantrel Corp?"
    assert "cost_penalty" not in info["reward_components"] and "calls_by_model" not in info["episode"]
    assert reward == 1.0
    with pytest.raises(ValueError, match="pass env_llm as a mapping"):
        PromptCollabEnv(task=[TASK], env_llm="sim", model_prices={"cheap": (1, 1)})


def test_call_target_and_cost_penalty():
    assert call_target("[cheap]  Where?", "[cheap]  Where?") == ("cheap", "Where?")
    assert cost_penalty(0.5, 0.0) == 0.0
    with pytest.raises(ValueError, match="cost_reference_usd must be a finite number > 0"):
        cost_penalty(0.5, 1.0, reference_usd=0.0)


def test_the_strong_expert_answers_composite_questions_the_cheap_one_refuses():
    strong, cheap = StrongSimExpert(), SimExpert()
    tasks = load_tasks("synthetic:test")
    hits = {"strong": 0, "cheap": 0}
    for t in tasks:
        for name, backend in (("strong", strong), ("cheap", cheap)):
            reply = backend.complete([{"role": "user", "content": t.question}]).text.lower()
            hits[name] += any(a.lower() in reply for a in t.answers)
    assert hits["cheap"] == 0  # one fact or one operation a call: a whole task is never answered in one call
    assert hits["strong"] >= 0.9 * len(tasks)
    # the cheap expert's one-step questions get the same answers from both
    one = [{"role": "user", "content": "Who founded Vantrel Corp?"}]
    assert strong.complete(one).text == cheap.complete(one).text


def test_eval_report_has_a_cost_table_by_model(tmp_path):
    from promptr1.evaluation import EvalConfig, run_evaluation
    from promptr1.testing.agents import ScriptedAgentPolicy

    turns = ["<think>a</think><interaction_prompt>[strong] What is 3 + 4?</interaction_prompt>",
             "<think>b</think><interaction_prompt>What is 3 + 4?</interaction_prompt>",
             "<think>c</think><answer>7</answer>"]
    cfg = EvalConfig(tasks=["synthetic"], methods=["agent:scripted"], env_llm="sim", limit=3, chart=False,
                     progress=False, output_dir=str(tmp_path), env_models=["cheap=sim", "strong=sim-strong"],
                     env_model_prices=["cheap=0.001:0.002", "strong=0.01:0.02"], reward_variant="cost_aware",
                     cost_weight=1.0)
    result = run_evaluation(cfg, agents={"scripted": ScriptedAgentPolicy(turns)})
    rec = result.records[0]
    assert rec["calls_by_model"] == {"cheap": 1, "strong": 1}
    assert rec["cost_by_model"]["strong"] > rec["cost_by_model"]["cheap"] > 0
    assert rec["cost_usd"] == pytest.approx(sum(rec["cost_by_model"].values()))
    report = (tmp_path / "report.md").read_text()
    assert "## Cost by env LLM (per episode)" in report and "cheap: calls, USD" in report
    # the run names its env LLMs as the models it has, not the unused env_llm (it used to say "env LLMs: `sim`")
    label = "cheap=sim strong=sim-strong (default cheap)"
    assert f"env LLMs: `{label}`" in report and "env LLMs: `sim`" not in report
    line = next(x for x in report.splitlines() if x.startswith(f"| `agent:scripted @ {label}` |") and "1.00, " in x)
    mean_usd = sum(r["cost_usd"] for r in result.records) / len(result.records)
    assert line.split("|")[2].strip() == f"{mean_usd:.6f}"


def test_bench_cost_aware_runs_end_to_end_small(tmp_path):
    from conftest import load_script

    bench = load_script("benchmarks/bench_cost_aware.py")
    assert bench.steps_needed("In which city was the mayor of the headquarters city of Golmu Industries born?") == 3
    assert bench.steps_needed("Ben has 3 boxes with 4 cards in each box. Then Ben gets 2 more cards. How many?") == 2
    assert bench.main(["--weights", "0.5", "--steps", "256", "--episodes", "8", "--select", "8",
                       "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    rows = results["weights"]["0.5"]["rows"]
    assert {"always strong", "trained (PPO)", "trained (PPO, sees the plan)"} <= set(rows)
    strong = rows["always strong"]
    assert strong["calls"] == {"cheap": 0.0, "strong": 1.0} and strong["usd"][0] > 0
    # always strong pays one strong call (the cost unit, up to its question's length) at weight 0.5
    assert strong["reward"][0] <= 1.0 - 0.5 * 0.5
    assert set(rows["trained (PPO)"]["paired"]) == {n for n in rows if not n.startswith("trained")}
    assert (tmp_path / "reward_vs_dollars.png").stat().st_size > 1000


def test_our_trainer_and_the_trl_rollout_play_the_multi_model_env(tmp_path, monkeypatch):
    import promptr1.agents.rollout as rollout
    from promptr1.agents.config import GRPOConfig
    from promptr1.agents.rollout import SampledTurn
    from promptr1.agents.trainer import GRPOTrainer
    from promptr1.testing.tiny_model import tiny_model_path

    turn = "<think>ask</think><interaction_prompt>[strong] Where is Miktha located?</interaction_prompt>"

    def sampler(model, tokenizer, prompts, *, max_new_tokens, **kw):
        ids = tokenizer(turn, add_special_tokens=False)["input_ids"][:max_new_tokens]
        return [SampledTurn(list(ids), [-1.0] * len(ids), "string") for _ in prompts]

    monkeypatch.setattr(rollout, "sample_turns", sampler)
    cfg = GRPOConfig(model=str(tiny_model_path()), steps=1, batch_questions=1, group_size=2, max_new_tokens=48,
                     max_turns=2, max_seq_len=768, kl_coef=0.0, progress=False, num_transcripts=0,
                     output_dir=str(tmp_path / "run"), env_models=["cheap=sim", "strong=sim-strong"],
                     env_model_prices=["cheap=0.001:0.002", "strong=0.01:0.02"], reward_variant="cost_aware",
                     cost_weight=1.0)
    trainer = GRPOTrainer(cfg)
    metrics = trainer.train_step()
    assert metrics["env_llm/calls"] == 4 and metrics["env_llm/cost_usd"] > 0  # 2 episodes x 2 strong calls
    assert metrics["reward/cost_penalty"] == pytest.approx(metrics["env_llm/cost_usd"] / 2)  # mean over episodes
    assert all(e.episode_stats["calls_by_model"] == {"cheap": 0, "strong": 2} for e in trainer._last_episodes)

    from promptr1.integrations import trl as ptrl

    backends = {"cheap": SimExpert(), "strong": StrongSimExpert()}
    roll = ptrl.make_rollout_func("synthetic", env_llm=backends, env_kwargs={"max_turns": 2}, sampler=sampler,
                                  max_seq_len=768)
    assert roll.env_llm is backends and roll._envs(1)[0].env_llms == backends
