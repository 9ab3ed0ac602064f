"""``promptr1 train``'s env-LLM budget (``--max-calls`` / ``--max-cost``), cache, limits and ``--dry-run``.

The tiny random model never writes the protocol by itself, so these tests swap the rollout's sampler for one that
always sends the same prompt: every episode then makes exactly ``max_turns`` env-LLM calls (the env sends the last
turn's prompt too), which makes the budget arithmetic exact.
"""

from __future__ import annotations

import dataclasses
import json
import threading

import pytest

from promptr1.agents.config import GRPOConfig
from promptr1.agents.logger import Callback
from promptr1.commands.cli import main
from promptr1.core.settings import ConfigError
from promptr1.envs.synthetic.expert import SimExpert
from promptr1.llm_backends import BACKENDS, register_backend
from promptr1.llm_backends.assemble import backend_kwargs
from promptr1.commands.train import BUDGET_EXIT_CODE, run_training

FAST = ["--batch-questions", "2", "--group-size", "2", "--max-new-tokens", "32", "--max-turns", "2",
        "--progress", "false", "--max-seq-len", "768", "--kl-coef", "0", "--num-transcripts", "0"]
CALLS_PER_STEP = 2 * 2 * 2  # questions x rollouts x turns, every turn a prompt


class CountingSim(SimExpert):
    """The simulated expert, counting the calls that reach it (and charging $0.01 each)."""

    name = "counting-sim"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.count = 0
        self._count_lock = threading.Lock()

    def complete(self, messages, **sampling):  # acomplete runs this in a thread
        with self._count_lock:
            self.count += 1
        return dataclasses.replace(super().complete(messages, **sampling), cost_usd=0.01)


BUILT: list[CountingSim] = []


def _counting_sim(**kwargs):
    BUILT.append(CountingSim(**kwargs))
    return BUILT[-1]


@pytest.fixture
def counting_backend():
    BUILT.clear()
    register_backend("counting-sim", _counting_sim, overwrite=True)
    yield BUILT
    BACKENDS.unregister("counting-sim")


@pytest.fixture(scope="module")
def tiny_path():
    from promptr1.testing.tiny_model import tiny_model_path

    return str(tiny_model_path())


class Recorder(Callback):
    def __init__(self):
        self.metrics: list[dict] = []

    def on_step_end(self, trainer, step, metrics):
        self.metrics.append(dict(metrics, step=step))
        return True


def _state(out):
    latest = (out / "latest").read_text().strip()
    return latest, json.loads((out / latest / "trainer_state.json").read_text())


def test_budget_stops_at_the_end_of_the_step_then_resume_continues(tmp_path, tiny_path, always_prompt,
                                                                    counting_backend, capsys):
    out = tmp_path / "run"
    argv = ["train", "--config", "defaults", "--model", tiny_path, "--env-llm", "counting-sim", "--steps", "3", "--output-dir", str(out), *FAST]
    rc = main([*argv, "--max-calls", str(CALLS_PER_STEP + 2)])
    assert rc == BUDGET_EXIT_CODE, capsys.readouterr().err
    # step 1 used 8 calls, step 2 got the last 2 and the budget refused the rest: the run stopped after step 2
    assert counting_backend[0].count == CALLS_PER_STEP + 2
    latest, state = _state(out)
    assert latest == "checkpoint-000002" and state["step"] == 2
    printed = capsys.readouterr().out
    assert "budget stopped training at step 2 of 3" in printed and "--resume auto" in printed

    # the same command with --resume auto continues from step 2 with a new budget and finishes
    rc = main([*argv, "--max-calls", "1000", "--resume", "auto"])
    assert rc == 0, capsys.readouterr().err
    assert counting_backend[1].count == CALLS_PER_STEP  # step 3 only
    latest, state = _state(out)
    assert latest == "checkpoint-000003" and state["step"] == 3


def test_budget_refused_episodes_leave_their_groups_and_cost_stops_too(tmp_path, tiny_path, always_prompt):
    inner = CountingSim()
    rec = Recorder()
    cfg = GRPOConfig(model=tiny_path, steps=5, output_dir=str(tmp_path / "run"), batch_questions=2, group_size=2,
                     max_new_tokens=32, max_turns=2, progress=False, max_seq_len=768, kl_coef=0.0,
                     num_transcripts=0, max_cost=0.095)  # $0.01 a call
    assert run_training(cfg, env_llm=inner, callbacks=[rec]) == BUDGET_EXIT_CODE
    # the cost check sees settled calls: from $0.08 after step 1, the calls of step 2 already in flight when the
    # limit is crossed still finish (at most the 4 first-turn calls), every later one is refused
    assert 10 <= inner.count <= 12
    first, second = rec.metrics
    assert first["env_llm/errors"] == 0 and first["rollout/kept_fraction"] == 1.0
    # at most 4 more calls for 4 episodes of 2 calls: at most one finishes; the others were refused and dropped
    assert second["env_llm/errors"] >= 3
    assert second["rollout/kept_fraction"] <= 0.25
    assert _state(tmp_path / "run")[1]["step"] == 2


