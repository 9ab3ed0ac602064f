"""Issue 27: the reference's own prompts, its data files and the last edge cases, reference vs ours vs preset.

Every expected value here is written by hand from our reading of the official code (QwenQKing/Prompt-R1:
llm_agent/generation.py, tool/envs/nous.py, tool/tools/LLM_tool.py, batch_inference.py, process_data.py,
vllm_infer/config.py, run_prompt-R1.sh, src/agent_reward_manager.py), never computed by our code.
"""

from __future__ import annotations

import json

import pytest

from promptr1.envs.collab_env import PromptCollabEnv
from promptr1.envs.tasks import Task
from promptr1.testing.scripted import ScriptedBackend

TASK = Task("Who founded Vantrel Corp?", ("Mira Osk",), id="t0")


def call(prompt, name: str = "prompt") -> str:
    return json.dumps({"name": name, "arguments": {"prompt": prompt}})


def turn(inner: str) -> str:
    return f"<think>Ask.</think><interaction_prompt>{inner}</interaction_prompt>"


# ----------------------------------------------------------------------------- item 3: an empty prompt


@pytest.mark.parametrize("framing, inner", [
    ("reference", call("")),       # nous.py: validate_args accepts "" (a string); LLM_tool sends it
    ("reference-eval", ""),        # batch_inference.py wraps "" into {"arguments": {"prompt": ""}}, then the same
])
def test_reference_framings_send_an_empty_prompt_and_return_the_reply(framing, inner):
    backend = ScriptedBackend(["I need a question."])
    env = PromptCollabEnv(task=[TASK], env_llm=backend, framing=framing, env_system_prompt=None)
    env.reset(seed=0)
    obs, _, done, _, info = env.step(turn(inner))
    assert backend.calls == [[{"role": "user", "content": ""}]]
    assert obs == '<interaction_response>\n{"results": ["I need a question."]}\n</interaction_response>'
    assert not done and env.episode_stats["env_llm_calls"] == 1


def test_our_framing_still_answers_an_empty_prompt_with_nothing():
    backend = ScriptedBackend(["never"])
    env = PromptCollabEnv(task=[TASK], env_llm=backend, framing="ours")
    env.reset(seed=0)
    obs, *_ = env.step(turn("   "))
    assert backend.calls == [] and obs == "<interaction_response></interaction_response>"


# ----------------------------------------------------------------------------- item 4: failed calls in the history


def _history_before_last_call(framing, env_history, turns):
    backend = ScriptedBackend(["R1", "R2", "R3", "R4"])
    env = PromptCollabEnv(task=[TASK], env_llm=backend, framing=framing, env_history=env_history,
                          env_system_prompt=None, max_turns=len(turns) + 1)
    env.reset(seed=0)
    for t in turns:
        env.step(t)
    return backend.calls[-1][:-1]  # the history sent with the last call


def U(text):
    return {"role": "user", "content": text}


def A(text):
    return {"role": "assistant", "content": text}


REFUSED = [
    turn(call("Who is B?", name="search")),                     # ToolNotFoundError, arguments.prompt "Who is B?"
    turn('{"name": "prompt", "arguments": {"query": "q"}}'),     # Invalid tool arguments, no prompt
    turn(call("")),                                              # sent (item 3), an empty prompt
    turn(call("last")),
]


def test_training_history_records_refused_calls_with_a_prompt_and_an_empty_reply():
    # generation.py _update_conversation_history: (arguments.prompt, results[0] or "") when the prompt is truthy
    history = _history_before_last_call("reference", "reference", REFUSED[:3] + [REFUSED[3]])
    assert history == [U("Who is B?"), A("")]  # the call without prompt and the empty one leave nothing


def test_evaluation_history_records_every_call_that_reached_the_env():
    # batch_inference.py update_after_tool_call: the stripped <interaction_prompt> text; arguments.get("prompt", raw)
    history = _history_before_last_call("reference-eval", "reference", REFUSED)
    assert history == [U("Who is B?"), A(""), U('{"name": "prompt", "arguments": {"query": "q"}}'), A(""),
                       U(""), A("R1")]


def test_our_history_keeps_calls_made_only():
    history = _history_before_last_call("reference", "seen", REFUSED)
    assert history == [U(""), A("R1")]
