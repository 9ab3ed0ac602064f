"""Atomic checkpoints: complete or absent, `latest` always loadable, even when the writer is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from promptr1.agents.checkpoint import (
    find_latest_checkpoint,
    load_trainer_state,
    temp_dir_for,
    write_checkpoint,
)


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from promptr1.testing.tiny_model import tiny_model_path

    p = tiny_model_path()
    return AutoModelForCausalLM.from_pretrained(p), AutoTokenizer.from_pretrained(p)


def test_write_and_find(tmp_path, tiny):
    model, tok = tiny
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    p1 = write_checkpoint(tmp_path, 1, model=model, tokenizer=tok, optimizer=opt, scheduler=sched,
                          trainer_state={"cursor": 8})
    p2 = write_checkpoint(tmp_path, 2, model=model, tokenizer=tok, optimizer=opt, scheduler=sched,
                          trainer_state={"cursor": 16}, keep=1)
    assert find_latest_checkpoint(tmp_path) == p2
    assert not p1.exists()  # pruned (keep=1)
    state = load_trainer_state(p2)
    assert state["step"] == 2 and state["cursor"] == 16
    for name in ("config.json", "model.safetensors", "optimizer.pt", "scheduler.pt", "tokenizer_config.json"):
        assert (p2 / name).is_file(), name
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(p2)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_half_written_checkpoint_is_invisible_and_cleaned(tmp_path, tiny):
    model, tok = tiny
    good = write_checkpoint(tmp_path, 1, model=model, tokenizer=tok, optimizer=None, scheduler=None,
                            trainer_state={})
    # A writer killed mid-way leaves a hidden temporary folder with some files
    tmp = temp_dir_for(tmp_path, 2)
    tmp.mkdir()
    (tmp / "config.json").write_text("{")
    assert find_latest_checkpoint(tmp_path) == good
    write_checkpoint(tmp_path, 3, model=model, tokenizer=tok, optimizer=None, scheduler=None, trainer_state={})
    assert not tmp.exists()


def test_resaving_the_same_step_replaces_it(tmp_path, tiny):
    model, tok = tiny
    write_checkpoint(tmp_path, 1, model=model, tokenizer=tok, optimizer=None, scheduler=None, trainer_state={"v": 1})
    p = write_checkpoint(tmp_path, 1, model=model, tokenizer=tok, optimizer=None, scheduler=None,
                         trainer_state={"v": 2})
    assert load_trainer_state(p)["v"] == 2 and find_latest_checkpoint(tmp_path) == p


def test_writer_killed_at_random_moments_never_corrupts_latest(tmp_path, tiny):
    from promptr1.testing.tiny_model import tiny_model_path

    script = textwrap.dedent(f"""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from promptr1.agents.checkpoint import write_checkpoint
        p = {str(tiny_model_path())!r}
        m, t = AutoModelForCausalLM.from_pretrained(p), AutoTokenizer.from_pretrained(p)
        opt = torch.optim.AdamW(m.parameters())
        print("ready", flush=True)
        for step in range(1, 1000):
            with torch.no_grad():
                next(m.parameters()).add_(1.0)
            write_checkpoint({str(tmp_path)!r}, step, model=m, tokenizer=t, optimizer=opt, scheduler=None,
                             trainer_state={{}}, keep=2)
    """)
    from transformers import AutoModelForCausalLM

    for delay in (0.3, 0.75, 1.3):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        latest = find_latest_checkpoint(tmp_path)
        if latest is None:  # killed before the first checkpoint finished: nothing published, nothing torn
            continue
        step = load_trainer_state(latest)["step"]
        m = AutoModelForCausalLM.from_pretrained(latest)  # loads: complete
        first = next(m.parameters())
        assert step >= 1 and torch.isfinite(first).all()


def test_trainer_checkpoint_uses_accelerates_state_api_without_a_second_copy_of_the_weights(tmp_path):
    """Optimizer, scheduler and RNG go through accelerate's save_state (what shards them per rank under FSDP /
    DeepSpeed); the weights are stored once, in HF format beside it."""
    from promptr1.agents.config import GRPOConfig
    from promptr1.agents.trainer import GRPOTrainer
    from promptr1.envs.tasks import Task
    from promptr1.testing.tiny_model import tiny_model_path

    class Env:
        def reset(self, seed=None, options=None):
            self.task = options["task"]
            return "", {"messages": [{"role": "user", "content": self.task.prompt}]}

        def step(self, action):
            return "", float(len(action) % 3) - 1.0, True, False, {"env_error": None, "reward_components": {}}

    cfg = GRPOConfig(model=str(tiny_model_path()), steps=1, batch_questions=1, group_size=2, max_new_tokens=4,
                     max_seq_len=256, progress=False, output_dir=str(tmp_path / "run"), kl_coef=0.0, cpu=True,
                     num_transcripts=0)
    tr = GRPOTrainer(cfg, tasks=[Task("q?", ("a",))], env_factory=Env)
    tr.train()
    ckpt = find_latest_checkpoint(tmp_path / "run")
    state = ckpt / "accelerate_state"
    assert (ckpt / "model.safetensors").is_file() and (state / "optimizer.bin").is_file()
    assert (state / "random_states_0.pkl").is_file() and list(state.glob("scheduler*.bin"))
    assert not list(state.glob("model*.safetensors")) and not list(state.glob("pytorch_model*"))
