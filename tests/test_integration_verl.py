"""verl 0.9's agent loop playing PromptCollabEnv episodes (``promptr1.integrations.verl``), on CPU.

verl's generation servers need GPUs; here a fake server manager answers ``generate(request_id, prompt_ids,
sampling_params)`` with a scripted token list (or with the tiny model), the way vLLM's server does: it returns the
token ids (possibly running past the stop string) and their log-probs. The agent loop is built by verl's own
machinery (the agent-loop YAML loaded with OmegaConf, ``hydra.utils.instantiate`` with the worker's arguments), and
its output goes through verl's own padding and batching (``AgentLoopWorker._agent_loop_postprocess`` and
``_postprocess``, and the v1 trainer's ``AgentLoopOutput.as_dict``).
"""

from __future__ import annotations

import asyncio
import re
import sys

import pytest
import torch

pytest.importorskip("verl.experimental.agent_loop", reason="verl 0.9 is not installed")

import hydra  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from verl.experimental.agent_loop.agent_loop import (  # noqa: E402
    AgentLoopWorker,
    DictConfigWrap,
    ToolListWrap,
    _agent_loop_registry,
)
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage, get_adv_estimator_fn  # noqa: E402
from verl.workers.rollout.replica import TokenOutput  # noqa: E402

import promptr1.integrations.verl as pverl  # noqa: E402
from promptr1.agents.models import load_policy  # noqa: E402
from promptr1.agents.rollout import RolloutConfig, arun_episodes, sample_turns  # noqa: E402
from promptr1.envs.collab_env import PromptCollabEnv  # noqa: E402
from promptr1.envs.framing import FRAMINGS  # noqa: E402
from promptr1.llm_backends import EnvLLMError, make_backend  # noqa: E402
from promptr1.testing.scripted import ScriptedBackend  # noqa: E402

SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True}
GARBAGE = " and then some more text the server did not stop for"


@pytest.fixture(scope="module")
def tiny():
    from promptr1.testing.tiny_model import tiny_model_path

    return load_policy(str(tiny_model_path()))


def row(i: int) -> dict:
    """A verl dataset row in the paper's schema, as RLHFDataset hands it to an agent loop."""
    return {"raw_prompt": [{"role": "user", "content": f"Question: What is the capital of land {i}?\n"
                            "First, provide a simple explanation of the question. Then work with the large model."}],
            "reward_model": {"ground_truth": [f"City{i}"], "style": "rule"}, "data_source": "capitals",
            "ability": "qa", "extra_info": {"index": i}}


def script(framing: str, k: int, question: str, reply: str) -> str:
    """Agent turn k: ask the env LLM the question, then answer with its reply (JSON call in the reference framing)."""
    if k == 0:
        inner = question if framing == "ours" else '{"name": "prompt", "arguments": {"prompt": "%s"}}' % question
        return f"<think>ask</think><interaction_prompt>{inner}</interaction_prompt>"
    return f"use it</think><answer>{reply.strip()[:40]}</answer>" if framing == "reference" else \
        f"<think>use it</think><answer>{reply.strip()[:40]}</answer>"


def read_context(tok, ids):
    text = tok.decode(ids)
    k = text.count("<|im_start|>assistant") - 1
    q = re.search(r"Question: (.*?)\n", text)
    replies = re.findall(r"<interaction_response>(.*?)</interaction_response>", text, re.DOTALL)
    return k, (q.group(1) if q else ""), (replies[-1] if replies else "")


def script_ids(tok, framing, ids):
    return tok(script(framing, *read_context(tok, ids)), add_special_tokens=False)["input_ids"]


class ScriptedServer:
    """verl's server manager as the agent loop sees it: ``await generate(...) -> TokenOutput``. Like a vLLM server
    that was not told to stop, it returns the scripted turn, the end-of-turn token and more tokens after them."""

    def __init__(self, tok, framing):
        self.tok, self.framing = tok, framing
        self.calls: list[dict] = []

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kw):
        self.calls.append({"request_id": request_id, "prompt_ids": list(prompt_ids), "sampling": dict(sampling_params)})
        ids = script_ids(self.tok, self.framing, prompt_ids) + [self.tok.eos_token_id]
        ids += self.tok(GARBAGE, add_special_tokens=False)["input_ids"]
        ids = ids[: sampling_params["max_tokens"]]
        return TokenOutput(token_ids=ids, log_probs=[-0.25] * len(ids), extra_fields={"global_steps": 7})


