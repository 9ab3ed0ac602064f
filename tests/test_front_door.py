"""Smaller front-door behaviours: chat decodes greedily, gym's max_episode_steps scores the cut episode, piped
play turns, SFT's loss in TensorBoard."""

from __future__ import annotations

import io
import json

import pytest

from promptr1.commands.cli import main

ASK = "<think>ask</think><interaction_prompt>Where was Brukmo Doldrak born?</interaction_prompt>"


def test_chat_decodes_greedily_by_default_like_eval(monkeypatch):
    from promptr1.evaluation import policies
    from promptr1.evaluation.config import ChatConfig, EvalConfig

    assert ChatConfig().temperature == EvalConfig().temperature == 0.0
    seen = {}

    def load(model, *, rollout, **kwargs):
        seen["temperature"] = rollout.temperature
        raise OSError("stop here: only the decoding settings are under test")

    monkeypatch.setattr(policies.ModelPolicy, "load", load)
    assert main(["chat", "Where was Brukmo Doldrak born?", "--model", "tiny"]) == 2
    assert seen == {"temperature": 0.0}
    assert main(["chat", "Where was Brukmo Doldrak born?", "--model", "tiny", "--temperature", "0.7"]) == 2
    assert seen == {"temperature": 0.7}


@pytest.mark.parametrize("limit", [1, 2])
def test_gym_max_episode_steps_scores_the_cut_episode_as_max_turns_does(limit):
    import gymnasium as gym

    import promptr1  # noqa: F401  (registers PromptR1-v0)

    def play(env):
        env.reset(seed=0)
        for turn in range(1, 10):
            _, reward, terminated, truncated, info = env.step(ASK)
            if terminated or truncated:
                return turn, reward, truncated, info
        raise AssertionError("the episode never ended")

    cut = play(gym.make("PromptR1-v0", max_episode_steps=limit, max_turns=5))
    same = play(gym.make("PromptR1-v0", max_turns=limit))
    assert cut[0] == same[0] == limit and cut[2] and same[2]
    assert cut[3]["reward_components"] and cut[1] == same[1]
    assert cut[3]["reward_components"]["total"] == same[3]["reward_components"]["total"]


def test_play_with_two_turn_lines_on_stdin_plays_two_turns(monkeypatch, capsys):
    class Piped(io.StringIO):
        def isatty(self) -> bool:
            return False

    monkeypatch.setattr("sys.stdin", Piped(f"{ASK}\n<think>done</think><answer>Kurgan Lukro</answer>\n"))
    assert main(["play", "--json", "--task-index", "0"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(record["turns"]) == 2 and record["finished"]


def test_sft_loss_goes_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "sft"
    assert main(["sft", "--plugins", "promptr1.testing", "--model", "tiny", "--steps", "2", "--batch-size",
                 "2", "--max-turns", "4", "--output-dir", str(out), "--progress", "false"]) == 0
    (events,) = (out / "tensorboard").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    assert [e.step for e in acc.Scalars("sft/nll")] == [1, 2]
    assert "sft/lr" in acc.Tags()["scalars"]


def test_run_outputs_names_what_a_training_run_wrote(tmp_path):
    from promptr1.evaluation.validation import run_outputs

    (tmp_path / "checkpoint-000006").mkdir()
    (tmp_path / "latest").write_text("checkpoint-000006\n")
    (tmp_path / "tensorboard").mkdir()
    (tmp_path / "eval").mkdir()
    for name in ("eval/report.md", "eval/chart.png", "summary.json"):
        (tmp_path / name).write_text("x")
    assert run_outputs(tmp_path) == {
        "checkpoint": tmp_path / "checkpoint-000006", "TensorBoard logs": tmp_path / "tensorboard",
        "report": tmp_path / "eval" / "report.md", "chart": tmp_path / "eval" / "chart.png",
        "summary": tmp_path / "summary.json"}
