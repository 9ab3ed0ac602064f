"""Ctrl-C and SIGTERM during ``promptr1 train`` and ``promptr1 eval``: nothing finished is lost, the way on is
named.

The commands run on the tiny model: the first in a subprocess through the console script, as a user starts it,
the others in this process (faster). The signal is sent from inside the run, by a plug-in or a patched method,
at a point the code decides (the start of a step's rollout, or right after an eval episode is recorded), never
after a sleep.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest
from promptr1.agents.interrupt import StopRequest, resume_command

FAST = ["--batch-questions", "2", "--group-size", "2", "--max-new-tokens", "6", "--max-turns", "2",
        "--progress", "false", "--max-seq-len", "768"]

#: A plug-in that sends this process SIG_NAME (SIG_TIMES times) as the rollout of step index 1 begins.
TRAIN_PLUGIN = """
import os, signal
from promptr1.agents import trainer as _t
_collect = _t.GRPOTrainer.collect
def collect(self, questions):
    if self.step == 1:
        for _ in range(int(os.environ.get("SIG_TIMES", "1"))):
            os.kill(os.getpid(), getattr(signal, os.environ["SIG_NAME"]))
    return _collect(self, questions)
_t.GRPOTrainer.collect = collect
"""


def promptr1(args: list[str], cwd: pathlib.Path, **env: str) -> subprocess.CompletedProcess:
    exe = pathlib.Path(sys.executable).parent / "promptr1"  # the console script, as a user starts it
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          check=False, env={**os.environ, "HF_HUB_OFFLINE": "1", **env})


def checkpoints(out: pathlib.Path) -> list[str]:
    return sorted(p.name for p in out.glob("checkpoint-*"))


def signal_at_step_1(monkeypatch, signum: int, times: int = 1) -> None:
    """In this process: what TRAIN_PLUGIN does in a subprocess."""
    from promptr1.agents import trainer

    collect = trainer.GRPOTrainer.collect

    def patched(self, questions):
        if self.step == 1:
            for _ in range(times):
                os.kill(os.getpid(), signum)
        return collect(self, questions)

    monkeypatch.setattr(trainer.GRPOTrainer, "collect", patched)


def run_main(args: list[str]) -> int:
    from promptr1.commands.cli import main

    try:
        return main(args)
    except KeyboardInterrupt:  # would end the whole test session: fail this test instead
        pytest.fail("KeyboardInterrupt escaped the command")


def test_sigint_finishes_the_step_writes_a_checkpoint_and_resume_continues(tmp_path, monkeypatch, capsys):
    (tmp_path / "sig.py").write_text(TRAIN_PLUGIN)
    args = ["train", "--config", "defaults", "--plugins", "promptr1.testing,sig.py", "--model", "tiny", "--steps", "3",
            "--output-dir", "run", *FAST]
    res = promptr1(args, tmp_path, SIG_NAME="SIGINT")
    assert res.returncode == 130, res.stderr
    assert "Traceback" not in res.stderr
    assert checkpoints(tmp_path / "run") == ["checkpoint-000002"]  # step 2 (the one in progress) finished
    assert ("interrupted at step 2: continue with `promptr1 train --config defaults --plugins promptr1.testing,sig.py --model "
            "tiny --steps 3 --output-dir run") in res.stderr
    assert "--resume auto`" in res.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["step"] == 2

    monkeypatch.chdir(tmp_path)  # the rest in this process (faster)
    resume = ["train", "--config", "defaults", "--model", "tiny", "--steps", "3", "--output-dir", "run", *FAST, "--resume", "auto"]
    assert run_main(resume) == 0
    out = capsys.readouterr().out
    assert "resuming from run/checkpoint-000002 (step 2 of 3)" in out
    # train ends by naming where its results are
    assert ("outputs: checkpoint run/checkpoint-000003; TensorBoard logs run/tensorboard; "
            "summary run/summary.json") in out
    assert checkpoints(tmp_path / "run") == ["checkpoint-000002", "checkpoint-000003"]

    assert run_main(resume) == 0  # a finished run: nothing to do, no checkpoint-000003.1, no nan reward line
    out = capsys.readouterr()
    assert "is finished (step 3 of 3)" in out.out
    assert "nan" not in out.out + out.err
    assert checkpoints(tmp_path / "run") == ["checkpoint-000002", "checkpoint-000003"]


def test_sigterm_exits_143_after_a_checkpoint(tmp_path, monkeypatch, capsys):
    signal_at_step_1(monkeypatch, signal.SIGTERM)
    out = tmp_path / "run"
    assert run_main(["train", "--config", "defaults", "--model", "tiny", "--steps", "3", "--output-dir", str(out), *FAST]) == 143
    assert "interrupted at step 2" in capsys.readouterr().err
    assert checkpoints(out) == ["checkpoint-000002"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are put back


def test_a_second_sigint_stops_at_once(tmp_path, monkeypatch, capsys):
    signal_at_step_1(monkeypatch, signal.SIGINT, times=2)
    out = tmp_path / "run"
    assert run_main(["train", "--config", "defaults", "--model", "tiny", "--steps", "3", "--output-dir", str(out), *FAST]) == 130
    err = capsys.readouterr().err
    assert "stopped at once" in err and "--resume auto" in err
    assert checkpoints(out) == []  # the step in progress was not finished


def test_eval_interrupted_keeps_finished_episodes_and_resumes(tmp_path, monkeypatch, capsys):
    from promptr1.evaluation import runner

    finish = runner._Run.finish

    def patched(self, job, *a, **k):  # a stop request right after the first agent episode is recorded
        finish(self, job, *a, **k)
        if job.method.kind == "agent" and not self.stop.requested:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(runner._Run, "finish", patched)
    out = tmp_path / "ev"
    args = ["eval", "--model", "tiny", "--limit", "4", "--batch-size", "2", "--max-new-tokens", "6",
            "--max-turns", "2", "--output-dir", str(out)]
    assert run_main(args) == 130
    err = capsys.readouterr().err
    # direct and cot (4 each), the agent's first batch of 2; its second batch never started
    assert len((out / "transcripts.jsonl").read_text().splitlines()) == 10
    assert "interrupted by SIGINT: 10 of 12 episodes kept" in err and "run the same command" in err
    monkeypatch.setattr(runner._Run, "finish", finish)
    assert run_main(args) == 0
    printed = capsys.readouterr()
    assert "complete: 12 episodes" in printed.out
    assert "resuming from" in printed.err and "10 of 12 episodes done, 2 to play" in printed.err
    assert len((out / "transcripts.jsonl").read_text().splitlines()) == 12


def test_stop_request_turns_the_first_signal_into_a_request_and_the_second_sigint_into_keyboard_interrupt():
    with StopRequest() as stop:
        assert signal.getsignal(signal.SIGINT) == stop.request
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGINT and stop.exit_code == 130
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_resume_command_drops_overwrite_and_an_earlier_resume():
    assert resume_command(["--overwrite", "--resume", "runs/x/checkpoint-000004", "--steps", "9"]) == \
        "promptr1 train --steps 9 --resume auto"
    assert resume_command([]) == "promptr1 train --resume auto"


def test_a_stop_inside_a_nested_block_stops_the_outer_one_too():
    """A validation run (an evaluation, with its own block) inside training: Ctrl-C there stops training
    too."""
    with StopRequest() as outer:
        with StopRequest() as inner:
            os.kill(os.getpid(), signal.SIGTERM)
        assert inner.signum == outer.signum == signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) == outer.request


def test_no_validation_on_the_way_out(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from promptr1.agents.config import GRPOConfig
    from promptr1.evaluation.validation import ValidationCallback

    callback = ValidationCallback(GRPOConfig(output_dir=str(tmp_path), eval_every=1), backend=None)
    ran = []
    monkeypatch.setattr(callback, "validate", lambda trainer, step: ran.append(step))
    accelerator = SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None)
    callback.on_step_end(SimpleNamespace(accelerator=accelerator, stop_requested=False), 1, {})
    callback.on_step_end(SimpleNamespace(accelerator=accelerator, stop_requested=True), 2, {})
    assert ran == [1]
