"""PromptCollabEnv inside TRL's GRPOTrainer (promptr1.integrations.trl) on CPU with the tiny model.

(a) real GRPOTrainer steps: the step runs, parameters move, env reward and components are logged;
(b) a scripted episode: what TRL trains on (its prompt/completion ids and loss mask) equals our own
    rollout's Episode.ids / collate_episodes' action mask;
(c) env errors: None reward, all-zero env_mask, left out of the group's mean/std, advantage 0.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import sys
import types

import pytest
import torch

pytest.importorskip("trl", reason="TRL is an optional extra: pip install 'prompt-r1[trl]'")
pytest.importorskip("datasets", reason="datasets comes with TRL: pip install 'prompt-r1[trl]'")

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from conftest import load_script
from promptr1.agents.rollout import RolloutConfig, collate_episodes, run_episodes, sample_turns
from promptr1.envs.collab_env import PromptCollabEnv
from promptr1.envs.tasks import Task, load_tasks
from promptr1.llm_backends import EnvLLMError
from trl import GRPOConfig, GRPOTrainer

from promptr1.integrations import trl as ptrl
from promptr1.testing.scripted import ScriptedBackend

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning:trl")


@pytest.fixture(scope="module")
def tiny_path():
    from promptr1.testing.tiny_model import tiny_model_path

    return str(tiny_model_path())


def load_tiny(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def trl_args(tmp_path, **kw):
    base = {"output_dir": str(tmp_path / "trl"), "report_to": "none", "bf16": False, "use_cpu": True,
            "per_device_train_batch_size": 4, "num_generations": 4, "max_steps": 1, "logging_steps": 1,
            "learning_rate": 1e-3, "max_completion_length": 16, "save_strategy": "no", "seed": 0,
            "gradient_checkpointing": False, "disable_tqdm": True}
    base.update(kw)
    return GRPOConfig(**base)


def distinct_tokens(completion_ids, **kwargs):
    """A tie-breaker reward: the random tiny model never writes the protocol, so the env gives every episode
    -1 and GRPO's advantages would all be 0. This gives groups variance so that the update moves weights."""
    return [len(set(c)) / max(len(c), 1) for c in completion_ids]


# ----------------------------------------------------------------------------- a token-level scripted agent


class ScriptedAgentModel(torch.nn.Module):
    """Wraps a causal LM and forces its samples: the agent's turn k is ``script(k, question, last_reply)``.

    At the prefill call of a generation round it reads each row's context (the number of assistant turns so
    far, the question, the last env reply) and then forces that row's scripted token ids one per forward
    call (logit 0 for the forced token, -1e4 elsewhere), ending with the end-of-turn token.
    """

    def __init__(self, inner, tokenizer, script):
        super().__init__()
        self.inner, self.tok, self.script = inner, tokenizer, script
        self.rows: list[list[int]] = []
        self.pos = 0

    def forward(self, **kw):
        out = self.inner(**kw)
        if kw.get("past_key_values") is None:  # prefill: a new generation round
            self.rows, self.pos = [], 0
            for row in kw["input_ids"].tolist():
                text = self.tok.decode(row)
                k = text.count("<|im_start|>assistant") - 1
                q = re.search(r"Question: (.*?)\n", text)
                replies = re.findall(r"<interaction_response>(.*?)</interaction_response>", text, re.DOTALL)
                turn = self.script(k, q.group(1) if q else "", replies[-1] if replies else "")
                self.rows.append(self.tok(turn, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id])
        out.logits[:, -1, :] = -1e4
        for b, ids in enumerate(self.rows):
            out.logits[b, -1, ids[min(self.pos, len(ids) - 1)]] = 0.0
        self.pos += 1
        return out


def relay_script(k, question, reply):
    """Turn 0 asks the env LLM the question; turn 1 answers with its reply."""
    if k == 0:
        return f"<think>ask</think><interaction_prompt>{question}</interaction_prompt>"
    return f"<think>use it</think><answer>{reply.strip()}</answer>"


def forced_sampler(forced):
    def sampler(model, tokenizer, prompts, **kw):
        return sample_turns(forced, tokenizer, prompts, **kw)

    return sampler


TASKS = [Task(question=f"What is the capital of land {i}?", answers=(f"City{i}",), id=f"cap{i}") for i in range(4)]


