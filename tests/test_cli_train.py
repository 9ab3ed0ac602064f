"""``promptr1 train/eval/chat/sft`` on the tiny model (smoke tests through the real dispatcher)."""

from __future__ import annotations

import json

import pytest

from promptr1.commands.cli import main


@pytest.fixture(scope="module")
def tiny_path():
    from promptr1.testing.tiny_model import tiny_model_path

    return str(tiny_model_path())


FAST = ["--batch-questions", "2", "--group-size", "2", "--max-new-tokens", "6", "--max-turns", "2",
        "--progress", "false", "--max-seq-len", "768"]


def test_train_one_step_writes_checkpoint_and_logs(tmp_path, tiny_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--config", "defaults", "--model", tiny_path, "--steps", "1", "--output-dir", str(out), *FAST])
    assert rc == 0
    latest = (out / "latest").read_text().strip()
    state = json.loads((out / latest / "trainer_state.json").read_text())
    assert state["step"] == 1
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert "checkpoint" in capsys.readouterr().out


def test_train_with_yaml_and_bad_key(tmp_path, tiny_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {tiny_path}\nsteps: 1\n")
    rc = main(["train", "--config", "defaults", "--config", str(cfg), "--stepz", "2"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--stepz" in err and "--steps" in err


def test_train_help_lists_options(capsys):
    assert main(["train", "--config", "defaults", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--group-size" in out and "--kl-coef" in out


def test_eval_and_chat_on_tiny(tmp_path, tiny_path, capsys):
    rc = main(["eval", "--model", tiny_path, "--limit", "3", "--max-new-tokens", "6", "--max-turns", "2",
               "--batch-size", "3", "--output-dir", str(tmp_path / "eval")])
    assert rc == 0
    out = capsys.readouterr().out
    for col in ("reward", "F1", "EM", "format rate", "turns", "episodes"):
        assert col in out
    rc = main(["chat", "Where was Brukmo Doldrak born?", "--model", tiny_path, "--max-new-tokens", "6",
               "--max-turns", "2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "[agent]" in out and "answer:" in out


def test_sft_then_train_from_it(tmp_path, tiny_path):
    out = tmp_path / "sft"
    rc = main(["sft", "--model", tiny_path, "--steps", "2", "--batch-size", "2", "--max-turns", "4",
               "--output-dir", str(out), "--progress", "false"])
    assert rc == 0
    assert (out / "latest").is_file()
    rc = main(["train", "--config", "defaults", "--model", str(out), "--steps", "1", "--output-dir", str(tmp_path / "rl"), *FAST])
    assert rc == 0


def test_sft_honours_model_dtype(tmp_path, tiny_path):
    import json

    from promptr1.agents.checkpoint import find_latest_checkpoint

    out = tmp_path / "sft"
    assert main(["sft", "--model", tiny_path, "--steps", "1", "--batch-size", "2", "--max-turns", "4",
                 "--model-dtype", "bf16", "--output-dir", str(out), "--progress", "false"]) == 0
    config = json.loads((find_latest_checkpoint(out) / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"


@pytest.mark.slow
def test_real_llm_environment_preset(tmp_path, tiny_path):
    """Training against a real local LLM (SmolLM2-135M-Instruct in process) as the environment."""
    pytest.importorskip("gguf")
    out = tmp_path / "real"
    rc = main(["train", "--config", "defaults", "--model", tiny_path, "--env-llm", "smollm2", "--tasks", "synthetic", "--steps", "1",
               "--output-dir", str(out), *FAST])
    assert rc == 0
    assert (out / "latest").is_file()


def test_eval_with_task_files_runs_the_harness(tmp_path):
    """`promptr1 eval FILE --methods direct` goes to the evaluation harness and writes its report."""
    import json as _json

    from promptr1.commands.cli import main as cli_main

    tasks = tmp_path / "qa.jsonl"
    tasks.write_text("\n".join(_json.dumps({"question": f"Say the word w{i}", "answers": [f"You said: Say the word w{i}"]})
                               for i in range(3)) + "\n", encoding="utf-8")
    out = tmp_path / "report"
    rc = cli_main(["eval", str(tasks), "--methods", "direct", "--env-llm", "echo", "--output-dir", str(out),
                   "--embedder", "hashing", "--chart", "false"])
    assert rc == 0
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "direct" in report
    records = [_json.loads(l) for l in (out / "transcripts.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(records) == 3
    # the echo backend repeats the question, which is the gold answer by construction
    assert all(r["method"] == "direct" and r["metrics"]["em"] == 1.0 for r in records)


def test_train_then_held_out_eval_prints_both_rows(tmp_path, tiny_path, capsys):
    """The quickstart's final step: untrained and trained rows on held-out episodes, saved to eval.json."""
    out = tmp_path / "run"
    rc = main(["train", "--config", "defaults", "--model", tiny_path, "--steps", "1", "--output-dir", str(out), "--eval-episodes", "4", *FAST])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "held-out evaluation (4 episodes" in printed
    assert "untrained" in printed and "trained (GRPO)" in printed
    saved = json.loads((out / "eval.json").read_text())
    rows = {t["method"]: t for t in saved["table"]}
    assert rows["untrained"]["episodes"] == 4 and rows["trained (GRPO)"]["episodes"] == 4
