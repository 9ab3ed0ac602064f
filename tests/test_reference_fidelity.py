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
    obs, _, done, _, _ = env.step(turn(inner))
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


# ----------------------------------------------------------------------------- item 1: the agent's system text


# What a reference-trained checkpoint saw, in the shape of vllm_infer/config.py system_instruction (between
# "<|im_start|>system\n" and "<|im_end|>"); a stand-in text of ours, not the reference's prose.
STAND_IN_SYSTEM = "You are an assistant.\n\n# Tools\n\n<tools>\n{...}\n</tools>"


def test_agent_system_prompt_setting_takes_a_file_and_reaches_the_env(tmp_path):
    from promptr1.core.settings import ConfigError, RunSettings, load_config

    path = tmp_path / "system.txt"
    path.write_text(STAND_IN_SYSTEM + "\n", encoding="utf-8")  # an editor's final line break is not part of it
    cfg = load_config(RunSettings, overrides=["--framing", "reference", "--agent-system-prompt", f"@{path}"])
    assert cfg.agent_system_prompt == STAND_IN_SYSTEM
    env = PromptCollabEnv(task=[TASK], env_llm=ScriptedBackend(["x"]), **PromptCollabEnv.settings_kwargs(cfg))
    _, info = env.reset(seed=0)
    assert info["messages"][0] == {"role": "system", "content": STAND_IN_SYSTEM}
    unset = PromptCollabEnv(task=[TASK], env_llm=ScriptedBackend(["x"]), **PromptCollabEnv.settings_kwargs(RunSettings()))
    assert unset.agent_system_prompt == PromptCollabEnv(task=[TASK], env_llm=ScriptedBackend(["x"])).agent_system_prompt
    with pytest.raises(ConfigError, match=r"--agent-system-prompt @.*missing.txt.*cannot read"):
        RunSettings(agent_system_prompt=f"@{tmp_path / 'missing.txt'}")


def test_agent_tool_description_as_the_reference_tool_or_a_description():
    from promptr1.core.settings import ConfigError, RunSettings

    # LLM_tool.py's tool, as BaseTool.tool_description renders it (its own words replaced by ours here)
    schema = ('{"type": "function", "function": {"name": "prompt", "description": "D.", "parameters": {"type": '
              '"object", "properties": {"prompt": {"type": "string", "description": "P."}}, "required": ["prompt"]}}}')
    cfg = RunSettings(framing="reference", agent_tool_description=schema)
    env = PromptCollabEnv(task=[TASK], env_llm=ScriptedBackend(["x"]), **PromptCollabEnv.settings_kwargs(cfg))
    assert f"<tools>\n{schema}\n</tools>" in env.agent_system_prompt  # verbatim, one line, as the template writes it
    env = PromptCollabEnv(task=[TASK], env_llm=ScriptedBackend(["x"]), framing="reference",
                          agent_tool_description="Explain the question.")
    tools = env.agent_system_prompt.split("<tools>\n")[1].split("\n</tools>")[0]
    assert json.loads(tools)["function"]["description"] == "Explain the question."
    with pytest.raises(ConfigError, match="for the reference framings"):
        RunSettings(agent_tool_description="Explain.")
    other = RunSettings(framing="reference", agent_tool_description='{"type": "function", "function": {"name": "ask"}}')
    with pytest.raises(ValueError, match='describe the tool "prompt"'):  # calls are checked against "prompt"
        PromptCollabEnv(task=[TASK], env_llm=ScriptedBackend(["x"]), **PromptCollabEnv.settings_kwargs(other))


def test_the_agent_system_prompt_reaches_the_trainer_and_the_trl_dataset(tmp_path):
    pytest.importorskip("datasets")
    from promptr1.agents.config import GRPOConfig
    from promptr1.agents.trainer import GRPOTrainer

    from promptr1.integrations.trl import tasks_to_dataset
    from promptr1.testing.tiny_model import tiny_model_path

    cfg = GRPOConfig(model=str(tiny_model_path()), steps=1, batch_questions=1, group_size=2, progress=False,
                     output_dir=str(tmp_path / "run"), framing="reference", agent_system_prompt=STAND_IN_SYSTEM)
    tr = GRPOTrainer(cfg, tasks=[TASK], env_llm=ScriptedBackend(["x"]))
    assert {env.agent_system_prompt for env in tr.envs} == {STAND_IN_SYSTEM}
    row = tasks_to_dataset([TASK], env_kwargs=PromptCollabEnv.settings_kwargs(cfg))[0]
    assert (row["prompt"][0]["role"], row["prompt"][0]["content"]) == ("system", STAND_IN_SYSTEM)


# ----------------------------------------------------------------------------- item 2: the reference's data files

