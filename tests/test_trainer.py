"""GRPOTrainer on the tiny model: parameters move, seeding reproduces, resume equals an uninterrupted run."""

from __future__ import annotations

import dataclasses

import pytest
import torch

pytest.importorskip("accelerate")

from promptr1.agents.config import GRPOConfig  # noqa: E402
from promptr1.agents.trainer import GRPOTrainer  # noqa: E402
from promptr1.envs.tasks import Task  # noqa: E402

TASKS = [Task(question=f"What is {i} plus {i}?", answers=(str(2 * i),), id=f"q{i}") for i in range(6)]


class LengthRewardEnv:
    """Stand-in env: two turns; the reward depends on the agent's text, so groups have variance."""

    def __init__(self, max_turns: int = 2):
        self.max_turns = max_turns

    def reset(self, seed=None, options=None):
        self.task, self.t = options["task"], 0
        return self.task.prompt, {"messages": [{"role": "system", "content": "sys"},
                                               {"role": "user", "content": self.task.prompt}]}

    def step(self, action):
        self.t += 1
        if self.t >= self.max_turns:
            r = (len(action) % 5) / 2.0 - 1.0
            comps = {"total": r, "format": 0.0, "f1": 0.0, "em": 0.0}
            return "", r, False, True, {"env_error": None, "reward_components": comps, "episode": {"env_llm_calls": 1}}
        return "<interaction_response>ok</interaction_response>", 0.0, False, False, {"env_error": None}


