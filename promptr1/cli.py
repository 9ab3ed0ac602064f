"""The ``promptr1`` command line: one sub-command per job, each implemented in its own module.

Sub-commands are imported lazily so ``promptr1 --help`` is instant.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from promptr1.registry import did_you_mean

# name -> ("module:function", one-line help). Each function takes argv (list[str]) and returns an exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "play": ("promptr1.play:main", "play the agent yourself (or from a file of turns) against an env LLM"),
    "train": ("promptr1.pipeline:train_main", "train the agent with GRPO (default: CPU quickstart)"),
    "sft": ("promptr1.pipeline:sft_main", "supervised warm-start on generated demonstrations"),
    "eval": ("promptr1.evaluation.cli:eval_main", "evaluate a checkpoint or base model on task files"),
    "chat": ("promptr1.evaluation.cli:chat_main", "ask one question, see the multi-turn transcript and answer"),
    "serve": ("promptr1.commands.serve:main", "serve the agent in front of an env LLM as an OpenAI-compatible API"),
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
    return int(fn(rest) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
