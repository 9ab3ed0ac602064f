"""Training callbacks that stop a run: the env LLM's budget (:class:`BudgetStopCallback`).

A callback is a :class:`~promptr1.agents.logger.Callback` (``on_train_begin``, ``on_step_end`` returning False to
stop, ``on_checkpoint``, ``on_train_end``). Validation during training is the evaluation wing's
(:class:`promptr1.evaluation.validation.ValidationCallback`); ``promptr1 train`` (``commands/train.py``) only
assembles them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from promptr1.agents.logger import Callback

__all__ = ["BudgetStopCallback"]


class BudgetStopCallback(Callback):
    """Stops training at the end of the step in which the env LLM's budget ran out.

    The trainer then writes its final checkpoint; calls the budget refused flagged their episodes
    (``env_error`` ``"budget: ..."``), which the trainer dropped from their groups like any env error. The
    budget's use is logged as ``env_llm/budget_calls`` and ``env_llm/budget_cost_usd``: the run's uncached
    calls so far, the warm start's demonstrations and validation included (the trainer's ``env_llm/calls``
    counts one step's training episodes, cached replies included). Under ``accelerate launch`` each process
    has its own budget and all stop when one does.
    """

    def __init__(self, budget: Any) -> None:
        self.budget = budget
        self.stopped_at: int | None = None
        self.reason: str | None = None

    def on_step_end(self, trainer: Any, step: int, metrics: Mapping[str, float]) -> bool:
        writer = getattr(getattr(trainer, "logger", None), "writer", None)
        if writer is not None:
            writer.add_scalar("env_llm/budget_calls", self.budget.calls, step)
            writer.add_scalar("env_llm/budget_cost_usd", self.budget.cost, step)
        spent = self.budget.stop_reason is not None
        acc = getattr(trainer, "accelerator", None)
        if acc is not None and acc.num_processes > 1:  # every process stops at the same step
            import torch

            flag = torch.tensor([1.0 if spent else 0.0], device=acc.device)
            spent = bool(acc.reduce(flag, reduction="sum").item() > 0)
        if spent:
            self.stopped_at = step
            self.reason = self.budget.stop_reason or "another process's budget ran out"
            return False
        return True
