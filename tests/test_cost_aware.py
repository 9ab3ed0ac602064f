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
    base = compute_reward(env.turns, TASK.answers, variant="faithful").total  # the reference's total: 1.0 here
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
    with pytest.raises(ValueError, match="cost_reference_usd must be > 0"):
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
