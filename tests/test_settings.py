"""The settings tree and the front door: every setting declared once, the command line and YAML generated from the
settings by argparse, one-line usage errors with did-you-mean, help under group headings, one base for every
``promptr1 train`` command line, and a configuration reference that cannot go stale."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import pathlib
import re
import textwrap

import pytest

from promptr1.agents.config import GRPOConfig, SFTConfig
from promptr1.commands.cli import main
from promptr1.commands.play import PlayConfig
from promptr1.core.settings import (
    ConfigError,
    RunSettings,
    Settings,
    build_parser,
    bundled_config,
    field_docs,
    ignored_settings,
    load_config,
    parse_settings,
    setting_groups,
)
from promptr1.evaluation.config import ChatConfig, EvalConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMANDS = {"train": GRPOConfig, "sft": SFTConfig, "eval": EvalConfig, "chat": ChatConfig, "play": PlayConfig}


def help_text(cls, prog="train", columns=100, monkeypatch=None) -> str:
    if monkeypatch is not None:
        monkeypatch.setenv("COLUMNS", str(columns))
    return build_parser(cls, prog).format_help()


def options_of(text: str) -> list[str]:
    return re.findall(r"^ {2}(--[a-z0-9-]+)", text, re.MULTILINE)


# ----------------------------------------------------------------------------- declared once


def _settings_classes() -> list[type]:
    seen: dict[type, None] = {}
    for cls in COMMANDS.values():
        for klass in cls.__mro__:
            if isinstance(klass, type) and issubclass(klass, Settings) and klass is not Settings:
                seen[klass] = None
    return list(seen)


def _own_annotations(klass: type) -> set[str]:
    return set(klass.__dict__.get("__annotations__", {})) & {f.name for f in dataclasses.fields(klass)}


def _own_docs(klass: type) -> set[str]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    return {a.target.id for a, b in zip(body, body[1:]) if isinstance(a, ast.AnnAssign)
            and isinstance(b, ast.Expr) and isinstance(getattr(b.value, "value", None), str)}


def test_every_setting_has_one_description_one_default_and_one_check():
    """Per command: each setting is described in exactly one class of its settings tree; a class that declares it
    again only changes the command's default (no second description or check); and no two classes check it."""
    classes = _settings_classes()
    checked: dict[str, list[str]] = {}
    for klass in classes:
        post = klass.__dict__.get("__post_init__")
        if post is not None:
            src = inspect.getsource(post)
            for name in _own_annotations(klass) | {n for k in classes for n in _own_annotations(k)}:
                if re.search(rf"self\.{name}\b|[\"']{name}[\"']", src):
                    checked.setdefault(name, []).append(klass.__name__)
    twice = {name: owners for name, owners in checked.items() if len(owners) > 1}
    assert not twice, f"settings checked in more than one class: {twice}"
    for command, cls in COMMANDS.items():
        for f in dataclasses.fields(cls):
            described = [k.__name__ for k in cls.__mro__ if isinstance(k, type) and issubclass(k, Settings)
                         and f.name in _own_annotations(k) and f.name in _own_docs(k)]
            assert len(described) == 1, f"{command}: {f.name} is described in {described or 'no class'}"
            redeclared = [k for k in cls.__mro__ if isinstance(k, type) and issubclass(k, Settings)
                          and f.name in _own_annotations(k) and f.name not in _own_docs(k)]
            for k in redeclared:  # a command's own default: it must differ from the group's
                base = next(b for b in k.__mro__[1:] if f.name in getattr(b, "__dataclass_fields__", {}))
                assert getattr(k, f.name, None) != getattr(base, f.name, None), \
                    f"{k.__name__}.{f.name} repeats {base.__name__}'s default: drop the redeclaration"


def test_the_checker_sees_a_second_description():
    """The rule above can fail: a subclass that documents a setting again is caught."""
    src = "class X:\n    max_turns: int = 3\n    '''again'''\n"
    tree = ast.parse(src)
    body = tree.body[0].body  # type: ignore[attr-defined]
    assert isinstance(body[0], ast.AnnAssign) and isinstance(body[1].value.value, str)


