"""Validation during training (``--eval-every N``, ``--eval-tasks``): the evaluation wing on the live policy, greedy,
with the run's env settings and its env-LLM backend object, before training and every N steps, in TensorBoard."""

from __future__ import annotations

import json

import pytest

from promptr1.agents.config import GRPOConfig
from promptr1.commands.cli import main
from promptr1.commands.train import run_training

FAST = ["--batch-questions", "2", "--group-size", "2", "--max-new-tokens", "6", "--max-turns", "2",
        "--progress", "false", "--max-seq-len", "768", "--kl-coef", "0", "--num-transcripts", "0"]


@pytest.fixture(scope="module")
def tiny_path():
    from promptr1.testing.tiny_model import tiny_model_path

    return str(tiny_model_path())


def _history(out):
    return [json.loads(line) for line in (out / "validation" / "history.jsonl").read_text().splitlines()]


def _eval_steps(out):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = [t for t in acc.Tags()["scalars"] if t.startswith("eval/")]
    return tags, {t: [e.step for e in acc.Scalars(t)] for t in tags}


def test_validates_before_training_and_every_n_steps_into_tensorboard_and_resumes(tmp_path, tiny_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--config", "defaults", "--model", tiny_path, "--env-llm", "sim", "--eval-every", "2", "--eval-limit", "2",
            "--eval-tasks", "synthetic", "--output-dir", str(out), *FAST]
    assert main([*argv, "--steps", "2"]) == 0, capsys.readouterr().err
    # before training and at step 2
    assert [h["step"] for h in _history(out)] == [0, 2]
    for step in (0, 2):
        summary = json.loads((out / "validation" / f"step-{step:06d}" / "summary.json").read_text())
        assert summary["finished"] == 2 and not summary["partial"]  # 2 questions of synthetic's test split
    tags, steps = _eval_steps(out)
    assert "eval/synthetic/reward/policy@sim" in tags and "eval/average/policy@sim" in tags
    assert steps["eval/synthetic/reward/policy@sim"] == [0, 2]
    assert "validation at step 2: synthetic" in capsys.readouterr().err

    # resumed at step 2: not validated again; step 3 is the last step, validated though 3 % 2 != 0
    assert main([*argv, "--steps", "3", "--resume", "auto"]) == 0
    assert [h["step"] for h in _history(out)] == [0, 2, 3]
    assert _eval_steps(out)[1]["eval/synthetic/reward/policy@sim"] == [0, 2, 3]


def test_validation_uses_the_live_model_the_runs_backend_and_env_settings(tmp_path, tiny_path, monkeypatch):
    """The SAME env-LLM backend object (inside the run's budget wrapper), the trainer's own model, greedy
    decoding, and the run's reward variant and turns reach the evaluation wing."""
    import promptr1.evaluation as evaluation
    from promptr1.envs.synthetic.expert import SimExpert

    real = evaluation.compare_policies
    seen = []

    def spy(policies, tasks, env_llm, settings, **kw):
        seen.append((policies, tasks, env_llm, settings, kw))
        return real(policies, tasks, env_llm, settings, **kw)

    monkeypatch.setattr(evaluation, "compare_policies", spy)
    backend = SimExpert()
    models = []

    from promptr1.agents.logger import Callback

    class Grab(Callback):
        def on_train_begin(self, trainer):
            models.append(trainer.unwrapped_model)

    cfg = GRPOConfig(model=tiny_path, steps=1, eval_every=1, eval_limit=2, eval_tasks=["synthetic:test"],
                     reward_variant="answer_gated", output_dir=str(tmp_path / "run"), batch_questions=2,
                     group_size=2, max_new_tokens=6, max_turns=3, progress=False, max_seq_len=768, kl_coef=0.0,
                     num_transcripts=0, temperature=1.0)
    assert run_training(cfg, env_llm=backend, callbacks=[Grab()]) == 0
    assert len(seen) == 2  # before training and after step 1
    policies, tasks, env_llm, settings, kw = seen[0]
    (model, _tok), = policies.values()
    assert model is models[0]
    assert env_llm.inner is backend  # the run's backend object, in the run's budget wrapper
    assert tasks == ["synthetic:test"] and kw["episodes"] == 2 and kw["temperature"] == 0.0
    assert settings.reward_variant == "answer_gated" and settings.max_turns == 3
    rows = json.loads((tmp_path / "run" / "validation" / "step-000001" / "transcripts.jsonl").read_text()
                      .splitlines()[0])
    assert rows["reward_variant"] == "answer_gated"


def test_bad_validation_settings_are_refused(tmp_path, capsys):
    assert main(["train", "--config", "defaults", "--eval-every", "-1", "--output-dir", str(tmp_path)]) == 2
    assert "(--eval-every) must be a whole number >= 0" in capsys.readouterr().err
