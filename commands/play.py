"""``promptr1 play``: you are the agent. Type turns (or pass a file of turns) against an env LLM.

Each turn is one agent message in the protocol's tags, e.g.::

    <think>need the founder first</think><interaction_prompt>Who founded Vantrel Corp?</interaction_prompt>
    <think>done</think><answer>Mira Osk</answer>

Interactively, a turn is one line; end a line with a backslash to continue it on the next.
A turns file holds turns separated by lines of ``---`` (or a JSON list of strings).
``--demo`` plays the bundled synthetic tasks' scripted demonstration instead.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from promptr1.commands.cli import run_command
from promptr1.core.settings import ParsedSettings, RunSettings
from promptr1.envs.step_info import StepInfo

__all__ = ["PlayConfig", "play_main", "read_turns"]


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


@dataclass
class PlayConfig(RunSettings):
    """``promptr1 play``: you are the agent against an env LLM (every env-LLM and episode setting applies)."""

    HEADING: ClassVar[str] = "turns (typed at the prompt, or read from stdin when it is not a terminal)"
    ORDER: ClassVar[int] = 6
    #: Settings of a model agent, of training and of outputs: you play, nothing is trained or written.
    IGNORED_SETTINGS: ClassVar[tuple[str, ...]] = (
        "tasks", "model", "model_dtype", "max_new_tokens", "max_seq_len", "temperature", "top_p",
        "repetition_penalty", "kv_reuse", "rollout_max_batch_tokens", "output_dir", "overwrite", "progress", "cpu",
    )

    task: str = "synthetic:test"
    """Task source: synthetic[:train|:test], a .parquet (official schema) or .jsonl file."""
    task_index: int | None = None
    """Play this task of the source (0-based) instead of one drawn with ``seed``."""
    turns: str = ""
    """File of agent turns: turns separated by lines of ``---``, or a JSON list of strings (empty: typed, or stdin)."""
    demo: bool = False
    """Play the synthetic task's scripted demonstration instead of your turns (episode N uses seed + N)."""
    episodes: int = 1
    """With ``demo``: how many episodes to play (their mean reward is printed)."""
    json: bool = False
    """Print one JSON record per episode (task, turns, reward and its components) instead of the transcript."""


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


def play_main(argv: Sequence[str]) -> int:
    """``promptr1 play``: returns 0, or 2 for a usage error."""
    return run_command(PlayConfig, argv, "play", _play, about=__doc__ or "", strict=False)


def _play(parsed: ParsedSettings) -> int:
    from promptr1.envs.collab_env import PromptCollabEnv
    from promptr1.llm_backends import from_settings

    args: PlayConfig = parsed.settings
    backend, _ = from_settings(args)  # the same builder as every command: limits, budget, cache
    env = PromptCollabEnv.from_settings(args.task, backend, args)
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
        if args.turns:
            if not Path(args.turns).is_file():
                print(f"promptr1 play: turns file {args.turns!r} does not exist.", file=sys.stderr)
                return 2
            turns = iter(read_turns(Path(args.turns).read_text(encoding="utf-8")))
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