def test_every_setting_is_in_a_group_with_a_heading():
    for command, cls in COMMANDS.items():
        for group, names in setting_groups(cls).items():
            assert group.HEADING, f"{command}: {group.__name__} ({names}) has no HEADING for --help"


def test_settings_groups_are_taken_as_they_are():
    """A layer takes its group from a command's settings: no translation table."""
    from promptr1.core.settings import EpisodeSettings

    cfg = load_config(GRPOConfig, None, ["--max-turns", "3", "--env-history", "full"])
    ep = EpisodeSettings.pick(cfg)
    assert (ep.max_turns, ep.env_history) == (3, "full")
    sft = SFTConfig.from_training(cfg, output_dir="x")
    assert (sft.max_turns, sft.steps, sft.lr, sft.output_dir) == (3, cfg.sft_steps, cfg.sft_lr, "x")


def test_configuration_reference_is_generated_and_current():
    from promptr1.commands.reference import configuration_reference

    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert page == configuration_reference(), (
        "docs/configuration.md is stale: run `python -m promptr1.commands.reference > docs/configuration.md`")
    assert "| `--lr` | `2e-06` | train |" in page
    assert re.search(r"\| `--temperature` \| `1\.0 \(train\) / 0\.0 \(eval\)", page)


def test_docs_state_the_defaults_the_code_has():
    """The prose of training.md and algorithms.md names the defaults the settings have (they once said group size 5
    and lr 1e-6 where the code had 4 and 2e-6)."""
    cfg = GRPOConfig()
    for page in ("training.md", "algorithms.md"):
        text = (ROOT / "docs" / page).read_text(encoding="utf-8")
        for wrong in (r"default[^.\n]*group size 5", r"default[^.\n]*lr 1e-6", r"--weight-decay[^.\n]*reference's is 0\b"):
            assert not re.search(wrong, text, re.IGNORECASE), f"docs/{page} states a default the code lacks: {wrong}"
    assert (cfg.group_size, cfg.lr, cfg.weight_decay) == (4, 2e-6, 0.0)
    assert "0.01" in field_docs(GRPOConfig)["weight_decay"]  # the reference's value, said where the option is


# ----------------------------------------------------------------------------- parsing


