"""The reference framing, checked against transcripts rendered by hand from our reading of the official code."""

from __future__ import annotations

import json

import pytest
import torch

from promptr1.agents import rollout as rollout_mod
from promptr1.agents.rollout import SampledTurn, rollout_config, run_episodes
from promptr1.core.settings import RunSettings
from promptr1.envs.collab_env import PromptCollabEnv
from promptr1.envs.framing import FRAMINGS, PROMPT_TOOL
from promptr1.envs.tasks import Task
from promptr1.testing.scripted import ScriptedBackend

TASK = Task("Who founded Vantrel Corp?", ("Mira Osk",), id="t0")


def call(prompt: str) -> str:
    return json.dumps({"name": "prompt", "arguments": {"prompt": prompt}})


def ref_env(backend, **kw) -> PromptCollabEnv:
    return PromptCollabEnv(task=[TASK], env_llm=backend, framing="reference", max_response_chars=2048, **kw)


def test_reference_system_message_carries_the_tool_schema():
    env = ref_env(ScriptedBackend(["x"]))
    _, info = env.reset(seed=0)
    system = info["messages"][0]
    assert system["role"] == "system" and json.dumps(PROMPT_TOOL) in system["content"]
    assert "<interaction_prompt>" in system["content"] and info["messages"][1]["content"] == TASK.prompt


def test_reference_turns_replies_and_prefill():
    backend = ScriptedBackend(["  Mira Osk founded it.  "])
    env = ref_env(backend, max_turns=3)
    env.reset(seed=0)
    first = f"<think>Ask.</think><interaction_prompt>{call('Who founded Vantrel Corp?')}</interaction_prompt>"
    obs, r, term, trunc, info = env.step(first)
    # the reply comes back as the JSON results object, the next turn opens with "<think>\n"
    assert obs == '<interaction_response>\n{"results": ["Mira Osk founded it."]}\n</interaction_response>'
    assert info["turn_prefill"] == "<think>\n" and backend.calls[0][-1] == {"role": "user",
                                                                           "content": "Who founded Vantrel Corp?"}
    obs, r, term, trunc, info = env.step("It said Mira Osk.</think><answer>Mira Osk</answer>")
    assert term and env.turns[1] == "<think>\nIt said Mira Osk.</think><answer>Mira Osk</answer>"
    # the prefilled turn is what the reward scores: a well-formed final block
    assert info["reward_components"]["format"] == pytest.approx(1.0) and r == pytest.approx(1.0)


@pytest.mark.parametrize("inner, error", [
    ("Who founded Vantrel Corp?", "Error: JSONDecodeError"),
    ('{"arguments": {"prompt": "q"}}', "Error: No tool name"),
    ('["prompt"]', "Error: No tool name"),
    ('{"name": "search", "arguments": {"query": "q"}}', "Error: ToolNotFoundError"),
    ('{"name": "prompt", "arguments": {"text": "q"}}', "Error: Invalid tool arguments"),
    ('{"name": "prompt"}', "Error: No tool arguments"),  # the reference's batched step (its training path)
    ('{"name": "search"}', "Error: No tool arguments"),  # arguments are checked before the name
])
def test_malformed_calls_get_the_reference_error_reply_and_no_llm_call(inner, error):
    backend = ScriptedBackend(["never"])
    env = ref_env(backend)
    env.reset(seed=0)
    obs, r, term, trunc, info = env.step(f"<think>t</think><interaction_prompt>{inner}</interaction_prompt>")
    assert obs == f"<interaction_response>\n{error}\n</interaction_response>"
    assert not term and not trunc and backend.calls == [] and info["env_error"] is None


def test_long_replies_are_cut_inside_the_json_with_dots():
    env = ref_env(ScriptedBackend(["y" * 100]), max_turns=2)
    env.max_response_chars = 30
    env.reset(seed=0)
    obs, *_ = env.step(f"<think>t</think><interaction_prompt>{call('q')}</interaction_prompt>")
    body = json.dumps({"results": ["y" * 100]})[:30] + "..."
    assert obs == f"<interaction_response>\n{body}\n</interaction_response>"


def test_our_framing_accepts_plain_text_prompts():
    backend = ScriptedBackend(["Mira Osk."])
    env = PromptCollabEnv(task=[TASK], env_llm=backend)
    env.reset(seed=0)
    obs, *_ = env.step("<think>t</think><interaction_prompt>Who founded Vantrel Corp?</interaction_prompt>")
    assert obs == "<interaction_response>Mira Osk.</interaction_response>"
    assert FRAMINGS.get("ours").stop_strings == ("</interaction_prompt>", "</answer>")
    assert FRAMINGS.get("reference").stop_strings == ()


def test_rollout_config_takes_the_framings_stop_strings():
    assert rollout_config(RunSettings(framing="reference")).stop_strings == ()
    assert rollout_config(RunSettings()).stop_strings == ("</interaction_prompt>", "</answer>")


def test_reference_episode_token_by_token(monkeypatch):
    """The whole token sequence of a two-turn reference episode equals the ChatML transcript written by hand:
    system with the tool schema, the question, turn 1, the JSON reply as a user turn, the <think> prefill
    (context), turn 2; the mask covers exactly the generated tokens. The agent's end-of-turn token is followed
    by the frame's own, as in the reference's stream (generation.py appends NousToolEnv's reply, which opens with
    <|im_end|>, to the sampled ids, which end with it)."""
    from promptr1.testing.tiny_model import tiny_model_path
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    turns = [f"<think>Ask.</think><interaction_prompt>{call('Who founded Vantrel Corp?')}</interaction_prompt>",
             "It said so.</think><answer>Mira Osk</answer>"]
    scripted = iter(turns)
    seen_stops = []

    def fake_sample(model, tokenizer, prompts, **kw):
        seen_stops.append(tuple(kw["stop_strings"]))
        out = []
        for _ in prompts:
            ids = tokenizer(next(scripted), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            out.append(SampledTurn(ids, [0.0] * len(ids), "eos"))
        return out

    monkeypatch.setattr(rollout_mod, "sample_turns", fake_sample)
    env = ref_env(ScriptedBackend(["Mira Osk founded it."]))
    cfg = rollout_config(RunSettings(framing="reference", max_new_tokens=64, max_seq_len=2048))
    ep = run_episodes(model, tok, [env], [TASK], [0], cfg, generator=torch.Generator().manual_seed(0))[0]

    system = FRAMINGS.get("reference").agent_system_prompt(None)
    reply = '<interaction_response>\n{"results": ["Mira Osk founded it."]}\n</interaction_response>'
    expected = (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{TASK.prompt}<|im_end|>\n"
                f"<|im_start|>assistant\n{turns[0]}<|im_end|><|im_end|>\n<|im_start|>user\n{reply}<|im_end|>\n"
                f"<|im_start|>assistant\n<think>\n{turns[1]}<|im_end|>")
    assert tok.decode(ep.ids) == expected
    generated = [tok.decode([i for i, m in zip(seg, [1] * len(seg))]) for seg, is_agent in ep.segments if is_agent]
    assert generated == [turns[0] + "<|im_end|>", turns[1] + "<|im_end|>"]  # the prefill is context, not action
    assert seen_stops == [(), ()]  # generation stops only at the end-of-turn token
    assert ep.terminated and ep.reward == pytest.approx(1.0)
    assert ep.messages[-1] == {"role": "assistant", "content": "<think>\n" + turns[1]}