RECORDS = [
    {"question": "Who founded Vantrel Corp?", "golden_answers": ["Mira Osk", "M. Osk"], "context": "..."},
    {"question": "Capital of Teslin?", "answer": "Orvo"},          # process_data.py: the older {"answer": ...}
    {"question": "Year of the Ash Treaty?", "golden_answers": []},  # kept, with no gold answer
    {"question": "Odd one?", "golden_answers": "not a list"},       # not a list: no gold answer
]


def test_convert_writes_the_rows_process_data_builds(tmp_path, capsys):
    import pyarrow.parquet as pq
    from promptr1.envs.tasks import load_parquet

    from promptr1.commands.cli import main

    src, instr = tmp_path / "train.json", tmp_path / "instruction.txt"
    src.write_text(json.dumps(RECORDS), encoding="utf-8")  # one JSON array, as its train.json
    instr.write_text("Think, then ask.\n", encoding="utf-8")
    assert main(["data", "convert", str(src), str(tmp_path / "train.parquet"), "--instruction", f"@{instr}"]) == 0
    assert "wrote 4 rows" in capsys.readouterr().out
    table = pq.read_table(tmp_path / "train.parquet")
    # the schema of the reference's dataset/train_data/*.parquet, field by field
    assert str(table.schema).splitlines()[:9] == [
        "data_source: string", "prompt: list<element: struct<content: string, role: string>>",
        "  child 0, element: struct<content: string, role: string>", "      child 0, content: string",
        "      child 1, role: string", "ability: string",
        "reward_model: struct<ground_truth: list<element: string>, style: string>",
        "  child 0, ground_truth: list<element: string>", "      child 0, element: string"]
    rows = table.to_pylist()
    assert rows[0] == {"data_source": "hotpotqa/hotpot_qa",
                       "prompt": [{"content": "Question: Who founded Vantrel Corp?\nThink, then ask.", "role": "user"}],
                       "ability": "multihop_qa",
                       "reward_model": {"ground_truth": ["Mira Osk", "M. Osk"], "style": "rule"}}
    assert [r["reward_model"]["ground_truth"] for r in rows] == [["Mira Osk", "M. Osk"], ["Orvo"], [], []]
    from promptr1.envs.tasks import load_tasks

    assert [t.answers for t in load_tasks(str(src))] == [("Mira Osk", "M. Osk"), ("Orvo",), (), ()]  # the array too
    tasks = load_parquet(tmp_path / "train.parquet")  # our loader reads it back, empty gold lists included
    assert tasks[0].prompt == rows[0]["prompt"][0]["content"] and tasks[2].answers == ()
    assert main(["data", "convert", str(tmp_path / "missing.json"), str(tmp_path / "x.parquet")]) == 2
    assert "missing.json" in capsys.readouterr().err


def test_load_jsonl_reads_golden_answers_with_our_instruction(tmp_path):
    from promptr1.envs.collab_env import PromptCollabEnv as Env
    from promptr1.envs.tasks import DEFAULT_INSTRUCTION, load_tasks

    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in RECORDS[:3]), encoding="utf-8")
    tasks = load_tasks(str(path))
    assert [t.answers for t in tasks] == [("Mira Osk", "M. Osk"), ("Orvo",), ()]
    assert tasks[0].instruction == DEFAULT_INSTRUCTION  # the record carries none; the converter takes the reference's
    env = Env(task=tasks, env_llm=ScriptedBackend(["x"]), task_order="sequential")
    env.reset(seed=0), env.reset(seed=0), env.reset(seed=0)  # the row without gold answers plays; its F1 term is 0
    *_, info = env.step("<think>t</think><answer>1820</answer>")
    assert info["reward_components"]["answer"] == 0.0
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "q", "answers": []}), encoding="utf-8")
    with pytest.raises(ValueError, match="'answers' is empty"):  # our own key still needs an answer
        load_tasks(str(tmp_path / "bad.jsonl"))


# ----------------------------------------------------------------------------- item 5: the length limit


