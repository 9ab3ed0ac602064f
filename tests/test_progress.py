"""What a person sees while ``promptr1 train`` runs: where the step in hand is, one plain line per step in a
log."""

from __future__ import annotations

import io
import re

import pytest

pytest.importorskip("accelerate")

from promptr1.agents.config import GRPOConfig
from promptr1.agents.trainer import GRPOTrainer
from promptr1.envs.tasks import Task

TASKS = [Task(question=f"What is {i} plus {i}?", answers=(str(2 * i),), id=f"q{i}") for i in range(4)]


class OneTurnEnv:
    """Stand-in env: the first turn ends the episode with a reward that depends on the agent's text."""

    def reset(self, seed=None, options=None):
        self.task = options["task"]
        return self.task.prompt, {"messages": [{"role": "system", "content": "sys"},
                                               {"role": "user", "content": self.task.prompt}]}

    def step(self, action):
        r = (len(action) % 5) / 2.0 - 1.0
        return "", r, True, False, {"env_error": None, "reward_components": {"total": r, "format": 0.0},
                                    "episode": {"env_llm_calls": 1}}


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def train(tmp_path, monkeypatch, stderr, steps=2, **kw):
    from promptr1.testing.tiny_model import tiny_model_path

    monkeypatch.setattr("sys.stderr", stderr)
    cfg = GRPOConfig(model=str(tiny_model_path()), steps=steps, batch_questions=2, group_size=2,
                     max_new_tokens=4, max_seq_len=512, max_turns=1, seed=1, output_dir=str(tmp_path / "run"),
                     micro_batch_size=1, minibatches=1, kl_coef=0.0, num_transcripts=0, **kw)
    GRPOTrainer(cfg, tasks=TASKS, env_factory=OneTurnEnv).train()
    return stderr.getvalue()


def test_the_bar_says_where_the_step_is_on_a_terminal(tmp_path, monkeypatch):
    out = train(tmp_path, monkeypatch, Terminal(), steps=1, progress=True)
    assert "step 1: episodes 0/4" in out and "step 1: episodes 4/4" in out
    counts = re.findall(r"step 1: update (\d+)/(\d+) micro-batches", out)
    assert counts and counts[-1][0] == counts[-1][1] and int(counts[-1][1]) >= 1
    assert "train: step 1/1" not in out  # no plain lines on a terminal


def test_one_plain_line_per_step_with_progress_false(tmp_path, monkeypatch):
    out = train(tmp_path, monkeypatch, io.StringIO(), progress=False)
    lines = [line for line in out.splitlines() if line.startswith("train: step")]
    assert [line.split(":")[1] for line in lines] == [" step 1/2", " step 2/2"]
    assert "reward" in lines[0]


def test_plain_lines_when_the_console_is_not_a_terminal():
    from promptr1.agents.logger import Logger

    log = Logger(None, progress=True, total_steps=3, stream=io.StringIO())  # a log file, a pipe, CI
    assert log.bar is None
    log.record("reward/mean", 0.25)
    log.dump(1)
    log.within_step("episodes 1/4")  # the bar's business only
    assert log.stream.getvalue() == "train: step 1/3: reward 0.25\n"
    tty = Logger(None, progress=True, total_steps=3, stream=Terminal())
    assert tty.bar is not None
    tty.close()
