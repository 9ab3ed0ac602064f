"""Issue 19, items 1-5: where the numbers come from, reference vs ours vs ``--preset reference``.

Every expected value and transcript here is written by hand from our reading of the official code
(QwenQKing/Prompt-R1: promptr1_agent/src/agent_reward_manager.py, core_algos.py, llm_agent/generation.py,
tool/envs/nous.py, batch_inference.py, vllm_infer/config.py), never computed by our code.
"""

from __future__ import annotations

import json

import pytest
import torch

from promptr1.agents import rollout as rollout_mod
from promptr1.agents.config import GRPOConfig
from promptr1.agents.episode import Episode, ends_on_context, training_reward
from promptr1.agents.rollout import SampledTurn, rollout_config, run_episodes
from promptr1.core.settings import RunSettings, bundled_config, load_config
from promptr1.envs.collab_env import PromptCollabEnv
from promptr1.envs.framing import FRAMINGS
from promptr1.envs.tasks import Task
from promptr1.testing.scripted import ScriptedBackend

TASK = Task("Who founded Vantrel Corp?", ("Mira Osk",), id="t0")


def call(prompt: str) -> str:
    return json.dumps({"name": "prompt", "arguments": {"prompt": prompt}})


def good_prompt_turn(prompt: str = "Who founded Vantrel Corp?") -> str:
    return f"<think>Ask.</think><interaction_prompt>{call(prompt)}</interaction_prompt>"