def rows_for(dataset, names, G):
    """The rows TRL's sampler hands one generation batch: each prompt repeated G times, consecutively.
    Tests (b) and (c) feed them to TRL's own ``_generate_and_score_completions`` (private; trl==1.16)."""
    by_id = {r["task_id"]: r for r in dataset}
    return [dict(by_id[n]) for n in names for _ in range(G)]


# ----------------------------------------------------------------------------- (a) real GRPO steps


def test_grpo_steps_on_tiny_model_with_sim_expert(tmp_path, tiny_path):
    model, tok = load_tiny(tiny_path)
    tasks = list(load_tasks("synthetic"))[:4]
    rollout = ptrl.make_rollout_func(tasks, env_llm="sim", env_kwargs={"max_turns": 3}, max_seq_len=1024)
    trainer = GRPOTrainer(model=model, processing_class=tok, args=trl_args(tmp_path, max_steps=2),
                          train_dataset=ptrl.tasks_to_dataset(tasks), reward_funcs=[ptrl.env_reward, distinct_tokens],
                          rollout_func=rollout)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trainer.train()
    after = trainer.model.state_dict()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(moved) > len(before) // 2

    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    for key in ("rewards/env_reward/mean", "reward/mean", "reward/format", "reward/answer", "reward/f1",
                "env_llm/error_rate", "rollout/turns_mean", "rollout/terminated_rate"):
        assert key in logs[-1], key
    assert -1.0 <= logs[-1]["rewards/env_reward/mean"] <= 1.0
    assert logs[-1]["env_llm/error_rate"] == 0.0
    # the rollout played real env episodes: the env's reward is what env_reward returned
    eps = rollout.last_episodes
    assert len(eps) == 4 and all(e.done for e in eps)
    assert logs[-1]["rewards/env_reward/mean"] == pytest.approx(sum(e.reward for e in eps) / 4)


# ----------------------------------------------------------------------------- (b) ids and mask equal ours


def reference_script(k, question, reply):
    """The same relay in the reference framing: a JSON tool call, then (after the env's ``<think>\\n`` prefill)
    the rest of a final turn."""
    if k == 0:
        call = json.dumps({"name": "prompt", "arguments": {"prompt": question}})
        return f"<think>ask</think><interaction_prompt>{call}</interaction_prompt>"
    return "use it</think><answer>x</answer>"