class ForcedModel(torch.nn.Module):
    """The tiny model with its samples forced to the same script (our rollout's side of the comparison)."""

    def __init__(self, inner, tok, framing):
        super().__init__()
        self.inner, self.tok, self.framing = inner, tok, framing
        self.rows, self.pos = [], 0

    def forward(self, **kw):
        out = self.inner(**kw)
        if kw.get("past_key_values") is None:
            self.rows = [script_ids(self.tok, self.framing, r) + [self.tok.eos_token_id]
                         for r in kw["input_ids"].tolist()]
            self.pos = 0
        out.logits[:, -1, :] = -1e4
        for b, ids in enumerate(self.rows):
            out.logits[b, -1, ids[min(self.pos, len(ids) - 1)]] = 0.0
        self.pos += 1
        return out


def trainer_config(tmp_path, *, framing="ours", prompt_length=1024, response_length=1024, engine="vllm"):
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"max_turns: 3\nframing: {framing}\nmax_new_tokens: 64\n")
    return OmegaConf.create({
        "actor_rollout_ref": {"rollout": {"name": engine, "prompt_length": prompt_length,
                                          "response_length": response_length}},
        "data": {"apply_chat_template_kwargs": {}},
    }), settings


def build_loop(tmp_path, monkeypatch, tok, server, overrides=None, **kw):
    """The agent loop as verl's AgentLoopWorker builds it: our YAML through OmegaConf, then hydra.instantiate."""
    config, settings = trainer_config(tmp_path, **kw)
    monkeypatch.setenv("PROMPTR1_SETTINGS", str(settings))
    monkeypatch.setenv("PROMPTR1_ENV_LLM", "echo")
    for entry in OmegaConf.load(pverl.AGENT_LOOP_CONFIG):
        _agent_loop_registry[entry.name] = entry
    from verl.utils.dataset.rl_dataset import RLHFDataset

    entry = _agent_loop_registry["promptr1"]
    if overrides:
        entry = OmegaConf.merge(entry, {"overrides": overrides})
    return hydra.utils.instantiate(
        config=entry, trainer_config=DictConfigWrap(config=config), server_manager=server,
        tokenizer=tok, processor=None, hf_model_type=None, dataset_cls=RLHFDataset,
        data_config=DictConfigWrap(config.data), tools=ToolListWrap([]))


def our_episode(model, tok, task, framing, max_seq_len=2048, temperature=1.0):
    env = PromptCollabEnv(task=task, env_llm=make_backend("echo"), max_turns=3, framing=framing)
    cfg = RolloutConfig(max_new_tokens=64, max_seq_len=max_seq_len, stop_strings=FRAMINGS.get(framing).stop_strings,
                        kv_reuse=False, temperature=temperature)
    return asyncio.run(arun_episodes(model, tok, [env], [task], [0], cfg))[0]


@pytest.mark.parametrize("framing", ["ours", "reference"])
def test_scripted_episode_ids_and_mask_equal_our_rollout(tmp_path, monkeypatch, tiny, framing):
    model, tok = tiny
    server = ScriptedServer(tok, framing)
    loop = build_loop(tmp_path, monkeypatch, tok, server, framing=framing)
    assert isinstance(loop, pverl.PromptR1AgentLoop) and loop.env_llm_spec == "echo"
    out = asyncio.run(loop.run(dict(SAMPLING), **row(3)))

    ep = our_episode(ForcedModel(model, tok, framing), tok, pverl.task_from_row(row(3)), framing)
    assert ep.turns == 2 and ep.terminated and ep.env_error is None
    assert out.prompt_ids + out.response_ids == ep.ids
    assert [0] * len(out.prompt_ids) + out.response_mask == ep.mask
    assert out.reward_score == ep.reward  # the env's dual reward: full format, the echoed question as the answer
    assert out.extra_fields["reward_extra_info"]["format"] == ep.components["format"] == 1.0
    assert out.response_logprobs == [-0.25 if m else 0.0 for m in out.response_mask]
    assert out.extra_fields["reward_extra_info"]["turns"] == 2.0
    assert out.extra_fields["min_global_steps"] == out.extra_fields["max_global_steps"] == 7
    # the server was asked to stop where our sampler stops; one request id for the whole episode
    assert len(server.calls) == 2 and len({c["request_id"] for c in server.calls}) == 1
    stops = FRAMINGS.get(framing).stop_strings
    assert server.calls[0]["sampling"].get("stop", []) == list(stops)
    assert server.calls[0]["sampling"]["max_tokens"] == 64