def test_defaults_yaml_then_options(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("steps: 7\nlr: 3.0e-6\ngroup_size: 8\ncpu: true\ntasks: [a.jsonl, b.parquet]\n")
    cfg = load_config(GRPOConfig, f, ["--steps", "9", "--algo=rloo", "--deterministic", "--batch_questions", "5"])
    assert (cfg.steps, cfg.lr, cfg.group_size, cfg.cpu, cfg.algo, cfg.deterministic, cfg.batch_questions) == (
        9, 3e-6, 8, True, "rloo", True, 5)
    assert cfg.tasks == ["a.jsonl", "b.parquet"]
    cfg = load_config(GRPOConfig, f, ["--tasks", "c.jsonl", "d.jsonl,e.jsonl", "--progress", "false"])
    assert cfg.tasks == ["c.jsonl", "d.jsonl", "e.jsonl"] and cfg.progress is False
    assert load_config(RunSettings, None, ["--env-temperature", "none"]).env_temperature is None


def test_explicit_value_beats_the_algorithm_default():
    cfg = load_config(GRPOConfig, None, ["--algo", "dapo", "--kl-coef", "0.001"])
    loss = cfg.loss_config()
    assert loss.kl_coef == 0.001 and loss.clip_eps_high == 0.28 and loss.mask_zero_variance
    assert load_config(GRPOConfig, None, ["--algo", "dapo"]).loss_config().kl_coef == 0.0
    assert load_config(GRPOConfig, None, ["--dual-clip-c", "0"]).loss_config().dual_clip_c is None
    assert GRPOConfig().loss_config().dual_clip_c == 3.0


@pytest.mark.parametrize("argv, msg", [
    (["--steps", "two"], "argument --steps: invalid integer value: 'two'"),
    (["--lr", "fast"], "argument --lr: invalid number value: 'fast'"),
    (["--cpu", "maybe"], "argument --cpu: invalid true/false value: 'maybe'"),
    (["--steps"], "argument --steps: expected one argument"),
    (["steps", "3"], "unexpected argument 'steps'"),
    (["--max-turns", "0"], "max_turns (--max-turns) must be a whole number >= 1; got 0."),
    (["--cost-weight", "inf"], "cost_weight (--cost-weight) must be a finite number >= 0"),
])
def test_bad_values_are_one_line_errors(argv, msg):
    with pytest.raises(ConfigError) as exc:
        load_config(GRPOConfig, None, argv)
    assert msg in str(exc.value) and "\n" not in str(exc.value)


def test_an_unknown_option_says_did_you_mean_with_the_option_never_a_class(capsys):
    assert main(["train", "--stpes", "3"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "promptr1 train: unknown option '--stpes'. Did you mean '--steps'? (--help lists the options)"
    assert "GRPOConfig" not in err and err.count("promptr1 train:") == 1


def test_a_name_from_another_tool_is_suggested(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("learning_rate: 0.1\n")
    assert main(["train", "--config", str(f)]) == 2
    assert f"{f}: unknown setting 'learning_rate'. Did you mean '--lr'?" in capsys.readouterr().err
    assert main(["train", "--learning-rate", "0.1"]) == 2
    assert "Did you mean '--lr'?" in capsys.readouterr().err


def test_malformed_yaml_is_a_usage_error_naming_file_and_line(tmp_path, capsys):
    f = tmp_path / "bad.yaml"
    f.write_text("steps: 3\nlr: [1, 2\nmodel: x\n")
    assert main(["train", "--config", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"promptr1 train: {f}:") and "not valid YAML" in err and len(err.splitlines()) == 1
    assert re.search(rf"{re.escape(str(f))}:\d+: not valid YAML", err)
    f.write_text("- a list\n")
    assert main(["train", "--config", str(f)]) == 2
    assert "holds a mapping of setting: value" in capsys.readouterr().err


def test_a_missing_config_names_the_bundled_ones(capsys):
    assert main(["train", "--config", "no-such-config"]) == 2
    err = capsys.readouterr().err
    assert "no bundled config of that name" in err and "quickstart" in err and "defaults" in err


# ----------------------------------------------------------------------------- help


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_lists_each_option_once_under_its_group_heading(command, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "100")
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    cls = COMMANDS[command]
    shown = options_of(text)
    expected = {f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(cls)} - {
        f"--{n.replace('_', '-')}" for n in ignored_settings(cls)}
    assert set(shown) == expected | {"--config"}
    assert len(shown) == len(set(shown)), "an option is listed twice"
    for group, names in setting_groups(cls).items():
        names = [n for n in names if n not in ignored_settings(cls)]
        if names:
            section = text[text.index(f"\n{group.HEADING}:"):]
            assert f"--{names[0].replace('_', '-')}" in section.split("\n\n")[0]
    for markup in ("``", ":class:", ":func:", ":data:", ":meth:", "~promptr1"):
        assert markup not in text, f"RST markup {markup!r} left in `promptr1 {command} --help`"
    assert re.search(r"--max-turns INT\s+Agent turns per episode \(ref: 5\)\. \(default: \d\)", text) or \
        command in ("chat",) or "--max-turns" not in expected


@pytest.mark.parametrize("columns", [60, 132])
def test_help_wraps_to_the_terminal(columns, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", str(columns))
    assert main(["train", "--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= columns
    if columns > 100:
        assert max(len(line) for line in lines) > 80


def test_train_help_shows_chosen_defaults_and_states_the_base(capsys):
    assert main(["train", "--help"]) == 0
    flat = " ".join(capsys.readouterr().out.split())
    assert "(default: the algorithm's)" in flat
    assert "--steps INT Training steps (each: rollouts, then the update). (default: 20)" in flat
    assert "starts from a config and changes it with your options" in flat


def test_commands_refuse_options_they_would_ignore(capsys):
    assert main(["chat", "Who founded Vantrel Corp?", "--tasks", "a.jsonl"]) == 2
    err = capsys.readouterr().err
    assert "'--tasks' does not apply to promptr1 chat" in err and "promptr1 chat --help" in err
    with pytest.raises(ConfigError, match="'--temperature' does not apply to promptr1 sft"):
        parse_settings(SFTConfig, ["--temperature", "0.5"], "sft")
    # a YAML file shared with other commands may still hold them
    cfg = parse_settings(ChatConfig, ["Q?", "--max-turns", "3"], "chat", positional="question").settings
    assert cfg.question == "Q?" and cfg.max_turns == 3


def test_eval_takes_task_files_first_or_as_an_option():
    cfg = parse_settings(EvalConfig, ["a.jsonl", "b.jsonl", "--limit", "2"], "eval", positional="tasks").settings
    assert cfg.tasks == ["a.jsonl", "b.jsonl"] and cfg.limit == 2
    cfg = parse_settings(EvalConfig, ["--tasks", "c.jsonl"], "eval", positional="tasks").settings
    assert cfg.tasks == ["c.jsonl"]


# ----------------------------------------------------------------------------- one base for promptr1 train


@pytest.fixture
def captured_training(monkeypatch):
    """``promptr1 train ARGV`` up to the parsed settings (nothing runs): returns ARGV -> (settings, origin)."""
    from promptr1.commands import train as pipeline

    seen = []
    monkeypatch.setattr(pipeline, "run_training", lambda cfg, origin=None, argv=None: seen.append((cfg, origin)) or 0)

    def run(argv):
        assert main(["train", *argv]) == 0
        return seen.pop()

    return run


def test_any_option_keeps_the_quickstart_and_the_run_says_what_changed(captured_training, capsys):
    quick = load_config(GRPOConfig, bundled_config("quickstart"))
    cfg, origin = captured_training(["--lr", "1e-5"])
    assert cfg.lr == 1e-5 and dataclasses.replace(cfg, lr=quick.lr) == quick  # the quickstart, another lr
    out = capsys.readouterr().out
    assert "promptr1 train: settings: bundled config 'quickstart', with lr=1e-05 (was 3e-06)" in out
    assert origin.changes == {"lr": (3e-6, 1e-5)}
    cfg, origin = captured_training(["--plugins", "promptr1.testing", "--algo", "rloo"])
    assert (cfg.algo, cfg.steps, cfg.sft_steps, cfg.max_turns) == ("rloo", quick.steps, quick.sft_steps, 4)
    cfg, origin = captured_training([])
    assert cfg == quick and "bundled config 'quickstart', unchanged" in capsys.readouterr().out


def test_config_defaults_gives_the_plain_defaults(captured_training, capsys):
    cfg, origin = captured_training(["--config", "defaults", "--steps", "2"])
    assert cfg == dataclasses.replace(GRPOConfig(), steps=2)
    assert "bundled config 'defaults', with steps=2 (was 20)" in capsys.readouterr().out


def test_the_run_writes_what_it_started_from(tmp_path):
    import yaml

    from promptr1.commands.train import write_settings

    parsed = parse_settings(GRPOConfig, ["--lr", "1e-5", "--output-dir", str(tmp_path)], "train", base="quickstart")
    doc = yaml.safe_load(write_settings(tmp_path, parsed.settings, parsed).read_text())
    assert doc["started_from"] == "bundled config 'quickstart'"
    assert doc["changed"] == {"lr": {"from": 3e-6, "to": 1e-5}, "output_dir": {"from": "runs/quickstart",
                                                                               "to": str(tmp_path)}}
    assert doc["settings"]["lr"] == 1e-5 and doc["settings"]["sft_steps"] == 12


def test_the_readme_has_no_rule_about_which_options_keep_the_quickstart():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "keeps the quickstart's settings" not in readme and "starts from the plain defaults" not in readme


def test_ctrl_c_in_any_command_is_one_line_and_exit_130(monkeypatch, capsys):
    """A command without its own interrupt handling (sft, chat, play, serve while loading) ends in one line and
    exit 130 on Ctrl-C, never a traceback."""
    import sys
    import types

    from promptr1.commands import cli

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setitem(sys.modules, "fake_interrupted_command", types.SimpleNamespace(run=interrupted))
    monkeypatch.setitem(cli.COMMANDS, "fake", ("fake_interrupted_command:run", "raises KeyboardInterrupt"))
    assert main(["fake"]) == 130
    assert capsys.readouterr().err.strip() == "promptr1 fake: interrupted."
