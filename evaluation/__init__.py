"""The evaluation wing: agents and baselines on task files, scored with the paper's metrics, reported.

=====================  ==========================================================================
module                 job
=====================  ==========================================================================
``config``             :class:`EvalConfig` (``promptr1 eval``), :class:`ChatConfig` (``promptr1 chat``)
``methods``            ``direct``, ``cot``, ``agent[:MODEL]``, ``LABEL=METHOD``
``policies``           :class:`ModelPolicy` (a model played by the training rollout), ``AgentPolicy``
``scoring``            the paper's metrics per task type; every per-episode measure
``stats``              the one :func:`mean_ci` (Wilson for 0/1 measures, normal for continuous ones)
``budget``             :class:`Budget` and the :class:`BudgetedBackend` that enforces it
``runner``             :func:`run_evaluation` (plan, schedule, resume), :func:`compare_policies`
``results``            records, rows, :class:`EvalResult` (``scalars()``, ``log_to()``)
``report``             Markdown report, :func:`format_table`, chart, JSONL
``cli``                ``eval_main(argv)``, ``chat_main(argv)``
=====================  ==========================================================================

Names are imported from their modules on first use, so ``import promptr1.evaluation`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EvalConfig": "config",
    "ChatConfig": "config",
    "MethodSpec": "methods",
    "parse_method": "methods",
    "AgentPolicy": "policies",
    "EpisodePlayer": "policies",
    "ModelPolicy": "policies",
    "TextPolicyPlayer": "policies",
    "rollout_config": "policies",
    "extract_prediction": "scoring",
    "score_prediction": "scoring",
    "mean_ci": "stats",
    "wilson_ci": "stats",
    "Budget": "budget",
    "BudgetedBackend": "budget",
    "run_evaluation": "runner",
    "compare_policies": "runner",
    "eval_config_from": "runner",
    "EvalResult": "results",
    "ScoreRow": "results",
    "summarize": "results",
    "format_table": "report",
    "render_markdown": "report",
    "read_jsonl": "report",
    "eval_main": "cli",
    "chat_main": "cli",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