def test_greedy_tiny_model_server_equals_our_rollout(tmp_path, monkeypatch, tiny):
    """A server that really generates (the tiny model, greedy, ignoring stop strings as an engine might)."""
    model, tok = tiny

    class TinyServer:
        async def generate(self, request_id, *, prompt_ids, sampling_params, **kw):
            (s,) = sample_turns(model, tok, [prompt_ids], max_new_tokens=sampling_params["max_tokens"],
                                temperature=0.0, stop_strings=())
            return TokenOutput(token_ids=s.ids, log_probs=s.logps)

    loop = build_loop(tmp_path, monkeypatch, tok, TinyServer(), response_length=160)
    out = asyncio.run(loop.run(dict(SAMPLING, temperature=0.0), **row(1)))
    P = len(out.prompt_ids)
    ep = our_episode(model, tok, pverl.task_from_row(row(1)), "ours", max_seq_len=P + 160, temperature=0.0)
    assert out.prompt_ids + out.response_ids == ep.ids
    assert [0] * P + out.response_mask == ep.mask
    assert len(out.response_ids) <= 160


def test_output_goes_through_verls_padding_and_batching(tmp_path, monkeypatch, tiny):
    model, tok = tiny
    loop = build_loop(tmp_path, monkeypatch, tok, ScriptedServer(tok, "ours"), prompt_length=512,
                      response_length=256)
    outs = [asyncio.run(loop.run(dict(SAMPLING), **row(i))) for i in (0, 1)]

    worker = object.__new__(AgentLoopWorker)  # verl's worker, without Ray: only what post-processing reads
    worker.rollout_config = loop.rollout_config
    worker.tokenizer, worker.processor = tok, None
    worker.reward_loop_worker_handles, worker.distillation_enabled, worker.mm_processor_kwargs = None, False, {}
    internal = [asyncio.run(worker._agent_loop_postprocess(o, False, raw_prompt=row(i)["raw_prompt"]))
                for i, o in zip((0, 1), outs)]
    batch = worker._postprocess(internal, input_non_tensor_batch={}, validate=False)
    b = batch.batch
    assert b["prompts"].shape == (2, 512) and b["responses"].shape == (2, 256)
    for i, o in enumerate(outs):
        n = len(o.response_ids)
        assert b["responses"][i, :n].tolist() == o.response_ids
        assert b["response_mask"][i, :n].tolist() == o.response_mask and b["response_mask"][i, n:].sum() == 0
        assert b["prompts"][i, 512 - len(o.prompt_ids):].tolist() == o.prompt_ids  # left-padded
        assert b["rm_scores"][i].sum().item() == pytest.approx(o.reward_score)
        assert b["rm_scores"][i, n - 1].item() == pytest.approx(o.reward_score)  # on the last response token
    assert list(batch.meta_info["reward_extra_keys"]) == list(pverl.REWARD_EXTRA_KEYS)
    # the v1 trainer's path (TransferQueue) stores AgentLoopOutput.as_dict()
    d = outs[0].as_dict()
    assert d["responses"].tolist() == outs[0].response_ids and d["rm_scores"][-1].item() == outs[0].reward_score


def test_env_error_episode_is_masked_and_leaves_its_group(tmp_path, monkeypatch, tiny):
    model, tok = tiny
    loop = build_loop(tmp_path, monkeypatch, tok, ScriptedServer(tok, "ours"))
    failing = ScriptedBackend([EnvLLMError("server down", kind="http_503")])
    monkeypatch.setattr(pverl, "_shared_backend", lambda settings: failing)
    out = asyncio.run(loop.run(dict(SAMPLING), **row(2)))
    assert out.extra_fields["reward_extra_info"]["env_error"] == 1.0
    assert sum(out.response_mask) == 0 and len(out.response_ids) > 0

    # the estimator leaves masked rows out of their group: verl's GRPO on the other rows, 0 for the masked one
    rewards = torch.zeros(6, 4)
    rewards[:, -1] = torch.tensor([1.0, 0.0, -1.0, 0.5, 0.2, 0.9])
    mask = torch.ones(6, 4, dtype=torch.long)
    index = ["a", "a", "a", "a", "b", "b"]
    fn = get_adv_estimator_fn("promptr1_grpo")
    full, _ = fn(token_level_rewards=rewards, response_mask=mask, index=index, config=None)
    ref, _ = compute_grpo_outcome_advantage(rewards, mask, index)
    assert torch.allclose(full, ref)  # no env error: exactly verl's GRPO
    mask[2] = 0  # row 2: env error
    adv, _ = fn(token_level_rewards=rewards, response_mask=mask, index=index, config=None)
    keep = [0, 1, 3, 4, 5]
    ref, _ = compute_grpo_outcome_advantage(rewards[keep], mask[keep], [index[i] for i in keep])
    assert torch.allclose(adv[keep], ref) and adv[2].abs().sum() == 0