@pytest.mark.parametrize("framing", ["ours", "reference"])
def test_scripted_episode_ids_and_mask_equal_our_rollout(tmp_path, tiny_path, framing):
    from promptr1.envs.framing import FRAMINGS

    model, tok = load_tiny(tiny_path)
    forced = ScriptedAgentModel(model, tok, relay_script if framing == "ours" else reference_script)
    G = 2
    env_kwargs = {"max_turns": 3, "framing": framing}
    rollout = ptrl.make_rollout_func(TASKS, env_llm="echo", env_kwargs=env_kwargs, max_seq_len=1024,
                                     max_new_tokens=64, sampler=forced_sampler(forced))
    dataset = ptrl.tasks_to_dataset(TASKS, env_kwargs=env_kwargs)
    trainer = GRPOTrainer(model=model, processing_class=tok, args=trl_args(tmp_path, num_generations=G),
                          train_dataset=dataset, reward_funcs=[ptrl.env_reward], rollout_func=rollout)
    names = ["cap1", "cap3"]
    inputs = rows_for(dataset, names, G)
    trainer.model.train()
    out = trainer._generate_and_score_completions(inputs)

    # our own rollout, with the same scripted agent, env and settings
    from promptr1.llm_backends import make_backend

    backend = make_backend("echo")
    envs = [PromptCollabEnv(task=TASKS, env_llm=backend, **env_kwargs) for _ in inputs]
    tasks = [next(t for t in TASKS if t.id == n) for n in names for _ in range(G)]
    # the scripted agent reads its whole context each call, so it is played without KV reuse
    cfg = RolloutConfig(max_new_tokens=64, max_seq_len=1024, stop_strings=FRAMINGS.get(framing).stop_strings,
                        kv_reuse=False)
    assert rollout.stop_strings == cfg.stop_strings
    ours = run_episodes(forced, tok, envs, tasks, [i // G for i in range(len(tasks))], cfg)
    batch = collate_episodes(ours, tok.pad_token_id)
    assert all(e.turns == 2 and e.terminated and e.env_error is None for e in ours)
    if framing == "ours":
        # echo + relay: two well-formed turns reach the format cap; the answer is the echoed question (F1 0)
        assert all(e.reward == pytest.approx(0.0) and e.components["format"] == 1.0 for e in ours)
    else:  # the prefilled "<think>\n" is context in the sequence, not an action
        assert all(e.prefill == "<think>\n" for e in ours)

    # what TRL trains on: left-padded prompt + right-padded completion, loss mask = completion_mask * env_mask
    for b, ep in enumerate(ours):
        p = out["prompt_ids"][b][out["prompt_mask"][b].bool()].tolist()
        c_keep = out["completion_mask"][b].bool()
        c = out["completion_ids"][b][c_keep].tolist()
        loss_mask = (out["completion_mask"][b] * out["tool_mask"][b])[c_keep].tolist()
        assert p + c == ep.ids
        assert [0] * len(p) + loss_mask == ep.mask
        T = len(ep.ids)
        assert batch["input_ids"][b, :T].tolist() == ep.ids
        assert batch["action_mask"][b, :T].tolist() == [float(x) for x in [0] * len(p) + loss_mask]
        assert 0 in loss_mask and 1 in loss_mask  # env replies are in the completion, masked
    assert out["advantages"].shape == (len(inputs),)

    # the rollout's own fields line up with the episode it played
    mine = rollout.last_episodes
    fields = ptrl.episodes_to_trl(mine)
    for b, ep in enumerate(ours):
        assert fields["prompt_ids"][b] + fields["completion_ids"][b] == ep.ids
        assert [0] * len(fields["prompt_ids"][b]) + fields["env_mask"][b] == ep.mask
        assert fields["logprobs"][b] == pytest.approx(ep.logp[ep.prompt_len:], abs=1e-5)
        assert mine[b].reward == ep.reward and mine[b].messages == ep.messages


# ----------------------------------------------------------------------------- (c) env errors


def test_env_errors_leave_their_group_in_trl(tmp_path, tiny_path):
    model, tok = load_tiny(tiny_path)
    calls: dict[str, int] = {}

    def replies(messages):
        q = messages[-1]["content"]
        calls[q] = n = calls.get(q, 0) + 1
        if "land 2" in q:  # every episode of task cap2 fails
            return EnvLLMError("simulated 503", kind="server_error")
        if n % 2 == 0:  # the 2nd and 4th call for cap1 fail
            return EnvLLMError("simulated timeout", kind="timeout")
        return "City1" if n == 1 else "somewhere else"  # the two that land: reward 1 and 0

    forced = ScriptedAgentModel(model, tok, relay_script)
    G = 4
    rollout = ptrl.make_rollout_func(TASKS, env_llm=ScriptedBackend(replies), env_kwargs={"max_turns": 3}, max_seq_len=1024,
                                     max_new_tokens=64, sampler=forced_sampler(forced), independent=False)
    dataset = ptrl.tasks_to_dataset(TASKS)
    trainer = GRPOTrainer(model=model, processing_class=tok, args=trl_args(tmp_path, num_generations=G,
                                                                                   per_device_train_batch_size=8),
                               train_dataset=dataset, reward_funcs=[ptrl.env_reward], rollout_func=rollout)
    inputs = rows_for(dataset, ["cap1", "cap2"], G)
    trainer.model.train()
    out = trainer._generate_and_score_completions(inputs)
    eps = rollout.last_episodes
    errors = [e.env_error is not None for e in eps]
    assert errors[G:] == [True] * G and sum(errors[:G]) == 2
    assert sorted(e.reward for e in eps[:G] if e.env_error is None) == [0.0, 1.0]
    assert all(e.env_error.startswith(("server_error", "timeout")) for e in eps if e.env_error)

    rewards = ptrl.env_reward(episode_reward=[e.reward for e in eps], env_error=[e.env_error for e in eps])
    assert [r is None for r in rewards] == errors
    adv = out["advantages"].tolist()
    # the group of cap1: the ok rows' advantages are (r - mean_ok) / (std_ok + 1e-4), error rows 0
    ok = [rewards[i] for i in range(G) if rewards[i] is not None]
    mean = sum(ok) / len(ok)
    std = math.sqrt(sum((x - mean) ** 2 for x in ok) / (len(ok) - 1)) if len(ok) > 1 else float("nan")
    for i in range(G):
        if rewards[i] is None:
            assert adv[i] == 0.0
        elif len(ok) > 1:
            assert adv[i] == pytest.approx((rewards[i] - mean) / (std + 1e-4), abs=1e-4)
    assert adv[G:] == [0.0] * G  # a group with no usable episode
    # error episodes carry no loss at all: their env_mask is all zeros
    for i, e in enumerate(eps):
        row = out["tool_mask"][i] * out["completion_mask"][i]
        assert (row.sum().item() == 0) == (e.env_error is not None)
    metrics = trainer._metrics["train"]
    assert metrics["env_llm/error_rate"][-1] == pytest.approx(sum(errors) / len(errors))


def test_env_reward_and_skip_env_errors_return_none_for_errors():
    assert ptrl.env_reward(episode_reward=[0.5, -1.0], env_error=[None, "timeout: t"]) == [0.5, None]
    with pytest.raises(ValueError, match="rollout_func"):
        ptrl.env_reward(prompts=["p"], completions=["c"])
    other = ptrl.skip_env_errors(lambda completions, **kw: [1.0] * len(completions))
    assert other(completions=["a", "b"], env_error=[None, "x"]) == [1.0, None]
    logged = {}
    ptrl.env_reward(episode_reward=[1.0, 0.0], env_error=[None, None],
                    reward_components=[{"total": 1.0, "format": 1.0}, {"total": 0.0, "format": 1.0}],
                    episode_info=[{"turns": 2, "terminated": True}, {"turns": 3, "terminated": False}],
                    log_metric=logged.__setitem__)
    assert logged["reward/format"] == 1.0 and logged["rollout/turns_mean"] == 2.5
    assert logged["rollout/terminated_rate"] == 0.5


# ----------------------------------------------------------------------------- dataset adapter


def test_dataset_from_synthetic_jsonl_and_parquet(tmp_path):
    ds = ptrl.tasks_to_dataset("synthetic:test")
    assert set(ds.column_names) == {"prompt", "task_id", "data_source", "ability"}
    row = ds[0]
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    assert row["prompt"][1]["content"].startswith("Question: ")
    assert row["prompt"][1]["task_id"] == row["task_id"]
    index = ptrl.TaskIndex(list(load_tasks("synthetic:test")))
    assert index.find(row["prompt"]).id == row["task_id"]
    # without the id key the text finds the task
    plain = [{"role": m["role"], "content": m["content"]} for m in row["prompt"]]
    assert index.find(plain).id == row["task_id"]

    ref = ptrl.tasks_to_dataset(list(load_tasks("synthetic:test"))[:2], env_kwargs={"framing": "reference"})
    assert "# Tools" in ref[0]["prompt"][0]["content"]  # the framing's own system message, as the env shows it

    jl = tmp_path / "qa.jsonl"
    jl.write_text("\n".join(json.dumps({"question": f"q{i}?", "answers": [f"a{i}"]}) for i in range(3)) + "\n")
    ds = ptrl.tasks_to_dataset(str(jl), env_kwargs={"agent_system_prompt": None})
    assert len(ds) == 3 and [m["role"] for m in ds[0]["prompt"]] == ["user"]

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([
        {"data_source": "hotpotqa", "ability": "qa",
         "prompt": [{"role": "user", "content": f"Question: who {i}?\nFirst, provide a simple explanation of the question"}],
         "reward_model": {"ground_truth": [f"x{i}"], "style": "rule"}} for i in range(2)]), tmp_path / "hotpot.parquet")
    ds = ptrl.tasks_to_dataset(str(tmp_path / "hotpot.parquet"))
    assert ds["task_id"] == ["hotpot-0", "hotpot-1"] and ds["data_source"] == ["hotpotqa"] * 2


def test_task_index_errors_name_the_fix():
    index = ptrl.TaskIndex(TASKS)
    with pytest.raises(KeyError, match="same tasks"):
        index.find([{"role": "user", "content": "Question: unknown\nx", "task_id": "nope"}])
    with pytest.raises(KeyError, match="tasks_to_dataset"):
        index.find([{"role": "user", "content": "Question: unknown\nx"}])
    twins = [Task(question="same?", answers=("a",), id="t1"), Task(question="same?", answers=("b",), id="t2")]
    with pytest.raises(KeyError, match="task_id"):
        ptrl.TaskIndex(twins).find([{"role": "user", "content": twins[0].prompt}])
    assert ptrl.TaskIndex(twins).find([{"role": "user", "content": twins[0].prompt, "task_id": "t2"}]).answers == ("b",)
    with pytest.raises(ValueError, match="share the id"):
        ptrl.TaskIndex([Task(question="a?", answers=("a",), id="x"), Task(question="b?", answers=("b",), id="x")])


def test_refuses_settings_it_cannot_honour():
    rollout = ptrl.make_rollout_func(TASKS, env_llm="echo")
    args = types.SimpleNamespace(mask_truncated_completions=True)
    with pytest.raises(ValueError, match="mask_truncated_completions=False"):
        rollout._check(types.SimpleNamespace(args=args, use_vllm=False))
    args = types.SimpleNamespace(mask_truncated_completions=False, top_k=50, min_p=None, repetition_penalty=1.0)
    with pytest.raises(ValueError, match="top_k"):
        rollout._check(types.SimpleNamespace(args=args, use_vllm=False))


# ----------------------------------------------------------------------------- vLLM plumbing (fakes; no GPU here)


class FakeVLLMGeneration:
    def __init__(self, mode, engine):
        self.mode, self.enable_sleep_mode, self.tensor_parallel_size = mode, False, 1
        self.top_k, self.min_p, self.repetition_penalty, self.generation_kwargs = 0, None, 1.0, {}
        self.llm = engine if mode == "colocate" else None
        self.vllm_client = engine if mode == "server" else None


def test_vllm_sampler_converts_colocate_and_server_outputs(monkeypatch, tiny_path):
    _, tok = load_tiny(tiny_path)
    turn = tok("<think>t</think><answer>x</answer>", add_special_tokens=False)["input_ids"]
    seen = {}

    class SamplingParams(dict):
        def __init__(self, **kw):
            super().__init__(**kw)

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(SamplingParams=SamplingParams))

    class LLM:
        def generate(self, prompts, sampling_params, use_tqdm):
            seen["colocate"] = (prompts, sampling_params)
            lp = [{t: types.SimpleNamespace(logprob=-0.5)} for t in turn]
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=turn, logprobs=lp)]) for _ in prompts]

    class Client:
        def generate(self, prompts, n, **kw):
            seen["server"] = kw
            return {"completion_ids": [turn + [tok.eos_token_id]] * len(prompts),
                    "logprobs": [[[-0.25, -9.0]] * (len(turn) + 1)] * len(prompts),
                    "logprob_token_ids": [[[t, 0] for t in turn + [tok.eos_token_id]]] * len(prompts)}

    trainer = types.SimpleNamespace(vllm_generation=FakeVLLMGeneration("colocate", LLM()))
    s = ptrl.VLLMTurnSampler(trainer)(None, tok, [[1, 2, 3]], max_new_tokens=32, temperature=0.7,
                                      eos_token_ids=[tok.eos_token_id])
    assert s[0].ids == turn and s[0].logps == [-0.5] * len(turn) and s[0].stop == "string"
    prompts, params = seen["colocate"]
    assert prompts == [{"prompt_token_ids": [1, 2, 3]}]
    assert params["stop"] == ["</interaction_prompt>", "</answer>"] and params["include_stop_str_in_output"]
    assert params["temperature"] == 0.7 and params["max_tokens"] == 32 and params["logprobs"] == 0

    trainer = types.SimpleNamespace(vllm_generation=FakeVLLMGeneration("server", Client()))
    s = ptrl.VLLMTurnSampler(trainer)(None, tok, [[1, 2, 3], [4]], max_new_tokens=32,
                                      eos_token_ids=[tok.eos_token_id])
    assert len(s) == 2 and s[1].ids == turn + [tok.eos_token_id] and s[1].stop == "eos"
    assert s[1].logps == [-0.25] * (len(turn) + 1)
    assert seen["server"]["generation_kwargs"]["stop"] == ["</interaction_prompt>", "</answer>"]

    sleepy = FakeVLLMGeneration("colocate", LLM())
    sleepy.enable_sleep_mode = True
    with pytest.raises(NotImplementedError, match="sleep"):
        ptrl.VLLMTurnSampler(types.SimpleNamespace(vllm_generation=sleepy))


