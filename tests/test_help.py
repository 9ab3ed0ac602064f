"""`promptr1 COMMAND --help`: options grouped under headings, every one described, plain text wrapped to the
terminal, only the options a command uses; and which settings `promptr1 train` starts from."""

from __future__ import annotations

import dataclasses
import re

import pytest
from promptr1.agents.config import GRPOConfig, SFTConfig
from promptr1.evaluation.config import ChatConfig, EvalConfig

from promptr1.cli import main
from promptr1.config import (
    HELP_HEADINGS,
    ConfigError,
    config_help,
    help_problems,
    ignored_settings,
    parse_command,
)

COMMANDS = {"train": GRPOConfig, "sft": SFTConfig, "eval": EvalConfig, "chat": ChatConfig}


def run_help(capsys, monkeypatch, argv: list[str], columns: int = 100) -> str:
    monkeypatch.setenv("COLUMNS", str(columns))
    assert main([*argv, "--help"]) == 0
    return capsys.readouterr().out


def headings_of(text: str) -> list[str]:
    """The headings of a help screen, in order (a heading is an unindented line ending a section title)."""
    return [m[1] for m in re.finditer(r"^([a-z][a-z ]*)(?: \(.*\))?:$", text, re.MULTILINE)]


def options_of(text: str) -> list[str]:
    return re.findall(r"^ {2}(--[a-z0-9-]+)", text, re.MULTILINE)


@pytest.mark.parametrize("cls", list(COMMANDS.values()), ids=list(COMMANDS))
def test_every_option_has_a_description_and_a_heading(cls):
    problems = help_problems(cls)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_groups_options_under_headings_in_order(command, capsys, monkeypatch):
    text = run_help(capsys, monkeypatch, [command])
    found = headings_of(text)
    assert found[-1] == "general" and "other" not in found, found
    order = list(HELP_HEADINGS)
    assert [h for h in found if h != "general"] == sorted(found[:-1], key=order.index), found
    assert {"model", "environment", "rollout", "budget", "system"} <= set(found)
    assert ("output" in found) == (command != "chat")  # chat writes nothing
    cls = COMMANDS[command]
    shown = options_of(text)
    expected = {f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(cls)} - {
        f"--{n.replace('_', '-')}" for n in ignored_settings(cls)}
    assert set(shown) == expected | {"--config"}
    assert len(shown) == len(set(shown)), "an option is listed twice"


def test_train_help_has_every_heading_and_typed_defaults(capsys, monkeypatch):
    text = run_help(capsys, monkeypatch, ["train"])
    assert headings_of(text) == [*(h for h in HELP_HEADINGS if h != "server"), "general"]  # server: serve's
    section = text[text.index("\nalgorithm ("):text.index("\nwarm start (")]
    assert "--kl-coef NUM" in section and "(default: the algorithm's)" in section
    assert re.search(r"--steps INT\s+Training steps .*\(default: 20\)", section)
    assert "--lora-alpha INT" in text[text.index("\nmodel ("):text.index("\nenvironment (")]
    assert "--max-calls INT" in text[text.index("\nbudget ("):text.index("\nsystem (")]
    assert "--cpu [BOOL]" in text and "--tasks TEXT [...]" in text
    # the quickstart rule is stated
    assert "promptr1 train --steps 2" in " ".join(text.split())


@pytest.mark.parametrize("command", [*COMMANDS, "play"])
def test_help_is_plain_text(command, capsys, monkeypatch):
    text = run_help(capsys, monkeypatch, [command])
    for markup in ("``", ":class:", ":func:", ":data:", ":meth:", ":mod:", "~promptr1"):
        assert markup not in text, f"RST markup {markup!r} left in `promptr1 {command} --help`"


@pytest.mark.parametrize("columns", [60, 80, 132])
@pytest.mark.parametrize("command", [*COMMANDS, "play"])
def test_help_wraps_to_the_terminal(command, columns, capsys, monkeypatch):
    text = run_help(capsys, monkeypatch, [command], columns)
    too_wide = [line for line in text.splitlines() if len(line) > columns]
    assert not too_wide, f"lines wider than COLUMNS={columns}: {too_wide}"
    if columns >= 100:  # a wide terminal is used, not a fixed 80 columns
        assert max(len(line) for line in text.splitlines()) > 80


def test_chat_lists_only_what_one_question_uses(capsys, monkeypatch):
    text = run_help(capsys, monkeypatch, ["chat"])
    shown = set(options_of(text))
    training_only = {f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(GRPOConfig)} - {
        f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(ChatConfig)}
    eval_only = {f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(EvalConfig)} - {
        f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(ChatConfig)}
    assert not shown & (training_only | eval_only)
    for unused in ("--tasks", "--output-dir", "--overwrite", "--reward-variant", "--answer-metric", "--progress"):
        assert unused not in shown
    for used in ("--question", "--model", "--env-llm", "--max-turns", "--temperature", "--max-calls", "--seed"):
        assert used in shown
    # and the command line refuses what it would ignore
    assert main(["chat", "Who founded Vantrel Corp?", "--tasks", "a.jsonl"]) == 2
    err = capsys.readouterr().err
    assert "'--tasks' does not apply to promptr1 chat" in err and "promptr1 chat --help" in err


