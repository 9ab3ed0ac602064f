"""TokenWrapper: checkers, turn boundaries, exact text to the env, observation window, vocabularies."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from promptr1.envs.collab_env import PromptCollabEnv
from promptr1.envs.tasks import Task
from promptr1.envs.token_wrapper import TokenWrapper, load_tokenizer, vocab_from_texts
from promptr1.testing.scripted import ScriptedBackend

TASK = Task("What is the capital of Dremland?", ("Vorla",), id="t0")
PROMPT_TURN = "<think>ask</think><interaction_prompt>What is the capital of Dremland?</interaction_prompt>"
ANSWER_TURN = "<think>ok</think><answer>Vorla</answer>"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


def make(tok, replies=("Dremland's capital is Vorla.",), **kw):
    backend = ScriptedBackend(list(replies))
    inner = PromptCollabEnv(task=[TASK], env_llm=backend, max_turns=3)
    return TokenWrapper(inner, tok, **kw), backend


def play(env, tok, text):
    """Step the token ids of ``text``; return every step's result."""
    out = []
    for tid in tok.encode(text, add_special_tokens=False):
        out.append(env.step(env.token_ids.index(tid)))
    return out


@pytest.mark.parametrize("kw", [dict(), dict(obs_type="box"), dict(vocab=["<", "answer", ">", "</", "V"])])
def test_passes_gymnasium_and_sb3_checkers(tok, kw):
    env, _ = make(tok, window=8, max_turn_tokens=6, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message=".*render modes.*")
        gym_check_env(env)
        sb3_check_env(env)


def test_spaces(tok):
    env, _ = make(tok, window=16)
    assert env.action_space.n == len(tok) and env.vocab_size == len(tok)
    assert env.observation_space.nvec.tolist() == [len(tok) + 2] * 16
    small, _ = make(tok, vocab=["<", ">"], obs_type="box")
    assert small.action_space.n == 3 and small.token_ids[-1] == tok.eos_token_id  # eos appended
    assert small.observation_space.shape == (32,) and small.observation_space.dtype == np.float32
    assert small.observation_space.high.max() == 4.0


def test_prompt_turn_reaches_env_exactly_and_reward_only_at_env_steps(tok):
    env, backend = make(tok)
    env.reset(seed=0)
    steps = play(env, tok, PROMPT_TURN)
    assert all(r == 0.0 and not (te or tr) for _, r, te, tr, _ in steps)
    assert all("turn_text" not in info for *_, info in steps[:-1])
    assert steps[-1][4]["turn_text"] == PROMPT_TURN  # the closing tag ended the turn
    assert backend.calls[-1][-1]["content"] == "What is the capital of Dremland?"
    steps = play(env, tok, ANSWER_TURN)
    obs, r, term, trunc, info = steps[-1]
    assert term and not trunc and info["answer"] == "Vorla"
    assert r == pytest.approx(1.0)  # one good prompt turn + full answer, F1 = 1
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)


def test_eos_ends_a_turn_without_its_text(tok):
    env, backend = make(tok)
    env.reset(seed=0)
    play(env, tok, "<think>hi</think><interaction_prompt>Hello")
    obs, r, term, trunc, info = env.step(env.token_ids.index(tok.eos_token_id))
    assert info["turn_text"] == "<think>hi</think><interaction_prompt>Hello"
    assert term and r == pytest.approx(-1.0)  # a turn with no complete tag ends the episode (env semantics)
    assert backend.calls == []


def test_max_turn_tokens_forces_the_turn(tok):
    env, _ = make(tok, max_turn_tokens=3)
    env.reset(seed=0)
    ids = tok.encode("hello world again and again", add_special_tokens=False)
    results = [env.step(env.token_ids.index(t)) for t in ids[:3]]
    assert "turn_text" not in results[1][4]
    assert results[2][4]["turn_text"] == tok.decode(ids[:3])


def test_observation_window_padding_and_unknown_symbol(tok):
    env, _ = make(tok, window=64, vocab=vocab_from_texts(tok, ["<answer>Vorla</answer>"]))
    V = env.vocab_size
    obs, _ = env.reset(seed=0)
    prompt_ids = tok.encode(env.env.messages[0]["content"] + "\n\n" + TASK.prompt, add_special_tokens=False)
    assert len(prompt_ids) > 64  # the window holds the tail of the prompt
    expected = [env.token_ids.index(t) if t in env.token_ids else V for t in prompt_ids[-64:]]
    assert obs.tolist() == expected
    assert V in obs.tolist()  # most prompt tokens are outside this small vocabulary
    obs, *_ = env.step(0)
    assert obs[-1] == 0
    assert obs[:-1].tolist() == expected[1:]

    short, _ = make(tok, window=4)
    short.env.agent_system_prompt = None
    short.env.tasks = [Task("Hi?", ("x",), instruction="")]
    obs, _ = short.reset(seed=0)
    ids = tok.encode("Question: Hi?\n", add_special_tokens=False)
    pad = short.vocab_size + 1
    assert obs.tolist() == ([pad] * max(0, 4 - len(ids)) + ids[-4:])[-4:]


def test_reply_tokens_enter_the_observation(tok):
    env, _ = make(tok, window=8, replies=["Vorla"])
    env.reset(seed=0)
    obs = play(env, tok, PROMPT_TURN)[-1][0]
    reply_ids = tok.encode("<interaction_response>Vorla</interaction_response>", add_special_tokens=False)
    assert obs.tolist() == reply_ids[-8:]


def test_vocab_validation(tok):
    with pytest.raises(ValueError, match="exactly one"):
        make(tok, vocab=["interaction_prompt_not_a_token"])
    with pytest.raises(ValueError, match="twice"):
        make(tok, vocab=[5, 5])
    with pytest.raises(ValueError, match="outside"):
        make(tok, vocab=[10**7])
    with pytest.raises(ValueError, match="obs_type"):
        make(tok, obs_type="image")
    env, _ = make(tok, vocab=[7, 3])
    assert env.token_ids == [7, 3, tok.eos_token_id]
    env.reset(seed=0)
    with pytest.raises(ValueError, match="one int"):
        env.step(3)


def test_vocab_from_texts_covers_the_texts(tok):
    ids = vocab_from_texts(tok, ["<answer>42</answer>", "<think>"])
    assert ids == sorted(set(ids))
    assert set(tok.encode("<answer>42</answer>", add_special_tokens=False)) <= set(ids)


def test_sb3_ppo_runs_on_restricted_vocab(tok):
    import torch
    from stable_baselines3 import PPO

    torch.set_num_threads(1)
    inner = PromptCollabEnv(task="synthetic", env_llm="sim", max_turns=2)
    env = TokenWrapper(inner, tok, window=16, max_turn_tokens=12,
                       vocab=vocab_from_texts(tok, ["<think>a</think><answer>1</answer>"]))
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=32, n_epochs=1, seed=0, device="cpu").learn(64)
    obs, _ = env.reset(seed=3)
    assert env.action_space.contains(int(model.predict(obs)[0]))