def test_custom_sampler_generates_every_turn_of_our_rollout(tiny_path):
    """Another engine (vLLM, or any function with sample_turns' signature) generates inside our rollout."""
    from promptr1.agents import rollout as rollout_module

    model, tok = load_tiny(tiny_path)
    forced = ScriptedAgentModel(model, tok, relay_script)
    original = rollout_module.sample_turns
    calls = []

    def sampler(m, t, prompts, **kw):
        calls.append(len(prompts))
        return sample_turns(forced, t, prompts, **kw)

    eps = run_episodes(None, tok, [PromptCollabEnv(task=TASKS, env_llm="echo")], [TASKS[0]], [0],
                       RolloutConfig(max_new_tokens=64), sampler=sampler)
    assert rollout_module.sample_turns is original
    assert calls == [1, 1] and eps[0].turns == 2 and eps[0].terminated


# ----------------------------------------------------------------------------- packaging


def test_missing_trl_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "trl", None)  # import trl -> ImportError
    monkeypatch.delitem(sys.modules, "promptr1.integrations.trl")
    with pytest.raises(ImportError, match=re.escape("pip install 'prompt-r1[trl]'")):
        importlib.import_module("promptr1.integrations.trl")
    monkeypatch.undo()
    assert importlib.import_module("promptr1.integrations.trl") is not None