def scripted_sampler(turns, seen_prompts=None):
    scripted = iter(turns)

    def fake_sample(model, tokenizer, prompts, **kw):
        out = []
        for p in prompts:
            if seen_prompts is not None:
                seen_prompts.append(tokenizer.decode(p))
            ids = tokenizer(next(scripted), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            out.append(SampledTurn(ids, [0.0] * len(ids), "eos"))
        return out

    return fake_sample


@pytest.fixture(scope="module")
def tiny_pair():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from promptr1.testing.tiny_model import tiny_model_path

    path = tiny_model_path()
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


# ----------------------------------------------------------------------------- item 1: truncated episodes


def _out_of_turns_episode(monkeypatch, tiny_pair, max_seq_len=2048):
    """Two well-formed prompt turns, max_turns=2: the reference scores blocks [p1, p2, "<think>\\n"]: format
    0.4 + 0.4 + 0 = 0.8, no answer: -1 + 0.8 = -0.2."""
    model, tok = tiny_pair
    monkeypatch.setattr(rollout_mod, "sample_turns", scripted_sampler([good_prompt_turn(), "Again.</think>"
                                                                       f"<interaction_prompt>{call('Sure?')}"
                                                                       "</interaction_prompt>"]))
    env = PromptCollabEnv(task=[TASK], env_llm=ScriptedBackend(["Mira Osk.", "Yes."]), framing="reference",
                          max_turns=2)
    cfg = rollout_config(RunSettings(framing="reference", max_new_tokens=64, max_seq_len=max_seq_len))
    return run_episodes(model, tok, [env], [TASK], [0], cfg, generator=torch.Generator().manual_seed(0))[0]


def test_truncated_reward_reference_trains_episodes_ending_on_a_reply_at_zero(monkeypatch, tiny_pair):
    from promptr1.integrations.trl import episode_metrics, episodes_to_trl

    ep = _out_of_turns_episode(monkeypatch, tiny_pair)
    assert ep.truncated and not ep.terminated and ends_on_context(ep)
    assert ep.reward == pytest.approx(-0.2)  # what reports show, in both modes
    assert training_reward(ep) == pytest.approx(-0.2)  # ours: the reward function's value
    assert training_reward(ep, "reference") == 0.0  # the reference: score on a masked token -> 0
    # the TRL rollout: episode_reward is the training signal, the function's value stays in episode_info
    trl = episodes_to_trl([ep], truncated_reward="reference")
    assert trl["episode_reward"] == [0.0] and trl["episode_info"][0]["reward"] == pytest.approx(-0.2)
    assert episodes_to_trl([ep])["episode_reward"] == [pytest.approx(-0.2)]
    m = episode_metrics(trl["episode_reward"], trl["env_error"], trl["reward_components"], trl["episode_info"])
    assert m["rollout/masked_end_rate"] == 1.0
    # an answered episode ends on the agent's own tokens: the same in both modes
    done = Episode(task=TASK, group=0, reward=1.0, done=True, terminated=True)
    assert not ends_on_context(done) and training_reward(done, "reference") == 1.0
    # overflow ends on masked tokens too: -1 (ours) vs 0 (reference)
    over = Episode(task=TASK, group=0, reward=-1.0, done=True, truncated=True, overflow=True)
    assert training_reward(over) == -1.0 and training_reward(over, "reference") == 0.0
    # an env-error episode leaves its group anyway: not counted
    err = Episode(task=TASK, group=0, reward=-1.0, done=True, truncated=True, env_error="timeout: t")
    assert not ends_on_context(err)
    with pytest.raises(ValueError, match="truncated_reward must be one of ours, reference"):
        training_reward(ep, "refrence")


def test_truncated_reward_reaches_the_verl_reward_score(monkeypatch, tiny_pair):
    pytest.importorskip("verl.experimental.agent_loop", reason="verl 0.9 is not installed")
    from promptr1.integrations.verl import episode_to_verl

    ep = _out_of_turns_episode(monkeypatch, tiny_pair)
    ref = episode_to_verl(ep, truncated_reward="reference")
    assert ref["reward_score"] == 0.0 and ref["reward_extra_info"]["score"] == pytest.approx(-0.2)
    assert ref["reward_extra_info"]["masked_end"] == 1.0
    assert episode_to_verl(ep)["reward_score"] == pytest.approx(-0.2)


def test_our_trainer_trains_on_the_reference_signal_and_logs_the_masked_end_rate(tmp_path, advantage_inputs):
    """Every episode of the stand-in env runs out of turns: under truncated_reward=reference the advantages are
    computed from zeros; reward/mean still reports the reward function's values."""
    pytest.importorskip("accelerate")
    from promptr1.agents.trainer import GRPOTrainer
    from promptr1.testing.tiny_model import tiny_model_path

    class OutOfTurnsEnv:
        """Two turns, then truncated with a reward that depends on the text (groups have variance)."""

        def reset(self, seed=None, options=None):
            self.task, self.t = options["task"], 0
            return self.task.prompt, {"messages": [{"role": "user", "content": self.task.prompt}]}

        def step(self, action):
            self.t += 1
            if self.t >= 2:
                r = (len(action) % 5) / 2.0 - 1.0
                return "", r, False, True, {"env_error": None, "reward_components": {"total": r, "format": 0.0}}
            return "<interaction_response>ok</interaction_response>", 0.0, False, False, {"env_error": None}

    tasks = [Task(question=f"What is {i} plus {i}?", answers=(str(2 * i),), id=f"q{i}") for i in range(4)]
    cfg = GRPOConfig(model=str(tiny_model_path()), steps=1, batch_questions=2, group_size=3, max_new_tokens=8,
                     max_seq_len=512, max_turns=2, lr=0.0, seed=3, progress=False, output_dir=str(tmp_path / "run"),
                     num_transcripts=1, kl_coef=0.0, truncated_reward="reference")
    tr = GRPOTrainer(cfg, tasks=tasks, env_factory=OutOfTurnsEnv)
    m = tr.train_step()
    assert torch.all(advantage_inputs["rewards"] == 0.0)
    assert m["rollout/masked_end_rate"] == 1.0 and m["reward/train_mean"] == 0.0
    assert m["reward/mean"] == pytest.approx(sum(e.reward for e in tr._last_episodes) / len(tr._last_episodes))


# ----------------------------------------------------------------------------- item 2: the env LLM's history


@pytest.mark.parametrize("framing, mode, expected", [
    ("ours", "seen", "x" * 2048),                 # the reply cut as the agent saw it
    ("ours", "full", "x" * 3000),                 # the whole reply, re-sent
    ("ours", "reference", ""),                    # {"results": ["x"*3000]} is over 2,048 chars: re-parse fails
    ("reference", "seen", "x" * (2048 - 14)),     # the visible part of the JSON text: 2,048 - len('{"results": ["')
    ("reference", "reference", ""),
])
def test_env_history_keeps_what_the_agent_saw_or_the_references_empty_message(framing, mode, expected):
    backend = ScriptedBackend(["x" * 3000, "ok"])
    env = PromptCollabEnv(task=[TASK], env_llm=backend, framing=framing, env_history=mode, max_turns=3)
    env.reset(seed=0)
    env.step(good_prompt_turn("first"))
    env.step("<think>t</think>" + f"<interaction_prompt>{call('second')}</interaction_prompt>")
    history = backend.calls[1]
    assert history[-3:] == [{"role": "user", "content": "first"}, {"role": "assistant", "content": expected},
                            {"role": "user", "content": "second"}]


def test_env_history_short_replies_are_kept_whole_in_every_mode():
    for mode in ("seen", "full", "reference"):
        backend = ScriptedBackend(["  Paris  ", "ok"])
        env = PromptCollabEnv(task=[TASK], env_llm=backend, framing="reference", env_history=mode, max_turns=3)
        env.reset(seed=0)
        env.step(good_prompt_turn("first"))
        env.step(good_prompt_turn("second"))
        kept = backend.calls[1][-2]["content"]
        assert kept == ("  Paris  " if mode == "full" else "Paris")  # the reference stores the stripped reply
    assert PromptCollabEnv.settings_kwargs(RunSettings(env_history="reference"))["env_history"] == "reference"
    with pytest.raises(ValueError, match="env_history must be one of seen, full, reference"):
        PromptCollabEnv(task=[TASK], env_llm=ScriptedBackend(["x"]), env_history="all")


# ----------------------------------------------------------------------------- item 3: recipe values


@pytest.mark.parametrize("name", ["paper", "paper-1gpu"])
def test_paper_configs_carry_the_reference_recipe_values(name):
    cfg = load_config(GRPOConfig, bundled_config(name))
    assert cfg.weight_decay == 0.01  # agent_trainer.yaml: actor.optim.weight_decay 0.01
    assert cfg.env_temperature is None and "temperature" not in cfg.env_sampling()  # LLM_tool.py sends none
    assert cfg.truncated_reward == "reference" and cfg.env_history == "reference"
    assert load_config(GRPOConfig).env_sampling()["temperature"] == 0.0  # our default: greedy env LLM


def test_verl_paper_config_has_the_reference_weight_decay():
    import yaml

    data = yaml.safe_load(open(bundled_config("verl-paper"), encoding="utf-8"))
    assert data["actor_rollout_ref"]["actor"]["optim"]["weight_decay"] == 0.01


# ----------------------------------------------------------------------------- item 4: framing details


def test_a_call_without_arguments_gets_no_tool_arguments_before_the_tool_name_is_checked():
    ref = FRAMINGS.get("reference")
    assert ref.check_call('{"name": "prompt"}') == (None, "Error: No tool arguments")
    assert ref.check_call('{"name": "search"}') == (None, "Error: No tool arguments")
    assert ref.check_call('{"name": "search", "arguments": {}}') == (None, "Error: ToolNotFoundError")


def test_agent_system_prompt_is_used_verbatim_under_the_reference_framing():
    text = "You are Qwen.\n\n# Tools\n\n(the reference's exact text)"
    env = PromptCollabEnv(task=[TASK], env_llm=ScriptedBackend(["x"]), framing="reference", agent_system_prompt=text)
    _, info = env.reset(seed=0)
    assert info["messages"][0] == {"role": "system", "content": text}


# ----------------------------------------------------------------------------- item 5: --preset reference


def test_reference_preset_is_the_official_evaluation():
    from promptr1.evaluation.config import EvalConfig

    cfg = load_config(EvalConfig, overrides=["--preset", "reference"])
    assert cfg.repetition_penalty == 1.0  # vllm_infer/config.py defines 1.05; batch_inference.py never sends it
    assert cfg.max_response_chars == 8192  # NousToolEnv(max_tool_response_length=MAX_TOKENS=8192)
    assert (cfg.temperature, cfg.top_p, cfg.max_new_tokens, cfg.max_turns) == (0.7, 0.8, 8192, 10)
    assert cfg.framing == "reference-eval" and cfg.env_history == "reference"
    assert cfg.env_sampling() == {}  # no temperature, no token limit sent to the large LLM
    mine = load_config(EvalConfig, overrides=["--preset", "reference", "--repetition-penalty", "1.05",
                                              "--framing", "reference"])
    assert (mine.repetition_penalty, mine.framing) == (1.05, "reference")  # the user's values win


def test_reference_eval_episode_as_the_official_scripts_send_it(monkeypatch, tiny_pair):
    """Turn 1 is a plain-text prompt followed by stray text: it is wrapped into the JSON call and cut after
    </interaction_prompt>; turn 2's prompt is the whole conversation as ONE user message, with the doubled
    <|im_end|> and the reply framed with '<think>\\n' inside that message."""
    model, tok = tiny_pair
    turn1 = "<think>Ask.</think><interaction_prompt> Who founded Vantrel Corp? </interaction_prompt> stray"
    turn2 = "<think>It said so.</think><answer>Mira Osk</answer>"
    prompts: list[str] = []
    monkeypatch.setattr(rollout_mod, "sample_turns", scripted_sampler([turn1, turn2], prompts))
    backend = ScriptedBackend(["Mira Osk founded it."])
    env = PromptCollabEnv(task=[TASK], env_llm=backend, framing="reference-eval", max_response_chars=8192)
    cfg = rollout_config(RunSettings(framing="reference-eval", max_new_tokens=64, max_seq_len=4096))
    ep = run_episodes(model, tok, [env], [TASK], [0], cfg, generator=torch.Generator().manual_seed(0))[0]

    system = env.agent_system_prompt
    opening = f"\n<|im_start|>system\n{system}<|im_end|>\n<|im_start|>\nuser\n{TASK.prompt}\n"
    wrapped = ('<think>Ask.</think><interaction_prompt>\n'
               '{"name": "prompt", "arguments": {"prompt": "Who founded Vantrel Corp?"}}\n</interaction_prompt>')
    reply = ('<|im_end|>\n<|im_start|>user\n<interaction_response>\n{"results": ["Mira Osk founded it."]}\n'
             '</interaction_response><|im_end|>\n<|im_start|>assistant\n<think>\n')
    assert prompts[0] == f"<|im_start|>user\n{opening}<|im_end|>\n<|im_start|>assistant\n"
    assert prompts[1] == f"<|im_start|>user\n{opening}{wrapped}<|im_end|>{reply}<|im_end|>\n<|im_start|>assistant\n"
    assert backend.calls[0][-1] == {"role": "user", "content": "Who founded Vantrel Corp?"}
    assert env.turns[0] == wrapped  # the text after </interaction_prompt> is dropped from the scored turn
    assert ep.terminated and ep.components["answer_text"] == "Mira Osk"


def test_reference_eval_predictions_of_episodes_that_end_without_an_answer():
    from promptr1.agents.episode import record_step, start_episode
    from promptr1.evaluation.runner import episode_prediction

    env = PromptCollabEnv(task=[TASK], env_llm=ScriptedBackend(["a"]), framing="reference-eval", max_turns=1)
    ep = start_episode(env, TASK)
    record_step(ep, good_prompt_turn(), env.step(good_prompt_turn()))
    assert ep.truncated and episode_prediction(ep, "reference-eval") == "Maximum turns reached without final answer"
    assert episode_prediction(ep, "reference") == ""  # our framings: no answer is an empty prediction
    over = Episode(task=TASK, group=0, done=True, truncated=True, overflow=True)
    assert episode_prediction(over, "reference-eval") == "Maximum context length exceeded"
