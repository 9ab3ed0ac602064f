"""``promptr1 train`` checks names and paths before anything expensive: one line, exit code 2, no model
loaded."""

from __future__ import annotations

import pathlib
import re

import pytest

from promptr1.commands.cli import main

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if any agent model is loaded (the checks must come first)."""
    from promptr1.agents import models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the command's inputs were checked")

    monkeypatch.setattr(models, "load_policy", refuse)
    monkeypatch.setattr(models, "resolve_model_path", refuse)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_missing_task_file_is_refused_before_any_model_loads(tmp_path, no_model_load, capsys):
    rc = main(["train", "--config", "defaults", "--model", "tiny", "--tasks", str(tmp_path / "nope.parquet"), "--steps", "1",
               "--output-dir", str(tmp_path / "run")])
    assert rc == 2
    err = one_line_error(capsys)
    assert "nope.parquet" in err and "does not exist" in err
    assert not (tmp_path / "run").exists()


def test_missing_eval_task_file_is_refused_too(tmp_path, no_model_load, capsys):
    rc = main(["train", "--config", "defaults", "--model", "tiny", "--eval-tasks", str(tmp_path / "held.jsonl"), "--eval-episodes",
               "4", "--steps", "1", "--output-dir", str(tmp_path / "run")])
    assert rc == 2
    assert "--eval-tasks" in one_line_error(capsys)


def test_mistyped_model_name_gets_did_you_mean_without_the_hub(tmp_path, no_model_load, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = main(["train", "--config", "defaults", "--model", "smolm2", "--steps", "1", "--output-dir", str(tmp_path / "run")])
    assert rc == 2
    err = one_line_error(capsys)
    assert "'smolm2'" in err and "Did you mean 'smollm2'?" in err


def test_mistyped_env_llm_gets_did_you_mean(tmp_path, no_model_load, capsys):
    rc = main(["train", "--config", "defaults", "--model", "tiny", "--env-llm", "opneai:gpt-4o", "--steps", "1",
               "--output-dir", str(tmp_path / "run")])
    assert rc == 2
    assert "Did you mean 'openai:gpt-4o'?" in one_line_error(capsys)
    rc = main(["train", "--config", "defaults", "--model", "tiny", "--env-models", "cheap=sim", "strong=sim-strnog", "--steps", "1",
               "--output-dir", str(tmp_path / "run")])
    assert rc == 2
    assert "Did you mean 'sim-strong'?" in one_line_error(capsys)


def test_output_dir_that_is_a_file_is_refused(tmp_path, no_model_load, capsys):
    (tmp_path / "run").write_text("not a folder")
    rc = main(["train", "--config", "defaults", "--model", "tiny", "--steps", "1", "--output-dir", str(tmp_path / "run")])
    assert rc == 2
    assert "is a file" in one_line_error(capsys)


def test_readme_plugin_command_works_from_the_folder_holding_the_plugin(tmp_path, monkeypatch, capsys):
    text = README.read_text()
    code = re.search(r"```python\n(# my_algos\.py\n.*?)```", text, re.DOTALL).group(1)
    command = re.search(r"```bash\n(promptr1 train --plugins my_algos [^\n]*)\n```", text).group(1)
    (tmp_path / "my_algos.py").write_text(code)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", ".", str(tmp_path))])
    argv = command.split()[1:] + ["--dry-run"]  # the command as written; --dry-run loads nothing
    assert main(argv) == 0, capsys.readouterr().err
    from promptr1.agents.registry import ALGORITHMS

    assert "median-grpo" in ALGORITHMS


def test_sft_and_chat_check_names_before_loading(tmp_path, no_model_load, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["sft", "--model", "smolm2", "--steps", "1", "--output-dir", str(tmp_path / "sft")]) == 2
    assert "Did you mean 'smollm2'?" in one_line_error(capsys)
    assert main(["sft", "--model", "tiny", "--tasks", "nope.jsonl", "--output-dir", str(tmp_path / "s")]) == 2
    assert "nope.jsonl" in one_line_error(capsys)
    chat = ["chat", "Where was Brukmo Doldrak born?", "--model", "tiny", "--env-llm", "opneai:gpt-4o"]
    assert main(chat) == 2
    assert "Did you mean 'openai:gpt-4o'?" in one_line_error(capsys)


def test_a_model_that_cannot_be_loaded_is_one_line(monkeypatch):
    """An id the hub does not have (or no network): a usage error of one line, not transformers' OSError."""
    import transformers
    from promptr1.agents.models import load_policy

    def unreachable(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nMore lines.")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", unreachable)
    with pytest.raises(FileNotFoundError) as info:
        load_policy("SomeOrg/no-such-model")
    assert str(info.value) == ("model 'SomeOrg/no-such-model' cannot be loaded: We couldn't connect to "
                               "'https://huggingface.co' to load the files.")