def test_example_takes_the_env_llm_block_of_a_settings_file(tmp_path, capsys, monkeypatch):
    """The TRL example builds its env LLM with from_settings: a settings file's budget and cache wrap it, and the
    rollout's envs use that backend and the file's env system prompt."""
    import promptr1.llm_backends as backends
    from promptr1.llm_backends.cache import CachedBackend

    built = []
    real = backends.from_settings
    monkeypatch.setattr(backends, "from_settings", lambda settings, **kw: built.append(real(settings, **kw)) or built[-1])
    ex = load_script("examples/trl_grpo.py")
    settings = tmp_path / "settings.yaml"
    cache = tmp_path / "cache.sqlite"
    settings.write_text(f"env_llm: sim\nmax_calls: 3\ncache: {cache}\nenv_system_prompt: none\n")
    ex.main(["--max-steps", "1", "--num-generations", "2", "--batch-size", "2", "--max-new-tokens", "8",
             "--questions", "2", "--output-dir", str(tmp_path / "run"), "--settings", str(settings)])
    (backend, budget), = built
    assert isinstance(backend, CachedBackend) and backend.path == str(cache) and budget.max_calls == 3
    assert budget.calls <= 3 and f"env LLM: {budget.calls} uncached calls" in capsys.readouterr().out
    assert ex.load_settings(str(settings)).env_system_prompt is None
    assert ex.load_settings("paper", env_llm="sim").env_llm == "sim"