def test_response_never_outgrows_verls_response_length(tmp_path, monkeypatch, tiny):
    model, tok = tiny
    loop = build_loop(tmp_path, monkeypatch, tok, ScriptedServer(tok, "ours"), response_length=40)
    out = asyncio.run(loop.run(dict(SAMPLING), **row(4)))
    # the first turn fits; the framed reply would leave no room for another turn: the episode ends with -1
    assert len(out.response_ids) <= 40 and len(out.response_mask) == len(out.response_ids) == sum(out.response_mask)
    assert out.reward_score == -1.0 and out.extra_fields["reward_extra_info"]["overflow"] == 1.0


def test_task_from_row_and_paths():
    t = pverl.task_from_row(row(5))
    assert (t.question, t.answers, t.data_source, t.ability) == ("What is the capital of land 5?", ("City5",),
                                                                  "capitals", "qa")
    assert t.prompt == row(5)["raw_prompt"][0]["content"]
    assert pverl.AGENT_LOOP_CONFIG.is_file() and (pverl.CONFIG_DIR / "verl-paper.yaml").is_file()
    with pytest.raises(ValueError, match="no gold answers"):
        pverl.task_from_row({"raw_prompt": row(1)["raw_prompt"]})


def test_missing_verl_names_the_install_command(monkeypatch):
    import importlib

    monkeypatch.setitem(sys.modules, "verl.experimental.agent_loop.agent_loop", None)
    monkeypatch.delitem(sys.modules, "promptr1.integrations.verl")
    with pytest.raises(ImportError, match=r"pip install 'prompt-r1\[verl\]'"):
        importlib.import_module("promptr1.integrations.verl")


@pytest.mark.parametrize("framing", ["ours", "reference"])
def test_verl_loop_plays_the_episode_every_other_path_plays(framing):
    """The fifth path of tests/test_episode_engine.py: verl's per-episode loop, fed the same scripted agent tokens
    (plus server garbage after the stop, which the loop cuts), gives the training rollout's episode exactly."""
    from test_episode_engine import TASK, MAX_SEQ_LEN, agent_ids, make_env, play_rollout, summary
    from transformers import AutoTokenizer

    from promptr1.testing.tiny_model import tiny_model_path

    tok = AutoTokenizer.from_pretrained(tiny_model_path())
    turns = iter(agent_ids(framing, tok))

    async def generate(ids, max_tokens):
        out = next(turns)
        if framing == "ours":  # a server that runs past the stop string; the loop cuts at our stop
            out = out + tok(GARBAGE, add_special_tokens=False)["input_ids"]
        return out, [-0.5] * len(out), {}

    ep = asyncio.run(pverl.play_episode(make_env(framing), TASK, tok, generate, max_new_tokens=64,
                                        max_seq_len=MAX_SEQ_LEN))
    assert summary(ep) == summary(play_rollout(framing, tok))


def test_agent_loop_honours_the_settings_budget_and_cache(tmp_path, monkeypatch, tiny):
    """The loop's env LLM comes from promptr1.llm_backends.from_settings: the settings' budget refuses calls past
    max_calls (the episode is flagged and masked) and its cache records the calls."""
    model, tok = tiny
    server = ScriptedServer(tok, "ours")
    cache = tmp_path / "cache.sqlite"
    pverl._BACKENDS.clear()
    loop = build_loop(tmp_path, monkeypatch, tok, server, overrides={"max_calls": 1, "cache": str(cache)},
                      framing="ours")
    assert loop.settings.max_calls == 1 and loop.settings.cache == str(cache)
    first = asyncio.run(loop.run(dict(SAMPLING), **row(3)))
    second = asyncio.run(loop.run(dict(SAMPLING), **row(4)))
    pverl._BACKENDS.clear()
    assert first.extra_fields["reward_extra_info"]["env_error"] == 0.0
    assert second.extra_fields["reward_extra_info"]["env_error"] == 1.0 and not any(second.response_mask)
    assert cache.is_file()
    with pytest.raises(Exception, match="not promptr1 settings"):  # hydra wraps the loop's ValueError
        build_loop(tmp_path, monkeypatch, tok, server, overrides={"rpm": 5}, framing="ours")