def test_sft_lists_only_what_a_warm_start_uses(capsys, monkeypatch):
    shown = set(options_of(run_help(capsys, monkeypatch, ["sft"])))
    for unused in ("--temperature", "--top-p", "--max-new-tokens", "--kv-reuse", "--reward-variant", "--algo",
                   "--group-size", "--methods"):
        assert unused not in shown
    for used in ("--steps", "--batch-size", "--lr", "--max-seq-len", "--framing", "--env-llm", "--output-dir"):
        assert used in shown
    with pytest.raises(ConfigError, match="'--temperature' does not apply to promptr1 sft"):
        parse_command(SFTConfig, ["--temperature", "0.5"], "sft")


def test_ignored_settings_are_still_read_from_a_shared_yaml_file(tmp_path):
    f = tmp_path / "shared.yaml"
    f.write_text("tasks: [a.jsonl]\nmax_turns: 3\n")
    cfg = parse_command(ChatConfig, ["--config", str(f), "--question", "Q?"], "chat")
    assert cfg.max_turns == 3 and cfg.question == "Q?"


def test_config_help_renders_rst_as_plain_text():
    text = config_help(GRPOConfig, width=200)
    assert "``" not in text
    assert "(default: the algorithm's)" in text
    assert "none (YAML null, or --env-system-prompt none)" in text


def test_play_help_in_the_same_style(capsys, monkeypatch):
    text = run_help(capsys, monkeypatch, ["play"])
    assert headings_of(text)[-3:] == ["environment", "turns", "output"]
    flat = " ".join(text.split())
    assert re.search(r"--seed INT Episode seed[^(]*\(with --demo, episode N uses seed \+ N\)\. \(default: 0\)", flat)
    assert "--env-llm SPEC Env LLM spec: sim, smollm2, openai:MODEL, hf:PATH (default: sim)." in flat
    from promptr1.play import _parser

    described = [a for a in _parser()._actions if a.help]
    assert len(described) == len(_parser()._actions), "every option of promptr1 play has a description"


# ----------------------------------------------------------------------------- which settings train starts from


@pytest.fixture
def captured_training(monkeypatch):
    """``promptr1 train ARGV`` up to the parsed config (nothing runs): returns a function ARGV -> config."""
    from promptr1 import pipeline

    seen = []
    monkeypatch.setattr(pipeline, "run_training", lambda cfg: seen.append(cfg) or 0)

    def run(argv):
        assert main(["train", *argv]) == 0
        return seen.pop()

    return run


def test_train_with_only_length_options_keeps_the_quickstart(captured_training, capsys):
    cfg = captured_training(["--steps", "2", "--sft-steps=1", "--overwrite"])
    assert (cfg.steps, cfg.sft_steps, cfg.overwrite) == (2, 1, True)
    # the rest is the quickstart's
    assert cfg.output_dir == "runs/quickstart" and cfg.max_new_tokens == 56 and cfg.eval_episodes == 64
    assert "running the CPU quickstart (bundled config 'quickstart') with --steps 2" in capsys.readouterr().out
    assert captured_training([]).output_dir == "runs/quickstart"


def test_train_with_other_options_starts_from_the_defaults(captured_training, capsys):
    cfg = captured_training(["--steps", "2", "--model", "tiny"])
    assert cfg.steps == 2 and cfg.model == "tiny"
    defaults = GRPOConfig()
    assert (cfg.output_dir, cfg.max_new_tokens, cfg.sft_steps) == (
        defaults.output_dir, defaults.max_new_tokens, defaults.sft_steps)
    assert "quickstart" not in capsys.readouterr().out
    # --config quickstart keeps the quickstart's settings with any option
    cfg = captured_training(["--config", "quickstart", "--model", "tiny"])
    assert cfg.model == "tiny" and cfg.output_dir == "runs/quickstart" and cfg.max_new_tokens == 56


def test_quickstart_options_are_settings_the_quickstart_file_does_not_depend_on():
    from promptr1.pipeline import QUICKSTART_OPTIONS, train_base_config

    names = {f.name for f in dataclasses.fields(GRPOConfig)}
    assert set(QUICKSTART_OPTIONS) <= names
    assert train_base_config([f"--{n.replace('_', '-')}=1" for n in QUICKSTART_OPTIONS]) == "quickstart"
    assert train_base_config(["--algo", "dapo"]) is None and train_base_config(["--config=paper"]) is None