@pytest.fixture(scope="module")
def tiny_pair():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from promptr1.testing.tiny_model import tiny_model_path

    path = tiny_model_path()
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def _scripted(turns):
    from promptr1.agents.rollout import SampledTurn

    scripted = iter(turns)

    def sample(model, tokenizer, prompts, **kw):
        out = []
        for _ in prompts:
            ids = tokenizer(next(scripted), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            out.append(SampledTurn(ids, [0.0] * len(ids), "eos"))
        return out

    return sample


def _play(monkeypatch, tiny_pair, framing, turns, replies, max_seq_len):
    import torch
    from promptr1.agents import rollout as rollout_mod
    from promptr1.agents.rollout import rollout_config, run_episodes

    from promptr1.core.settings import RunSettings

    model, tok = tiny_pair
    monkeypatch.setattr(rollout_mod, "sample_turns", _scripted(turns))
    env = PromptCollabEnv(task=[TASK], env_llm=ScriptedBackend(replies), framing=framing, max_turns=5)
    cfg = rollout_config(RunSettings(framing=framing, max_new_tokens=2000, max_seq_len=max_seq_len))
    return run_episodes(model, tok, [env], [TASK], [0], cfg, generator=torch.Generator().manual_seed(0))[0]


GOOD = turn(call("Who founded Vantrel Corp?"))


@pytest.mark.parametrize("framing, reward, trained", [("reference", -0.6, 0.0), ("ours", -1.0, 0.0)])
def test_an_episode_that_overflows_after_a_reply_scores_its_prompt_turns(monkeypatch, tiny_pair, framing, reward,
                                                                         trained):
    """One good prompt, then a reply that leaves no room: the reference scores [p1, "<think>\\n"] (its stream ends
    on the reply and the next turn's prefill): -1 + 0.4 = -0.6, trained at 0 (the score sits on a masked token)."""
    from promptr1.agents.episode import ends_on_context, training_reward

    ep = _play(monkeypatch, tiny_pair, framing, [GOOD if framing == "reference" else
                                                 "<think>Ask.</think><interaction_prompt>Who?</interaction_prompt>"],
               ["word " * 1000], max_seq_len=900)
    assert ep.overflow and ep.turns == 1 and ends_on_context(ep)
    assert ep.reward == pytest.approx(reward) and training_reward(ep, "reference") == trained


def test_a_turn_cut_by_the_length_limit_is_scored_and_trained_on_as_the_last_block(monkeypatch, tiny_pair):
    """Turn 2 holds a complete call, then runs past max_seq_len: the reference's stream is cut inside that turn, so
    the cut turn is the last block ([p1, cut p2]: 0.4 + 0 -> -0.6) and the score sits on an agent token (trained)."""
    from promptr1.agents.episode import ends_on_context, training_reward

    long_turn = "Again.</think>" + f"<interaction_prompt>{call('Sure?')}</interaction_prompt>" + " more" * 900
    ep = _play(monkeypatch, tiny_pair, "reference", [GOOD, long_turn], ["Mira Osk.", "Yes."], max_seq_len=900)
    assert ep.overflow and ep.cut_turn and ep.turns == 2 and len(ep.ids) == 900
    assert ep.reward == pytest.approx(-0.6) and ep.components["format"] == pytest.approx(0.4)
    assert not ends_on_context(ep) and training_reward(ep, "reference") == pytest.approx(-0.6)


# ----------------------------------------------------------------------------- item 6: end tokens, the preset's context


def test_end_tokens_are_the_tokenizers_and_every_one_the_generation_config_lists():
    from types import SimpleNamespace

    from promptr1.agents.rollout import end_token_ids

    # Qwen3: tokenizer eos <|im_end|> 151645; generation_config.json eos_token_id [151645, 151643] (<|endoftext|>),
    # both of which vLLM stops at in the reference's rollout (run_prompt-R1.sh adds stop_token_ids [151645])
    tok = SimpleNamespace(eos_token_id=151645, name_or_path="")
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[151645, 151643]))
    assert end_token_ids(tok, model) == [151645, 151643]
    assert end_token_ids(tok, SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=151645))) == [151645]


def test_a_turn_stops_at_an_end_token_of_the_generation_config(tiny_pair):
    import copy

    import torch
    from promptr1.agents.rollout import rollout_config, run_episodes

    from promptr1.core.settings import RunSettings

    model, tok = tiny_pair
    model = copy.deepcopy(model)
    cfg = rollout_config(RunSettings(max_new_tokens=6, max_seq_len=2048, temperature=0.0))

    def first_turn():
        env = PromptCollabEnv(task=[TASK], env_llm=ScriptedBackend(["x"]), max_turns=1)
        ep = run_episodes(model, tok, [env], [TASK], [0], cfg, generator=torch.Generator().manual_seed(0))[0]
        return [t for t, m in zip(ep.ids, ep.mask) if m]

    greedy = first_turn()
    assert len(greedy) == 6 and tok.eos_token_id not in greedy
    model.generation_config.eos_token_id = [tok.eos_token_id, greedy[2]]  # the model lists another end token
    assert first_turn() == greedy[:3]  # the turn ends at it (kept, as the end-of-turn token is)


def _play_eval(monkeypatch, tiny_pair, max_new_tokens):
    import torch
    from promptr1.agents import rollout as rollout_mod
    from promptr1.agents.rollout import rollout_config, run_episodes

    from promptr1.core.settings import RunSettings

    model, tok = tiny_pair
    monkeypatch.setattr(rollout_mod, "sample_turns", _scripted([turn("Who founded it?"),
                                                                "<think>t</think><answer>Mira Osk</answer>"]))
    env = PromptCollabEnv(task=[TASK], env_llm=ScriptedBackend(["Mira Osk."]), framing="reference-eval", max_turns=5)
    cfg = rollout_config(RunSettings(framing="reference-eval", max_new_tokens=max_new_tokens, max_seq_len=10**6))
    return run_episodes(model, tok, [env], [TASK], [0], cfg, generator=torch.Generator().manual_seed(0))[0]


