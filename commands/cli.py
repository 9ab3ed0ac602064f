"""The ``promptr1`` command line: one sub-command per job, each in its own module of this folder, and the frame
every sub-command runs in (:func:`run_command`).

Each sub-command's options are generated from its settings dataclass by :mod:`argparse`
(:func:`promptr1.core.settings.build_parser`); sub-commands are imported lazily so ``promptr1 --help`` is instant.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from promptr1.core.registry import did_you_mean
from promptr1.core.settings import ConfigError, ParsedSettings, parse_settings

#: Errors a command reports as a usage error (exit code 2, one line) instead of a traceback.
USAGE_ERRORS: tuple[type[BaseException], ...] = (ConfigError, ImportError, ValueError, FileNotFoundError,
                                                  FileExistsError)


def run_command(cls: type, argv: Sequence[str], prog: str, body: Callable[[ParsedSettings], int | None], *,
                base: str | None = None, positional: str | None = None, about: str = "", epilog: str = "",
                strict: bool = True) -> int:
    """A sub-command's frame: parse ``argv`` into ``cls`` (``--help`` prints the options and returns 0), import
    the plug-ins once, before anything else, then return ``body(parsed)``'s exit code. A usage error
    (:data:`USAGE_ERRORS`) prints ``promptr1 PROG: message`` on one line and returns 2."""
    try:
        parsed = parse_settings(cls, argv, prog, base=base, positional=positional, about=about, epilog=epilog,
                                strict=strict)
        from promptr1.core.plugins import import_plugins

        import_plugins(getattr(parsed.settings, "plugins", ""))
        return int(body(parsed) or 0)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except USAGE_ERRORS as exc:
        message = str(exc)
        prefix = f"promptr1 {prog}: "
        while message.startswith(prefix):  # an error raised with the prefix already
            message = message[len(prefix):]
        print(prefix + message, file=sys.stderr)
        return 2


# name -> ("module:function", one-line help). Each function takes argv (list[str]) and returns an exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "play": ("promptr1.commands.play:play_main", "play the agent yourself (or from a file of turns) against an env LLM"),
    "train": ("promptr1.commands.train:train_main", "train the agent with GRPO (default: CPU quickstart)"),
    "sft": ("promptr1.commands.train:sft_main", "supervised warm-start on generated demonstrations"),
    "eval": ("promptr1.commands.eval:eval_main", "evaluate a checkpoint or base model on task files"),
    "chat": ("promptr1.commands.eval:chat_main", "ask one question, see the multi-turn transcript and answer"),
    "serve": ("promptr1.commands.serve:serve_main", "serve the agent in front of an env LLM as an OpenAI-compatible API"),
    "data": ("promptr1.commands.data:data_main", "task files: convert {question, golden_answers} records to the paper's parquet"),
}


def _usage() -> str:
    lines = ["usage: promptr1 COMMAND [options]", "", "commands:"]
    for name, (_, help_) in COMMANDS.items():
        lines.append(f"  {name:<7} {help_}")
    lines += ["", "Run 'promptr1 COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from promptr1 import __version__

        print(f"prompt-r1 {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        msg = "promptr1: " + did_you_mean("command", name, list(COMMANDS))
        print(msg + "\n\n" + _usage(), file=sys.stderr)
        return 2
    target, _ = COMMANDS[name]
    module, _, func = target.partition(":")
    try:
        fn = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as exc:  # a command whose module is not built yet
        print(f"promptr1 {name}: this command is not available in this install ({exc}).", file=sys.stderr)
        return 2
    try:
        return int(fn(rest) or 0)
    except KeyboardInterrupt:  # Ctrl-C in any command without its own handling (train and eval keep their work)
        print(f"\npromptr1 {name}: interrupted.", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