@pytest.fixture
def one_thread():
    """Bit-exact comparisons need a fixed reduction order: one intra-op thread (MKL may vary the count under load)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_cfg(tmp_path, **kw):
    from promptr1.testing.tiny_model import tiny_model_path

    base = dict(model=str(tiny_model_path()), steps=2, batch_questions=2, group_size=3, max_new_tokens=8,
                max_seq_len=512, max_turns=2, lr=1e-3, seed=3, deterministic=True, progress=False,
                output_dir=str(tmp_path / "run"), num_transcripts=1, micro_batch_size=4, minibatches=2, kl_coef=0.01)
    base.update(kw)
    return GRPOConfig(**base)


def make_trainer(cfg):
    return GRPOTrainer(cfg, tasks=TASKS, env_factory=LengthRewardEnv)


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_one_step_changes_parameters_and_logs(tmp_path):
    tr = make_trainer(make_cfg(tmp_path, steps=1))
    before = _params(tr.unwrapped_model)
    m = tr.train_step()
    after = _params(tr.unwrapped_model)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2
    for key in ("reward/mean", "losses/policy_loss", "losses/kl", "losses/entropy", "losses/clip_frac",
                "losses/grad_norm", "rollout/turns_mean", "time/generate_s", "time/update_s", "time/env_wait_s",
                "rollout/logp_mismatch_max"):
        assert key in m, key
    assert m["rollout/logp_mismatch_max"] < 1e-3  # sampler and training forward agree
    assert m["rollout/turns_mean"] == 2.0


def test_same_seed_same_metrics(tmp_path, one_thread):
    runs = []
    for i in range(2):
        tr = make_trainer(make_cfg(tmp_path / str(i), steps=1))
        m = tr.train_step()
        runs.append({k: v for k, v in m.items() if not k.startswith("time/")})
    assert runs[0] == runs[1]


def test_resume_equals_uninterrupted(tmp_path, one_thread):
    full = make_trainer(make_cfg(tmp_path / "full", steps=2))
    hist_full = full.train()
    w_full = _params(full.unwrapped_model)

    cfg = make_cfg(tmp_path / "split", steps=2)
    first = make_trainer(cfg)
    first.train(steps=1)  # writes checkpoint-000001
    del first
    second = make_trainer(dataclasses.replace(cfg, resume="auto"))
    assert second.step == 1 and second.cursor == 2
    hist_second = second.train()
    w_split = _params(second.unwrapped_model)
    for k in w_full:
        torch.testing.assert_close(w_full[k], w_split[k], rtol=0, atol=1e-6)
    a = {k: v for k, v in hist_full[-1].items() if not k.startswith("time/")}
    b = {k: v for k, v in hist_second[-1].items() if not k.startswith("time/")}
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=1e-5), k


def test_checkpoint_loads_with_from_pretrained(tmp_path):
    from transformers import AutoModelForCausalLM

    tr = make_trainer(make_cfg(tmp_path, steps=1))
    tr.train()
    latest = (tmp_path / "run" / "latest").read_text().strip()
    m = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / latest)
    sd = tr.unwrapped_model.state_dict()
    for k, v in m.state_dict().items():
        assert torch.equal(v, sd[k])
    assert (tmp_path / "run" / "tensorboard").is_dir()


def test_env_errors_leave_their_group(tmp_path):
    class Flaky(LengthRewardEnv):
        def step(self, action):
            if "q0" == self.task.id:
                return "", 0.0, False, True, {"env_error": "rate_limit: simulated", "reward_components": {}}
            return super().step(action)

    cfg = make_cfg(tmp_path, steps=1, batch_questions=3)
    tr = GRPOTrainer(cfg, tasks=TASKS, env_factory=Flaky)
    tr.cursor = 0
    order = tr._question_order(0)
    m = tr.train_step()
    n_err = 3 * sum(TASKS[i].id == "q0" for i in order[:3])
    assert m["env_llm/errors"] == n_err
    assert m["rollout/kept_fraction"] == pytest.approx(1 - n_err / 9, abs=1e-6) or n_err == 0


def test_unknown_algo_is_answered_with_choices(tmp_path):
    with pytest.raises((KeyError, ValueError), match="grpo"):
        make_trainer(make_cfg(tmp_path, algo="grpp"))


def test_lora_without_peft_fails_clearly(tmp_path):
    try:
        import peft  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="peft"):
            make_trainer(make_cfg(tmp_path, lora_r=4))
    else:
        tr = make_trainer(make_cfg(tmp_path, lora_r=4, steps=1))
        m = tr.train_step()
        assert "losses/kl" in m


def test_user_registered_algorithm_via_plugin(tmp_path, monkeypatch):
    plugin = tmp_path / "my_algo_plugin.py"
    plugin.write_text(
        "from promptr1.agents.registry import AlgoSpec, register_advantage_estimator, register_algorithm, ALGORITHMS\n"
        "CALLS = []\n"
        "if 'sign-test' not in ALGORITHMS:\n"
        "    @register_advantage_estimator('sign-test')\n"
        "    def sign(rewards, group_ids, **kw):\n"
        "        CALLS.append(len(rewards))\n"
        "        return (rewards - rewards.mean()).sign()\n"
        "    register_algorithm('sign-test', AlgoSpec('sign-test', 'ppo-clip', {'kl_coef': 0.0}))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    tr = make_trainer(make_cfg(tmp_path, steps=1, algo="sign-test", plugins="my_algo_plugin", kl_coef=None))
    assert tr.ref_model is None  # the algorithm's default kl_coef=0 skips the reference model
    explicit = make_trainer(make_cfg(tmp_path, steps=1, algo="sign-test", plugins="my_algo_plugin", kl_coef=0.001))
    assert explicit.ref_model is not None and explicit.loss_cfg.kl_coef == 0.001  # the user's value wins
    tr.train_step()
    import my_algo_plugin

    assert my_algo_plugin.CALLS == [6]


def test_example_custom_algorithm_as_a_py_file_plugin(tmp_path):
    """`--plugins examples/custom_reinforce.py --algo reinforce-loo` (issue 5's custom algorithm)."""
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "custom_reinforce.py"
    tr = make_trainer(make_cfg(tmp_path, steps=1, algo="reinforce-loo", plugins=str(example)))
    m = tr.train_step()
    assert "losses/is_capped_frac" in m  # a stat only the example's loss reports: it really ran
    with pytest.raises(ImportError, match="no such file"):
        make_trainer(make_cfg(tmp_path, plugins=str(tmp_path / "missing.py")))


def test_kl_in_reward_moves_the_kl_from_the_loss_to_the_rewards(tmp_path, advantage_inputs):
    """kl_in_reward: the episode rewards are penalised by kl_coef * sum_t KL before the advantages, and the
    loss has no KL term (the KL is still logged)."""
    import promptr1.agents.trainer as trainer_mod

    real = trainer_mod.GRPOTrainer.train_step

    tr = make_trainer(make_cfg(tmp_path, steps=1, kl_coef=0.5, kl_in_reward=True, lr=0.0))
    assert tr.loss_cfg.kl_in_reward and tr.ref_model is not None
    with torch.no_grad():  # make the policy differ from the reference so that the KL is not zero
        for p in tr.unwrapped_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    m = real(tr)
    seen = advantage_inputs
    raw = torch.tensor([e.reward for e in tr._last_episodes])
    assert m["reward/kl_penalty"] > 0
    assert torch.all(seen["rewards"] < raw)  # every episode paid for its KL
    assert abs((raw - seen["rewards"]).mean().item() - m["reward/kl_penalty"]) < 1e-5


def test_reference_is_loaded_from_disk_in_the_model_dtype(tmp_path):
    """The frozen reference comes straight from the checkpoint in model_dtype (no float32 copy of the policy);
    the trained policy keeps float32 weights unless a lower dtype is asked for."""
    cfg = make_cfg(tmp_path, steps=1, kl_coef=0.01, model_dtype="bf16")
    tr = GRPOTrainer(cfg, tasks=TASKS, env_factory=LengthRewardEnv)
    assert next(tr.ref_model.parameters()).dtype == torch.bfloat16
    assert next(tr.unwrapped_model.parameters()).dtype == torch.bfloat16  # asked for explicitly
    same = all(torch.equal(a.float(), b.float()) for a, b in zip(tr.ref_model.parameters(),
                                                                 tr.unwrapped_model.parameters()))
    assert same and tr.ref_model is not tr.unwrapped_model
    tr.train_step()  # runs in bf16 end to end
    auto = GRPOTrainer(make_cfg(tmp_path / "b", steps=1, kl_coef=0.01, cpu=True), tasks=TASKS,
                       env_factory=LengthRewardEnv)
    assert next(auto.unwrapped_model.parameters()).dtype == torch.float32  # auto on a CPU: float32 everywhere
    assert next(auto.ref_model.parameters()).dtype == torch.float32


class HalfFlatEnv(LengthRewardEnv):
    """Like LengthRewardEnv, but every rollout of an even-numbered question gets the same reward (advantage 0)."""

    def step(self, action):
        obs, r, term, trunc, info = super().step(action)
        if trunc and int(self.task.id[1:]) % 2 == 0:
            r = 0.0
            info["reward_components"] = dict(info["reward_components"], total=r)
        return obs, r, term, trunc, info


@pytest.mark.parametrize("loss", [{"kl_coef": 0.0}, {"algo": "dapo"},
                                  {"kl_coef": 0.0, "loss_agg": "seq-mean-token-mean"}, {"kl_coef": 0.01}])
def test_rows_without_gradient_skip_the_update_with_the_same_gradient(tmp_path, one_thread, loss):
    """Zero-advantage rows (no KL, no entropy term) and masked rows skip their forward/backward passes; the
    gradient the optimizer steps on is that of computing every row. With a KL term every row is computed."""
    runs = {}
    for skip in (True, False):
        tr = GRPOTrainer(make_cfg(tmp_path / str(skip), steps=1, batch_questions=4, minibatches=1, **loss),
                         tasks=TASKS, env_factory=HalfFlatEnv)
        tr._skip_rows_without_gradient = skip
        rows, grads = [], []
        real_logprobs, real_step = tr._logprobs, tr.optimizer.step

        def counting(model, sub, _real=real_logprobs, _rows=rows, **kw):
            if torch.is_grad_enabled():
                _rows.append(sub["input_ids"].shape[0])
            return _real(model, sub, **kw)

        def capturing(*a, _real=real_step, _grads=grads, _model=tr.unwrapped_model, **kw):
            _grads.append({n: p.grad.detach().clone() for n, p in _model.named_parameters() if p.grad is not None})
            return _real(*a, **kw)

        tr._logprobs, tr.optimizer.step = counting, capturing
        m = tr.train_step()
        runs[skip] = (grads, sum(rows), m)
    (g_skip, rows_skip, m_skip), (g_all, rows_all, _) = runs[True], runs[False]
    assert rows_all == 12  # 4 questions x 3 rollouts
    if loss.get("kl_coef"):
        assert rows_skip == 12 and m_skip["rollout/update_rows_fraction"] == 1.0
    else:
        assert rows_skip == 6 and m_skip["rollout/update_rows_fraction"] == 0.5  # the odd questions' rollouts
    assert len(g_skip) == len(g_all) == 1 and g_skip[0].keys() == g_all[0].keys()
    scale = max(float(g.abs().max()) for g in g_all[0].values())
    assert scale > 0
    for k, g in g_all[0].items():
        assert torch.allclose(g_skip[0][k], g, atol=1e-5 * scale, rtol=1e-4), k


class SwitchableFlatEnv(LengthRewardEnv):
    """LengthRewardEnv until ``flat`` is set; then every rollout gets reward 0 (no group has a spread)."""

    flat = False

    def step(self, action):
        obs, r, term, trunc, info = super().step(action)
        if trunc and self.flat:
            r = 0.0
            info["reward_components"] = dict(info["reward_components"], total=r)
        return obs, r, term, trunc, info


def test_step_without_signal_makes_no_pass_and_the_same_optimizer_step(tmp_path, one_thread, caplog):
    """A step where no row can move the weights (every group flat, no KL, no entropy term) runs no forward or
    backward pass, yet the AdamW step (momentum from the step before, weight decay) leaves the weights exactly
    where computing every row's (zero) gradient leaves them."""
    import logging

    weights, passes, metrics = {}, {}, {}
    for skip in (True, False):
        tr = GRPOTrainer(make_cfg(tmp_path / str(skip), steps=2, batch_questions=2, minibatches=2, kl_coef=0.0,
                                  weight_decay=0.1), tasks=TASKS, env_factory=SwitchableFlatEnv)
        tr._skip_rows_without_gradient = False
        tr.train_step()  # a step with signal: AdamW's moments are non-zero from here on
        before = {n: p.detach().clone() for n, p in tr.unwrapped_model.named_parameters()}
        for env in tr.envs:
            env.flat = True
        tr._skip_rows_without_gradient = skip
        rows, real = [], tr._logprobs

        def counting(model, sub, _real=real, _rows=rows, **kw):
            if torch.is_grad_enabled():
                _rows.append(sub["input_ids"].shape[0])
            return _real(model, sub, **kw)

        tr._logprobs = counting
        with caplog.at_level(logging.INFO, logger="promptr1.agents.trainer"):
            metrics[skip] = tr.train_step()
        weights[skip] = {n: p.detach().clone() for n, p in tr.unwrapped_model.named_parameters()}
        passes[skip] = sum(rows)
        assert any(not torch.equal(before[n], w) for n, w in weights[skip].items())  # the optimizer did step
    assert metrics[True]["rollout/update_rows_fraction"] == 0.0
    assert passes[True] == 0 and passes[False] == 6  # 2 questions x 3 rollouts, computed only without skipping
    assert metrics[True]["rollout/no_signal_updates"] == 1.0 and metrics[False]["rollout/no_signal_updates"] == 0.0
    assert "had no signal" in caplog.text
    for n, w in weights[False].items():
        assert torch.equal(weights[True][n], w), n


@pytest.mark.parametrize("mode, with_state", [("latest", [3]), ("all", [1, 2, 3]), ("unfinished", [])])
def test_optimizer_state_only_where_a_resume_needs_it(tmp_path, mode, with_state):
    """Every checkpoint holds the weights (in the dtype they train in); the optimizer and scheduler state only the
    ones save_optimizer names. A checkpoint without it refuses to resume, saying which one would."""
    from safetensors import safe_open

    from promptr1.agents.checkpoint import CheckpointError, checkpoint_name

    cfg = make_cfg(tmp_path, steps=3, save_every=1, keep_checkpoints=0, kl_coef=0.0, save_optimizer=mode)
    tr = make_trainer(cfg)
    tr.train()
    trained_dtype = next(tr.unwrapped_model.parameters()).dtype
    out = tmp_path / "run"
    for step in (1, 2, 3):
        folder = out / checkpoint_name(step)
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {trained_dtype}
        state = folder / "accelerate_state"
        assert (state / "optimizer.bin").is_file() == (step in with_state), step
        assert (state / "scheduler.bin").is_file() == (step in with_state), step
        assert any(p.name.startswith("random_states") for p in state.iterdir())  # the RNG stays everywhere
    older = out / checkpoint_name(1)
    if 1 not in with_state:
        with pytest.raises(CheckpointError, match="holds no optimizer state.*--model"):
            make_trainer(dataclasses.replace(cfg, resume=str(older), output_dir=str(tmp_path / "again")))


def test_unfinished_keeps_the_optimizer_state_until_the_run_is_done(tmp_path):
    from promptr1.agents.checkpoint import checkpoint_name

    cfg = make_cfg(tmp_path, steps=2, kl_coef=0.0, save_optimizer="unfinished")
    first = make_trainer(cfg)
    first.train(steps=1)  # interrupted after step 1 of 2: its checkpoint is the one a resume needs
    assert (tmp_path / "run" / checkpoint_name(1) / "accelerate_state" / "optimizer.bin").is_file()
    second = make_trainer(dataclasses.replace(cfg, resume="auto"))
    assert second.step == 1
    second.train()
    assert not (tmp_path / "run" / checkpoint_name(2) / "accelerate_state" / "optimizer.bin").exists()
    again = make_trainer(dataclasses.replace(cfg, resume="auto"))  # a finished run, nothing left to train: fine
    assert again.step == 2 and again.train() == []


def test_save_optimizer_is_checked(tmp_path):
    with pytest.raises(ValueError, match="save_optimizer must be latest"):
        make_cfg(tmp_path, save_optimizer="never")


def test_logged_entropy_is_computed_without_autograd_unless_the_loss_uses_it():
    """The entropy the trainer logs (entropy_coef 0) keeps no autograd buffers; its value is the same."""
    from promptr1.agents.models import load_policy, sequence_logprobs
    from promptr1.testing.tiny_model import tiny_model_path

    model, _ = load_policy(str(tiny_model_path()), dtype=torch.float32)
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    act = torch.zeros_like(ids)
    act[:, 6:] = 1
    lp_a, ent_a = sequence_logprobs(model, ids, torch.ones_like(ids), act, with_entropy=True)
    lp_b, ent_b = sequence_logprobs(model, ids, torch.ones_like(ids), act, with_entropy=True, entropy_grad=False)
    assert ent_a.requires_grad and not ent_b.requires_grad and lp_b.requires_grad
    assert torch.equal(ent_a.detach(), ent_b) and torch.equal(lp_a, lp_b)
