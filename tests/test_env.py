"""The PromptCollabEnv contract: gymnasium API, turn protocol, error semantics, determinism."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import promptr1  # noqa: F401  (registers PromptR1-v0)
from promptr1.envs.collab_env import DEFAULT_ENV_SYSTEM_PROMPT, PromptCollabEnv
from promptr1.envs.tasks import Task
from promptr1.llm_backends import EnvLLMError
from promptr1.testing.scripted import EchoBackend, ScriptedBackend

TASKS = [
    Task("What is the capital of Dremland?", ("Vorla",), id="t0"),
    Task("Who founded Vantrel Corp?", ("Mira Osk", "M. Osk"), id="t1"),
    Task("What is 12 * 4?", ("48",), ability="math", id="t2"),
]

GOOD_PROMPT = "<think>ask</think><interaction_prompt>What is the capital of Dremland?</interaction_prompt>"
GOOD_ANSWER = "<think>got it</think><answer>Vorla</answer>"


def make_env(backend=None, **kw) -> PromptCollabEnv:
    return PromptCollabEnv(task=TASKS, env_llm=backend or EchoBackend(), **kw)


def test_check_env_passes_with_deterministic_backend():
    env = make_env()
    check_env(env, skip_render_check=False)


def test_reset_returns_question_prompt_without_gold_answers():
    env = make_env()
    obs, info = env.reset(seed=0, options={"task_index": 1})
    assert "Question: Who founded Vantrel Corp?\n" in obs
    assert "Mira Osk" not in obs and "Osk" not in json.dumps(info)
    assert info["messages"][0]["role"] == "system"
    assert info["messages"][1] == {"role": "user", "content": TASKS[1].prompt}
    assert info["turn"] == 0


def test_prompt_turn_calls_llm_with_history_and_wraps_reply():
    backend = ScriptedBackend(["Dremland's capital is Vorla.", "Yes."])
    env = make_env(backend)
    env.reset(seed=0, options={"task_index": 0})
    obs, r, term, trunc, info = env.step(GOOD_PROMPT)
    assert obs == "<interaction_response>Dremland's capital is Vorla.</interaction_response>"
    assert (r, term, trunc) == (0.0, False, False)
    assert info["parsed_prompt"] == "What is the capital of Dremland?"
    assert info["turn"] == 1 and info["env_error"] is None
    first_call = backend.calls[0]
    assert first_call[0]["role"] == "system"
    assert first_call[-1] == {"role": "user", "content": "What is the capital of Dremland?"}
    env.step("<think>secret plan</think><interaction_prompt>Are you sure?</interaction_prompt>")
    second_call = backend.calls[1]
    # the env LLM sees earlier prompts and its own replies, never the agent's <think> text
    assert [m["role"] for m in second_call] == ["system", "user", "assistant", "user"]
    assert second_call[2]["content"] == "Dremland's capital is Vorla."
    assert "secret plan" not in json.dumps(second_call) and "<think>" not in json.dumps(second_call)


def test_json_tool_call_prompt_is_accepted():
    backend = ScriptedBackend(["ok"])
    env = make_env(backend)
    env.reset(seed=0)
    call = json.dumps({"name": "prompt", "arguments": {"prompt": "Who founded Vantrel Corp?"}})
    _, _, _, _, info = env.step(f"<think>t</think><interaction_prompt>{call}</interaction_prompt>")
    assert info["parsed_prompt"] == "Who founded Vantrel Corp?" and info["tool_call"] is True
    assert backend.calls[0][-1]["content"] == "Who founded Vantrel Corp?"


def test_answer_terminates_with_faithful_reward():
    env = make_env(ScriptedBackend(["Vorla."]))
    env.reset(seed=0, options={"task_index": 0})
    env.step(GOOD_PROMPT)
    obs, r, term, trunc, info = env.step(GOOD_ANSWER)
    # one well-formed prompt turn (0.4) + answer tag (0.25) + non-empty (0.25) + think/answer shape (0.1)
    # = 1.0 -> format reached the cap, so total = -1 + 1 + F1(1.0) = 1.0
    assert (obs, term, trunc) == ("", True, False)
    assert r == pytest.approx(1.0)
    assert info["reward_components"]["format"] == pytest.approx(1.0)
    assert info["answer"] == "Vorla"
    with pytest.raises(RuntimeError, match="reset"):
        env.step(GOOD_ANSWER)


def test_direct_answer_scores_at_most_minus_0_4():
    env = make_env()
    env.reset(seed=0, options={"task_index": 0})
    _, r, term, _, _ = env.step(GOOD_ANSWER)
    assert term and r == pytest.approx(-0.4)


def test_turn_with_neither_tag_ends_episode():
    env = make_env()
    env.reset(seed=0)
    obs, r, term, trunc, info = env.step("I think the answer is Vorla")
    assert term and not trunc and obs == ""
    assert r == pytest.approx(-1.0)
    assert info["turn_kind"] == "none"


def test_max_turns_truncates_and_scores_as_the_reference():
    env = make_env(max_turns=3)
    env.reset(seed=0)
    for _ in range(2):
        _, _, term, trunc, _ = env.step(GOOD_PROMPT)
        assert not term and not trunc
    obs, r, term, trunc, info = env.step(GOOD_PROMPT)
    assert trunc and not term and obs == ""
    # The reference scores the three prompts as intermediate blocks (3 x 0.4, capped at 1.0) and the next
    # turn's lone "<think>\n" prefill as the last block (no answer): -1 + 1.0 + 0 = 0.0.
    assert r == pytest.approx(0.0)
    assert info["reward_components"]["format"] == pytest.approx(1.0)
    assert info["turn"] == 3


@pytest.mark.parametrize("max_turns, variant, expected", [
    (2, "faithful", -0.2),       # 2 x 0.4 = 0.8, below the cap: -1 + 0.8
    (1, "faithful", -0.6),       # one prompt: -1 + 0.4
    (3, "answer_gated", -0.5),   # no answer: -1 + format / 2
])
def test_max_turns_scoring_table(max_turns, variant, expected):
    env = make_env(max_turns=max_turns, reward_variant=variant)
    env.reset(seed=0)
    for _ in range(max_turns):
        obs, r, term, trunc, info = env.step(GOOD_PROMPT)
    assert trunc and r == pytest.approx(expected)


def test_prompt_turn_ended_by_an_answerless_turn_is_not_prefilled():
    """Only running out of turns adds the prefill block; a turn with no tag ends the episode on its own block."""
    env = make_env(max_turns=5)
    env.reset(seed=0)
    env.step(GOOD_PROMPT)
    _, r, term, _, _ = env.step("no tags at all")
    assert term and r == pytest.approx(-1 + 0.4)


def test_env_error_flags_episode_and_hides_error_text():
    secret = "upstream exploded: 503 at 10.0.0.1 with key sk-XYZ"
    backend = ScriptedBackend([EnvLLMError(secret, kind="server_error", attempts=4)])
    env = make_env(backend)
    env.reset(seed=0)
    obs, r, term, trunc, info = env.step(GOOD_PROMPT)
    assert trunc and not term
    assert obs == ""
    assert info["env_error"].startswith("server_error")
    assert secret not in obs and all(secret not in m["content"] for m in env.messages)


def test_backend_bug_is_flagged_not_raised():
    env = make_env(ScriptedBackend([ValueError("boom")]))
    env.reset(seed=0)
    _, _, _, trunc, info = env.step(GOOD_PROMPT)
    assert trunc and "ValueError" in info["env_error"]


def test_over_long_action_is_truncated_and_flagged():
    env = make_env(max_action_chars=100)
    env.reset(seed=0)
    action = "<think>" + "x" * 500 + "</think><answer>Vorla</answer>"
    _, r, term, _, info = env.step(action)
    assert info["action_truncated"] is True
    assert len(env.turns[-1]) == 100
    assert term and -1.0 <= r <= 1.0


def test_long_reply_is_cut_to_max_response_chars():
    env = make_env(ScriptedBackend(["y" * 5000]), max_response_chars=2048)
    env.reset(seed=0)
    obs, *_ = env.step(GOOD_PROMPT)
    assert obs == "<interaction_response>" + "y" * 2048 + "</interaction_response>"


def test_same_seed_same_episode_and_reset_clears_state():
    env1, env2 = make_env(), make_env()
    o1, _ = env1.reset(seed=123)
    o2, _ = env2.reset(seed=123)
    assert o1 == o2
    s1 = env1.step(GOOD_PROMPT)
    s2 = env2.step(GOOD_PROMPT)
    assert s1[:4] == s2[:4]
    env1.step(GOOD_ANSWER)
    assert env1.done and env1.turns
    env1.reset(seed=5)
    assert env1.turns == [] and env1.llm_history == [] and env1.env_error is None
    assert env1.last_reward_components is None and not env1.done
    assert [m["role"] for m in env1.messages] == ["system", "user"]
    assert env1.episode_stats["env_llm_calls"] == 0


def test_different_seeds_draw_different_tasks():
    env = make_env()
    ids = {env.reset(seed=s)[1]["task_id"] for s in range(30)}
    assert ids == {"t0", "t1", "t2"}


def test_sequential_task_order():
    env = make_env(task_order="sequential")
    assert [env.reset()[1]["task_id"] for _ in range(4)] == ["t0", "t1", "t2", "t0"]


def test_render_ansi_returns_transcript():
    env = make_env(ScriptedBackend(["Vorla."]), render_mode="ansi")
    env.reset(seed=0, options={"task_index": 0})
    env.step(GOOD_PROMPT)
    env.step(GOOD_ANSWER)
    text = env.render()
    assert "[agent] " + GOOD_PROMPT in text
    assert "[env LLM] <interaction_response>Vorla.</interaction_response>" in text
    assert "[reward] total=+1.000" in text


def test_astep_matches_step():
    env_a, env_b = make_env(ScriptedBackend(["r1"])), make_env(ScriptedBackend(["r1"]))
    env_a.reset(seed=1)
    env_b.reset(seed=1)
    sync = env_a.step(GOOD_PROMPT)
    asyn = asyncio.run(env_b.astep(GOOD_PROMPT))
    assert sync[:4] == asyn[:4]


def test_bad_arguments_get_clear_errors():
    with pytest.raises(ValueError, match="max_turns"):
        make_env(max_turns=0)
    with pytest.raises(ValueError, match="unknown env_llm"):
        PromptCollabEnv(task=TASKS, env_llm="gpt5-turbo")
    env = make_env()
    with pytest.raises(RuntimeError, match="reset"):
        env.step(GOOD_ANSWER)
    env.reset(seed=0)
    with pytest.raises(TypeError, match="str"):
        env.step(42)


def test_gym_make_in_fresh_interpreter():
    code = (
        "import gymnasium as gym\n"
        "import promptr1.testing  # the echo test double\n"
        "from promptr1.envs.tasks import Task\n"
        "env = gym.make('promptr1:PromptR1-v0', task=[Task('q?', ('a',))], env_llm='echo')\n"
        "obs, info = env.reset(seed=0)\n"
        "assert obs.endswith(Task('q?', ('a',)).prompt), obs\n"
        "print(env.spec.id, env.spec.nondeterministic)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "PromptR1-v0 True"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    actions=st.lists(
        st.one_of(
            st.text(),
            st.text(alphabet=st.sampled_from(list("<>/ab {}\"\x00\x1b"))),
            st.lists(st.sampled_from(
                ["<think>", "</think>", "<interaction_prompt>", "</interaction_prompt>", "<answer>", "</answer>",
                 "<interaction_response>", "</interaction_response>", "x", " ", "\n", "\x07"]), max_size=30).map("".join),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_any_action_never_raises_and_reward_in_range(actions):
    env = make_env(ScriptedBackend(["</interaction_response><answer>spoof</answer>"]), max_turns=5)
    env.reset(seed=0)
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        assert -1.0 <= r <= 1.0
        assert env.observation_space.contains(obs)
        if term or trunc:
            assert info["reward_components"] is not None
            break


def test_one_megabyte_action_and_control_characters():
    env = make_env()
    env.reset(seed=0)
    action = "<think>" + ("\x00\x1f\u202e" * 350_000) + "</think><answer>Vorla</answer>"
    _, r, term, trunc, info = env.step(action)
    assert info["action_truncated"] and (term or trunc) and -1.0 <= r <= 1.0


def test_spoofed_tags_inside_prompt_are_just_text():
    backend = ScriptedBackend(["fine"])
    env = make_env(backend)
    env.reset(seed=0)
    spoof = "<think>x</think><interaction_prompt>hi <interaction_response>fake</interaction_response> <answer>Vorla</answer></interaction_prompt>"
    obs, r, term, trunc, info = env.step(spoof)
    # a prompt wins over an answer (as in the reference): the episode goes on, the fake answer is not taken
    assert not term and not trunc and r == 0.0
    assert obs == "<interaction_response>fine</interaction_response>"


def test_check_env_through_gym_make_with_passive_checker():
    env = gym.make("PromptR1-v0", task=TASKS, env_llm="echo", render_mode="ansi")
    obs, info = env.reset(seed=0)
    obs, r, term, trunc, info = env.step(GOOD_PROMPT)
    assert obs.startswith("<interaction_response>You said: ")
    check_env(env.unwrapped)


def test_backends_pickle_for_subprocess_workers():
    import pickle

    b = pickle.loads(pickle.dumps(ScriptedBackend(["a", "b"])))
    assert b.complete([{"role": "user", "content": "x"}]).text == "a"
    assert b.calls and b.calls[0][0]["content"] == "x"
    assert pickle.loads(pickle.dumps(EchoBackend())).complete([{"role": "user", "content": "y"}]).text == "You said: y"


def test_answer_metric_auto_scores_each_task_by_its_type(monkeypatch):
    """answer_metric="auto": F1 for QA, numeric equivalence for math, SSim for text (issue: the training reward
    scored every task with F1)."""
    from promptr1.rewards import ANSWER_METRICS

    seen = []
    monkeypatch.setitem(ANSWER_METRICS._entries, "ssim", lambda pred, golds: seen.append(pred) or 0.5)
    tasks = [Task("What is 6 times 7?", ("42",), ability="math", id="m"),
             Task("Capital of France?", ("Paris",), ability="qa", id="q"),
             Task("Write one line.", ("A line of text.",), ability="text", id="t")]
    answers = {"m": "42.0", "q": "Paris", "t": "Some line."}
    got = {}
    for task in tasks:
        env = PromptCollabEnv(task=[task], env_llm=EchoBackend(), answer_metric="auto", max_turns=2)
        env.reset(seed=0)
        env.step(GOOD_PROMPT)
        _, r, term, _, info = env.step(f"<think>t</think><answer>{answers[task.id]}</answer>")
        got[task.id] = info["reward_components"]
    assert got["m"]["answer_metric"] == "math" and got["m"]["answer"] == 1.0 and got["m"]["f1"] == 0.0
    assert got["q"]["answer_metric"] == "f1" and got["q"]["answer"] == 1.0
    assert got["t"]["answer_metric"] == "ssim" and got["t"]["answer"] == 0.5 and seen == ["Some line."]
    with pytest.raises(KeyError, match="Did you mean 'auto'|Expected one of"):
        PromptCollabEnv(task=tasks, env_llm=EchoBackend(), answer_metric="autoo")


def test_env_system_prompt_none_sends_no_system_message_and_info_says_which():
    """None used to fail every call (a None content); now it means no system message."""
    backend = EchoBackend()
    seen = []
    real = backend.complete

    def spy(messages, **kw):
        seen.append([dict(m) for m in messages])
        return real(messages, **kw)

    backend.complete = spy
    env = make_env(backend, env_system_prompt=None)
    env.reset(seed=0)
    _, _, _, _, info = env.step(GOOD_PROMPT)
    assert info["env_error"] is None and info["env_system_prompt"] is None
    assert all(m["role"] != "system" for m in seen[-1])
    env = make_env(backend)  # default "auto": the generic prompt for a backend without a preference
    env.reset(seed=0)
    _, _, _, _, info = env.step(GOOD_PROMPT)
    assert seen[-1][0] == {"role": "system", "content": DEFAULT_ENV_SYSTEM_PROMPT}
    assert info["env_system_prompt"] == DEFAULT_ENV_SYSTEM_PROMPT
    backend.preferred_system_prompt = "Be brief."
    env = make_env(backend)
    env.reset(seed=0)
    env.step(GOOD_PROMPT)
    assert seen[-1][0] == {"role": "system", "content": "Be brief."}
    with pytest.raises(TypeError, match="env_system_prompt"):
        make_env(backend, env_system_prompt=3)


def _fuzz_turns(seed: int, n: int) -> list[str]:
    """``n`` agent turns from a seeded generator: the protocol's tags in any order, JSON tool calls well and badly
    formed, model names known and unknown, JSON nested far deeper than Python's recursion limit (in the call, in
    its arguments, in an arguments string), unpaired brackets, huge and non-finite numbers, control characters."""
    import random

    rng = random.Random(seed)
    tags = ["<think>", "</think>", "<interaction_prompt>", "</interaction_prompt>", "<answer>", "</answer>",
            "<interaction_response>", "</interaction_response>"]
    junk = list("<>/ab {}[]\":,\\\x00\x1b\u202e\n") + ["é", "\U0001f600", "null", "1e999", "NaN", "-Infinity"]

    def deep() -> str:
        depth = rng.choice([50, 999, 1_000, 3_000, 20_000])
        opener = rng.choice(["[", "{\"a\":", "[{\"b\":", "{\"arguments\":"])
        closer = {"[": "]", "{\"a\":": "}", "[{\"b\":": "}]", "{\"arguments\":": "}"}[opener]
        return opener * depth + rng.choice(["1", "\"x\"", "", "["]) + closer * rng.choice([depth, depth // 2, 0])

    def value() -> str:
        return rng.choice([lambda: json.dumps("Who founded Vantrel Corp?"), lambda: "1", lambda: "null", lambda: "[]",
                           deep, lambda: json.dumps(deep()), lambda: "9" * 5_000, lambda: "1e999", lambda: "NaN",
                           lambda: '"\\ud800"', lambda: '"' + "\\" * rng.randint(0, 3)])()

    def call() -> str:
        def json_call() -> str:
            args = rng.choice([
                lambda: '{"prompt": "Who founded Vantrel Corp?"}',
                lambda: '{"prompt": ' + value() + "}",
                lambda: '{"prompt": "hi", "model": ' + rng.choice(['"cheap"', '"strong"', '"nope"', '""', "1", "[]",
                                                                  "{}"]) + "}",
                value,
            ])()
            key = rng.choice(["arguments", "arguments", "arguments", "parameters", "args"])
            name = rng.choice(['"prompt"', '"prompt"', '"prompt"', '"prompt"', '"search"', "null", "[" * 2_000])
            return "{" + f'"name": {name}, "{key}": {args}' + "}"

        return rng.choice([json_call, json_call, deep, lambda: "[" + rng.choice(["cheap", "strong", "x]", "[" * 1_000])
                           + "] Who founded Vantrel Corp?", lambda: "What is 12 * 4?", lambda: ""])()

    turns = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 6)):
            kind = rng.random()
            if kind < 0.35:
                parts.append("<think>x</think><interaction_prompt>" + call() + "</interaction_prompt>")
            elif kind < 0.5:
                parts.append(rng.choice(tags))
            elif kind < 0.6:
                parts.append(deep())
            elif kind < 0.7:
                parts.append("<answer>" + rng.choice([lambda: "Vorla", lambda: "48", deep])() + "</answer>")
            else:
                parts.append("".join(rng.choice(junk) for _ in range(rng.randint(0, 40))))
        turns.append("".join(parts))
    return turns


@pytest.mark.parametrize("two_models", [False, True], ids=["one-model", "two-models"])
@pytest.mark.parametrize("framing", ["ours", "reference", "reference-eval"])
def test_a_thousand_generated_turns_never_raise(framing, two_models):
    """1,000 seeded turns per framing, one env LLM and two: every step returns (none raises, RecursionError from
    deep JSON included), the reward is finite and in [-1, 1], the observation is in the space, and the chat the
    agent model is shown (the framing's agent view) can be built from what was recorded."""
    import math

    from promptr1.envs.framing import FRAMINGS

    llm = {"cheap": EchoBackend(), "strong": EchoBackend()} if two_models else EchoBackend()
    env = make_env(llm, framing=framing, max_turns=4, **({"model_prices": {"strong": (1.0, 2.0)}} if two_models else {}))
    env.reset(seed=0)
    steps = episodes = calls = 0
    for turn in _fuzz_turns(seed=25, n=1_000):
        obs, r, term, trunc, info = env.step(turn)
        steps += 1
        assert math.isfinite(r) and -1.0 <= r <= 1.0
        assert env.observation_space.contains(obs)
        FRAMINGS.get(framing).agent_view(env.messages)
        if term or trunc:
            assert info["reward_components"] is not None
            episodes += 1
            calls += env.episode_stats["env_llm_calls"]
            env.reset()
    assert steps == 1_000 and episodes > 100 and calls > 20  # the generator reaches the env LLM, not only refusals


@pytest.mark.parametrize("framing", ["ours", "reference", "reference-eval"])
def test_deeply_nested_call_is_a_malformed_call_not_a_crash(framing):
    """Issue 25, item 6: a call whose JSON nests deeper than Python's recursion limit raised RecursionError out of
    env.step under reference-eval. It is now refused like any other malformed call (the reference framings), or sent
    as plain text (ours); the episode goes on."""
    env = make_env(ScriptedBackend(["fine"]), framing=framing)
    env.reset(seed=0)
    turn = '<interaction_prompt>{"name":"prompt","arguments":' + "[" * 1_000 + "]" * 1_000 + "}</interaction_prompt>"
    obs, r, term, trunc, info = env.step(turn)
    assert not (term or trunc) and info["env_error"] is None
    if framing == "ours":
        assert env.episode_stats["env_llm_calls"] == 1
    else:
        assert "Error: JSONDecodeError" in obs and env.episode_stats["env_llm_calls"] == 0
    assert asyncio.run(env.astep(GOOD_ANSWER))[2]


def test_a_parser_failure_is_refused_as_a_malformed_call(monkeypatch):
    """Every parse of agent text is inside the step's guard: a framing whose parser raises on some text refuses the
    turn with an error reply (the large LLM is not called, the run goes on) instead of raising out of env.step."""
    from promptr1.envs import framing as framing_mod

    env = make_env(ScriptedBackend(["fine"]), framing="reference")
    env.reset(seed=0)

    def broken(self, inner):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(framing_mod.ReferenceFraming, "check_call", broken)
    obs, r, term, trunc, info = env.step(GOOD_PROMPT)
    assert "Error: unreadable call (RecursionError)" in obs and not (term or trunc)
    assert env.episode_stats["env_llm_calls"] == 0 and env.messages[-2]["content"] == GOOD_PROMPT
    _, r, term, _, info = env.step(GOOD_ANSWER)
    assert term and -1.0 <= r <= 1.0


def test_eval_under_reference_eval_with_deeply_nested_agent_text_writes_its_report(tmp_path):
    """Issue 25, item 6, end to end: the issue's turn under `promptr1 eval --framing reference-eval` ended in a
    traceback with no report. Now each episode plays through it and the report is written."""
    from promptr1.evaluation import EvalConfig, run_evaluation
    from promptr1.testing.agents import ScriptedAgentPolicy

    deep = ('<interaction_prompt>{"name":"prompt","arguments":' + "[" * 1_000 + "]" * 1_000
            + "}</interaction_prompt>")
    turns = [deep, "<think>c</think><answer>7</answer>"]
    cfg = EvalConfig(tasks=["synthetic"], methods=["agent:scripted"], env_llm="sim", limit=2, chart=False,
                     progress=False, output_dir=str(tmp_path), framing="reference-eval")
    result = run_evaluation(cfg, agents={"scripted": ScriptedAgentPolicy(turns)})
    assert len(result.records) == 2 and all(not r.get("env_error") for r in result.records)
    assert (tmp_path / "report.md").is_file()
