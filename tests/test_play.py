"""`promptr1 play`: a file of turns, stdin, the demo, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys

from promptr1.commands.play import play_main as main, read_turns


def test_play_from_turns_file(tmp_path, capsys):
    tasks = tmp_path / "t.jsonl"
    tasks.write_text(json.dumps({"question": "Capital of France?", "answers": ["Paris"]}) + "\n", encoding="utf-8")
    turns = tmp_path / "turns.txt"
    turns.write_text(
        "<think>ask</think><interaction_prompt>What is the capital of France?</interaction_prompt>\n---\n"
        "<think>ok</think><answer>Paris</answer>\n", encoding="utf-8")
    assert main(["--task", str(tasks), "--env-llm", "echo", "--turns", str(turns), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # 0.4 + 0.25 + 0.25 + 0.1 = 1.0 -> -1 + 1 + F1 1.0
    assert rec["reward"] == 1.0 and rec["finished"] and len(rec["turns"]) == 2
    assert rec["reward_components"]["format"] == 1.0


def test_play_reads_turns_from_stdin_and_prints_transcript(tmp_path):
    tasks = tmp_path / "t.jsonl"
    tasks.write_text(json.dumps({"question": "Capital of France?", "answers": ["Paris"]}) + "\n", encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, promptr1.testing; from promptr1.commands.cli import main; sys.exit(main())",
         "play", "--task", str(tasks), "--env-llm", "echo"],
        input="<think>x</think><answer>Lyon</answer>\n", capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "[reward] total=-0.400" in proc.stdout and "[gold] Paris" in proc.stdout


def test_play_bad_arguments_are_reported(tmp_path, capsys):
    assert main(["--env-llm", "nosuch", "--turns", str(tmp_path / "x")]) == 2
    assert "unknown env_llm" in capsys.readouterr().err


def test_read_turns_formats():
    assert read_turns("a\n---\n\n---\nb") == ["a", "b"]
    assert read_turns('["x"]') == ["x"]


def test_play_takes_the_env_settings_of_a_config(tmp_path, capsys, monkeypatch):
    """play builds its env LLM like every command (from_settings): a config's budget and env system prompt apply,
    and its training-only keys are skipped."""
    import promptr1.llm_backends as backends
    from promptr1.commands.play import play_main

    built = []
    real = backends.from_settings
    monkeypatch.setattr(backends, "from_settings", lambda s, **kw: built.append((s, real(s, **kw))) or built[-1][1])
    cfg = tmp_path / "c.yaml"
    cfg.write_text("env_llm: sim\nmax_calls: 3\nenv_system_prompt: Be brief.\nsteps: 9\nmax_turns: 3\n")
    turns = tmp_path / "turns.txt"
    turns.write_text("<think>x</think><answer>Lyon</answer>\n")
    assert play_main(["--config", str(cfg), "--turns", str(turns), "--max-turns", "2", "--json"]) == 0
    (settings, (backend, budget)), = built
    assert budget.max_calls == 3 and settings.env_system_prompt == "Be brief." and settings.max_turns == 2
