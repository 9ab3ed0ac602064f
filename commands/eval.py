"""``promptr1 eval`` and ``promptr1 chat``.

``promptr1 eval [TASK_FILE ...] [--config FILE.yaml] [--key value ...]``: every option is a field of
:class:`~promptr1.evaluation.config.EvalConfig` (``promptr1 eval --help`` lists them all); task files
may be given first, as positional arguments, or with ``--tasks``. Exit code 0 when the evaluation is
complete, 3 when the budget (``--max-calls``/``--max-cost``) stopped it early (partial results are
kept; the same command resumes), 1 when every episode of some method and env LLM failed on the env LLM
(the report says why), 2 for a usage error.

``promptr1 chat "QUESTION" [--key value ...]``: one episode of the agent (``--model``) with the
environment LLM, played by the training rollout; prints the transcript and the answer.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from promptr1.commands.cli import run_command
from promptr1.core.settings import ParsedSettings
from promptr1.evaluation.config import ChatConfig, EvalConfig

__all__ = ["chat_main", "eval_main"]


def eval_main(argv: Sequence[str]) -> int:
    """``promptr1 eval``: prints the report; returns 0 (complete), 3 (partial: budget stop), 1 (failed) or 2 (usage error)."""
    try:
        return _eval_command(argv)
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once; finished episodes are on disk already
        print("\npromptr1 eval: stopped at once; finished episodes are kept in the output folder's "
              "transcripts.jsonl: run the same command to resume.", file=sys.stderr, flush=True)
        return 130


def _eval_command(argv: Sequence[str]) -> int:
    return run_command(EvalConfig, argv, "eval", _evaluate, positional="tasks",
                       about="Evaluate agents and baselines (--methods) on task files (given first, or with --tasks), "
                             "against one or more env LLMs; writes a report, transcripts and a chart to --output-dir.",
                       epilog="Exit codes: 0 complete, 1 every episode of some method and env LLM failed on the env "
                              "LLM, 2 usage error, 3 stopped by the budget (--max-calls, --max-cost; the same "
                              "command resumes).")


def _evaluate(parsed: ParsedSettings) -> int:
    from promptr1.evaluation.runner import run_evaluation

    cfg: EvalConfig = parsed.settings
    result = run_evaluation(cfg)
    print(result.paths["report"].read_text(encoding="utf-8"))
    print(f"transcripts: {result.paths['transcripts']}"
          + (f"\nchart: {result.paths['chart']}" if "chart" in result.paths else ""))
    if result.signal:
        from promptr1.agents.interrupt import signal_exit_code

        print(f"promptr1 eval: {result.stop_reason}: {len(result.records)} of {result.planned} episodes kept "
              f"in {result.paths['transcripts']}; run the same command to resume.", file=sys.stderr,
              flush=True)
        return signal_exit_code(result.signal)
    if result.budget_stopped:  # a budget stop is a partial result, never a failure
        print(f"promptr1 eval: budget reached ({result.stop_reason}): {len(result.records)} of "
              f"{result.planned} episodes; run the same command again to resume", file=sys.stderr)
        return 3
    if result.failed:
        for column, why in result.failed_columns().items():
            print(f"promptr1 eval: FAILED: {column}: {why}", file=sys.stderr)
        return 1
    return 3 if result.partial else 0


def chat_main(argv: Sequence[str]) -> int:
    """``promptr1 chat "QUESTION"``: one question in, the multi-turn transcript and the answer out."""
    return run_command(ChatConfig, argv, "chat", _chat, positional="question",
                       about="Ask one question: the agent (--model) plays one episode with the env LLM; prints the "
                             "multi-turn transcript and the answer.")


def _chat(parsed: ParsedSettings) -> int:
    from promptr1.envs.collab_env import PromptCollabEnv
    from promptr1.envs.tasks import Task

    from promptr1.evaluation.policies import ModelPolicy, rollout_config

    cfg: ChatConfig = parsed.settings
    if not cfg.question.strip():
        raise ValueError('give a question: promptr1 chat "Who directed ...?" (or --question TEXT).')
    from promptr1.agents.preflight import check_chat_inputs

    check_chat_inputs(cfg)  # the model and env-LLM names, before the model loads
    try:
        policy = ModelPolicy.load(cfg.model, rollout=rollout_config(cfg), device="cpu" if cfg.cpu else None,
                                  seed=cfg.seed, dtype=cfg.model_dtype)
    except OSError as exc:  # a model folder that is not there or not a model
        raise FileNotFoundError(str(exc)) from exc
    task = Task(question=cfg.question.strip(), answers=("",), id="chat")
    from promptr1.llm_backends import from_settings

    backend, _ = from_settings(cfg)
    env = PromptCollabEnv.from_settings(task, backend, cfg)
    try:
        ep = policy.play([env], [task], seed=cfg.seed)[0]
    finally:
        env.close()
    for m in ep.messages:
        if m["role"] == "system":
            continue
        who = {"user": "user/env", "assistant": "agent"}[m["role"]]
        print(f"[{who}] {m['content']}\n")
    answer = ep.components.get("answer_text") if ep.components else None
    print(f"answer: {answer if answer else '(no <answer> given)'}")
    if ep.env_error:
        print(f"env error: {ep.env_error}")
    return 0
