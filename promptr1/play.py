"""``promptr1 play``: you are the agent. Type turns (or pass a file of turns) against an env LLM.

Each turn is one agent message in the protocol's tags, e.g.::

    <think>need the founder first</think><interaction_prompt>Who founded Vantrel Corp?</interaction_prompt>
    <think>done</think><answer>Mira Osk</answer>

Interactively, a turn is one line; end a line with a backslash to continue it on the next.
A turns file holds turns separated by lines of ``---`` (or a JSON list of strings).
``--demo`` plays the bundled synthetic tasks' scripted demonstration instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from promptr1.envs.step_info import StepInfo

__all__ = ["main", "read_turns"]


def read_turns(text: str, *, one_per_line: bool = False) -> list[str]:
    """Turns from a file's text: a JSON list of strings, or blocks separated by ``---`` lines.
    ``one_per_line`` (text piped to stdin): without ``---`` lines, each line is a turn, as typed at the prompt
    (a line ending in ``\\`` goes on on the next).

    >>> read_turns("<think>a</think><answer>b</answer>\\n---\\nsecond\\nline\\n")
    ['<think>a</think><answer>b</answer>', 'second\\nline']
    >>> read_turns('["one", "two"]')
    ['one', 'two']
    >>> read_turns("first turn\\nsecond \\\\\\nturn\\n", one_per_line=True)
    ['first turn', 'second \\nturn']
    """
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError:
            data = None
        if isinstance(data, list) and all(isinstance(t, str) for t in data):
            return data
    if one_per_line and not any(line.strip() == "---" for line in text.splitlines()):
        turns, cur = [], []
        for line in text.splitlines():
            cur.append(line.removesuffix("\\"))
            if not line.endswith("\\"):
                turns.append("\n".join(cur))
                cur = []
        return [t for t in [*turns, "\n".join(cur)] if t.strip()]
    turns, cur = [], []
    for line in text.splitlines():
        if line.strip() == "---":
            turns.append("\n".join(cur).strip("\n"))
            cur = []
        else:
            cur.append(line)
    if any(s.strip() for s in cur):
        turns.append("\n".join(cur).strip("\n"))
    return [t for t in turns if t.strip()]


def _interactive_turns() -> Iterator[str]:
    while True:
        lines = []
        try:
            line = input("agent> " if not lines else "....> ")
            while line.endswith("\\"):
                lines.append(line[:-1])
                line = input("....> ")
            lines.append(line)
        except EOFError:
            return
        yield "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    """argparse with the other commands' help: options under headings, each with its default, in plain text
    wrapped to the terminal."""

    def format_help(self) -> str:
        import textwrap

        from promptr1.config import help_width, plain_text, render_options

        width = help_width()
        sections = []
        for group in self._action_groups:
            rows = []
            for action in group._group_actions:
                option = ", ".join(action.option_strings)
                if action.nargs != 0:
                    option += f" {action.metavar or action.dest.upper()}"
                text = action.help or ""
                if action.default is not None and action.default is not False and action.default != argparse.SUPPRESS:
                    text += f" (default: {action.default})"
                rows.append((option, text))
            sections.append((f"{group.title}:", rows))
        paras = [textwrap.fill(f"usage: {self.prog} [options]", width, subsequent_indent="    ")]
        for para in plain_text(self.description or "").split("\n\n"):
            if para.startswith("    "):  # an example: its lines kept, a long one continued with a backslash, as typed
                lines = []
                for line in para.splitlines():
                    parts = textwrap.wrap(line.strip(), width - 2, initial_indent="    ", subsequent_indent="    ",
                                          break_on_hyphens=False) or [""]
                    lines += [part + " \\" for part in parts[:-1]] + parts[-1:]
                paras.append("\n".join(lines))
            else:
                paras.append(textwrap.fill(" ".join(para.split()), width, break_on_hyphens=False))
        paras.append(render_options(sections, width))
        return "\n\n".join(paras) + "\n"


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="promptr1 play", description=__doc__, add_help=False)
    env = p.add_argument_group("environment (the task and the env LLM you play against)")
    env.add_argument("--task", default="synthetic:test", metavar="SOURCE",
                     help="Task source: synthetic[:train|:test], a .parquet (official schema) or .jsonl file.")
    env.add_argument("--task-index", type=int, default=None, metavar="INT",
                     help="Play this task of the source (0-based) instead of one drawn with --seed.")
    env.add_argument("--seed", type=int, default=0, metavar="INT",
                     help="Episode seed: picks the task (with --demo, episode N uses seed + N).")
    env.add_argument("--config", default=None, metavar="FILE.yaml",
                     help="A promptr1 config (bundled name or YAML file): its env LLM block (limits, price, budget, "
                          "cache, env system prompt, several env LLMs) and episode settings; the options below win.")
    env.add_argument("--env-llm", default=None, metavar="SPEC",
                     help="Env LLM spec: sim, smollm2, openai:MODEL, hf:PATH (default: sim).")
    env.add_argument("--env-system-prompt", default=None, metavar="TEXT",
                     help="The env LLM's system message: auto (default), a text, or none.")
    env.add_argument("--max-turns", type=int, default=None, metavar="INT",
                     help="Agent turns before the episode is truncated (default and ref: 5).")
    env.add_argument("--reward-variant", default=None, metavar="NAME",
                     help="faithful (the reference's reward; default), answer_gated or cost_aware.")
    turns = p.add_argument_group("turns (default: typed at the prompt, or read from stdin when it is not a tty)")
    turns.add_argument("--turns", type=Path, default=None, metavar="FILE",
                       help="File of agent turns: turns separated by lines of ---, or a JSON list of strings.")
    turns.add_argument("--demo", action="store_true",
                       help="Play the synthetic task's scripted demonstration instead of your turns.")
    turns.add_argument("--episodes", type=int, default=1, metavar="INT",
                       help="With --demo: how many episodes to play (their mean reward is printed).")
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true",
                     help="Print one JSON record per episode (task, turns, reward and its components) instead of "
                          "the transcript.")
    out.add_argument("-h", "--help", action="help", help="Show this help and exit.")
    return p


def _play_episode(env, turns: Iterator[str], *, seed: int, task_index: int | None, as_json: bool,
                  interactive: bool) -> dict:
    options = {"task_index": task_index} if task_index is not None else None
    obs, info = env.reset(seed=seed, options=options)
    if not as_json and interactive:
        print(obs)
        print()
    reward, done, step_info = 0.0, False, info
    for turn in turns:
        obs, reward, term, trunc, step_info = env.step(turn)
        if not as_json and interactive:
            print(obs if obs else "")
        if term or trunc:
            done = True
            break
    record = {
        "task_id": env.task.id,
        "question": env.task.question,
        "gold": list(env.task.answers),
        "turns": list(env.turns),
        "finished": done,
        "reward": reward if done else None,
        "reward_components": StepInfo.from_info(step_info).reward_components,
        "env_error": StepInfo.from_info(step_info).env_error,
    }
    if as_json:
        print(json.dumps(record, ensure_ascii=False))
    else:
        print(env.transcript() if not interactive else "")
        if not done:
            print("(the episode did not finish: no answer turn was given before the turns ran out)")
        elif not interactive:
            pass
        if interactive and done:
            rc = StepInfo.from_info(step_info).reward_components
            print(f"reward {reward:+.3f}  (format {rc['format']:.2f}, answer {rc['answer']:.3f}); gold: "
                  + " | ".join(env.task.answers))
    return record


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error argparse reported (2): an exit code, as other commands
        return int(exc.code or 0)
    from promptr1.config import RunSettings, bundled_config, load_config
    from promptr1.envs.collab_env import PromptCollabEnv
    from promptr1.llm_backends import from_settings

    try:
        path = None
        if args.config:
            path = args.config if Path(args.config).is_file() else bundled_config(args.config)
            if path is None:
                raise FileNotFoundError(f"--config {args.config!r}: no such file and no bundled config of that name.")
        given = {"env_llm": args.env_llm, "env_system_prompt": args.env_system_prompt, "max_turns": args.max_turns,
                 "reward_variant": args.reward_variant}
        overrides = [x for k, v in given.items() if v is not None for x in (f"--{k.replace('_', '-')}", str(v))]
        settings = load_config(RunSettings, path, overrides, strict=False)
        backend, _ = from_settings(settings)  # the same builder as every command: limits, budget, cache
        env = PromptCollabEnv(task=args.task, env_llm=backend, **settings.env_kwargs())
    except (ValueError, TypeError, FileNotFoundError, ImportError) as exc:
        print(f"promptr1 play: {exc}", file=sys.stderr)
        return 2
    try:
        if args.demo:
            from promptr1.envs.synthetic import demonstration

            total = 0.0
            for ep in range(args.episodes):
                env.reset(seed=args.seed + ep, options={"task_index": args.task_index} if args.task_index is not None else None)
                turns = demonstration(env.task)
                rec = _play_episode(env, iter(turns), seed=args.seed + ep, task_index=args.task_index,
                                    as_json=args.json, interactive=False)
                total += rec["reward"] or 0.0
                if not args.json:
                    print()
            if not args.json:
                print(f"mean reward over {args.episodes} demonstration episode(s): {total / args.episodes:+.3f}")
            return 0
        if args.turns is not None:
            if not args.turns.is_file():
                print(f"promptr1 play: turns file {str(args.turns)!r} does not exist.", file=sys.stderr)
                return 2
            turns = iter(read_turns(args.turns.read_text(encoding="utf-8")))
            interactive = False
        elif not sys.stdin.isatty():
            turns = iter(read_turns(sys.stdin.read(), one_per_line=True))
            interactive = False
        else:
            turns = _interactive_turns()
            interactive = True
        _play_episode(env, turns, seed=args.seed, task_index=args.task_index, as_json=args.json,
                      interactive=interactive)
        return 0
    finally:
        env.close()