def test_example_runs_saves_and_its_output_evaluates(tmp_path, capsys):
    ex = load_script("examples/trl_grpo.py")
    out = tmp_path / "run"
    argv = ["--max-steps", "2", "--num-generations", "2", "--batch-size", "2", "--max-new-tokens", "8",
            "--questions", "2", "--output-dir", str(out), "--save-steps", "1"]
    logs = ex.main(argv)
    assert "rewards/env_reward/mean" in logs and "reward/format" in logs
    # the final model and tokenizer, and the scheduled checkpoints (save_total_limit 2)
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert (out / "tokenizer_config.json").is_file() or (out / "tokenizer.json").is_file()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    # a second run into the same folder is refused; the saved model is untouched
    saved = (out / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="earlier run"):
        ex.main(argv)
    assert (out / "model.safetensors").read_bytes() == saved
    # what docs/integrations-trl.md shows: evaluate the output folder with `promptr1 eval`
    from promptr1.commands.cli import main

    capsys.readouterr()
    rc = main(["eval", "synthetic", "--methods", f"trained=agent:{out}", "--env-llm", "sim", "--limit", "2",
               "--max-turns", "2", "--max-new-tokens", "8", "--output-dir", str(tmp_path / "eval"), "--chart",
               "false", "--progress", "false"])
    assert rc == 0, capsys.readouterr().err
    assert "trained" in (tmp_path / "eval" / "report.md").read_text()