def test_the_reference_eval_context_is_full_at_characters_over_four_plus_the_turn_budget(monkeypatch, tiny_pair):
    """batch_generate: len(text) // 4 + max_tokens > 40960 -> 'Maximum context length exceeded'."""
    from promptr1.envs.framing import FRAMINGS

    ep = _play_eval(monkeypatch, tiny_pair, 8192)  # fits: the episode goes on to its answer
    assert ep.terminated and not ep.overflow and ep.turns == 2
    chars = len(FRAMINGS.get("reference-eval").agent_view(ep.messages[:-1])[0]["content"])  # before turn 2
    budget = 40960 - chars // 4  # est + budget == 40960: not over
    assert _play_eval(monkeypatch, tiny_pair, budget).turns == 2
    over = _play_eval(monkeypatch, tiny_pair, budget + 1)  # est + budget == 40961: over
    assert over.overflow and over.turns == 1 and not over.terminated
    from promptr1.evaluation.config import EvalConfig

    from promptr1.core.settings import load_config

    # the preset: 8,192 a turn, and max_seq_len at the model's 40,960, so that the estimate decides as there
    preset = load_config(EvalConfig, overrides=["--preset", "reference"])
    assert (preset.max_new_tokens, preset.max_seq_len, preset.framing) == (8192, 40960, "reference-eval")


# ----------------------------------------------------------------------------- item 7: the paper configs


@pytest.mark.parametrize("name, processes, steps", [("paper", 8, 1000 // 128), ("paper-1gpu", 1, 1000 // 32)])
def test_paper_configs_train_one_epoch_over_the_training_file(name, processes, steps):
    from promptr1.agents.config import GRPOConfig

    from promptr1.core.settings import bundled_config, load_config

    cfg = load_config(GRPOConfig, bundled_config(name))
    # run_prompt-R1.sh: trainer.total_epochs=1, train_batch_size=128; agent_ray_trainer.py: drop_last=True,
    # total_training_steps = len(train_dataloader) * total_epochs
    assert cfg.epochs == 1
    assert cfg.epoch_steps(1000, processes=processes) == steps  # 1,000 rows: 7 steps of 128, or 31 of 32


def test_the_trainer_sets_its_steps_from_epochs(tmp_path):
    from promptr1.agents.config import GRPOConfig
    from promptr1.agents.trainer import GRPOTrainer

    from promptr1.testing.tiny_model import tiny_model_path

    tasks = [Task(f"What is {i} plus {i}?", (str(2 * i),), id=f"q{i}") for i in range(5)]
    cfg = GRPOConfig(model=str(tiny_model_path()), steps=50, epochs=2, batch_questions=2, group_size=2,
                     progress=False, output_dir=str(tmp_path / "run"))
    tr = GRPOTrainer(cfg, tasks=tasks, env_llm=ScriptedBackend(["x"]))
    assert tr.cfg.steps == 2 * (5 // 2) == 4  # two passes of two whole steps; the fifth question is dropped
    with pytest.raises(ValueError, match="is no whole step"):
        GRPOConfig(epochs=1, batch_questions=8).epoch_steps(5)
    from promptr1.commands.dry_run import dry_run_report

    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(json.dumps({"question": t.question, "answers": list(t.answers)}) for t in tasks))
    report = dry_run_report(GRPOConfig(tasks=[str(path)], epochs=2, batch_questions=2))
    assert "whole run (4 steps)" in report


def test_verl_paper_keeps_long_prompts_an_error_and_documents_its_mini_batches():
    import yaml

    from promptr1.core.settings import bundled_config

    with open(bundled_config("verl-paper"), encoding="utf-8") as f:
        data = yaml.safe_load(f)
    # agent_trainer.yaml: filter_overlong_prompts False, truncation error (run_prompt-R1.sh: max_prompt_length 8192)
    assert data["data"]["filter_overlong_prompts"] is False and data["data"]["truncation"] == "error"
    # run_prompt-R1.sh: ppo_mini_batch_size 64 x n 1 sequences of 128 x 5 = 10 mini-batches; verl 0.9 counts
    # questions (64 / 5 = 12.8): 16 questions = 8 mini-batches, the nearest whole count
    assert data["data"]["train_batch_size"] // data["actor_rollout_ref"]["actor"]["ppo_mini_batch_size"] == 8
    assert data["trainer"]["total_epochs"] == 1
