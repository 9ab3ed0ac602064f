"""Checks a command passes before anything expensive: every name and path it will need, in seconds.

``promptr1 train`` calls :func:`check_training_inputs` (``sft`` and ``chat`` their own) after parsing and
before any model loads, so that a missing task file, a mistyped model or env-LLM name, or an output folder
that is a file is one line and exit code 2, not a traceback after the model was loaded (twice: the warm
start and the trainer). Nothing here reads weights or data or opens a connection.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

__all__ = ["check_chat_inputs", "check_output_dir", "check_sft_inputs", "check_training_inputs"]


def check_output_dir(output_dir: str | os.PathLike, *, what: str = "--output-dir") -> None:
    """A folder a run can write to: not a file, and under a folder this process can create it in."""
    p = pathlib.Path(output_dir).expanduser()
    if p.exists() and not p.is_dir():
        raise FileExistsError(f"{what} {os.fspath(output_dir)!r} is a file; give a folder (it is created if "
                              "needed).")
    parent = p if p.exists() else next((a for a in p.absolute().parents if a.exists()), None)
    if parent is not None and (not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK)):
        raise ValueError(f"{what} {os.fspath(output_dir)!r}: cannot write under {parent}; give a folder you "
                         "can write to.")


def check_training_inputs(cfg: Any, *, given_backend: bool = False) -> None:
    """Check a :class:`~promptr1.agents.config.GRPOConfig`'s task sources, model, env LLM(s) and output
    folder.

    The model is not checked when the run resumes from a checkpoint (its weights come from there). The env LLM
    is not checked when the caller passes a backend object (``given_backend``).
    """
    from promptr1.agents.checkpoint import find_resume_checkpoint
    from promptr1.agents.models import check_model_name
    from promptr1.envs.tasks import check_task_specs

    check_output_dir(cfg.output_dir)
    if not cfg.dry_run:  # a dry run reads no task (the paper's files may live on another machine) and says so
        check_task_specs(cfg.tasks, what="--tasks")
        if cfg.eval_tasks:
            check_task_specs(cfg.eval_tasks, what="--eval-tasks")
    if find_resume_checkpoint(cfg.output_dir, cfg.resume) is None:
        check_model_name(cfg.model, what="--model")
    if not given_backend:
        _check_env_llms(cfg)


def check_sft_inputs(cfg: Any, *, given_backend: bool = False) -> None:
    """Check a :class:`~promptr1.agents.config.SFTConfig`'s task sources, model, env LLM(s) and output
    folder."""
    from promptr1.agents.models import check_model_name
    from promptr1.envs.tasks import check_task_specs

    check_output_dir(cfg.output_dir)
    check_task_specs(cfg.tasks, what="--tasks")
    check_model_name(cfg.model, what="--model")
    if not given_backend:
        _check_env_llms(cfg)


def check_chat_inputs(cfg: Any) -> None:
    """Check a :class:`~promptr1.evaluation.config.ChatConfig`'s model and env LLM(s)."""
    from promptr1.agents.models import check_model_name

    check_model_name(cfg.model, what="--model")
    _check_env_llms(cfg)


def _check_env_llms(cfg: Any) -> None:
    """Every env-LLM spec the settings name (``env_models`` when set, else ``env_llm``) is registered."""
    from promptr1.llm_backends.specs import check_spec

    models, _ = cfg.env_models_map()
    for spec in list(models.values()) or [cfg.env_llm]:
        check_spec(spec)