def test_cache_replays_so_a_second_run_makes_no_calls(tmp_path, tiny_path, always_prompt):
    cache = str(tmp_path / "calls.sqlite")
    common = dict(model=tiny_path, steps=1, batch_questions=2, group_size=2, max_new_tokens=32, max_turns=2,
                  progress=False, max_seq_len=768, kl_coef=0.0, num_transcripts=0, cache=cache, seed=3,
                  deterministic=True)
    first = CountingSim()
    assert run_training(GRPOConfig(output_dir=str(tmp_path / "a"), **common), env_llm=first) == 0
    # The two rollouts of a question send the same chats (always_prompt), so a call may be answered from the cache
    # the other rollout has just filled, or both may miss when they are in flight together: between one call per
    # distinct chat (2 questions x 2 turns) and every call.
    assert CALLS_PER_STEP // 2 <= first.count <= CALLS_PER_STEP
    second = CountingSim()  # same prompts (same sampler, same seed): every reply comes from the cache, uncounted
    assert run_training(GRPOConfig(output_dir=str(tmp_path / "b"), max_calls=0, **common), env_llm=second) == 0
    assert second.count == 0


def test_limits_pass_through_to_backends_that_take_them_and_are_refused_by_others(tmp_path):
    kw = backend_kwargs(GRPOConfig(env_llm="openai:gpt-4o-mini", env_max_concurrency=4, env_rpm=60, env_tpm=1e5,
                                   env_price_per_1k=[0.15, 0.6]))
    assert kw == {"max_concurrency": 4, "rpm": 60.0, "tpm": 1e5, "price_per_1k": (0.15, 0.6)}
    from promptr1.llm_backends import make_backend

    b = make_backend("openai:m", base_url="http://127.0.0.1:9/v1", **kw)
    try:
        assert (b.limiter.max_concurrency, b.limiter.rpm, b.limiter.tpm, b.price_per_1k) == (4, 60.0, 1e5, (0.15, 0.6))
    finally:
        b.close()
    with pytest.raises(ConfigError, match=r"--env-max-concurrency .* env_llm 'sim' \(SimExpert\) takes no such"):
        backend_kwargs(GRPOConfig(env_llm="sim", env_max_concurrency=4))
    with pytest.raises(ConfigError, match="two numbers"):
        backend_kwargs(GRPOConfig(env_llm="openai:m", env_price_per_1k=[0.15]))
    assert main(["train", "--config", "defaults", "--env-llm", "sim", "--env-rpm", "10", "--output-dir", str(tmp_path)]) == 2
    assert main(["train", "--config", "defaults", "--cache-mode", "sometimes", "--output-dir", str(tmp_path)]) == 2


def test_dry_run_prints_calls_tokens_and_cost_without_loading_a_model(tmp_path, capsys, monkeypatch):
    import promptr1.agents.models as models
    from promptr1.envs.collab_env import DEFAULT_ENV_SYSTEM_PROMPT
    from promptr1.llm_backends.limits import estimate_tokens

    def no_model(*a, **k):
        raise AssertionError("--dry-run loaded a model")

    monkeypatch.setattr(models, "load_policy", no_model)
    rc = main(["train", "--config", "defaults", "--dry-run", "--env-llm", "openai:gpt-4o-mini", "--batch-questions", "8", "--group-size", "5",
               "--max-turns", "3", "--max-new-tokens", "100", "--env-max-tokens", "200", "--steps", "10",
               "--env-price-per-1k", "0.15", "0.6", "--max-calls", "500", "--output-dir", str(tmp_path)])
    assert rc == 0
    text = capsys.readouterr().out
    sys_tok = estimate_tokens(DEFAULT_ENV_SYSTEM_PROMPT)
    inp = sum(sys_tok + (k - 1) * 300 + 100 for k in (1, 2, 3))  # k-th call: system, k-1 earlier pairs, the prompt
    outp = 3 * 200
    rows = {line.split()[0] + " " + line.split()[1]: line.split()[-4:]
            for line in text.splitlines() if line.strip().startswith(("per ", "whole "))}
    assert rows["per episode"] == ["3", f"{inp:,}", f"{outp:,}", f"{inp * 0.15 / 1000 + outp * 0.6 / 1000:.4f}"]
    assert rows["per step"][:3] == ["120", f"{40 * inp:,}", f"{40 * outp:,}"]  # 8 x 5 episodes
    assert rows["whole run"][0] == "1,200"
    assert "budget runs out in step 5 of 10" in text  # 500 calls at 120 a step
    assert not (tmp_path / "tensorboard").exists()


def test_dry_run_counts_validations(tmp_path, capsys):
    rc = main(["train", "--config", "defaults", "--dry-run", "--steps", "20", "--eval-every", "10", "--eval-limit", "3", "--eval-tasks",
               "synthetic", "--max-turns", "2", "--output-dir", str(tmp_path)])
    assert rc == 0
    text = capsys.readouterr().out
    line = next(x for x in text.splitlines() if x.strip().startswith("per validation"))
    assert "(3 episodes)" in line and line.split()[-4] == "6"
    assert "whole run (20 steps + 3 validations)" in text  # before training, at 10 and at 20
